"""lrkit.schedules core: closed forms, combinators against hand-computed values, specs, serialisation, laws."""

import json
import math
import pickle
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lrkit.schedules as S
from lrkit import LrkitError

T = np.arange(0, 400)

# one instance of every kind, used by the generic round-trip / scalar-vs-vector / pickle tests
EXAMPLES = [
    "constant(0.001)",
    "constant(0.001, steps=50) >> cosine(0.001, 100)",
    "step(0.1, 30, gamma=0.5)",
    "multistep(0.1, [10, 50, 90], gamma=0.3)",
    "exponential(0.01, 0.97, steps=3, staircase=True, final=0.002)",
    "inverse_time(0.01, 0.5, steps=10)",
    "polynomial(0.01, 100, final=0.0001, power=2.0)",
    "linear(0.0, 0.01, 60)",
    "cosine(0.0003, 200, final=3e-05)",
    "cosine_restarts(0.001, 10, final=1e-05, period_mult=2.0, decay=0.5)",
    "onecycle(0.01, 300)",
    "onecycle(0.01, 300, anneal='linear', three_phase=True, convention='optax')",
    "onecycle_momentum(300, low=0.8)",
    "cyclical(0.0001, 0.01, up=20, down=30, mode='triangular2')",
    "cyclical(0.0001, 0.01, up=20, mode='exp_range', gamma=0.99)",
    "warmup(50) >> cosine(0.0003, 200, final=3e-05)",
    "warmup(50, start=0.01, mode='exp') >> constant(0.001)",
    "warmup(20, mode='none') >> linear(0.001, 0.0, 100) >> constant(0.0001)",
    "wsd(0.001, 300, warmup=30, decay=0.2, cooldown='1-sqrt', final=1e-05)",
    "warmup(40) >> inverse_sqrt(0.001, timescale=40)",
    "cycle(linear(0.01, 0.001, 25))",
    "cosine(0.01, 100) * 0.5",
    "cosine(0.01, 100) * cyclical(0.5, 1.0, up=10)",
    "clamp(exponential(0.01, 0.98), low=0.001)",
    "join([constant(0.1), constant(0.01), cosine(0.01, 50)], [100, 200])",
    "warmup(10) >> plateau(constant(0.001), patience=2)",
    "ramp(1e-07, 10.0, 100)",
    "shift(warmup(10) >> cosine(0.01, 100), 1)",
    "shift(onecycle(0.01, 100), -20)",
]


@pytest.mark.parametrize("spec", EXAMPLES)
def test_spec_dict_pickle_round_trip_and_scalar_path(spec):
    s = S.parse(spec)
    assert S.parse(str(s)) == s and str(S.parse(str(s))) == str(s)
    assert S.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert pickle.loads(pickle.dumps(s)) == s
    v = s(T)
    assert v.shape == T.shape and np.all(np.isfinite(v)) and np.all(v >= 0)
    scalar = np.array([s(int(t)) for t in T[::7]])
    np.testing.assert_allclose(scalar, v[::7], rtol=1e-12, atol=0)
    assert isinstance(s(3), float)


def test_long_arrays_are_evaluated_in_blocks_with_the_same_values():
    s = S.parse("warmup(500) >> cosine_restarts(0.001, 1000, period_mult=2.0, decay=0.9)")
    t = np.arange(300_000)
    v = s(t)
    idx = np.r_[0:5, 65530:65542, 299_990:300_000, 1500, 3500, 7500]
    np.testing.assert_allclose(v[idx], [s(int(i)) for i in idx], rtol=1e-12)
    assert s(t.reshape(3, -1)).shape == (3, 100_000)


# random trees of families and combinators: spec/dict round trip is exact and values agree
leaf = st.one_of(
    st.builds(lambda p, n: S.cosine(p, n, final=p / 10), st.floats(1e-5, 1.0), st.integers(1, 500)),
    st.builds(lambda p, n: S.linear(p, p / 2, n), st.floats(1e-5, 1.0), st.integers(1, 500)),
    st.builds(lambda p, n, pct: S.onecycle(p, n, pct), st.floats(1e-5, 1.0), st.integers(50, 500),
              st.floats(0.1, 0.5)),
    st.builds(lambda p: S.exponential(p, 0.99), st.floats(1e-5, 1.0)),
    st.builds(lambda p, n: S.constant(p, steps=n), st.floats(1e-5, 1.0), st.integers(1, 300)),
)


