"""The adaptive range test (the default of lrkit.range_test and every find_lr) on a closed-form quadratic (a numpy
Stepper) and on a real torch model."""

from __future__ import annotations

import time

import numpy as np
import pytest

from lrkit.errors import LrkitError
from lrkit.finder import FinderResult, Stop, fit_curve, infer_family, never_diverged, range_test

torch = pytest.importorskip("torch")


def find(stepper, **options) -> FinderResult:
    """The adaptive test, the training loss judged (validation, where a stepper has it, scores the runs)."""
    return range_test(stepper, progress=False, val_every=None, **options)


class Quadratic:
    """Gradient descent on L(w) = 0.5 * sum(lam * w**2): it diverges exactly when lr > 2 / max(lam)."""

    def __init__(self, lam_max: float = 1.0, d: int = 20, noise: float = 0.0, seed: int = 0) -> None:
        self.lam = np.linspace(0.05, 1.0, d) * lam_max
        self.w = np.ones(d)
        self.noise, self.rng = noise, np.random.default_rng(seed)
        self.steps = 0

    def loss(self) -> float:
        return float(0.5 * np.sum(self.lam * self.w**2))

    def step(self, lr: float) -> float:
        value = self.loss() * (1 + self.noise * self.rng.standard_normal())
        with np.errstate(over="ignore", invalid="ignore"):
            self.w = self.w - lr * self.lam * self.w
        self.steps += 1
        return value

    def snapshot(self):
        return (self.w.copy(), self.rng.bit_generator.state)

    def restore(self, snap) -> None:
        self.w = snap[0].copy()
        self.rng.bit_generator.state = snap[1]


def test_gd_on_a_quadratic_picks_a_stable_lr_below_the_closed_form_limit():
    for lam_max in (1.0, 50.0):
        q = Quadratic(lam_max)
        res = find(q, family="sgd", momentum=0.0, start_lr=1e-6 / lam_max, end_lr=100 / lam_max)
        limit = 2.0 / lam_max
        fit = fit_curve(res.lrs[np.isfinite(res.losses)], res.losses[np.isfinite(res.losses)])
        assert limit <= fit.lr_diverge <= 3 * limit  # the ramp sees divergence just past the stability limit
        assert 0.1 * limit <= res.suggestion.lr < limit  # ... and the pick trains stably
        assert res.total_steps <= 200 and q.steps == res.total_steps
        assert np.array_equal(q.w, np.ones(20))  # restored


def test_confirmation_vetoes_a_diverging_candidate_and_only_moves_down():
    q = Quadratic(1.0)
    res = find(q, family="sgd", momentum=0.0, start_lr=1e-6, end_lr=100.0, spread=3.0)
    lrs = [c["lr"] for c in res.confirmations]
    assert len(lrs) == 3 and lrs[1] == pytest.approx(lrs[0] / 3) and lrs[2] == pytest.approx(lrs[0] / 9)
    unstable = [c["score"] for c in res.confirmations if c["lr"] > 2.0]  # above 2/lam_max: diverges
    stable = [c["score"] for c in res.confirmations if c["lr"] < 2.0]
    assert unstable and stable and min(unstable) > max(stable)
    assert res.suggestion.lr in lrs and res.suggestion.lr < 2.0
    assert res.config["steps"]["confirm"] == 3 * res.confirmations[0]["steps"]


def test_a_ramp_that_never_diverges_is_extended():
    q = Quadratic(1.0)
    res = find(q, family="sgd", momentum=0.0, start_lr=1e-5, end_lr=0.5, num_iter=60, extend_decades=2.0)
    assert never_diverged(res.lrs[:60], res.losses[:60])
    assert res.config["steps"]["extend"] > 0 and res.lrs.max() > 0.5
    assert res.suggestion.lr is not None and res.suggestion.lr < 2.0
    assert res.total_steps <= 200


