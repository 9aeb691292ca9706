"""The adaptive range test on a closed-form quadratic (numpy Trainer) and on a real torch model."""

from __future__ import annotations

import numpy as np
import pytest

from lrkit.adaptive import AdaptiveResult, find, infer_family, never_diverged
from lrkit.errors import LrkitError
from lrkit.suggest import fit_curve

torch = pytest.importorskip("torch")


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
        fit = fit_curve(res.ramp.lrs[np.isfinite(res.ramp.losses)], res.ramp.losses[np.isfinite(res.ramp.losses)])
        assert limit <= fit.lr_diverge <= 3 * limit  # the ramp sees divergence just past the stability limit
        assert 0.1 * limit <= res.lr < limit  # ... and the pick trains stably
        assert res.total_steps <= 200 and q.steps == res.total_steps
        assert np.array_equal(q.w, np.ones(20))  # restored


def test_confirmation_vetoes_a_diverging_candidate_and_only_moves_down():
    q = Quadratic(1.0)
    res = find(q, family="sgd", momentum=0.0, start_lr=1e-6, end_lr=100.0, spread=3.0)
    lrs = [c["lr"] for c in res.candidates]
    assert len(lrs) == 3 and lrs[1] == pytest.approx(lrs[0] / 3) and lrs[2] == pytest.approx(lrs[0] / 9)
    unstable = [c["score"] for c in res.candidates if c["lr"] > 2.0]  # above 2/lam_max: diverges
    stable = [c["score"] for c in res.candidates if c["lr"] < 2.0]
    assert unstable and stable and min(unstable) > max(stable)
    assert res.lr in lrs and res.lr < 2.0
    assert res.steps["confirm"] == 3 * res.candidates[0]["steps"]


def test_a_ramp_that_never_diverges_is_extended():
    q = Quadratic(1.0)
    res = find(q, family="sgd", momentum=0.0, start_lr=1e-5, end_lr=0.5, num_iter=60, extend_decades=2.0)
    assert never_diverged(res.ramp.lrs[:60], res.ramp.losses[:60])
    assert res.steps["extend"] > 0 and res.ramp.lrs.max() > 0.5
    assert res.lr is not None and res.lr < 2.0
    assert res.total_steps <= 200


def test_noisy_flat_curve_gives_no_suggestion_and_costs_only_the_ramp():
    class Flat(Quadratic):
        def step(self, lr):
            self.steps += 1
            return 1.0 + 0.05 * self.rng.standard_normal()

    f = Flat()
    res = find(f, family="adam", end_lr=1e-3)
    assert res.lr is None and "never fell" in res.suggestion.reason
    assert "confirm" not in res.steps


def _torch_task(seed=0):
    torch.manual_seed(seed)
    x = torch.randn(256, 8)
    y = x @ torch.randn(8, 1) + 0.1 * torch.randn(256, 1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 256, 32)]
    return model, batches, (x, y)


def test_torch_trainer_is_restored_bit_for_bit_and_family_is_read_from_the_optimizer():
    from lrkit.integrations.torch import TorchTrainer
    model, batches, (x, y) = _torch_task()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for xb, yb in batches[:3]:  # non-empty optimiser state
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(xb), yb).backward()
        opt.step()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt_before = {k: {n: t.clone() if torch.is_tensor(t) else t for n, t in s.items()}
                  for k, s in opt.state_dict()["state"].items()}
    trainer = TorchTrainer(model, opt, torch.nn.MSELoss(), batches, val_loader=[(x, y)])
    res = find(trainer, max_steps=160)
    assert isinstance(res, AdaptiveResult) and res.total_steps <= 160
    assert "10x below" in res.suggestion.reason  # Adam -> the Adam-like factor
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    for k, s in opt.state_dict()["state"].items():
        for n, t in s.items():
            assert torch.equal(torch.as_tensor(t), torch.as_tensor(opt_before[k][n]))
    assert res.lr is not None and 1e-4 < res.lr < 1.0
    assert "lr" in str(res)


def test_infer_family_from_real_torch_optimizers():
    p = [torch.nn.Parameter(torch.zeros(1))]
    assert infer_family(torch.optim.SGD(p, lr=0.1, momentum=0.9)) == ("sgd", 0.9)
    assert infer_family(torch.optim.SGD(p, lr=0.1)) == ("sgd", 0.0)
    for cls in (torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop, torch.optim.Adagrad):
        assert infer_family(cls(p, lr=0.1)) == ("adam", None)
    assert infer_family(torch.optim.LBFGS(p)) == (None, None)
    assert infer_family(None) == (None, None)


def test_bad_arguments_name_the_fix():
    with pytest.raises(LrkitError, match="max_steps"):
        find(Quadratic(), max_steps=50)
    with pytest.raises(LrkitError, match="n_candidates"):
        find(Quadratic(), n_candidates=4)
    with pytest.raises(LrkitError, match="spread"):
        find(Quadratic(), spread=1.0)


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
    lrs = [c["lr"] for c in res.candidates]
    assert all(c["score"] > 0 for c in res.candidates)
    assert res.lr == min(lrs) and res.suggestion.confidence == pytest.approx(0.2)
    assert "near its best" in res.suggestion.reason
