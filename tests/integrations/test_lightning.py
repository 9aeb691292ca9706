"""Lightning: range test on the module's own training_step, exact restore, fit from step 0, callbacks, extra."""

from __future__ import annotations

import importlib
import random
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import lrkit.lightning  # noqa: E402
import lrkit.schedules  # noqa: E402
from lrkit.errors import LrkitError  # noqa: E402
from lrkit.finder import Replay, range_test, suggest  # noqa: E402
from lrkit.integrations.torch import TorchStepper  # noqa: E402
from lrkit.integrations.torch import find_lr as torch_find_lr  # noqa: E402
from lrkit.schedules import ramp  # noqa: E402

torch.set_num_threads(1)
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*GPU available but not used.*")


class Net(pl.LightningModule):
    def __init__(self, lr: float = 1e-3, hparam: bool = False) -> None:
        super().__init__()
        if hparam:
            self.save_hyperparameters({"learning_rate": lr})
        else:
            self.lr = lr
        self.net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))
        self.crit = nn.CrossEntropyLoss()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.crit(self(x), y)
        self.log("train_loss", loss)  # must be harmless during the range test
        return {"loss": loss}

    def configure_optimizers(self):
        lr = self.hparams.learning_rate if "learning_rate" in self.hparams else self.lr
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 100)}


def make(seed: int = 0, **kw):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(128, 8, generator=g)
    y = (x[:, 0] - x[:, 1] > 0).long()
    torch.manual_seed(seed)
    model = Net(**kw)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True,
                        generator=torch.Generator().manual_seed(seed + 1))
    return model, loader


def trainer(**kw):
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, **kw)


def state(model, loader):
    return {"params": {k: v.clone() for k, v in model.state_dict().items()},
            "training": [m.training for m in model.modules()],
            "torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].copy(), "python": random.getstate(),
            "loader": loader.generator.get_state()}


def assert_same(a, b):
    assert a["params"].keys() == b["params"].keys()
    for k in a["params"]:
        assert torch.equal(a["params"][k], b["params"][k]), k
    assert a["training"] == b["training"]
    assert torch.equal(a["torch"], b["torch"]) and np.array_equal(a["numpy"], b["numpy"])
    assert a["python"] == b["python"] and torch.equal(a["loader"], b["loader"])


def test_find_lr_restores_exactly_and_matches_the_torch_adapter():
    model, loader = make()
    t = trainer(max_steps=5)
    before = state(model, loader)
    res = lrkit.lightning.find_lr(t, model, train_dataloaders=loader, num_iter=25, end_lr=1.0, progress=False,
                                  confirm=False)
    assert_same(before, state(model, loader))
    assert t.global_step == 0 and model.trainer is t and "log" not in model.__dict__  # attached, as after fit
    assert len(res.lrs) == 25
    # the same curve as the plain PyTorch adapter on the same model, optimiser, loss and data
    opt = torch.optim.Adam(model.parameters(), lr=model.lr)
    ref = torch_find_lr(model, opt, nn.CrossEntropyLoss(), loader, num_iter=25, end_lr=1.0, progress=False,
                        confirm=False)
    assert np.array_equal(res.losses, ref.losses) and np.array_equal(res.lrs, ref.lrs)
    # the suggestion is the plain rule on the recorded curve, and the plain engine's on a replay of it
    for rule in ("valley", "steepest"):
        assert res.suggest(rule) == suggest(res.lrs, res.smoothed_losses, rule=rule)
    assert res.suggestion == suggest(res.lrs, res.losses, family=res.config['family'], momentum=res.config['momentum'])
    replay = range_test(Replay(res.losses), num_iter=25, end_lr=1.0, progress=False, confirm=False,
                        family=res.config['family'], momentum=res.config['momentum'])
    assert replay.suggestion == res.suggestion and np.array_equal(replay.smoothed_losses, res.smoothed_losses)


def test_default_path_is_the_adaptive_test_restores_exactly_and_equals_it_on_the_torch_adapter():
    model, loader = make(seed=1)
    t = trainer(max_steps=5)
    before = state(model, loader)
    res = lrkit.lightning.find_lr(t, model, train_dataloaders=loader, num_iter=30, end_lr=1.0, progress=False)
    assert_same(before, state(model, loader))
    assert t.global_step == 0 and model.trainer is t
    assert res.config["confirm"] and sum(res.config["steps"].values()) <= 200 and len(res.confirmations) == 3
    # the engine on the plain torch stepper with the same model, optimiser, loss and data: the same everything
    opt = torch.optim.Adam(model.parameters(), lr=model.lr)
    ref = range_test(TorchStepper(model, opt, nn.CrossEntropyLoss(), loader), num_iter=30, end_lr=1.0, progress=False)
    assert res.suggestion == ref.suggestion and res.suggestion.lr is not None
    assert res.confirmations == ref.confirmations and res.config == ref.config
    assert np.array_equal(res.losses, ref.losses) and np.array_equal(res.lrs, ref.lrs)
    assert_same(before, state(model, loader))