def test_noisy_flat_curve_gives_no_suggestion_and_costs_only_the_ramp():
    class Flat(Quadratic):
        def step(self, lr):
            self.steps += 1
            return 1.0 + 0.05 * self.rng.standard_normal()

    f = Flat()
    res = find(f, family="adam", end_lr=1e-3)
    assert res.suggestion.lr is None and "never fell" in res.suggestion.reason
    assert "confirm" not in res.config["steps"]


def _torch_task(seed=0):
    torch.manual_seed(seed)
    x = torch.randn(256, 8)
    y = x @ torch.randn(8, 1) + 0.1 * torch.randn(256, 1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 256, 32)]
    return model, batches, (x, y)


def test_torch_trainer_is_restored_bit_for_bit_and_family_is_read_from_the_optimizer():
    from lrkit.integrations.torch import TorchStepper
    model, batches, (x, y) = _torch_task()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for xb, yb in batches[:3]:  # non-empty optimiser state
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(xb), yb).backward()
        opt.step()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt_before = {k: {n: t.clone() if torch.is_tensor(t) else t for n, t in s.items()}
                  for k, s in opt.state_dict()["state"].items()}
    trainer = TorchStepper(model, opt, torch.nn.MSELoss(), batches, val_loader=[(x, y)])
    res = find(trainer, max_steps=160)
    assert isinstance(res, FinderResult) and res.total_steps <= 160 and len(res.confirmations) == 3
    assert "10x below" in res.suggestion.reason  # Adam -> the Adam-like factor
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    for k, s in opt.state_dict()["state"].items():
        for n, t in s.items():
            assert torch.equal(torch.as_tensor(t), torch.as_tensor(opt_before[k][n]))
    assert res.suggestion.lr is not None and 1e-4 < res.suggestion.lr < 1.0
    assert "lr" in str(res)


def test_infer_family_from_real_torch_optimizers():
    p = [torch.nn.Parameter(torch.zeros(1))]
    assert infer_family(torch.optim.SGD(p, lr=0.1, momentum=0.9)) == ("sgd", 0.9)
    assert infer_family(torch.optim.SGD(p, lr=0.1)) == ("sgd", 0.0)
    for cls in (torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop, torch.optim.Adagrad):
        assert infer_family(cls(p, lr=0.1)) == ("adam", None)
    assert infer_family(torch.optim.LBFGS(p)) == (None, None)
    assert infer_family(None) == (None, None)


def test_bad_arguments_name_the_fix_before_any_step():
    q = Quadratic()
    for bad, match in ((dict(max_steps=50.5), "max_steps"), (dict(n_candidates=4), "n_candidates"),
                       (dict(spread=1.0), "spread"), (dict(extend_steps=3), "extend_steps"),
                       (dict(family="adagrad"), "family"), (dict(rule="nope"), "unknown suggestion rule")):
        with pytest.raises(LrkitError, match=match):
            find(q, **bad)
    assert q.steps == 0


def test_a_step_budget_below_the_ramp_is_the_ramp():
    short = find(Quadratic(1.0), family="sgd", momentum=0.0, start_lr=1e-6, end_lr=100.0, max_steps=50)
    assert short.config["max_steps"] == 100 and short.total_steps <= 100  # as every find_lr: at least num_iter


def test_fine_tuning_where_every_candidate_hurts_suggests_the_least_harmful_and_says_so():
    class Pretrained(Quadratic):
        """Training pulls w from 0 towards 1; the validation loss is lowest at the start (w = 0)."""

        def __init__(self):
            super().__init__(1.0)
            self.w = np.zeros(20)

        def step(self, lr):
            value = float(0.5 * np.sum(self.lam * (self.w - 1) ** 2))
            self.w = self.w - lr * self.lam * (self.w - 1)
            self.steps += 1
            return value

        def evaluate(self):
            return float(0.5 * np.sum(self.lam * self.w**2))

    res = find(Pretrained(), family="adam", start_lr=1e-6, end_lr=100.0)
    lrs = [c["lr"] for c in res.confirmations]
    assert all(c["score"] > 0 for c in res.confirmations)
    assert res.suggestion.lr == min(lrs) and res.suggestion.confidence == pytest.approx(0.2)
    assert "near its best" in res.suggestion.reason


