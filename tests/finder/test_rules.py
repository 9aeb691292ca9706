"""Suggestion rules (lrkit.finder) against closed-form synthetic curves, the edge cases, and the recipe's spec round
trip."""

from __future__ import annotations

import numpy as np
import pytest

import lrkit
from lrkit.errors import LrkitError
from lrkit.finder import (
    DEFAULT_RULE,
    Recipe,
    Suggestion,
    clean_curve,
    divergence_factor,
    fit_curve,
    infer_family,
    recipe,
    register_rule,
    rules,
    suggest,
)
from lrkit.schedules import parse

ADAM_FACTOR = divergence_factor("adam")  # 10: Adam-like optimisers train about 10x below the divergence
X = np.linspace(-7.0, 1.0, 161)  # log10(lr), 20 points per decade
LRS = 10.0**X


def ramp_curve(x=X, fall=(-4.0, -2.0), floor=(-2.0, -1.0), rise_slope=10.0, top=2.0, bottom=0.5):
    """Flat at ``top``, a linear fall to ``bottom`` over ``fall``, flat, then a linear rise of ``rise_slope``/decade."""
    y = np.interp(x, [x[0], fall[0], fall[1]], [top, top, bottom])
    return np.where(x > floor[1], bottom + rise_slope * (x - floor[1]), y)


def test_registry_has_the_classics_and_the_default():
    assert {"steepest", "minimum", "valley", "robust"} <= set(rules())
    assert lrkit.finder.rules() == rules() and DEFAULT_RULE == "robust"
    y = ramp_curve()
    assert suggest(LRS, y) == suggest(LRS, y, DEFAULT_RULE)


def test_a_registered_rule_is_found_by_name_and_unknown_names_list_the_known():
    @register_rule("tenth_of_last")
    def tenth_of_last(lrs, losses):
        return Suggestion(float(lrs[-1]) / 10, None, "tenth_of_last", "a tenth of the last lr")

    assert suggest(LRS, ramp_curve(), "tenth_of_last").lr == pytest.approx(LRS[-1] / 10)
    assert "tenth_of_last" in rules()
    with pytest.raises(LrkitError, match="unknown suggestion rule 'nope'; choose one of: minimum, robust"):
        suggest(LRS, ramp_curve(), "nope")


def test_clean_curve_keeps_the_prefix_before_the_first_non_finite_point():
    x, y = clean_curve([1e-3, 1e-2, 1e-1, 1.0], [2.0, 1.0, np.nan, 0.5])
    assert x.tolist() == [1e-3, 1e-2] and y.tolist() == [2.0, 1.0]
    x, _ = clean_curve([1e-3, 0.0, 1e-1], [2.0, 1.0, 0.5])  # an lr of 0 is no point on a log axis: left out
    assert x.tolist() == [1e-3, 1e-1]
    x, y = clean_curve([1e-3, 1e-2, 1e-1], [np.nan, 1.0, 0.5])  # a NaN before the first finite loss: left out
    assert x.tolist() == [1e-2, 1e-1] and y.tolist() == [1.0, 0.5]
    with pytest.raises(LrkitError, match="same length"):
        clean_curve([1e-3, 1e-2], [1.0])


def test_one_infer_family_for_optimiser_objects_and_optax_hyperparameters():
    class SGD:
        param_groups = [{"momentum": 0.9}]

    class AdamW:
        pass

    class Wrapper:  # e.g. accelerate's AcceleratedOptimizer
        optimizer = SGD()

    assert infer_family(SGD()) == ("sgd", 0.9) and infer_family(AdamW()) == ("adam", None)
    assert infer_family(Wrapper()) == ("sgd", 0.9)
    # optax.inject_hyperparams states: a second-moment decay is Adam-like; lr/momentum/nesterov only is SGD
    assert infer_family({"learning_rate": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8}) == ("adam", None)
    assert infer_family({"learning_rate": 0.1, "decay": 0.9}) == ("adam", None)  # rmsprop
    assert infer_family({"learning_rate": 0.1, "momentum": np.float32(0.9), "nesterov": False}) == ("sgd", 0.9)
    assert infer_family({"learning_rate": 0.1, "momentum": None, "nesterov": False}) == ("sgd", 0.0)
    assert infer_family({"learning_rate": 0.1, "weight_decay": 0.1}) == (None, None)
    assert infer_family(None) == (None, None)