def _extend(children):
    finite = children.filter(lambda s: s.length is not None)
    return st.one_of(
        st.builds(lambda s, w: S.warmup(s, w), children, st.integers(1, 100)),
        st.builds(lambda a, b: a >> b, finite, children),
        st.builds(lambda s, f: s * f, children, st.floats(0.1, 2.0)),
        st.builds(lambda s, lo: S.clamp(s, low=lo), children, st.floats(0, 1e-4)),
        st.builds(lambda s: S.cycle(s), finite),
    )


@settings(max_examples=60, deadline=None)
@given(s=st.recursive(leaf, _extend, max_leaves=5))
def test_random_trees_round_trip(s):
    again = S.parse(str(s))
    assert again == s and S.from_dict(s.to_dict()) == s
    t = np.arange(0, 1500, 7)
    np.testing.assert_allclose(again(t), s(t), rtol=1e-12)


def test_str_is_canonical_for_the_issue_example():
    s = S.parse("warmup(500) >> cosine(3e-4, 10000, final=3e-5)")
    assert str(s) == "warmup(500) >> cosine(0.0003, 10000, final=3e-05)"
    assert s == S.warmup(S.cosine(peak=3e-4, steps=10_000, final=3e-5), 500)
    assert s != S.warmup(S.cosine(peak=3e-4, steps=10_000, final=3e-6), 500)


def cos_closed(peak, final, t, n):
    return final + (peak - final) * 0.5 * (1 + math.cos(math.pi * min(t, n) / n))


def test_families_closed_forms():
    assert S.step(0.1, 30, 0.5)(59) == pytest.approx(0.05) and S.step(0.1, 30, 0.5)(60) == pytest.approx(0.025)
    ms = S.multistep(1.0, [10, 20], 0.1)
    assert [ms(9), ms(10), ms(19), ms(20)] == pytest.approx([1.0, 0.1, 0.1, 0.01])
    assert S.exponential(2.0, 0.5, steps=10)(15) == pytest.approx(2.0 * 0.5**1.5)
    assert S.exponential(2.0, 0.5, steps=10, staircase=True)(15) == pytest.approx(1.0)
    assert S.exponential(2.0, 0.5, final=0.3)(100) == pytest.approx(0.3)
    assert S.inverse_time(1.0, 0.5, steps=2)(4) == pytest.approx(1 / 2)
    assert S.polynomial(1.0, 10, final=0.1, power=2)(5) == pytest.approx(0.9 * 0.25 + 0.1)
    assert S.linear(0.0, 1.0, 8)(2) == pytest.approx(0.25) and S.linear(0.0, 1.0, 8)(80) == 1.0
    c = S.cosine(1.0, 100, final=0.1)
    for t in (0, 13, 50, 100, 250):
        assert c(t) == pytest.approx(cos_closed(1.0, 0.1, t, 100), rel=1e-12)
    assert S.cosine(1.0, 10, exponent=2.0)(5) == pytest.approx(0.25)
    assert S.inverse_sqrt(1.0, timescale=100)(300) == pytest.approx(0.5)