class Sleepy(Quadratic):
    """A Quadratic whose every step sleeps ``ramp_s`` seconds until the first restore (the ramp), ``confirm_s``
    after it (the confirmation runs): a known lower bound on the time of each step."""

    def __init__(self, ramp_s: float, confirm_s: float | None = None) -> None:
        super().__init__(1.0)
        self.ramp_s, self.confirm_s = ramp_s, ramp_s if confirm_s is None else confirm_s
        self.restores = 0

    def step(self, lr):
        time.sleep(self.confirm_s if self.restores else self.ramp_s)
        return super().step(lr)

    def restore(self, snap) -> None:
        super().restore(snap)
        self.restores += 1


def test_time_budget_stops_the_ramp_and_skips_the_confirmation():
    q = Sleepy(0.01)
    res = find(q, family="sgd", momentum=0.0, start_lr=1e-6, end_lr=100.0, max_seconds=0.25)
    assert q.steps == res.total_steps <= 0.25 / 0.01 + 1  # no step starts after the budget is spent
    assert res.stop is Stop.TIME and res.stop_reason.startswith("time budget spent") and res.stopped_at is None
    assert "extend" not in res.config["steps"] and "confirm" not in res.config["steps"] and not res.confirmations
    assert "max_seconds=0.25" in res.suggestion.reason
    assert res.config["max_seconds"] == 0.25
    assert np.array_equal(q.w, np.ones(20))


def test_time_budget_shortens_the_confirmation_runs_within_a_deterministic_bound():
    untimed = find(Quadratic(1.0), family="sgd", momentum=0.0, start_lr=1e-6, end_lr=100.0)
    ramp_steps, per_run = untimed.config["steps"]["ramp"], untimed.confirmations[0]["steps"]
    budget = (ramp_steps + 2 * per_run) * 0.004  # time for the ramp and about two thirds of the runs
    q = Sleepy(0.004)
    res = find(q, family="sgd", momentum=0.0, start_lr=1e-6, end_lr=100.0, max_seconds=budget)
    assert q.steps == res.total_steps <= budget / 0.004 + 1
    if res.stop_reason.startswith("time budget"):  # only on a badly overloaded machine
        assert "confirm" not in res.config["steps"]
    else:
        assert res.config["steps"]["ramp"] == ramp_steps  # the ramp itself fit the budget
    if res.confirmations:  # shortened to what the time left buys
        assert all(c["steps"] < per_run for c in res.confirmations) and len(res.confirmations) == 3
    else:  # a slow machine: skipped or dropped, and the reason says so
        assert "max_seconds" in res.suggestion.reason
    assert np.array_equal(q.w, np.ones(20))


def test_time_running_out_inside_a_confirmation_run_drops_the_runs_and_keeps_the_ramps_pick():
    untimed = find(Quadratic(1.0), family="sgd", momentum=0.0, start_lr=1e-6, end_lr=100.0, n_candidates=1)
    q = Sleepy(0.001, confirm_s=0.1)  # the ramp's cost per step under-estimates the runs' 100x
    res = find(q, family="sgd", momentum=0.0, start_lr=1e-6, end_lr=100.0, max_seconds=1.0)
    assert res.config["steps"]["ramp"] == untimed.config["steps"]["ramp"] and 0 < res.config["steps"]["confirm"] <= 1.0 / 0.1 + 1
    assert q.steps == res.total_steps and not res.confirmations
    assert res.suggestion.lr == untimed.suggestion.lr  # the rule's pick on the same ramp, unconfirmed
    assert "ran out during the confirmation run" in res.suggestion.reason
    assert np.array_equal(q.w, np.ones(20))


def test_torch_find_lr_passes_the_time_budget_through():
    from lrkit.integrations.torch import find_lr
    model, batches, _ = _torch_task()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for confirm in (True, False):
        res = find_lr(model, opt, torch.nn.MSELoss(), batches, max_seconds=1e-9, progress=False, confirm=confirm)
        assert len(res.lrs) == 1 and res.stop_reason.startswith("time budget spent")  # the first step always runs
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(LrkitError, match="max_seconds"):
        find_lr(model, opt, torch.nn.MSELoss(), batches, max_seconds=0, progress=False)