def test_steepest_finds_the_inflection_of_a_tanh():
    c = -3.0
    y = -np.tanh((X - c) / 0.5)
    s = suggest(LRS, y, "steepest")
    assert s.lr == pytest.approx(10**c, rel=1e-9)


def test_minimum_is_a_tenth_of_the_parabola_vertex():
    m = -2.5
    s = suggest(LRS, (X - m) ** 2, "minimum")
    assert s.lr == pytest.approx(10**m / 10, rel=1e-9)


def test_valley_two_thirds_along_the_descent_of_a_v():
    k = 90  # index of the V's vertex: the descent is steps 0..90, the pick index 60
    y = np.abs(np.arange(len(X)) - k).astype(float)
    s = suggest(LRS, y, "valley")
    assert s.lr == pytest.approx(LRS[60], rel=1e-9)


def test_robust_picks_a_factor_below_the_divergence_point_of_a_closed_form_curve():
    # minimum plateau ends at x=-1, rise 10/decade, depth 1.5: the fit crosses min + 0.25*1.5 at x = -1 + 0.0375
    y = ramp_curve()
    lr_div = 10 ** (-1 + 0.25 * 1.5 / 10.0)
    fit = fit_curve(LRS, y)
    # resolution: the fit's bandwidth (0.2 decades) plus a grid step, in decades
    assert abs(np.log10(fit.lr_diverge / lr_div)) <= 0.25
    assert 10**-2 <= fit.lr_min <= 10**-0.9
    assert fit.steep_interval[0] >= 10**-4.2 and fit.steep_interval[1] <= 10**-1.8
    adam = suggest(LRS, y, "robust", family="adam")
    sgd = suggest(LRS, y, "robust", family="sgd", momentum=0.9)
    assert adam.lr == pytest.approx(fit.lr_diverge / ADAM_FACTOR, rel=1e-9)
    assert abs(np.log10(adam.lr / (lr_div / ADAM_FACTOR))) <= 0.25
    assert sgd.lr / adam.lr == pytest.approx(ADAM_FACTOR / divergence_factor("sgd", 0.9), rel=1e-9)
    assert adam.interval[0] < adam.lr < adam.interval[1] <= fit.lr_diverge
    assert "10x below" in adam.reason and adam.confidence > 0.5


def test_robust_is_stable_under_noise_and_spikes_where_steepest_is_not():
    rng = np.random.default_rng(0)
    y = ramp_curve()
    clean = suggest(LRS, y, "robust", family="adam").lr
    noisy = y + rng.normal(0, 0.05, len(y))
    spiky = noisy.copy()
    spiky[[40, 70]] = [8.0, 6.0]  # two single-batch spikes before and during the descent
    for curve in (noisy, spiky):
        assert suggest(LRS, curve, "robust", family="adam").lr == pytest.approx(clean, rel=0.3)
    # the classic steepest-gradient pick jumps to the edge of a spike
    assert abs(np.log10(suggest(LRS, spiky, "steepest").lr / suggest(LRS, y, "steepest").lr)) > 0.3


def test_robust_uses_the_nan_point_as_divergence():
    y = ramp_curve(floor=(-2.0, 5.0))  # never rises ...
    y[X > -0.5] = np.nan  # ... but the loss became NaN at lr 10**-0.5
    s = suggest(LRS, y, "robust", family="adam")
    last = LRS[X <= -0.5][-1]
    assert s.lr == pytest.approx(last / ADAM_FACTOR, rel=1e-9)
    assert "NaN/inf" in s.reason
    inf = ramp_curve(floor=(-2.0, 5.0))
    inf[X > -0.5] = np.inf
    assert suggest(LRS, inf, "robust", family="adam").lr == pytest.approx(s.lr)


def test_early_divergence_is_no_suggestion_and_says_lower_start_lr():
    y = 1.0 + np.exp(X - X[0])  # rises from the first point on
    s = suggest(LRS, y, "robust")
    assert s.lr is None and s.confidence == 0.0 and "start_lr" in s.reason