def test_cosine_restarts_cycles():
    s = S.cosine_restarts(1.0, 10, final=0.0, period_mult=2.0, decay=0.5)
    # cycles: [0,10) peak 1, [10,30) peak .5, [30,70) peak .25
    assert [s(0), s(10), s(30), s(70)] == pytest.approx([1.0, 0.5, 0.25, 0.125])
    assert s(20) == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 10 / 20)))
    assert s(69) == pytest.approx(0.25 * 0.5 * (1 + math.cos(math.pi * 39 / 40)))
    k = S.cosine_restarts(1.0, 10, final=0.2, decay=0.5, decay_span=True)  # Keras: peak_1 = 0.2 + 0.8 * 0.5
    assert k(10) == pytest.approx(0.6) and k(15) == pytest.approx(0.2 + 0.4 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_onecycle_conventions_and_end():
    s = S.onecycle(1.0, 100)  # torch: peak at 0.3*100 - 1 = 29, final at 99
    assert s(0) == pytest.approx(1 / 25) and s(29) == pytest.approx(1.0) and s(99) == pytest.approx(1 / 25 / 1e4)
    assert s(5000) == s(99)  # no "tried to step N times": it holds
    o = S.onecycle(1.0, 100, convention="optax")
    assert o(30) == pytest.approx(1.0) and o(100) == pytest.approx(4e-6)
    f = S.onecycle_fastai(1.0, 100)
    assert f(25) == pytest.approx(1.0) and f(100) == pytest.approx(1 / 25 / 1e5)
    m = s.momentum()
    assert [m(0), m(29), m(99)] == pytest.approx([0.95, 0.85, 0.95])
    assert s.phases() == [(29, "at 1")]


def test_cyclical_hand_values():
    s = S.cyclical(1.0, 3.0, up=2, down=4, mode="triangular2")
    assert s(np.arange(13)).tolist() == pytest.approx(
        [1, 2, 3, 2.5, 2, 1.5, 1, 1.5, 2, 1.75, 1.5, 1.25, 1])


def test_wsd_phases():
    s = S.wsd(1.0, 100, warmup=10, decay=20, final=0.1)
    assert s(0) == pytest.approx(0.1) and s(5) == pytest.approx(0.55) and s(10) == 1.0 and s(79) == 1.0
    assert s(90) == pytest.approx(0.55) and s(100) == pytest.approx(0.1) and s(10**6) == pytest.approx(0.1)
    r = S.wsd(1.0, 100, decay=0.25, cooldown="1-sqrt")
    assert r(75) == 1.0 and r(75 + 25 * 0.36) == pytest.approx(0.4)
    assert s.phases() == [(10, "stable"), (80, "decay")]


# ---- combinators against hand-computed values ----------------------------------------------------------------

def test_warmup_linear_prepends_and_reaches_peak_at_w():
    s = S.warmup(4) >> S.linear(1.0, 0.0, 4)
    assert s(np.arange(10)).tolist() == pytest.approx([0, 0.25, 0.5, 0.75, 1.0, 0.75, 0.5, 0.25, 0, 0])
    assert s.length == 8
    e = S.warmup(S.constant(1.0), 2, start=0.01, mode="exp")
    assert e(np.arange(4)).tolist() == pytest.approx([0.01, 0.1, 1.0, 1.0])
    n = S.warmup(S.linear(1.0, 0.0, 2), 2, mode="none")
    assert n(np.arange(5)).tolist() == pytest.approx([1.0, 1.0, 1.0, 0.5, 0.0])
    assert S.warmup(S.constant(1.0), 0) == S.constant(1.0)


def test_join_switches_at_boundary_in_local_time():
    s = S.join([S.constant(5.0), S.linear(1.0, 0.0, 4), S.constant(9.0)], [3, 5])
    assert s(np.arange(8)).tolist() == pytest.approx([5, 5, 5, 1.0, 0.75, 9, 9, 9])


def test_sequence_and_warmup_canonicalise():
    a, b = S.linear(1.0, 0.5, 10), S.cosine(0.5, 20)
    assert (a >> b) == S.join([a, b], [10])
    assert ((a >> b) >> S.constant(0.1)) == (a >> (b >> S.constant(0.1)))
    assert S.warmup(a >> b, 5) == (S.warmup(5) >> a >> b)
    assert (S.warmup(5) >> a >> b).length == 35


def test_cycle_scale_mul_clamp():
    c = S.cycle(S.linear(4.0, 0.0, 4))
    assert c(np.arange(10)).tolist() == pytest.approx([4, 3, 2, 1, 4, 3, 2, 1, 4, 3])
    assert (S.constant(2.0) * 3.0)(7) == 6.0 and (3.0 * S.constant(2.0))(7) == 6.0
    assert (S.linear(2.0, 0.0, 2) * S.linear(1.0, 3.0, 2))(1) == pytest.approx(2.0)
    cl = S.clamp(S.linear(0.0, 1.0, 10), low=0.2, high=0.7)
    assert cl(np.array([0, 5, 10])).tolist() == pytest.approx([0.2, 0.5, 0.7])


def test_plateau_composes_after_warmup_and_state_round_trips():
    s = S.warmup(S.plateau(1.0, factor=0.5, patience=1), 3)
    s.observe(1.0, step=1)  # during warmup: ignored
    s.observe(1.0, step=1)
    assert s(10) == 1.0
    for _ in range(3):
        s.observe(1.0, step=10)  # best=1, then 2 bad > patience 1 -> cut
    assert s(10) == 0.5 and s(0) == 0.0
    state = json.loads(json.dumps(s.state_dict()))
    fresh = S.parse(str(s))
    assert fresh(10) == 1.0
    fresh.load_state_dict(state)
    assert fresh(10) == 0.5 and pickle.loads(pickle.dumps(s))(10) == 0.5


# ---- laws ----------------------------------------------------------------------------------------------------

lrs = st.floats(1e-6, 1.0)
steps = st.integers(2, 5000)


@settings(max_examples=40, deadline=None)
@given(peak=lrs, frac=st.floats(0, 1), n=steps, power=st.floats(0.2, 4), warm=st.integers(0, 500))
def test_decays_are_monotone_and_bounded(peak, frac, n, power, warm):
    final = peak * frac
    t = np.arange(0, n + warm + 50)
    for s in (S.cosine(peak, n, final), S.polynomial(peak, n, final, power), S.linear(peak, final, n),
              S.wsd(peak, n, decay=0.5, final=final), S.exponential(peak, 0.99, final=final)):
        v = s(t)
        assert np.all(np.diff(v) <= 1e-15 * peak) and v[0] == pytest.approx(peak) and np.all(v >= final * (1 - 1e-12))
    w = S.warmup(S.cosine(peak, n, final), warm)(t[: warm + 1])
    assert np.all(np.diff(w) >= 0) and w[-1] == pytest.approx(peak)


@settings(max_examples=30, deadline=None)
@given(peak=lrs, n=st.integers(20, 3000), pct=st.floats(0.1, 0.45), three=st.booleans(),
       conv=st.sampled_from(["torch", "optax", "fastai"]))
def test_onecycle_bounds(peak, n, pct, three, conv):
    s = S.onecycle(peak, n, pct_start=pct, three_phase=three, convention=conv)
    v = s(np.arange(n + 5))
    assert np.all(v <= peak * (1 + 1e-12)) and np.all(v > 0)
    if conv != "fastai":  # fastai's positions i/n never reach the end
        assert v[-1] == pytest.approx(peak / 25 / 1e4)
    if conv == "optax":  # its phase ends are whole steps, so the peak is hit exactly
        assert v.max() == pytest.approx(peak)
    m = s.momentum()(np.arange(n + 5))
    assert np.all((m >= 0.85 - 1e-12) & (m <= 0.95 + 1e-12))


@settings(max_examples=30, deadline=None)
@given(low=st.floats(1e-5, 1e-3), span=st.floats(1.0, 100.0), up=st.integers(1, 50), down=st.integers(1, 50),
       mode=st.sampled_from(["triangular", "triangular2", "exp_range"]))
def test_cyclical_bounds(low, span, up, down, mode):
    v = S.cyclical(low, low * span, up, down, mode, gamma=0.999)(np.arange(400))
    assert np.all(v >= low * (1 - 1e-12)) and np.all(v <= low * span * (1 + 1e-12))


# ---- errors ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, words", [
    (lambda: S.cosine(3e-4, 0), ["steps", "0"]),
    (lambda: S.cosine(-1.0, 10), ["peak", "-1.0"]),
    (lambda: S.onecycle(1e-2, 3), ["empty phase", "more steps"]),
    (lambda: S.wsd(1e-3, 100, warmup=90, decay=20), ["exceed", "steps"]),
    (lambda: S.warmup(S.constant(1.0), 10, mode="exp"), ["start > 0", "start=0.01"]),
    (lambda: S.join([S.constant(1.0)], [5]), ["boundary"]),
    (lambda: S.constant(1.0) >> S.constant(2.0), ["never ends", "steps="]),
    (lambda: S.cyclical(1e-2, 1e-3), ["high", "low"]),
    (lambda: S.multistep(0.1, [30, 10]), ["increasing", "sort"]),
    (lambda: S.cosine(1e-3, 10)(-1), ["steps must be >= 0"]),
    (lambda: S.warmup(10)(3), ["warmup(10) >>"]),
    (lambda: S.from_dict({"kind": "nope"}), ["unknown schedule kind", "cosine"]),
])
def test_bad_arguments_name_the_problem_and_the_fix(call, words):
    with pytest.raises(LrkitError) as e:
        call()
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize("spec, column, words", [
    ("cosine(3e-4, -5)", 13, ["steps"]),
    ("warmup(500) >> cosin(1e-3, 10)", 15, ["unknown schedule 'cosin'"]),
    ("cosine(3e-4, 100,, 5)", 17, ["syntax"]),
    ("warmup(500) >>", 14, ["incomplete"]),
    ("cosine(1e-3, 10, foo=1)", 0, ["foo"]),
    ("cosine(1e-3, 10) + 1", 0, ["'>>'"]),
    ("__import__('os')", 0, ["unknown schedule"]),
])
def test_parse_errors_point_at_the_position(spec, column, words):
    with pytest.raises(S.SpecError) as e:
        S.parse(spec)
    assert e.value.position == column
    lines = str(e.value).splitlines()
    assert lines[1].strip() == spec.strip() and lines[2].index("^") - 2 == column
    assert all(w in str(e.value) for w in words) and "\n" not in e.value.one_line()