def test_time_running_out_in_the_extension_stops_it_and_names_the_budget():
    class SlowAbove(Quadratic):
        def step(self, lr):
            time.sleep(0.05 if lr > 0.5 else 0.001)  # the extension (lrs above end_lr) is 50x slower per step
            return super().step(lr)

    q = SlowAbove(1.0)
    res = find(q, family="sgd", momentum=0.0, start_lr=1e-5, end_lr=0.5, num_iter=60, max_seconds=0.4,
               extend_decades=2.0)  # the extension past end_lr is asked for
    assert res.config["steps"]["ramp"] == 60 and 0 < res.config["steps"]["extend"] < 25
    assert res.stop_reason.startswith("time budget spent: max_seconds=0.4 s ran out")
    assert "into the extension" in res.stop_reason and "max_seconds=0.4" in res.suggestion.reason
    assert "confirm" not in res.config["steps"] and q.steps == res.total_steps
    assert np.array_equal(q.w, np.ones(20))


# ---- issue 23 ---------------------------------------------------------------------------------------------------
class Recording(Quadratic):
    """A Quadratic that records every lr it is stepped at."""

    def __init__(self, lam_max: float = 1.0) -> None:
        super().__init__(lam_max)
        self.seen: list[float] = []

    def step(self, lr):
        self.seen.append(lr)
        return super().step(lr)


def test_the_default_test_never_tries_an_lr_past_end_lr():
    """Before: a ramp that never diverged was extended two decades past end_lr (to 50 here, 100x end_lr)."""
    q = Recording(1.0)  # diverges past lr 2: end_lr 0.5 never gets there
    res = find(q, family="sgd", momentum=0.0, start_lr=1e-5, end_lr=0.5, num_iter=60)
    assert max(q.seen) <= 0.5 and res.lrs.max() <= 0.5 and "extend" not in res.config["steps"]
    assert res.suggestion.lr is not None and res.suggestion.lr <= 0.5  # a lower bound, confirmed by short runs
    assert "lower bound" in res.suggestion.reason
    # asked for, the extension still goes past end_lr, and the result says how far
    q2 = Recording(1.0)
    ext = find(q2, family="sgd", momentum=0.0, start_lr=1e-5, end_lr=0.5, num_iter=60, extend_decades=1.0)
    assert 0.5 < max(q2.seen) <= 5.0 and ext.config["extended_to"] == pytest.approx(5.0)


def test_a_linear_ramp_gives_a_pick_that_trains_where_the_exponential_one_does():
    q_exp, q_lin = Quadratic(1.0), Quadratic(1.0)
    exp = find(q_exp, family="sgd", momentum=0.0, start_lr=1e-4, end_lr=10.0)
    lin = find(q_lin, family="sgd", momentum=0.0, start_lr=1e-4, end_lr=10.0, mode="linear")
    assert exp.suggestion.lr is not None and lin.suggestion.lr is not None
    assert 0.1 < lin.suggestion.lr < 2.0  # below the closed-form limit 2 / lam_max: it trains
    assert 1 / 3 < lin.suggestion.lr / exp.suggestion.lr < 3
    assert lin.config["mode"] == "linear" and np.allclose(np.diff(lin.lrs), (10.0 - 1e-4) / 99)
    assert lin.robust_fit().scale == "linear"


def test_a_stepper_whose_data_runs_out_is_a_clear_error_not_a_silent_stop():
    """Before: StopIteration raised by step() ended the test's own generator, and range_test returned None."""

    class RunsOut(Quadratic):
        def step(self, lr):
            if self.steps >= 30:
                raise StopIteration
            return super().step(lr)

    q = RunsOut(1.0)
    with pytest.raises(LrkitError, match="ran out.*re-iterable loader"):
        find(q, family="sgd", momentum=0.0)
    assert np.array_equal(q.w, np.ones(20))  # restored