def test_never_falling_curve_is_no_suggestion():
    rng = np.random.default_rng(1)
    s = suggest(LRS, 2.0 + rng.normal(0, 0.05, len(X)), "robust")
    assert s.lr is None and "never fell" in s.reason and "end_lr" in s.reason


def test_never_diverging_curve_is_a_lower_bound_and_says_raise_end_lr():
    y = ramp_curve(fall=(-3.0, 0.5), floor=(0.5, 5.0))  # still falling at the end of the ramp
    s = suggest(LRS, y, "robust", family="sgd")
    assert s.lr == pytest.approx(LRS[-1] / divergence_factor("sgd"), rel=1e-9)
    assert "raise end_lr" in s.reason.lower() and s.confidence <= 0.3


def test_noisy_curve_says_run_more_steps():
    rng = np.random.default_rng(2)
    y = ramp_curve(top=1.0, bottom=0.7, rise_slope=3.0) + rng.normal(0, 0.25, len(X))
    s = suggest(LRS, y, "robust", family="adam")
    assert s.lr is not None and "noisy" in s.reason and "num_iter" in s.reason
    assert s.confidence < suggest(LRS, ramp_curve(), "robust", family="adam").confidence


def test_unknown_family_is_between_adam_and_sgd_and_says_so():
    y = ramp_curve()
    u = suggest(LRS, y, "robust")
    assert suggest(LRS, y, "robust", family="adam").lr < u.lr < suggest(LRS, y, "robust", family="sgd").lr
    assert "family is unknown" in u.reason


def test_bad_input_errors_name_the_fix():
    with pytest.raises(LrkitError, match="choose one of"):
        suggest(LRS, ramp_curve(), "nope")
    with pytest.raises(LrkitError, match="family"):
        suggest(LRS, ramp_curve(), "robust", family="lion")
    with pytest.raises(LrkitError, match="same length"):
        suggest(LRS, ramp_curve()[:-1])
    s = suggest(LRS[:3], ramp_curve()[:3], "robust")
    assert s.lr is None and "num_iter" in s.reason


def test_classic_rules_ignore_what_follows_a_nan():
    y = (X + 2.5) ** 2
    y2 = y.copy()
    y2[X > 0] = np.nan
    y2[X > 0.5] = -100.0  # garbage after the NaN must not become the minimum
    assert suggest(LRS, y2, "minimum").lr == pytest.approx(suggest(LRS, y, "minimum").lr)


def test_suggestion_dict_round_trip():
    s = suggest(LRS, ramp_curve(), "robust", family="adam")
    assert Suggestion.from_dict(s.to_dict()) == s


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "wsd"])
def test_recipe_spec_round_trips_through_the_schedule_parser(schedule):
    s = suggest(LRS, ramp_curve(), "robust", family="adam")
    r = recipe(s, schedule, total_steps=2000)
    assert isinstance(r, Recipe) and r.total_steps == 2000
    sched = parse(r.spec)
    assert str(sched) == r.spec
    assert sched.length == 2000
    values = sched(np.arange(2000))
    assert values.max() == pytest.approx(r.peak_lr, rel=1e-6)
    assert r.peak_lr == pytest.approx(s.lr, rel=5e-3)  # 3 significant digits
    assert int(np.argmax(values)) == pytest.approx(r.warmup_steps, abs=1)
    if schedule != "onecycle":
        assert r.warmup_steps == 100  # 5% of 2000 at confidence >= 0.5


def test_recipe_without_a_suggestion_raises_with_the_reason():
    none = Suggestion(None, None, "robust", "the loss never fell clearly; raise end_lr", 0.0)
    with pytest.raises(LrkitError, match="never fell"):
        recipe(none, "cosine", 1000)
    with pytest.raises(LrkitError, match="onecycle, cosine, wsd"):
        recipe(Suggestion(1e-3, None, "x", ""), "linear", 1000)


