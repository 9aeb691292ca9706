"""Stepwise lr search: the decision logic against closed forms on synthetic scores, then on the sweep engine
(SQLite study: resume, failures, two workers). The ``lrkit search`` command is tested in tests/cli."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lrkit.errors import LrkitError
from lrkit.search import stepwise, stepwise_search


def _clean(x: float) -> float:
    return float(f"{x:.12g}")


def u_score(lr: float, opt: float) -> float:
    """A U-shape in log-lr with its minimum 1.0 at ``opt``."""
    return 0.1 * math.log(lr / opt) ** 2 + 1.0


def u_evaluate(opt: float, nan_above: float = math.inf):
    def evaluate(lrs, seed):
        return [u_score(lr, opt) if lr < nan_above else float("nan") for lr in lrs]
    return evaluate


def rounds(factor: float, resolution: float) -> int:
    """Refinement rounds: halve the log-spacing until factor**(1/2**R) <= resolution."""
    return max(0, math.ceil(math.log2(math.log(factor) / math.log(resolution)) - 1e-12))


def nearest_grid_lr(opt: float, start: float, factor: float, resolution: float = 1.5) -> float:
    """Closed form for a symmetric U in log-lr: the point of the finest refined grid nearest to ``opt``."""
    g = 2 ** rounds(factor, resolution)
    e = round(math.log(opt / start) / math.log(factor) * g) / g
    return _clean(start * factor ** e)


# -- the decision logic -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("opt,factor", [(3.7e-3, 3.0), (3.7e-3, 10.0), (2e-4, 2.0), (0.05, 3.0)])
def test_u_shape_finds_the_nearest_refined_grid_point(opt, factor):
    start = 1e-6
    r = stepwise(u_evaluate(opt), start, factor, noise=0.0, steps_per_trial=7)
    assert r.lr == r.best_lr == nearest_grid_lr(opt, start, factor)
    # the edge: the first grid lr above the best whose score exceeds the best ascent score by 5%
    ks = range(0, 60)
    kb = min(ks, key=lambda k: u_score(start * factor ** k, opt))
    best = u_score(start * factor ** kb, opt)
    k_edge = next(k for k in ks if k > kb and u_score(start * factor ** k, opt) > 1.05 * best)
    assert r.edge_lr == _clean(start * factor ** k_edge)
    ascent = [t.lr for t in r.trials if t.phase == "ascend"]
    assert ascent == sorted(ascent) and ascent[0] == start
    assert all(t.phase in ("ascend", "refine") for t in r.trials)  # noise=0: no extra seeds
    refined = [t.lr for t in r.trials if t.phase == "refine"]
    assert all(r.edge_lr > lr > start * factor ** (kb - 1) for lr in refined)
    assert r.cost_trials == len(r.trials) and r.cost_steps == 7 * len(r.trials)
    assert "worse than the best" in r.stop_reason


@settings(max_examples=40, deadline=None)
@given(log_opt=st.floats(-5.0, -1.0), factor=st.sampled_from([2.0, 3.0, 10.0]),
       resolution=st.sampled_from([1.2, 1.5, 2.0]))
def test_u_shape_property(log_opt, factor, resolution):
    opt, start = 10.0 ** log_opt, 1e-7
    g = 2 ** rounds(factor, resolution)
    frac = (math.log(opt / start) / math.log(factor) * g) % 1.0
    assume(abs(frac - 0.5) > 1e-6)  # not a tie between two grid points
    r = stepwise(u_evaluate(opt), start, factor, noise=0.0, resolution=resolution, max_trials=60)
    assert r.lr == nearest_grid_lr(opt, start, factor, resolution)
    assert abs(math.log(r.lr / opt)) <= math.log(factor) / (2 * g) + 1e-9


def test_best_below_start_descends():
    opt, start = 2e-5, 1e-3
    r = stepwise(u_evaluate(opt), start, 3.0, noise=0.0)
    assert r.lr == nearest_grid_lr(opt, start, 3.0)
    assert any(t.phase == "descend" for t in r.trials) and min(t.lr for t in r.trials) < opt


@pytest.mark.parametrize("factor,threshold", [(3.0, 0.02), (10.0, 0.3), (3.0, 0.5)])
def test_monotone_then_nan_bisects_the_divergence_edge(factor, threshold):
    start = 1e-6
    r = stepwise(lambda lrs, seed: [1.0 / (1.0 + 100 * lr) if lr < threshold else float("nan") for lr in lrs],
                 start, factor, noise=None)
    e_theta = math.log(threshold / start) / math.log(factor)
    g = 2 ** rounds(factor, 1.5)
    expected = math.ceil(e_theta * g - 1e-9) / g - 1 / g  # largest grid exponent strictly below the threshold
    assert r.lr == _clean(start * factor ** expected)
    assert r.edge_lr == _clean(start * factor ** math.ceil(e_theta))
    assert "diverged or failed" in r.stop_reason
    assert not any(t.phase == "confirm" for t in r.trials)  # a failure is not noise: no second seed
    below = stepwise(lambda lrs, seed: [1.0 / (1.0 + 100 * lr) if lr < threshold else float("nan") for lr in lrs],
                     start, factor, choose="below_edge")
    assert below.lr == r.lr and below.rule == "below_edge"


def test_still_improving_at_max_lr():
    start, factor, max_lr = 1e-3, 3.0, 1.0
    r = stepwise(lambda lrs, seed: [1.0 / (1.0 + lr) for lr in lrs], start, factor, max_lr=max_lr)
    g = 2 ** rounds(factor, 1.5)
    top = math.floor(math.log(max_lr / start) / math.log(factor) * g) / g  # largest refined grid point <= max_lr
    assert r.lr == _clean(start * factor ** top) and r.edge_lr is None
    assert "reached max_lr=1" in r.stop_reason and max(t.lr for t in r.trials) <= max_lr


def _noisy_step(lrs, seed):
    """Improving up to 0.1, NaN from 1; seed 0 at lr 0.1 is a bad draw (+0.12), seed 1 there is good."""
    table = {1e-4: 1.5, 1e-3: 1.2, 1e-2: 1.0}
    out = []
    for lr in lrs:
        if lr in table:
            out.append(table[lr])
        elif lr == 0.1:
            out.append(1.07 if seed == 0 else 0.85)
        else:
            out.append(float("nan"))
    return out


def test_second_seed_when_the_difference_is_within_noise():
    naive = stepwise(_noisy_step, 1e-4, 10.0, noise=0.0, resolution=10.0)
    assert naive.lr == 0.01 and naive.edge_lr == 0.1 and naive.cost_trials == 4
    careful = stepwise(_noisy_step, 1e-4, 10.0, noise=None, resolution=10.0)
    confirm = sorted((t.lr, t.seed) for t in careful.trials if t.phase == "confirm")
    assert confirm == [(0.01, 1), (0.1, 1)]
    assert careful.edge_lr == 1.0 and careful.lr == 0.1  # mean at 0.1 = 0.96 < 1.0
    rows = {row["lr"]: row for row in careful.by_lr()}
    assert rows[0.1]["mean_score"] == pytest.approx(0.96) and rows[0.1]["n_seeds"] == 2


# seed k at every lr is the same draw; 0.0316 drew a lucky first seed
FAIR = {1e-4: [2.0] * 3, 1e-3: [1.5] * 3, 0.00316227766017: [1.2] * 3, 1e-2: [1.00, 1.02, 0.98],
        0.0316227766017: [0.97, 1.10, 1.12], 0.1: [1.06, 1.08, 1.04]}


def _fair(lrs, seed):
    return [FAIR[lr][seed] if lr in FAIR else float("nan") for lr in lrs]


def test_an_lr_scored_on_one_seed_is_not_preferred_over_one_scored_on_three():
    r = stepwise(_fair, 1e-4, 10.0, resolution=4.0)
    # the ascent stopped at 0.1 after three seeds at 0.1 and 0.01; the refinement tried 0.00316 and 0.0316 once
    assert r.edge_lr == 0.1 and sorted(t.seed for t in r.trials if t.lr == 1e-2) == [0, 1, 2]
    # 0.0316's one seed (0.97) beats 0.01's mean of three (1.00), by less than the noise: it gets its next seed
    # (mean 1.035) before anything is chosen, and 0.01 stays the better lr on the seeds they share
    assert [(t.lr, t.seed, t.phase) for t in r.trials if t.lr == 0.0316227766017] == [
        (0.0316227766017, 0, "refine"), (0.0316227766017, 1, "confirm")]
    assert r.lr == r.best_lr == 1e-2 and r.best_score == pytest.approx(1.0)
    assert "over 3 seed(s)" in r.reason
    # with the noise known to be 0, one seed is as good as three: 0.0316 wins on its single score
    assert stepwise(_fair, 1e-4, 10.0, resolution=4.0, noise=0.0).lr == 0.0316227766017


def test_past_the_seed_budget_lrs_are_compared_on_the_seeds_they_share():
    # max_seeds=2: 0.0316 cannot reach 0.01's seeds; each has seeds 0 and 1 in common after one confirmation
    r = stepwise(_fair, 1e-4, 10.0, resolution=4.0, max_seeds=2)
    shared = {lr: np.mean(FAIR[lr][:2]) for lr in (1e-2, 0.0316227766017)}
    assert r.lr == min(shared, key=shared.get) == 1e-2


def test_clear_stop_is_confirmed_once_then_noise_is_known():
    r0 = stepwise(u_evaluate(3.7e-3), 1e-6, 3.0, noise=0.0)
    r = stepwise(u_evaluate(3.7e-3), 1e-6, 3.0, noise=None)
    assert r.lr == r0.lr and r.edge_lr == r0.edge_lr
    assert r.cost_trials == r0.cost_trials + 2 and r.noise == 0.0  # one extra seed at the edge and the best


def _noisy_u(opt, sd, realisation):
    def evaluate(lrs, seed):
        return [u_score(lr, opt) + sd * np.random.default_rng(
            [realisation, seed, int(round(math.log(lr) * 1e6)) + 10**9]).normal() for lr in lrs]
    return evaluate


def test_noise_aware_never_stops_before_the_optimum():
    early = {None: 0, 0.0: 0}
    errors: dict[float | None, list[float]] = {None: [], 0.0: []}
    for real in range(40):
        opt = 10 ** np.random.default_rng(real).uniform(-4, -1)
        for noise in (None, 0.0):
            r = stepwise(_noisy_u(opt, 0.1, real), 1e-6, 3.0, noise=noise)
            early[noise] += r.edge_lr is not None and r.edge_lr < opt
            errors[noise].append(abs(math.log(r.lr / opt)))
    assert early[None] == 0 and early[0.0] >= 1  # the naive rule is fooled by noise; the careful one is not
    # and it lands at least as close to the optimum: median and worst error over the same 40 draws
    assert np.median(errors[None]) <= np.median(errors[0.0]) and max(errors[None]) <= max(errors[0.0])


def test_maximize_and_determinism_and_lookahead():
    opt = 3.7e-3
    lo = stepwise(u_evaluate(opt), 1e-6, 3.0)
    hi = stepwise(lambda lrs, seed: [-v for v in u_evaluate(opt)(lrs, seed)], 1e-6, 3.0, direction="maximize")
    assert hi.lr == lo.lr and hi.best_score == -lo.best_score
    again = stepwise(u_evaluate(opt), 1e-6, 3.0)
    assert [(t.lr, t.seed, t.score) for t in again.trials] == [(t.lr, t.seed, t.score) for t in lo.trials]
    calls = []

    def batched(lrs, seed):
        calls.append(list(lrs))
        return u_evaluate(opt)(lrs, seed)

    ahead = stepwise(batched, 1e-6, 3.0, lookahead=4)
    assert ahead.lr == lo.lr and ahead.edge_lr == lo.edge_lr
    assert calls[0] == [_clean(1e-6 * 3 ** k) for k in range(4)]
    beyond = [t for t in ahead.trials if t.lr > ahead.edge_lr]
    assert beyond and all("speculative" in t.note for t in beyond)
    assert ahead.cost_trials == lo.cost_trials + len(beyond)


@pytest.mark.parametrize("kwargs,words", [
    (dict(start=0.0), "start must be a positive"), (dict(start=-1e-3), "start must be a positive"),
    (dict(start=float("nan")), "start must be a positive"), (dict(factor=1.0), "factor must be > 1"),
    (dict(factor=0.5), "factor must be > 1"), (dict(margin=-0.1), "margin must be"),
    (dict(max_seeds=0), "max_seeds must be an integer >= 1"), (dict(resolution=1.0), "resolution must be > 1"),
    (dict(choose="middle"), "choose must be one of"), (dict(max_lr=1e-7), "max_lr"),
    (dict(noise=-1.0), "noise must be None"), (dict(lookahead=0), "lookahead must be an integer >= 1"),
])
def test_bad_settings(kwargs, words):
    args = dict(start=1e-6, factor=3.0) | kwargs
    with pytest.raises(LrkitError, match=words):
        stepwise(u_evaluate(1e-3), **args)


@pytest.mark.parametrize("evaluate,words", [
    (lambda lrs, seed: None, "returned nothing"),
    (lambda lrs, seed: [], "returned list of length 0"),
    (lambda lrs, seed: ["x"] * len(lrs), "must return one score per lr"),
    (lambda lrs, seed: [float("nan")] * len(lrs), "every trial failed.*lower start"),
    (lambda lrs, seed: [None] * len(lrs), "every trial failed.*returns a finite score"),
])
def test_bad_evaluate(evaluate, words):
    with pytest.raises(LrkitError, match=words):
        stepwise(evaluate, 1e-6, 3.0)


def test_table_json_and_plot(tmp_path):
    r = stepwise(u_evaluate(3.7e-3, nan_above=0.05), 1e-6, 3.0, steps_per_trial=10)
    text = str(r)
    assert f"chosen lr: {r.lr:.4g}" in text and f"{10 * r.cost_trials} training steps" in text
    r.save(tmp_path / "r.json")
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["lr"] == r.lr and len(d["trials"]) == r.cost_trials and d["cost_steps"] == r.cost_steps
    r.plot(tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000
    assert not [p for p in os.listdir(tmp_path) if "tmp" in p]


# -- on the sweep engine ----------------------------------------------------------------------------------------

OPT = 3.7e-3
CALLS: list[tuple[float, int]] = []


def train_u(lr, trial):
    """A train function for the engine: a 5-step curve ending at the U score; NaN above lr 0.5."""
    CALLS.append((lr, trial.seed))
    final = u_score(lr, OPT)
    for s in range(5):
        trial.report(float("nan") if lr > 0.5 and s == 3 else final + (4 - s) * 0.1, s)
    return final


def train_long(lr, trial):
    """12 reported steps: enough for the doctor; the loss falls, faster at larger lrs, and blows up above 0.3."""
    for s in range(12):
        trial.report(u_score(lr, OPT) * (1 + 2 * math.exp(-s * min(lr, 0.3) * 50)) * (1 + (lr > 0.3) * s), s)
    return u_score(lr, OPT) * (1 + (lr > 0.3) * 11)


def train_budget(lr, trial, budget_epochs=1):
    for s in range(int(budget_epochs) * 2):
        trial.report(u_score(lr, OPT) + 0.01 * (3 - s), s)
    return u_score(lr, OPT)


class Interrupt:
    after = 10**9


def train_interruptible(lr, trial):
    if len(CALLS) + 1 == Interrupt.after:
        CALLS.append((lr, trial.seed))
        raise KeyboardInterrupt
    return train_u(lr, trial)


def train_broken_above(lr, trial):
    if lr > 0.02:
        raise RuntimeError("boom: out of range")
    return train_u(lr, trial)


def train_always_broken(lr, trial):
    raise RuntimeError("shape mismatch in layer 2")


@pytest.fixture
def engine():
    pytest.importorskip("optuna")
    CALLS.clear()
    Interrupt.after = 10**9
    yield


def test_engine_matches_the_pure_search(engine, tmp_path):
    db = str(tmp_path / "s.db")
    r = stepwise_search(train_u, 1e-5, 10.0, storage=db, resolution=4.0)
    pure = stepwise(lambda lrs, seed: [u_score(lr, OPT) if lr <= 0.5 else float("nan") for lr in lrs],
                    1e-5, 10.0, resolution=4.0)
    assert [(t.lr, t.seed, t.score) for t in r.trials] == [(t.lr, t.seed, t.score) for t in pure.trials]
    assert r.lr == pure.lr == nearest_grid_lr(OPT, 1e-5, 10.0, resolution=4.0)
    assert r.cost_steps == 5 * r.cost_trials and len(CALLS) == r.cost_trials
    assert r.study_name.endswith("train_u") and db in r.storage
    assert all(len(t.record.values) == 5 for t in r.trials)
    # rerunning reuses every finished trial: no training at all
    CALLS.clear()
    again = stepwise_search(train_u, 1e-5, 10.0, storage=db, resolution=4.0)
    assert CALLS == [] and again.lr == r.lr and again.cost_trials == r.cost_trials


def test_interrupted_search_resumes_without_redoing(engine, tmp_path):
    db = str(tmp_path / "s.db")
    Interrupt.after = 5
    with pytest.raises(KeyboardInterrupt):
        stepwise_search(train_interruptible, 1e-5, 10.0, storage=db, study_name="s", resolution=4.0)
    assert len(CALLS) == 5
    Interrupt.after = 10**9
    CALLS.clear()
    r = stepwise_search(train_interruptible, 1e-5, 10.0, storage=db, study_name="s", resolution=4.0)
    assert len(CALLS) == r.cost_trials - 4  # the 4 finished trials are reused, the interrupted one redone
    assert r.lr == nearest_grid_lr(OPT, 1e-5, 10.0, resolution=4.0)


def test_failed_trial_is_recorded_and_is_the_edge(engine, tmp_path):
    r = stepwise_search(train_broken_above, 1e-5, 10.0, storage=str(tmp_path / "s.db"))
    failed = [t for t in r.trials if t.status == "failed"]
    assert failed and failed[0].lr == r.edge_lr == 0.1
    assert "boom: out of range" in failed[0].error and "boom: out of range" in str(r)
    assert r.lr < 0.02


def test_every_trial_failing_names_the_error_and_keeps_the_trial(engine, tmp_path):
    import optuna

    db = str(tmp_path / "s.db")
    with pytest.raises(LrkitError, match="every trial failed.*shape mismatch in layer 2"):
        stepwise_search(train_always_broken, 1e-6, 3.0, storage=db, study_name="broken")
    trials = optuna.load_study(study_name="broken", storage=f"sqlite:///{db}").trials
    assert len(trials) == 1 and trials[0].state.name == "FAIL"
    assert "shape mismatch" in trials[0].user_attrs["lrkit_error"]


def test_budget_epochs_is_passed_and_in_the_study_name(engine, tmp_path):
    r = stepwise_search(train_budget, 1e-5, 10.0, budget_epochs=3, storage=str(tmp_path / "s.db"))
    assert r.cost_steps == 6 * r.cost_trials and r.cost_epochs == 3 * r.cost_trials
    assert r.study_name.endswith("train_budget[epochs=3]")
    with pytest.raises(LrkitError, match="no budget_epochs parameter"):
        stepwise_search(train_u, 1e-5, 10.0, budget_epochs=2, storage=str(tmp_path / "s.db"))


def test_two_workers_evaluate_ahead(engine, tmp_path):
    r = stepwise_search(train_u, 1e-2, 10.0, storage=str(tmp_path / "s.db"), n_workers=2, resolution=10.0,
                        noise=0.0)
    one = stepwise(lambda lrs, seed: [u_score(lr, OPT) if lr <= 0.5 else float("nan") for lr in lrs],
                   1e-2, 10.0, resolution=10.0, noise=0.0, lookahead=2)
    def key(trials):
        return [(t.lr, t.status, t.score if t.status == "ok" else None) for t in trials]

    assert key(r.trials) == key(one.trials) and r.cost_trials == 3
    # 1e-2 and 1e-1 ran at once in the two worker processes; the descent's single lr ran here
    assert r.lr == 1e-2 and r.edge_lr == 0.1 and CALLS == [(1e-3, 0)]


def test_doctor_verdict_per_trial(engine, tmp_path):
    doctor = pytest.importorskip("lrkit.doctor")
    if not hasattr(doctor, "diagnose"):
        pytest.skip("the doctor is not written yet")
    r = stepwise_search(train_long, 1e-4, 10.0, storage=str(tmp_path / "s.db"), resolution=10.0, noise=0.0)
    assert r.cost_steps == 12 * r.cost_trials
    for t in r.trials:
        assert t.verdict == doctor.diagnose(t.record.curve).to_dict()
    first = r.trials[0].verdict
    assert f"{first['verdict']}/{first['recommendation']['action']}" in str(r)
