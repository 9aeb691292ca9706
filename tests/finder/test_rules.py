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