# ---- issue 23: linear ramps, what a curve leaves out, skips, fastai's slide --------------------------------------
LIN = np.linspace(0.0, 1.0, 201)[1:]  # a linear ramp 0.005 .. 1 (the lr-0 point of a ramp from 0 left out)


def linear_curve(x=LIN):
    """Flat at 2, a linear fall to 0.5 over lr 0.1 .. 0.3, flat to 0.5, then a rise of 10 per unit of lr: the fit
    climbs a quarter of the descent (0.375) above its floor at lr 0.5 + 0.375 / 10 = 0.5375."""
    y = np.interp(x, [0.0, 0.1, 0.3], [2.0, 2.0, 0.5])
    return np.where(x > 0.5, 0.5 + 10 * (x - 0.5), y)


def test_robust_on_a_linear_ramp_fits_on_the_lr_axis_and_finds_the_divergence():
    """Before: fitted on a log axis, where a linear ramp's points crowd into the last decade and 0.2 decades of
    bandwidth smear the rise: the divergence was put at 0.41, on the floor, before the loss rose at all."""
    assert lrkit.finder.ramp_mode(LIN) == "linear" and lrkit.finder.ramp_mode(LRS) == "exponential"
    s = suggest(LIN, linear_curve(), "robust", family="adam")
    lr_div = s.lr * ADAM_FACTOR
    assert abs(lr_div - 0.5375) <= 0.005  # one point of the ramp
    fit = fit_curve(LIN, linear_curve(), scale="linear")
    assert fit.scale == "linear" and fit.lr_min == pytest.approx(0.4, abs=0.11)  # on the floor 0.3 .. 0.5
    # told the mode explicitly, the same
    assert suggest(LIN, linear_curve(), "robust", family="adam", mode="linear") == s


def test_steepest_on_a_linear_ramp_is_per_unit_of_lr():
    """-tanh((lr - 0.5) / 0.3) falls fastest per unit of lr at 0.5; per decade (lr x slope) only at about 0.59."""
    y = -np.tanh((LIN - 0.5) / 0.3)
    s = suggest(LIN, y, "steepest")
    assert abs(s.lr - 0.5) <= 0.005 and "per unit of lr" in s.reason
    per_decade = suggest(LIN, y, "steepest", mode="exponential")
    assert per_decade.lr > 0.55 and "per decade" in per_decade.reason


def test_an_lr_of_zero_or_a_leading_nan_is_left_out_with_a_note_not_the_whole_curve():
    """Before: an lr of 0 (a linear ramp from 0) cut the curve before its first point, and so did a NaN first loss:
    "only 0 finite points were recorded"."""
    base = suggest(LIN, linear_curve(), "robust", family="adam")
    with_zero = suggest(np.r_[0.0, LIN], np.r_[2.0, linear_curve()], "robust", family="adam")
    assert with_zero.lr == base.lr and "1 point(s) at an lr <= 0 were left out" in with_zero.reason
    y = linear_curve().copy()
    y[:2] = np.nan
    leading = suggest(LIN, y, "robust", family="adam")
    assert leading.lr == pytest.approx(base.lr, rel=0.05) and "first 2 loss(es) were NaN/inf" in leading.reason
    y[50] = np.inf  # a NaN/inf after the first finite loss still ends the curve there
    cut = suggest(LIN, y, "minimum")
    assert cut.lr == pytest.approx(LIN[49] / 10)  # the lowest loss before the inf: the last point of the fall


def test_skip_start_and_skip_end_leave_points_out_of_the_rule():
    y = (X + 2.5) ** 2  # minimum at log10(lr) = -2.5
    full = suggest(LRS, y, "minimum")
    assert full.lr == pytest.approx(10**-2.5 / 10, rel=0.05)
    # without the last 60 points (log10 lr > -2) the minimum is still there; without the last 100 it is not
    assert suggest(LRS, y, "minimum", skip_end=60).lr == full.lr
    assert suggest(LRS, y, "minimum", skip_end=100).lr == pytest.approx(LRS[-101] / 10)
    assert suggest(LRS, y, "minimum", skip_start=90).lr == pytest.approx(LRS[90] / 10)  # only the rising part left
    few = suggest(LRS, y, "minimum", skip_start=80, skip_end=78)
    assert few.lr is None and "after skipping 80 at the start and 78 at the end" in few.reason
    for bad in (-1, 1.5, True):
        with pytest.raises(LrkitError, match="skip_start must be a count"):
            suggest(LRS, y, "minimum", skip_start=bad)


