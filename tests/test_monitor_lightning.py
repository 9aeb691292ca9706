"""Lightning: the doctor reads a real CSVLogger metrics.csv; the callback watches, warns, and acts on request."""

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning.pytorch")

from lrkit.doctor import read_log  # noqa: E402
from lrkit.integrations.lightning_monitor import LrMonitor  # noqa: E402


class Tiny(L.LightningModule):
    def __init__(self, nan_at=None, lr=0.05):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        self.nan_at, self.lr, self.seen, self.weight_norms, self.grads = nan_at, lr, [], [], []

    def on_before_optimizer_step(self, optimizer):
        self.grads.append(np.concatenate([p.grad.double().numpy().ravel() for p in self.parameters()]))

    def training_step(self, batch, batch_idx):
        x, y = batch
        with torch.no_grad():
            self.weight_norms.append(float(torch.sqrt(sum((p.double() ** 2).sum() for p in self.parameters()))))
        loss = torch.nn.functional.mse_loss(self.net(x).squeeze(-1), y)
        self.seen.append((self.global_step, float(loss.detach())))
        self.log("train_loss", loss, on_step=True, on_epoch=False)
        if self.nan_at is not None and self.global_step == self.nan_at:
            loss = loss * float("nan")
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def loader(n=640, bs=8):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    y = x[:, 0] * 2 - x[:, 1]
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=bs)


def trainer(tmp_path, steps, callbacks=(), logger=False, accumulate=1):
    return L.Trainer(max_steps=steps, accelerator="cpu", logger=logger, callbacks=list(callbacks),
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     log_every_n_steps=1, accumulate_grad_batches=accumulate, default_root_dir=str(tmp_path))


def test_reads_real_metrics_csv(tmp_path):
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger

    model = Tiny()
    logger = CSVLogger(str(tmp_path), name="run")
    trainer(tmp_path, 40, [LearningRateMonitor(logging_interval="step")], logger=logger).fit(model, loader())
    c = read_log(tmp_path / "run" / "version_0" / "metrics.csv")
    assert c.name == "train_loss" and c.meta["lr_column"] == "lr-SGD" and c.meta["format"] == "lightning"
    steps, losses = zip(*model.seen)
    np.testing.assert_array_equal(c.steps, steps)
    np.testing.assert_allclose(c.values, losses, rtol=1e-6)
    np.testing.assert_array_equal(c.lrs, 0.05)
    assert read_log(tmp_path / "run" / "version_0").name == "train_loss"  # the folder works too


def test_callback_sees_each_step_loss_with_accumulation(tmp_path):
    model = Tiny()
    cb = LrMonitor()
    trainer(tmp_path, 20, [cb], accumulate=2).fit(model, loader())
    c = cb.monitor.curve()
    micro = np.array([v for _, v in model.seen]).reshape(-1, 2).mean(axis=1)  # one optimiser step = 2 micro-batches
    np.testing.assert_array_equal(c.steps, np.arange(20))
    np.testing.assert_allclose(c.values, micro, rtol=1e-6)
    np.testing.assert_array_equal(c.lrs, 0.05)
    assert np.all(np.isfinite(c.extra["grad_norm"]))


def test_callback_measures_update_to_weight_ratio(tmp_path):
    model = Tiny()
    cb = LrMonitor(update_ratio=True)
    trainer(tmp_path, 25, [cb]).fit(model, loader())
    c = cb.monitor.curve()
    # plain SGD: each step moves the weights by lr * ||gradient||, against the weights it started from
    want = 0.05 * c.extra["grad_norm"] / np.array(model.weight_norms[:25])
    np.testing.assert_allclose(c.extra["update_ratio"], want, rtol=1e-4)
    # and the gradient alignment: with plain SGD, the cosine of consecutive steps' gradients
    g = model.grads[:25]
    cos = [a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(g[1:], g[:-1])]
    assert np.isnan(c.extra["grad_alignment"][0])
    np.testing.assert_allclose(c.extra["grad_alignment"][1:], cos, rtol=1e-4, atol=1e-6)
    assert "update_ratio" not in LrMonitor().monitor.curve().extra


def test_callback_restores_and_lowers_lr_on_nan(tmp_path):
    model = Tiny(nan_at=30)
    cb = LrMonitor(act=True, snapshot_every=10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, 40, [cb]).fit(model, loader())
    kinds = [(e.kind, e.step) for e in cb.events]
    assert ("nan", 30) in kinds
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the NaN weights were replaced
    assert model.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.005)  # a NaN cuts the lr 10x
    # snapshots at least 10 steps apart from the one before the first update (-1), each good once 5 healthy steps
    # followed it: 9, 19 (good from step 24), then 29 still pending at step 30
    assert any("restored the snapshot of step 19, lr x0.1 -> 0.005" in str(w.message) for w in caught)


def test_callback_warns_only_by_default(tmp_path):
    model = Tiny(nan_at=30)
    cb = LrMonitor()
    with pytest.warns(RuntimeWarning, match=r"\[nan\] step 30"):
        trainer(tmp_path, 35, [cb]).fit(model, loader())
    assert model.trainer.optimizers[0].param_groups[0]["lr"] == 0.05
    assert not all(torch.isfinite(p).all() for p in model.parameters())  # nothing was undone


class Linear(L.LightningModule):
    def __init__(self, lr):
        super().__init__()
        torch.manual_seed(0)
        self.net, self.lr = torch.nn.Linear(8, 1), lr

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def test_callback_rescues_a_run_started_at_50x_a_good_lr(tmp_path):
    """Lightning at 50x a good lr: unguarded it goes NaN; with the callback acting it is rolled back and cut until
    stable, below the closed-form stability bound, and learns (``_guard_task``)."""
    from _guard_task import BATCH, LR_HIGH, check_rescue, regression

    x, y = (torch.tensor(a) for a in regression())
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH)

    def train(act):
        model, cb = Linear(LR_HIGH), LrMonitor(act=act)
        with torch.no_grad():
            start = float(torch.nn.functional.mse_loss(model.net(x), y))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer(tmp_path, 300, [cb]).fit(model, data)
        with torch.no_grad():
            final = float(torch.nn.functional.mse_loss(model.net(x), y))
        return cb, model.trainer.optimizers[0].param_groups[0]["lr"], start, final

    assert not np.isfinite(train(False)[3])
    cb, lr, start, final = train(True)
    check_rescue(cb.events, lr, start, final, x.numpy())
