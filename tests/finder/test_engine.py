"""The framework-free range-test engine, driven by a real numpy stepper (least squares by gradient descent): one
ramp (``confirm=False``), the validation mode, restores, errors, and the result's JSON and plot."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

import lrkit
from lrkit.curve import EMA, ema
from lrkit.errors import LrkitError
from lrkit.finder import FinderResult, Stop, range_test
from lrkit.schedules import ramp

ONE_RAMP = dict(confirm=False, val_every=None, progress=False)  # one ramp, judged on the training loss


class LeastSquares:
    """Gradient descent on 0.5 * mean((X w - y)^2): diverges once lr > 2 / largest eigenvalue of X^T X / n."""

    def __init__(self, seed: int = 0, fail_at: int | None = None, nan_from: int | None = None) -> None:
        rng = np.random.default_rng(seed)
        self.x = rng.normal(size=(256, 8))
        self.y = self.x @ rng.normal(size=8) + 0.1 * rng.normal(size=256)
        self.w = np.zeros(8)
        self.calls, self.fail_at, self.nan_from = 0, fail_at, nan_from
        self.lrs_seen: list[float] = []

    def loss(self) -> float:
        r = self.x @ self.w - self.y
        return float(0.5 * np.mean(r * r))

    def step(self, lr: float) -> float:
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise RuntimeError("user code failed")
        self.lrs_seen.append(lr)
        loss = self.loss()
        if self.nan_from is not None and self.calls >= self.nan_from:
            return math.nan
        grad = self.x.T @ (self.x @ self.w - self.y) / len(self.y)
        self.w = self.w - lr * grad
        return loss

    def snapshot(self) -> np.ndarray:
        return self.w.copy()

    def restore(self, snap: np.ndarray) -> None:
        self.w = snap.copy()

    def evaluate(self) -> float:
        return self.loss()


def test_importing_lrkit_imports_no_framework():
    import subprocess

    code = "import lrkit, sys; bad = [m for m in ('torch', 'jax', 'keras', 'lightning', 'transformers', 'optuna') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_ramp_closed_form_exponential_and_linear():
    n = 100
    s = ramp(1e-7, 10.0, n)
    t = np.arange(n)
    np.testing.assert_allclose(s(t), 1e-7 * (10.0 / 1e-7) ** (t / (n - 1)), rtol=1e-12)
    assert s(0) == pytest.approx(1e-7) and s(n - 1) == pytest.approx(10.0)
    lin = ramp(0.01, 1.0, 11, mode="linear")
    np.testing.assert_allclose(lin(np.arange(11)), np.linspace(0.01, 1.0, 11), rtol=1e-12)


def test_ema_matches_bias_corrected_definition():
    rng = np.random.default_rng(1)
    x = rng.normal(size=50)
    beta = 0.9
    expected, avg = [], 0.0
    for i, v in enumerate(x):
        avg = beta * avg + (1 - beta) * v
        expected.append(avg / (1 - beta ** (i + 1)))
    np.testing.assert_allclose(ema(x, beta), expected, rtol=1e-12)
    online = EMA(beta)
    np.testing.assert_allclose([online.update(v) for v in x], expected, rtol=1e-12)
    # bias correction: the first smoothed value is the first raw value, and a constant stays constant
    assert ema([3.0, 3.0, 3.0], 0.98)[0] == pytest.approx(3.0)
    np.testing.assert_allclose(ema(np.full(10, 2.5), 0.98), 2.5)


def test_range_test_records_the_ramp_and_stops_at_divergence():
    tr = LeastSquares()
    w0 = tr.w.copy()
    res = range_test(tr, start_lr=1e-4, end_lr=100.0, num_iter=100, **ONE_RAMP)
    n = len(res.lrs)
    np.testing.assert_allclose(res.lrs, ramp(1e-4, 100.0, 100)(np.arange(n)), rtol=1e-12)
    np.testing.assert_allclose(res.lrs, tr.lrs_seen, rtol=0)
    np.testing.assert_allclose(res.smoothed_losses, ema(res.losses, 0.98), rtol=1e-12)
    # the stop rule: stopped at the first step whose smoothed loss exceeds 4x the best before it
    assert res.stopped_at is not None and res.stopped_at == n - 1
    s = res.smoothed_losses
    assert s[-1] > 4 * s[:-1].min()
    assert all(s[k] <= 4 * s[:k].min() for k in range(1, n - 1))
    assert res.stop is Stop.DIVERGED and "diverged" in res.stop_reason
    # gradient descent on least squares diverges past 2 / lambda_max: the test saw it
    lam = np.linalg.eigvalsh(tr.x.T @ tr.x / len(tr.y)).max()
    assert res.lrs[-1] > 2 / lam
    np.testing.assert_array_equal(tr.w, w0)  # restored
    assert res.suggestion.lr is not None and res.suggestion.lr < 2 / lam


def test_stops_on_nan_and_restores():
    tr = LeastSquares(nan_from=30)
    res = range_test(tr, num_iter=100, **ONE_RAMP)
    assert len(res.lrs) == 30 and res.stopped_at == 29
    assert res.stop is Stop.NON_FINITE and "non-finite" in res.stop_reason
    np.testing.assert_array_equal(tr.w, np.zeros(8))


def test_restores_when_user_code_raises():
    tr = LeastSquares(fail_at=20)
    with pytest.raises(RuntimeError, match="user code failed"):
        range_test(tr, num_iter=100, progress=False)
    np.testing.assert_array_equal(tr.w, np.zeros(8))


def test_restores_on_keyboard_interrupt():
    class Interrupting(LeastSquares):
        def step(self, lr):
            if self.calls == 10:
                raise KeyboardInterrupt
            return super().step(lr)

    tr = Interrupting()
    with pytest.raises(KeyboardInterrupt):
        range_test(tr, progress=False)
    np.testing.assert_array_equal(tr.w, np.zeros(8))


def test_nonfinite_first_loss_is_a_clear_error():
    tr = LeastSquares(nan_from=1)
    with pytest.raises(LrkitError, match="first step"):
        range_test(tr, progress=False)
    np.testing.assert_array_equal(tr.w, np.zeros(8))


@pytest.mark.parametrize("kwargs, match", [
    (dict(start_lr=1.0, end_lr=1e-3), "smaller than end_lr"),
    (dict(start_lr=1e-3, end_lr=1e-3), "smaller than end_lr"),
    (dict(num_iter=4), "num_iter"),
    (dict(start_lr=0.0), "start_lr"),
    (dict(diverge_factor=1.0), "diverge_factor"),
])
def test_bad_arguments_raise_before_touching_the_trainer(kwargs, match):
    tr = LeastSquares()
    with pytest.raises(LrkitError, match=match):
        range_test(tr, progress=False, **kwargs)
    assert tr.calls == 0


def test_skipped_steps_are_not_points():
    class Skipping(LeastSquares):
        def step(self, lr):
            self.calls += 1
            if self.calls % 3 == 0:
                return None  # as a GradScaler skipping an overflowing step
            self.calls -= 1
            return super().step(lr)

    tr = Skipping()
    res = range_test(tr, num_iter=30, end_lr=1e-2, **ONE_RAMP)
    assert len(res.lrs) == 30  # every recorded point is a real step; skipped ones are retried at the same lr
    np.testing.assert_allclose(res.lrs, ramp(1e-7, 1e-2, 30)(np.arange(30)))


def test_validation_mode_judges_the_evaluated_loss():
    tr = LeastSquares()
    res = range_test(tr, start_lr=1e-4, end_lr=100.0, val_every=3, progress=False)
    assert res.val_steps is not None and list(res.val_steps[:4]) == [0, 3, 6, 9]
    assert len(res.val_losses) == len(res.val_steps)
    assert res.curve.name == "val_loss"
    assert res.suggestion == lrkit.finder.suggest(res.lrs[res.val_steps], res.val_losses)
    assert not res.confirmations and res.config["val_every"] == 3  # validation mode: one ramp


def test_validation_mode_needs_a_stepper_that_evaluates():
    class NoEval:
        step, snapshot, restore, loss = LeastSquares.step, LeastSquares.snapshot, LeastSquares.restore, LeastSquares.loss

        def __init__(self):
            self.__dict__.update(vars(LeastSquares()))

    res = range_test(NoEval(), val_every=2, confirm=False, progress=False)  # val_every is the default's 5 too
    assert res.val_steps is None and res.config["val_every"] is None and res.curve.name == "loss"


def test_result_json_round_trip(tmp_path):
    res = range_test(LeastSquares(nan_from=40), **ONE_RAMP)
    path = tmp_path / "r.json"
    res.save(path)
    back = FinderResult.load(path)
    np.testing.assert_array_equal(back.lrs, res.lrs)
    np.testing.assert_array_equal(back.losses, res.losses)  # NaN survives as null -> NaN
    np.testing.assert_array_equal(back.smoothed_losses, res.smoothed_losses)
    assert back.suggestion == res.suggestion and back.stop_reason == res.stop_reason
    assert back.stop is res.stop is Stop.NON_FINITE and back.config == res.config
    assert json.loads(path.read_text())["format"] == "lrkit.find"
    bad = tmp_path / "bad.json"
    bad.write_text("{\"x\": 1}")
    with pytest.raises(LrkitError, match="not an lrkit range-test result"):
        FinderResult.load(bad)


def test_plot_writes_a_png(tmp_path):
    res = range_test(LeastSquares(), start_lr=1e-4, end_lr=100.0, **ONE_RAMP)
    path = tmp_path / "f.png"
    res.plot(path, rules=["steepest", "minimum"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"]  # no temporary file left behind
