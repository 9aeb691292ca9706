"""One options object for the range test, and the same test driven from a loop lrkit does not own (FinderSession)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import lrkit
from lrkit.errors import LrkitError
from lrkit.finder import FinderOptions, FinderSession, Stop, range_test


class Quadratic:
    """Gradient descent on 0.5 * sum(lam * w**2), with multiplicative noise from its own generator: a stepper whose
    whole state (weights and generator) snapshots and restores."""

    def __init__(self, noise: float = 0.05) -> None:
        self.lam = np.linspace(0.05, 1.0, 20)
        self.w = np.ones(20)
        self.rng = np.random.default_rng(3)
        self.noise = noise
        self.calls: list[tuple] = []

    def step(self, lr: float) -> float:
        self.calls.append(("step", lr))
        value = float(0.5 * np.sum(self.lam * self.w**2)) * (1 + self.noise * self.rng.standard_normal())
        with np.errstate(over="ignore", invalid="ignore"):
            self.w = self.w - lr * self.lam * self.w
        return value

    def snapshot(self):
        self.calls.append(("snapshot",))
        return self.w.copy(), self.rng.bit_generator.state

    def restore(self, snap) -> None:
        self.calls.append(("restore",))
        self.w, self.rng.bit_generator.state = snap[0].copy(), snap[1]

    def evaluate(self) -> float:
        self.calls.append(("evaluate",))
        return float(0.5 * np.sum(self.lam * self.w**2))


def test_defaults_are_those_every_find_lr_documents():
    o = FinderOptions()
    assert (o.start_lr, o.end_lr, o.num_iter, o.mode, o.smooth, o.diverge_factor) == (1e-7, 10.0, 100,
                                                                                        "exponential", 0.98, 4.0)
    assert (o.confirm, o.max_steps, o.max_seconds, o.val_every, o.rule) == (True, 200, None, 5, None)
    assert (o.extend_steps, o.extend_decades, o.n_candidates, o.spread) == (25, 0.0, 3, 3.0)
    assert (o.max_confirm_steps, o.min_confirm_steps, o.margin) == (40, 10, 0.02)
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.end_lr = 1.0  # type: ignore[misc]


def test_build_applies_overrides_and_names_every_field_for_a_typo():
    base = FinderOptions(end_lr=1.0)
    o = FinderOptions.build(base, num_iter=50)
    assert (o.end_lr, o.num_iter) == (1.0, 50) and base.num_iter == 100
    assert FinderOptions.build() == FinderOptions()
    with pytest.raises(LrkitError, match=r"unknown range-test option\(s\) end_lrr; .*diverge_factor, end_lr"):
        FinderOptions.build(end_lrr=1.0)
    with pytest.raises(LrkitError, match="must be an lrkit.FinderOptions"):
        FinderOptions.build({"end_lr": 1.0})  # type: ignore[arg-type]


@pytest.mark.parametrize("bad, match", [
    (dict(start_lr=1.0, end_lr=1e-3), "smaller than end_lr"), (dict(num_iter=4), "num_iter"),
    (dict(num_iter=100.0), "num_iter"), (dict(mode="cosine"), "mode"), (dict(smooth=1.0), "smooth"),
    (dict(diverge_factor=1.0), "diverge_factor"), (dict(max_seconds=0), "max_seconds"),
    (dict(val_every=0), "val_every"), (dict(momentum=1.0), "momentum"), (dict(family="adamw"), "family"),
    (dict(extend_decades=-1), "extend_decades"), (dict(max_confirm_steps=0), "max_confirm_steps"),
    (dict(margin=1.0), "margin"), (dict(max_skipped=-1), "max_skipped"),
])
def test_a_bad_option_is_refused_when_built(bad, match):
    with pytest.raises(LrkitError, match=match):
        FinderOptions(**bad)


def test_the_options_object_and_keyword_overrides_run_the_same_test():
    a = range_test(Quadratic(), FinderOptions(start_lr=1e-5, end_lr=100.0, progress=False, val_every=None))
    b = range_test(Quadratic(), start_lr=1e-5, end_lr=100.0, progress=False, val_every=None)
    c = range_test(Quadratic(), FinderOptions(start_lr=1e-5, progress=False), end_lr=100.0, val_every=None)
    d = range_test(Quadratic(), options=FinderOptions(start_lr=1e-5, end_lr=100.0, progress=False, val_every=None))
    for r in (b, c, d):
        np.testing.assert_array_equal(r.losses, a.losses)
        assert r.suggestion == a.suggestion and r.confirmations == a.confirmations


@pytest.mark.parametrize("options", [
    dict(val_every=None),                                  # the adaptive test, runs scored on evaluate()
    dict(val_every=None, end_lr=0.5, num_iter=60),         # ... with the extension
    dict(confirm=False, val_every=None),                   # one ramp
    dict(val_every=3),                                     # validation mode
])
def test_a_session_fed_by_a_loop_runs_the_test_range_test_runs(options):
    """The push driver (what the in-fit LRFinder callbacks use) issues the same calls in the same order as the pull
    driver and returns the same result, bit for bit."""
    kw = dict(start_lr=1e-5, end_lr=100.0, progress=False, family="sgd", momentum=0.0) | options
    pulled_stepper = Quadratic()
    pulled = range_test(pulled_stepper, **kw)
    pushed_stepper = Quadratic()
    session = FinderSession(FinderOptions(**kw), pushed_stepper.snapshot, pushed_stepper.restore,
                            pushed_stepper.evaluate)
    while not session.done:
        session.record(pushed_stepper.step(session.lr))
    assert pushed_stepper.calls == pulled_stepper.calls
    pushed = session.result
    for name in ("lrs", "losses", "smoothed_losses"):
        np.testing.assert_array_equal(getattr(pushed, name), getattr(pulled, name))
    assert pushed.suggestion == pulled.suggestion and pushed.confirmations == pulled.confirmations
    assert pushed.stop is pulled.stop and pushed.config == pulled.config
    np.testing.assert_array_equal(pushed_stepper.w, np.ones(20))  # restored
    assert session.steps == pulled.total_steps


def test_a_session_closed_early_or_failing_restores_the_state():
    q = Quadratic()
    session = FinderSession(FinderOptions(progress=False), q.snapshot, q.restore)
    for _ in range(30):
        session.record(q.step(session.lr))
    assert not np.array_equal(q.w, np.ones(20))
    session.close()
    np.testing.assert_array_equal(q.w, np.ones(20))
    q = Quadratic()
    session = FinderSession(FinderOptions(progress=False), q.snapshot, q.restore)
    with pytest.raises(LrkitError, match="first step"):
        session.record(float("nan"))  # a NaN before the lr can matter
    np.testing.assert_array_equal(q.w, np.ones(20))
    with pytest.raises(LrkitError, match="was stopped"):
        session.record(1.0)


def test_a_session_stops_on_divergence_with_a_typed_reason():
    q = Quadratic(noise=0.0)
    session = FinderSession(FinderOptions(start_lr=1e-5, end_lr=100.0, confirm=False, progress=False), q.snapshot,
                            q.restore)
    while not session.record(q.step(session.lr)):
        pass
    assert session.result.stop is Stop.DIVERGED and session.lr is None


def test_the_public_surface_has_no_module_shadowed_by_a_function():
    """`import lrkit` binds no function over a submodule of the same name: lrkit.finder.rules() is the rule list."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(lrkit.__path__):
        name = info.name
        if name.startswith("_"):
            continue
        value = getattr(lrkit, name, None)
        assert value is None or value is importlib.import_module(f"lrkit.{name}"), name
    assert lrkit.finder.rules() == sorted(lrkit.finder.rules())
    # the functions lrkit.sweep and lrkit.stepwise live in the package lrkit.search: no module of those names
    assert not {"sweep", "stepwise", "suggest"} & {m.name for m in pkgutil.iter_modules(lrkit.__path__)}