def test_slide_walks_down_from_the_end_while_the_slope_keeps_changing():
    """fastai's slide rule, by its definition: from the end, a window of 15 points moves down while the loss's slope
    per point differs between its two ends by more than 0.005; the pick is the window's left end where it stops."""
    assert "slide" in rules()
    n = 60
    lrs = np.geomspace(1e-5, 1.0, n)
    # slope per point: -0.01 (steady fall) up to point 30, then growing by 0.004 per point (the turn and the rise)
    slope = np.where(np.arange(n) <= 30, -0.01, -0.01 + 0.004 * (np.arange(n) - 30))
    losses = 3.0 + np.concatenate([[0.0], np.cumsum(slope[1:])])
    g = np.gradient(losses)
    s = suggest(lrs, losses, "slide")
    left = int(np.argmin(np.abs(lrs - s.lr)))
    # the stop condition holds at the window after the pick's (its right end within the steady fall, where the slope
    # is the same at both ends) and failed at every window before it (from the end of the curve down)
    assert abs(g[left - 1 + 15] - g[left - 1]) <= 0.005
    assert all(abs(g[r] - g[r - 15]) > 0.005 for r in range(left + 15, n))
    assert 31 <= left + 15 <= 33  # the window whose right end reaches the steady fall: points 30-31
    short = suggest(lrs[:15], losses[:15], "slide")
    assert short.lr is None and "raise num_iter" in short.reason


def test_the_robust_fit_of_a_long_curve_is_linear_in_memory_and_agrees_with_the_exact_fit(monkeypatch):
    """Before: every point against every other, 4,000 points took 489 MB and 10,000 about 3 GB. A long curve is
    now fitted on a grid of 8 points per bandwidth (cubic interpolation between them)."""
    import time
    import tracemalloc

    from lrkit.finder import _rules

    rng = np.random.default_rng(0)
    x = np.linspace(-7.0, 1.0, 10_000)
    y = np.where(x < -2, 2.0 - 0.3 * np.clip(x + 5, 0, 3), 1.1 + 3 * (x + 2) ** 2) + 0.05 * rng.standard_normal(x.size)
    tracemalloc.start()
    t0 = time.perf_counter()
    fit = fit_curve(10**x, y)
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 * 2**20 and elapsed < 10  # (about 9 MB and 0.3 s on one core; the timing is only a guard)
    # against the exact fit (every point evaluated), on a shorter curve the exact path still handles quickly
    short, ys = 10 ** x[::4], y[::4]
    grid, grid_pick = fit_curve(short, ys), suggest(short, ys, family="adam")
    monkeypatch.setattr(_rules, "_GRID_PER_BANDWIDTH", 10**6)  # forces the exact path
    exact, exact_pick = fit_curve(short, ys), suggest(short, ys, family="adam")
    assert np.max(np.abs(grid.fitted - exact.fitted)) < 1e-3 * np.ptp(exact.fitted)
    assert (grid.lr_diverge, grid.lr_min, grid.diverged) == (exact.lr_diverge, exact.lr_min, exact.diverged)
    assert grid_pick.lr == exact_pick.lr and abs(np.log10(fit.lr_diverge / exact.lr_diverge)) < 0.01


@pytest.mark.parametrize("bad", [{"skip_start": -1}, {"skip_end": 2.5}, {"skip_start": True}, {"mode": "cosine"}])
def test_suggest_refuses_skips_that_are_not_counts_and_an_unknown_ramp_mode(bad):
    lrs = np.logspace(-6, 0, 60)
    losses = 2.0 - 0.5 * np.tanh(np.log10(lrs) + 3) + np.where(lrs > 0.1, 10 * (lrs - 0.1), 0)
    name = next(iter(bad))
    with pytest.raises(LrkitError, match=f"{name} must be"):
        suggest(lrs, losses, "steepest", **bad)
