"""transformers: the doctor reads a real trainer_state.json; the callback watches a tiny GPT-2 and acts on request."""

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from lrkit.doctor import diagnose, read_log  # noqa: E402
from lrkit.integrations.transformers_monitor import LrMonitor  # noqa: E402


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n=256, length=16):
        g = torch.Generator().manual_seed(0)
        base = torch.randint(0, 32, (n, 1), generator=g)
        self.ids = (base + torch.arange(length)) % 64  # learnable: each token is the previous + 1

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class Poison(transformers.TrainerCallback):
    """Test helper: at one step, make every weight NaN (as an overflow would)."""

    def __init__(self, at):
        self.at = at

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.at:
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float("nan"))


class StepRatios(transformers.TrainerCallback):
    """Test helper: each optimiser step's update-to-weight ratio, from the weights before and after the step."""

    def __init__(self):
        self.ratios, self.aligns, self._w, self._g, self._dw = [], [], None, None, None

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self._w = [p.detach().clone().double() for p in model.parameters()]

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self._g = np.concatenate([p.grad.double().numpy().ravel() for p in model.parameters()])

    def on_step_end(self, args, state, control, model=None, **kwargs):
        with torch.no_grad():
            moved = sum(((p.double() - w) ** 2).sum() for p, w in zip(model.parameters(), self._w))
            self.ratios.append(float(torch.sqrt(moved / sum((w ** 2).sum() for w in self._w))))
            dw = np.concatenate([(p.double() - w).numpy().ravel() for p, w in zip(model.parameters(), self._w)])
        # the gradient alignment cos(-g_t, w_t - w_t-1): none at the first step
        g, prev = self._g, self._dw
        self.aligns.append(np.nan if prev is None else -g @ prev / np.linalg.norm(g) / np.linalg.norm(prev))
        self._dw = dw


def run(tmp_path, callbacks, steps=30, lr=1e-3):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_positions=32)
    model = transformers.GPT2LMHeadModel(cfg)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=steps, logging_steps=2, per_device_train_batch_size=8,
        learning_rate=lr, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
        logging_nan_inf_filter=False, lr_scheduler_type="constant")
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=callbacks)
    trainer.train()
    return trainer


def test_reads_real_trainer_state_and_callback_sees_the_same_rows(tmp_path):
    cb = LrMonitor()
    trainer = run(tmp_path, [cb])
    path = tmp_path / "trainer_state.json"
    trainer.state.save_to_json(str(path))
    c = read_log(path)
    rows = [r for r in trainer.state.log_history if "loss" in r]
    assert c.meta["window"] == 2 and c.name == "loss" and c.meta["lr_column"] == "learning_rate"
    np.testing.assert_array_equal(c.steps, [r["step"] for r in rows])
    np.testing.assert_array_equal(c.values, [r["loss"] for r in rows])
    np.testing.assert_array_equal(c.extra["grad_norm"], [r["grad_norm"] for r in rows])
    m = cb.monitor.curve()
    np.testing.assert_array_equal(m.steps, c.steps)
    np.testing.assert_allclose(m.values, c.values)
    assert cb.monitor.window == 2
    assert diagnose(path).metric == "loss"


def test_callback_passes_the_windows_mean_update_to_weight_ratio(tmp_path):
    cb, ref = LrMonitor(update_ratio=True), StepRatios()
    run(tmp_path, [ref, cb], steps=12)
    want = np.array(ref.ratios).reshape(-1, 2).mean(axis=1)  # logging_steps=2: one row per 2 steps
    np.testing.assert_allclose(cb.monitor.curve().extra["update_ratio"], want, rtol=1e-4)
    # the window's mean gradient alignment (the first window has one: the first step has no previous update)
    want = np.nanmean(np.array(ref.aligns).reshape(-1, 2), axis=1)
    np.testing.assert_allclose(cb.monitor.curve().extra["grad_alignment"], want, rtol=1e-4, atol=1e-6)


def test_callback_restores_and_lowers_lr_on_nan(tmp_path):
    cb = LrMonitor(act=True, snapshot_every=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = run(tmp_path, [Poison(at=13), cb])
    nan = [e for e in cb.events if e.kind == "nan"]
    assert nan and nan[0].step == 14  # the first logged window that contains the NaN loss
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)  # one cut, 10x: later NaN rows are stale
    assert len(nan) == 1 and cb._snaps.step <= 12
    assert any("restored the snapshot" in str(w.message) for w in caught)


def test_callback_warns_and_stops_by_default(tmp_path):
    cb = LrMonitor()
    with pytest.warns(RuntimeWarning, match=r"\[nan\]"):
        trainer = run(tmp_path, [Poison(at=13), cb])
    assert trainer.state.global_step == 14  # stopped at the first NaN row
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)


class Regression(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


class LinearModel(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Linear(d, 1)

    def forward(self, x, labels=None):
        out = self.net(x)
        return {"loss": torch.nn.functional.mse_loss(out, labels), "logits": out}


def test_callback_rescues_a_run_started_at_50x_a_good_lr(tmp_path):
    """The Trainer (plain SGD, no clipping, a row per step) at 50x a good lr: unguarded the weights go NaN; with the
    callback acting the run is rolled back and cut until stable, below the closed-form stability bound, and learns
    (``_guard_task``)."""
    from _guard_task import BATCH, LR_HIGH, check_rescue, regression

    x, y = (torch.tensor(a) for a in regression())

    def train(act):
        model, cb = LinearModel(x.shape[1]), LrMonitor(act=act, stop_on_nan=False)
        with torch.no_grad():
            start = float(torch.nn.functional.mse_loss(model.net(x), y))
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / "out"), max_steps=240, logging_steps=1, per_device_train_batch_size=BATCH,
            learning_rate=LR_HIGH, optim="sgd", max_grad_norm=0.0, report_to=[], save_strategy="no", use_cpu=True,
            disable_tqdm=True, lr_scheduler_type="constant", remove_unused_columns=False, seed=0)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=Regression(x, y), callbacks=[cb])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.train()
        with torch.no_grad():
            final = float(torch.nn.functional.mse_loss(model.net(x), y))
        return cb, trainer.optimizer.param_groups[0]["lr"], start, final

    assert not np.isfinite(train(False)[3])
    cb, lr, start, final = train(True)
    check_rescue(cb.events, lr, start, final, x.numpy())