def test_schedules_are_immutable_and_hashable():
    s = S.cosine(1e-3, 10)
    with pytest.raises(AttributeError):
        s.peak = 1.0
    assert len({s, S.cosine(1e-3, 10), S.cosine(1e-3, 11)}) == 2


def test_training_steps_under_accumulation():
    assert S.training_steps(3, 100, accumulation=4) == 75
    assert S.training_steps(2, 10, accumulation=4) == 6  # 3 updates per epoch (last window partial)
    assert S.training_steps(2, 10, accumulation=4, drop_last=True) == 4
    assert S.training_steps(1.5, 10) == 15
    with pytest.raises(LrkitError, match="accumulation"):
        S.training_steps(1, 10, accumulation=0)


def test_importing_schedules_imports_no_framework():
    code = ("import lrkit.schedules, lrkit, sys; "
            "assert not {'torch', 'jax', 'keras', 'tensorflow'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_final_above_peak_is_refused_naming_both():
    for make in (lambda: S.cosine(3e-4, 100, final=1e-3), lambda: S.polynomial(3e-4, 100, final=1e-3),
                 lambda: S.cosine_restarts(3e-4, 10, final=1e-3), lambda: S.wsd(3e-4, 100, final=1e-3),
                 lambda: S.parse("warmup(10) >> cosine(3e-4, 100, final=1e-3)")):
        with pytest.raises(LrkitError, match=r"final must be .*<= 0.0003, got 0.001; .*at most peak"):
            make()
    assert S.cosine(3e-4, 100, final=3e-4)(50) == pytest.approx(3e-4)  # final == peak: a constant, allowed


def test_key_points_read_every_step_in_blocks(monkeypatch):
    from lrkit.schedules import _base

    monkeypatch.setattr(_base, "_KEY_BLOCK", 1000)  # many blocks: the peak and the minimum lie in later ones
    s = S.parse("cyclical(1e-4, 1e-2, 700, 1100) * exponential(1.0, 0.9999)")
    v = s(np.arange(10_000))
    kp = s.key_points(10_000)
    assert (kp["first"], kp["final"], kp["min"]) == (v[0], v[-1], v.min()) and kp["sampled"] is None
    assert (kp["peak"], kp["peak_step"]) == (v.max(), int(np.argmax(v)))


def test_key_points_sample_long_schedules_at_every_phase_start():
    s = S.parse("warmup(500) >> cosine(3e-4, 2000000, final=3e-5)")
    kp = s.key_points(sample=10_000)
    exact = s.key_points()
    assert kp["sampled"] is not None and kp["sampled"] <= 10_002 and exact["sampled"] is None
    assert {k: kp[k] for k in ("first", "peak", "peak_step", "final", "min", "steps")} == \
        {k: exact[k] for k in ("first", "peak", "peak_step", "final", "min", "steps")}
    t = S.sample_steps(2_000_501, [500], 10_000)
    assert t[0] == 0 and t[-1] == 2_000_500 and {499, 500} <= set(t.tolist()) and np.all(np.diff(t) > 0)
    np.testing.assert_array_equal(S.sample_steps(50, [10], 100), np.arange(50))


def test_key_points_refuse_more_steps_than_they_can_read():
    with pytest.raises(LrkitError, match="at most 1e\\+08; look at fewer steps"):
        S.cosine(3e-4, 1000).key_points(10**8 + 1)
    with pytest.raises(LrkitError, match="2\\*\\*53"):
        S.cosine(3e-4, 1e30).key_points(sample=1000)
