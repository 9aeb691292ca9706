"""The peers' own range-test scenarios, ported to lrkit where they apply, framework-free (issue 23; the table is
tests/finder/PEER_SCENARIOS.md). Each test names the peer test it ports; the expectations are the peers' where lrkit
agrees, and lrkit's documented behaviour where it differs by design."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lrkit.finder import FinderOptions, FinderResult, Replay, Suggestion, range_test, suggest

QUIET = dict(confirm=False, progress=False, val_every=None)


# ---- torch-lr-finder: tests/test_lr_finder.py -------------------------------------------------------------------
@pytest.mark.parametrize("losses, expected", [([10, 8, 4, 1, 4, 16], 3), ([1, 0, 1, 2, 3, 4], 1),
                                              ([0, 1, 2, 3, 4, 3], 6)])
def test_tlf_suggest_lr_steepest_on_known_curves(losses, expected):
    """test_suggest_lr, with the lrs shifted to 1..6 (an lr of 0 is no point of a log or linear lr axis here: it is
    left out): the steepest fall is at the third point, the first, the last, as torch-lr-finder finds."""
    lrs = np.arange(1.0, 7.0)
    assert suggest(lrs, np.asarray(losses, float), "steepest").lr == expected


@pytest.mark.parametrize("mode, end, expected", [("exponential", 0.1, [1e-5, 1e-4, 1e-3, 1e-2, 0.1]),
                                                 ("linear", 5e-5, [1e-5, 2e-5, 3e-5, 4e-5, 5e-5])])
def test_tlf_lr_history_of_a_five_step_ramp(mode, end, expected):
    """TestLRHistory: 5 steps from 1e-5, exponential to 0.1 or linear to 5e-5."""
    res = range_test(Replay([1.0] * 5), start_lr=1e-5, end_lr=end, num_iter=5, mode=mode, **QUIET)
    np.testing.assert_allclose(res.lrs, expected, rtol=1e-12)


@pytest.mark.parametrize("num_iter", [0, 1])
@pytest.mark.parametrize("mode", ["exponential", "linear"])
def test_tlf_too_few_steps_is_a_value_error_naming_num_iter(num_iter, mode):
    """test_scheduler_and_num_iter (lrkit asks for >= 5 steps: a curve)."""
    with pytest.raises(ValueError, match="num_iter"):
        range_test(Replay([1.0] * 5), start_lr=1e-5, end_lr=5e-5, num_iter=num_iter, mode=mode, **QUIET)


# ---- Lightning: tests/tests_pytorch/tuner/test_lr_finder.py ------------------------------------------------------
LOG_LRS = np.logspace(-6, -1, 100)
BOWL = 2.0 - np.tanh((np.log10(LOG_LRS) + 3.5) * 2) + 3.0 * np.clip(np.log10(LOG_LRS) + 2.0, 0, None) ** 2


def test_lightning_skipping_points_changes_the_suggestion():
    """test_suggestion_parameters_work: leaving out the first 70 points moves the steepest point."""
    early = suggest(LOG_LRS, BOWL, "steepest", skip_start=10)
    late = suggest(LOG_LRS, BOWL, "steepest", skip_start=70)
    assert early.lr is not None and late.lr is not None and early.lr != late.lr
    assert late.lr >= LOG_LRS[70]


def test_lightning_a_nan_last_loss_does_not_change_the_steepest_point():
    """test_suggestion_with_non_finite_values (for the robust rule a NaN at the end is the divergence itself, by
    design; the steepest point lies before it either way)."""
    y = BOWL.copy()
    before = suggest(LOG_LRS, y, "steepest").lr
    y[-1] = np.nan
    assert suggest(LOG_LRS, y, "steepest").lr == before


@pytest.mark.parametrize("skip_start, skip_end, losses, has_pick", [
    (0, 0, [], False), (10, 1, [], False), (0, 2, [0, 1, 2], False), (0, 1, [0, 1, 2], False),
    (1, 1, [0, 1, 2], False), (1, 1, [0, 1, 2, 3], False),
    (0, 1, [math.nan, math.nan, 0, math.inf, 1, 2, 3, math.inf, 2, math.nan, 1], False),
    (4, 1, [math.nan, math.nan, 0, math.inf, 1, 2, 3, math.inf, 2, math.nan, 1], False),
    (0, 0, [math.nan, math.nan, 5, 4, 3, 2, 1, 2, 3, math.inf, 2], True),  # lrkit's own: leading NaNs left out
])
def test_lightning_not_enough_finite_points_is_no_pick_with_a_reason(skip_start, skip_end, losses, has_pick):
    """test_suggestion_not_enough_finite_points. lrkit needs 5 finite points before the first NaN/inf that follows a
    finite loss (Lightning picks from 2, and skips NaNs anywhere, so its cases 4, 6, 7 and 8 have a pick): by
    design, what follows a NaN says nothing about the lr. Leading NaNs are left out, with a note (the last case)."""
    lrs = np.arange(1.0, len(losses) + 1.0)
    s = suggest(lrs, np.asarray(losses, float), "steepest", skip_start=skip_start, skip_end=skip_end)
    assert (s.lr is not None) == has_pick
    if not has_pick:
        assert "too few to judge" in s.reason
    else:
        assert "first 2 loss(es) were NaN/inf" in s.reason


def test_lightning_gradient_is_taken_against_log_lr_on_an_exponential_ramp():
    """test_gradient_correctness: sin(lr) on 1000 log-spaced lrs, skip 2 and 2; the steepest point is where the
    slope against log10(lr) is lowest."""
    lrs = np.logspace(-6, -1, 1000)
    losses = np.sin(lrs)
    s = suggest(lrs, losses, "steepest", skip_start=2, skip_end=2)
    expected = int(np.argmin(np.gradient(losses[2:-2], np.log10(lrs[2:-2])))) + 2
    assert s.lr == pytest.approx(lrs[expected])


# ---- Ignite: tests/ignite/handlers/test_lr_finder.py --------------------------------------------------------------
@pytest.mark.parametrize("bad, match", [
    (dict(smooth=234), "smooth"), (dict(diverge_factor=0.0), "diverge_factor"), (dict(num_iter=0.0), "num_iter"),
    (dict(num_iter=0), "num_iter"), (dict(mode="abc"), "mode"), (dict(start_lr=[0.1, 0.1], end_lr=[1.0]), "2 values"),
    (dict(start_lr=10.0, end_lr=1.0), "smaller than end_lr"),
    (dict(start_lr=[1.0, 10.0, 5.0], end_lr=[10.0, 10.0, 10.0]), "param group 1"),
])
def test_ignite_bad_arguments_are_value_errors_naming_the_argument(bad, match):
    """test_attach_incorrect_input_args and test_wrong_values_start_lr_and_end_lr (LrkitError is a ValueError; lrkit
    accepts an int lr, Ignite asks for floats)."""
    with pytest.raises(ValueError, match=match):
        FinderOptions(**bad)
    with pytest.raises(ValueError, match="skip_start"):
        suggest(LOG_LRS, BOWL, skip_start=-1)
    with pytest.raises(ValueError, match="skip_end"):
        suggest(LOG_LRS, BOWL, skip_end=-1)


@pytest.mark.parametrize("mode", ["exponential", "linear"])
def test_ignite_lrs_increase_and_start_at_start_lr(mode):
    """test_lr_policy and test_start_lr: the lrs grow strictly, from start_lr exactly."""
    res = range_test(Replay([1.0] * 5), start_lr=0.01, end_lr=10.0, num_iter=5, mode=mode, **QUIET)
    assert res.lrs[0] == pytest.approx(0.01) and np.all(np.diff(res.lrs) > 0)


@pytest.mark.parametrize("num_iter", [50, 200, 1000])
def test_ignite_a_run_that_never_diverges_records_num_iter_points(num_iter):
    """test_num_iter_is_enough, test_different_num_iters (diverge_th=inf: no divergence stop)."""
    losses = list(1.0 + np.random.default_rng(num_iter).random(num_iter))
    res = range_test(Replay(losses), num_iter=num_iter, diverge_factor=math.inf, **QUIET)
    assert len(res.lrs) == len(res.losses) == num_iter and res.stop.value == "end"


def test_ignite_a_curve_that_is_not_u_shaped_gets_no_pick_and_says_why():
    """test_lr_suggestion_unexpected_curve: Ignite raises; lrkit answers "no trustworthy suggestion" with what to
    try (by design: a result, not an exception)."""
    rising = np.linspace(1.0, 5.0, 100) ** 2  # no valley: up from the first point
    s = suggest(LOG_LRS, rising, family="adam")
    assert s.lr is None and "rose almost from the start" in s.reason and "start_lr" in s.reason


def test_ignite_steepest_of_a_parabola_on_a_linear_ramp():
    """test_lr_suggestion_single_param_group: (x^2 + 0.05) over a linear ramp 0.01 .. 10. The fall is steepest at
    the first point; lrkit's slope there is one-sided (np.gradient), so it names the first lr, 0.01, where Ignite's
    forward differences name the second, 0.111 (one point apart, by definition of the slope at an edge)."""
    losses = np.linspace(-5.0, 5.0, 100) ** 2 + 0.05
    lrs = np.linspace(0.01, 10, 100)
    assert suggest(lrs, losses, "steepest").lr == pytest.approx(0.01)


def test_ignite_per_group_suggestions_follow_each_groups_ramp():
    """test_lr_suggestion_multiple_param_groups: a pick for every param group, at the same point of each group's
    own ramp."""
    res = FinderResult(lrs=np.array([1e-3, 1e-2]), losses=np.array([1.0, 1.0]), smoothed_losses=np.array([1.0, 1.0]),
                       stop_reason="", stopped_at=None, suggestion=Suggestion(1e-2, None, "x", ""),
                       config={"group_ranges": [[1e-4, 1.0], [1e-3, 1e-1]], "mode": "exponential"})
    g0, g1 = res.group_suggestions
    assert g0 == 1e-2 and g1 == pytest.approx(1e-2)  # half-way in log on both: 1e-2 of 1e-4..1, 1e-2 of 1e-3..1e-1
    res.config["mode"] = "linear"
    assert res.group_suggestions[1] == pytest.approx(1e-3 + (1e-2 - 1e-4) / (1.0 - 1e-4) * (1e-1 - 1e-3))


# ---- fastai: nbs/14_callback.schedule.ipynb (LRFinder, lr_find, the suggestion functions) ------------------------
def test_fastai_stop_div_false_runs_every_step_and_every_suggestion_function_answers():
    """LRFinder(stop_div=False) (lrkit: diverge_factor=inf), then lr_find's four suggestion functions minimum,
    steep, valley, slide on the curve without its first num_it // 10 and last 5 points."""
    losses = list(2.0 - np.tanh((np.log10(np.logspace(-7, 1, 100)) + 3) * 1.5) + np.logspace(-7, 1, 100) ** 2)
    res = range_test(Replay(losses), num_iter=100, diverge_factor=math.inf, **QUIET)
    assert len(res.lrs) == 100
    picks = {rule: res.suggest(rule, skip_start=100 // 10, skip_end=5) for rule in ("minimum", "steepest", "valley",
                                                                                    "slide")}
    assert all(p.lr is not None and res.lrs[0] < p.lr < res.lrs[-1] for p in picks.values()), picks
    # the curve falls between 1e-4 and 1e-2 (fastest at 1e-3; the smoothed loss these rules read lags a little)
    assert 1e-4 < picks["steepest"].lr < 1e-2
    assert 0.01 < picks["minimum"].lr * 10 <= 10


def test_fastai_stops_when_the_smoothed_loss_exceeds_four_times_its_best():
    """The LRFinder test's "check stop if diverge": a run that stopped early ended 4x above its best."""
    losses = [2.0 - 0.01 * i for i in range(60)] + [2.0 * 1.3**i for i in range(40)]
    res = range_test(Replay(losses), num_iter=100, **QUIET)
    assert len(res.lrs) < 100 and res.smoothed_losses[-1] > 4 * res.smoothed_losses[:-1].min()