def test_fit_after_find_lr_starts_from_step_0_like_a_fit_without_it():
    model_a, loader_a = make(seed=3)
    t_a = trainer(max_steps=6)
    lrkit.lightning.find_lr(t_a, model_a, train_dataloaders=loader_a, num_iter=20, progress=False)
    t_a.fit(model_a, train_dataloaders=loader_a)
    model_b, loader_b = make(seed=3)
    t_b = trainer(max_steps=6)
    t_b.fit(model_b, train_dataloaders=loader_b)
    assert t_a.global_step == t_b.global_step == 6
    for (k, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("hparam", [False, True])
def test_apply_sets_lr_or_hparam(hparam):
    model, loader = make(hparam=hparam)

    class DM(pl.LightningDataModule):
        def train_dataloader(self):
            return loader

    res = lrkit.lightning.find_lr(trainer(), model, datamodule=DM(), num_iter=20, end_lr=1.0, apply=True,
                                  progress=False)
    assert res.suggestion.lr is not None
    got = model.hparams.learning_rate if hparam else model.lr
    assert got == res.suggestion.lr
    with pytest.raises(LrkitError, match="no attribute or hparam"):
        lrkit.lightning.find_lr(trainer(), model, train_dataloaders=loader, apply="nope", progress=False)


def test_lrfinder_callback_equals_a_fit_started_at_the_suggestion():
    model_a, loader_a = make(seed=5)
    cb = lrkit.lightning.LRFinder(num_iter=20, end_lr=1.0, progress=False)
    t_a = trainer(max_steps=4, callbacks=[cb])
    t_a.fit(model_a, train_dataloaders=loader_a)
    lr = cb.result.suggestion.lr
    assert lr is not None and model_a.lr == lr
    assert t_a.optimizers[0].param_groups[0]["lr"] == lr  # optimiser rebuilt from configure_optimizers
    # the same fit, without the callback, from a module built with lr=suggestion: identical weights
    model_b, loader_b = make(seed=5, lr=lr)
    t_b = trainer(max_steps=4)
    t_b.fit(model_b, train_dataloaders=loader_b)
    assert t_a.global_step == t_b.global_step == 4
    for (k, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), k


def test_schedule_callback_sets_the_pure_schedule_per_optimiser_step():
    model, loader = make()
    sched = ramp(1e-4, 1e-1, 6, "linear")
    seen = []

    class Record(pl.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            seen.append(optimizer.param_groups[0]["lr"])

    model.configure_optimizers = lambda: torch.optim.SGD(model.parameters(), lr=0.5)
    t = trainer(max_steps=6, accumulate_grad_batches=2,
                callbacks=[lrkit.lightning.ScheduleCallback(sched), Record()])
    t.fit(model, train_dataloaders=loader)
    assert np.array_equal(np.array(seen), sched(np.arange(6)))
    # a spec with warmup, through configure_optimizers (the torch adapter as a Lightning scheduler dict)
    spec = "warmup(3) >> cosine(0.1, 8)"
    seen.clear()
    model2, loader2 = make()

    def configure():
        opt = torch.optim.SGD(model2.parameters(), lr=0.1)
        return {"optimizer": opt, "lr_scheduler": lrkit.lightning.scheduler(opt, spec)}

    model2.configure_optimizers = configure
    trainer(max_steps=8, callbacks=[Record()]).fit(model2, train_dataloaders=loader2)
    ref = lrkit.schedules.parse(spec)(np.arange(8))
    assert np.array_equal(np.array(seen), ref)
    seen.clear()
    model3, loader3 = make()
    model3.configure_optimizers = lambda: torch.optim.SGD(model3.parameters(), lr=0.5)
    trainer(max_steps=8, callbacks=[lrkit.lightning.ScheduleCallback(spec), Record()]).fit(
        model3, train_dataloaders=loader3)
    assert np.array_equal(np.array(seen), ref)
    with pytest.raises(LrkitError):
        lrkit.lightning.ScheduleCallback(lambda step: 0.1)


def test_validation_batches_are_judged_through_training_step_like_the_torch_adapter():
    model, loader = make(seed=2)
    val = [next(iter(loader))]
    before = state(model, loader)
    res = lrkit.lightning.find_lr(trainer(), model, train_dataloaders=loader, val_loader=val, num_iter=20,
                                  end_lr=1.0, progress=False)
    assert_same(before, state(model, loader))
    assert list(res.val_steps[:3]) == [0, 5, 10] and not res.confirmations  # validation mode: one ramp
    opt = torch.optim.Adam(model.parameters(), lr=model.lr)
    ref = torch_find_lr(model, opt, nn.CrossEntropyLoss(), loader, val_loader=val, num_iter=20, end_lr=1.0,
                        progress=False)
    assert np.array_equal(res.val_losses, ref.val_losses) and res.suggestion == ref.suggestion


def test_manual_optimisation_is_refused_clearly():
    model, loader = make()
    model.automatic_optimization = False
    with pytest.raises(LrkitError, match="automatic optimisation"):
        lrkit.lightning.find_lr(trainer(), model, train_dataloaders=loader, progress=False)


def test_missing_lightning_names_the_extra(monkeypatch):
    for name in ("lightning", "lightning.pytorch"):
        monkeypatch.setitem(sys.modules, name, None)
    for name in ("lrkit.integrations.lightning", "lrkit.lightning"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(LrkitError, match=r"pip install 'lrkit\[lightning\]'"):
        importlib.import_module("lrkit.lightning")


# ---- issue 23: what Lightning's own tuner tests and users expect ------------------------------------------------
class SplitData(pl.LightningDataModule):
    """A datamodule whose setup() splits at random with the global RNG (as most do, with random_split)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        x = torch.randn(160, 8, generator=g)
        self.full = TensorDataset(x, (x[:, 0] - x[:, 1] > 0).long())
        self.setups = 0

    def setup(self, stage: str) -> None:
        self.setups += 1
        self.train, self.val = torch.utils.data.random_split(self.full, [128, 32])

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=16, shuffle=True)


def test_setup_and_train_dataloader_run_inside_the_snapshot_so_a_later_fit_splits_and_shuffles_the_same():
    torch.manual_seed(7)
    model_a, dm_a = Net(), SplitData()
    rng = torch.get_rng_state()
    lrkit.lightning.find_lr(trainer(), model_a, datamodule=dm_a, num_iter=20, progress=False)
    assert dm_a.setups == 1 and torch.equal(torch.get_rng_state(), rng)  # the RNG is where it was
    split_a = list(dm_a.train.indices)
    lrkit.lightning.find_lr(trainer(), model_a, datamodule=dm_a, num_iter=20, progress=False)
    assert list(dm_a.train.indices) == split_a  # a second call splits the same way
    t_a = trainer(max_steps=8)
    t_a.fit(model_a, datamodule=dm_a)
    # the same fit without the range test: same split, same batches, same weights
    torch.manual_seed(7)
    model_b, dm_b = Net(), SplitData()
    t_b = trainer(max_steps=8)
    t_b.fit(model_b, datamodule=dm_b)
    assert list(dm_b.train.indices) == list(dm_a.train.indices) == split_a
    for (k, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), k


class SkipsSome(Net):
    """Returns None from training_step for every third batch: Lightning skips those (no backward, no step)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def training_step(self, batch, batch_idx):
        self.calls += 1
        if self.calls % 3 == 0:
            return None
        return super().training_step(batch, batch_idx)


def test_a_training_step_returning_none_skips_the_batch_as_lightning_does():
    torch.manual_seed(0)
    model = SkipsSome()
    loader = make()[1]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = lrkit.lightning.find_lr(trainer(), model, train_dataloaders=loader, num_iter=30, progress=False,
                                  confirm=False)
    assert len(res.lrs) == 30 and np.isfinite(res.losses).all()  # every recorded point is a real step
    assert model.calls - model.calls // 3 == 30  # each skipped batch was replaced by the next one, at the same lr
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # the same points as the plain torch adapter whose loss skips the same batches
    model.calls = 0
    opt = torch.optim.Adam(model.parameters(), lr=model.lr)

    def loss_fn(m, batch):
        m.calls += 1
        return None if m.calls % 3 == 0 else nn.functional.cross_entropy(m(batch[0]), batch[1])

    ref = torch_find_lr(model, opt, None, loader, loss_fn=loss_fn, num_iter=30, progress=False, confirm=False)
    np.testing.assert_array_equal(res.losses, ref.losses)


class Lazy(pl.LightningModule):
    """A module that builds its layers in configure_model (as for sharded training), idempotently."""

    def __init__(self) -> None:
        super().__init__()
        self.lr = 1e-3
        self.net: nn.Module | None = None

    def configure_model(self) -> None:
        if self.net is None:
            self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def test_a_module_built_in_configure_model_is_tested_and_restored_and_stays_attached():
    torch.manual_seed(0)
    model, loader = Lazy(), make()[1]
    t = trainer(max_steps=3)
    res = lrkit.lightning.find_lr(t, model, train_dataloaders=loader, num_iter=20, progress=False, apply=True)
    assert res.suggestion.lr is not None and model.lr == res.suggestion.lr
    assert model.trainer is t  # attached, as Lightning's tuner leaves it
    built = {k: v.clone() for k, v in model.state_dict().items()}
    assert built  # the layers exist, with the weights they were built with (restored after the test)
    t.fit(model, train_dataloaders=loader)  # fit's own configure_model call is a no-op; training works
    assert t.global_step == 3 and any(not torch.equal(v, built[k]) for k, v in model.state_dict().items())