# ---- issue 23: what peer users expect of the options ------------------------------------------------------------
@pytest.mark.parametrize("bad, match", [
    (dict(max_steps=0), "max_steps must be a positive integer"), (dict(max_steps=-5), "max_steps"),
    (dict(start_lr=[1e-5, 1e-6], end_lr=[1.0]), "start_lr has 2 values and end_lr 1"),
    (dict(start_lr=[1e-5, 2.0], end_lr=1.0), "param group 1: start_lr"),
    (dict(start_lr=[], end_lr=1.0), "empty list"), (dict(start_lr=None, end_lr=-1.0), "end_lr"),
    (dict(num_iter=None, start_lr=2.0, end_lr=1.0), "smaller than end_lr"),
])
def test_bad_new_options_are_refused_when_built(bad, match):
    with pytest.raises(LrkitError, match=match):
        FinderOptions(**bad)


def test_start_lr_none_and_num_iter_none_resolve_from_what_the_stepper_exposes():
    o, ranges = FinderOptions(start_lr=None, num_iter=None).resolve(base_lrs=[3e-4, 3e-5], steps_per_epoch=40)
    assert (o.start_lr, o.end_lr, o.num_iter, ranges) == (3e-4, 10.0, 40, None)
    o, ranges = FinderOptions(start_lr=None, end_lr=[1.0, 0.1]).resolve(base_lrs=[3e-4, 3e-5])
    assert (o.start_lr, o.end_lr) == (3e-4, 1.0) and ranges == [(3e-4, 1.0), (3e-5, 0.1)]
    q = Quadratic()  # a stepper with neither base_lrs nor steps_per_epoch
    with pytest.raises(LrkitError, match="start_lr=None.*base_lrs"):
        range_test(q, start_lr=None, progress=False)
    with pytest.raises(LrkitError, match="num_iter=None runs one epoch.*pass num_iter"):
        range_test(q, num_iter=None, progress=False)
    with pytest.raises(LrkitError, match="use_group_ramps"):
        range_test(q, start_lr=[1e-5, 1e-6], end_lr=[1.0, 0.1], progress=False)
    assert q.calls == []  # refused before any step
    q.base_lrs, q.steps_per_epoch = [0.01], 30
    res = range_test(q, start_lr=None, num_iter=None, end_lr=100.0, confirm=False, progress=False)
    assert res.lrs[0] == 0.01 and res.config["num_iter"] == 30 and len(res.lrs) <= 30


def test_a_session_starts_at_the_optimisers_lr_when_told_it():
    q = Quadratic()
    session = FinderSession(FinderOptions(start_lr=None, num_iter=None, confirm=False, progress=False), q.snapshot,
                            q.restore, base_lrs=[0.02], steps_per_epoch=25)
    assert session.lr == 0.02 and session.options.num_iter == 25
    while not session.record(q.step(session.lr)):
        pass
    assert session.result.lrs[0] == 0.02 and len(session.result.lrs) <= 25
