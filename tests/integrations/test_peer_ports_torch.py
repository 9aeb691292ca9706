"""The peers' range-test scenarios on real torch and Lightning models, ported to lrkit (issue 23; the table is
tests/finder/PEER_SCENARIOS.md). Each test names the peer test it ports."""

from __future__ import annotations

import copy
import glob
import os
import tempfile
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Subset, TensorDataset  # noqa: E402

from lrkit.errors import LrkitError  # noqa: E402
from lrkit.integrations.torch import apply_lr, find_lr  # noqa: E402

torch.set_num_threads(1)
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*GPU available but not used.*")
QUIET = dict(progress=False, confirm=False)


# ---- torch-lr-finder's tasks (tests/task.py), rebuilt ------------------------------------------------------------
def xor_task(batch_size=8, steps=100, validate=False, extra_dims=0, groups=False):
    """XOR (and ExtraXOR: extra noise features; DiscriminativeLearningRate: two param groups), an MLP 8-4-1 with SGD
    at 1e-5 and MSE, as torch-lr-finder's XORTask builds them."""
    g = torch.Generator().manual_seed(0)
    n = batch_size * steps
    bits = torch.randint(0, 2, (n, 2), generator=g).float()
    x = torch.cat([bits, torch.randn(n, 6 + extra_dims, generator=g) * 0.1], dim=1)[:, :8 + extra_dims]
    y = (bits[:, :1] != bits[:, 1:]).float()
    ds = TensorDataset(x, y)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8 + extra_dims, 4), nn.ReLU(), nn.Linear(4, 1))
    if groups:
        opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 1e-3},
                               {"params": model[2].parameters(), "lr": 1e-5}], lr=1e-5, momentum=0.5)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=1e-5)
    if validate:
        cut = int(n * 0.9)
        return (model, opt, nn.MSELoss(), DataLoader(Subset(ds, range(cut)), batch_size=batch_size),
                DataLoader(Subset(ds, range(cut, n)), batch_size=batch_size))
    return model, opt, nn.MSELoss(), DataLoader(ds, batch_size=batch_size), None


class Tagger(nn.Module):
    """torch-lr-finder's SimplePOSTaggerTask: inputs are lists of words (not tensors), an LSTM tags each word."""

    VOCAB = ["the", "dog", "ate", "apple", "everybody", "read", "that", "book", "[PAD]"]

    def __init__(self) -> None:
        super().__init__()
        self.index = {w: i for i, w in enumerate(self.VOCAB)}
        self.emb, self.lstm, self.out = nn.Embedding(len(self.VOCAB), 6), nn.LSTM(6, 6, batch_first=True), nn.Linear(6, 3)

    def forward(self, sentences):
        ids = torch.tensor([[self.index[w] for w in s] for s in sentences])
        h, _ = self.lstm(self.emb(ids))
        return torch.log_softmax(self.out(h), dim=-1).reshape(-1, 3)


def tagger_batches():
    data = [("the dog ate the apple".split(), [0, 1, 2, 0, 1]), ("everybody read that book".split(), [1, 2, 0, 1])]
    batches = []
    for words, tags in data * 4:
        pad = 5 - len(words)
        batches.append(([words + ["[PAD]"] * pad], torch.tensor(tags + [-100] * pad)))
    return batches


@pytest.mark.parametrize("task", ["xor", "extra_xor", "discriminative", "tagger"])
@pytest.mark.parametrize("validate", [False, True])
def test_tlf_run_on_every_task_with_and_without_validation(task, validate):
    """TestRangeTest.test_run / test_run_with_val_loader / test_run_non_tensor_dataset(_with_val_loader): the range
    test runs on each task (the tagger's inputs are lists of words), the lrs pass the optimiser's initial lr, and
    the model and the optimiser's lrs come back as they were (TestReset)."""
    if task == "tagger":
        torch.manual_seed(0)
        model = Tagger()
        opt = torch.optim.SGD(model.parameters(), lr=1e-5)
        crit, loader = nn.NLLLoss(ignore_index=-100), tagger_batches()
        val = tagger_batches()[:2] if validate else None
    else:
        model, opt, crit, loader, val = xor_task(validate=validate, extra_dims=2 if task == "extra_xor" else 0,
                                                 groups=task == "discriminative")
    init_lrs = [g["lr"] for g in opt.param_groups]
    before = copy.deepcopy(model.state_dict())
    res = find_lr(model, opt, crit, loader, val_loader=val, end_lr=0.1, num_iter=30, progress=False)
    assert max(res.lrs) >= init_lrs[0] and len(res.lrs) >= 5
    assert [g["lr"] for g in opt.param_groups] == init_lrs
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_tlf_gradient_accumulation_calls_the_criterion_accumulation_times_per_step():
    """TestGradientAccumulation.test_gradient_accumulation: batch 32 as 4 x 8, 10 steps: 40 criterion calls."""
    model, opt, crit, loader, _ = xor_task(batch_size=8)
    calls = []

    def counting(out, target):
        calls.append(1)
        return crit(out, target)

    res = find_lr(model, opt, counting, loader, num_iter=10, accumulation_steps=4, diverge_factor=1e9, **QUIET)
    assert len(res.lrs) == 10 and len(calls) == 40


def test_ignite_num_iter_none_is_one_epoch_and_a_longer_ramp_cycles_the_loader():
    """test_num_iter_is_none (one epoch) and test_num_iter_is_not_enough (150 steps on 100 batches: cycled)."""
    model, opt, crit, loader, _ = xor_task(batch_size=8, steps=100)
    epoch = find_lr(model, opt, crit, loader, num_iter=None, end_lr=0.1, diverge_factor=1e9, **QUIET)
    assert len(loader) == 100 and len(epoch.lrs) == 100
    longer = find_lr(model, opt, crit, loader, num_iter=150, end_lr=0.1, diverge_factor=1e9, **QUIET)
    assert len(longer.lrs) == 150


def test_ignite_apply_to_an_optimiser_with_other_param_groups_is_refused():
    """test_apply_suggested_lr_unmatched_optimizers."""
    model, opt, *_ = xor_task(groups=True)
    with pytest.raises(LrkitError, match="3 lrs for 2 param groups"):
        apply_lr(opt, [1e-3, 1e-4, 1e-5])
    apply_lr(opt, [1e-3, 1e-4])
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3, 1e-4])


def test_ignite_a_loss_that_is_not_a_scalar_is_a_clear_error():
    """test_engine_output_type."""
    model, opt, crit, loader, _ = xor_task()
    with pytest.raises(LrkitError, match="must be a scalar"):
        find_lr(model, opt, None, loader, loss_fn=lambda m, b: (m(b[0]) - b[1]) ** 2, **QUIET)


def test_ignite_digits_in_linear_mode_with_an_early_stop_at_2x_suggests_an_lr_in_range():
    """test_lr_suggestion_mnist (MNIST needs a download; the bundled digits stand in): linear ramp, diverge_th=2,
    50 steps, a suggestion between 1e-4 and 2."""
    pytest.importorskip("sklearn")
    from lrkit.examples import digits

    model, opt, crit, train, _ = digits(seed=0)
    res = find_lr(model, opt, crit, train, mode="linear", start_lr=1e-4, end_lr=0.5, num_iter=50, diverge_factor=2,
                  progress=False)
    assert res.suggestion.lr is not None and 1e-4 <= res.suggestion.lr <= 2


def test_ignite_plot_has_a_log_lr_axis_labels_and_saves(tmp_path):
    """test_plot_single_param_group."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    model, opt, crit, loader, _ = xor_task()
    res = find_lr(model, opt, crit, loader, end_lr=20.0, smooth=0.96, **QUIET)
    fig, ax = plt.subplots()
    res.plot(ax=ax, skip_end=0)
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "learning rate" and ax.get_ylabel() == "loss"
    res.plot(tmp_path / "dummy.png")
    assert (tmp_path / "dummy.png").exists()
    plt.close(fig)


def test_lightning_checkpoint_cleanup_on_error_disk_snapshot_is_removed():
    """test_lr_finder_checkpoint_cleanup_on_error: a failure during the test leaves no snapshot file behind."""
    model, opt, crit, loader, _ = xor_task()
    calls = []

    def failing(out, target):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("Intentional failure for testing cleanup")
        return crit(out, target)

    pattern = os.path.join(tempfile.gettempdir(), "lrkit-snapshot-*")
    before = set(glob.glob(pattern))
    with pytest.raises(RuntimeError, match="Intentional failure"):
        find_lr(model, opt, failing, loader, snapshot="disk", **QUIET)
    assert set(glob.glob(pattern)) == before


def test_fastai_lr_find_with_four_suggestion_functions_leaves_the_weights():
    """lr_find(suggest_funcs=(minimum, steep, valley, slide)) on a real model: four suggestions, weights
    unchanged."""
    pytest.importorskip("sklearn")
    from lrkit.examples import digits

    model, opt, crit, train, _ = digits(seed=1)
    before = [p.detach().clone() for p in model.parameters()]
    res = find_lr(model, opt, crit, train, **QUIET)
    for rule in ("minimum", "steepest", "valley", "slide"):
        pick = res.suggest(rule, skip_start=len(res.lrs) // 10, skip_end=5)
        assert pick.lr is not None and res.lrs[0] < pick.lr < res.lrs[-1], rule
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


# ---- Lightning's tuner tests, on lrkit.lightning ----------------------------------------------------------------
pl = pytest.importorskip("lightning.pytorch")
from lightning.pytorch.demos.boring_classes import BoringModel  # noqa: E402

import lrkit.lightning  # noqa: E402


def trainer(**kw):
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, **kw)


class Boring(BoringModel):
    """Lightning's BoringModel with an lr attribute (and an hparam copy) that configure_optimizers reads."""

    def __init__(self, lr=1e-2, opt="sgd", attr="lr"):
        super().__init__()
        self.attr, self.opt_name = attr, opt
        setattr(self, attr, lr)

    def configure_optimizers(self):
        lr = getattr(self, self.attr)
        cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad}[self.opt_name]
        return cls(self.parameters(), lr=lr)


def test_lightning_two_optimisers_are_refused():
    """test_error_with_multiple_optimizers: refused before any step, naming the count."""

    class Two(Boring):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def configure_optimizers(self):
            return [torch.optim.SGD(self.parameters(), lr=0.01), torch.optim.Adam(self.parameters(), lr=0.01)]

    with pytest.raises(LrkitError, match="configure_optimizers returned 2 optimizers; the range test drives exactly"):
        lrkit.lightning.find_lr(trainer(max_epochs=1), Two(), progress=False)


def test_lightning_trainer_state_is_untouched_and_the_model_attached():
    """test_model_reset_correctly and test_trainer_reset_correctly."""
    model = Boring()
    t = trainer(max_epochs=1)
    watched = ("accumulate_grad_batches", "current_epoch", "global_step", "max_steps", "should_stop")
    before = {a: getattr(t, a) for a in watched}
    weights = copy.deepcopy(model.state_dict())
    lrkit.lightning.find_lr(t, model, num_iter=20, progress=False)
    assert {a: getattr(t, a) for a in watched} == before and t.callbacks == t.callbacks
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert model.trainer is t


@pytest.mark.parametrize("attr", ["lr", "my_fancy_lr"])
def test_lightning_apply_updates_the_named_attribute(attr):
    """test_tuner_lr_find and test_trainer_arg_str (update_attr=True, attr_name=...)."""
    model = Boring(lr=1e-2, attr=attr)
    res = lrkit.lightning.find_lr(trainer(max_epochs=2), model, apply=attr, progress=False)
    assert res.suggestion.lr is not None and getattr(model, attr) == res.suggestion.lr != 1e-2


@pytest.mark.parametrize("opt", ["adam", "adagrad"])
@pytest.mark.parametrize("mode", ["linear", "exponential"])
def test_lightning_both_modes_give_a_suggestion(opt, mode):
    """test_call_to_trainer_method (Adam, Adagrad, mode="linear") and test_exponential_vs_linear_mode_gradient_
    difference (both modes valid)."""
    model = Boring(lr=1e-3, opt=opt)
    res = lrkit.lightning.find_lr(trainer(max_epochs=1), model, mode=mode, progress=False)
    assert res.suggestion.lr is not None and 1e-7 < res.suggestion.lr < 10 and res.config["mode"] == mode


def test_lightning_accumulation_without_early_stop_draws_two_batches_per_point():
    """test_accumulation_and_early_stopping: accumulate_grad_batches=2, no early stop: 100 points, 200 batches."""
    model = Boring(lr=1e-3)
    seen = []
    step = model.training_step

    def counting(batch, batch_idx):
        seen.append(batch_idx)
        return step(batch, batch_idx)

    model.training_step = counting
    res = lrkit.lightning.find_lr(trainer(accumulate_grad_batches=2), model, diverge_factor=1e9, num_iter=100,
                                  end_lr=0.1, **QUIET)
    assert len(res.lrs) == 100 and len(seen) == 200


def test_lightning_apply_fails_fast_without_an_lr_attribute_and_keeps_it_without_a_pick():
    """test_lr_finder_fails_fast_on_bad_config and test_lr_attribute_when_suggestion_invalid."""
    model = BoringModel()
    calls = []
    model.training_step = lambda *a: calls.append(1)
    with pytest.raises(LrkitError, match="neither 'lr' nor 'learning_rate'"):
        lrkit.lightning.find_lr(trainer(max_steps=2), model, apply=True, progress=False)
    assert calls == []  # refused before any step

    class Flat(Boring):
        def training_step(self, batch, batch_idx):
            return (self.layer(batch) * 0).sum() + 1.0  # nothing to learn: no pick

    model = Flat(lr=0.123)
    model.learning_rate = 0.123
    res = lrkit.lightning.find_lr(trainer(), model, apply="learning_rate", progress=False)
    assert res.suggestion.lr is None and model.learning_rate == 0.123


def test_lightning_lrs_stay_between_start_and_end_and_a_swapped_range_is_refused():
    """test_lr_candidates_between_min_and_max (Lightning swaps a reversed range; lrkit refuses it) and
    test_lr_finder_ends_before_num_training."""
    model = Boring(lr=0.1)
    res = lrkit.lightning.find_lr(trainer(), model, start_lr=1e-8, end_lr=1.0, num_iter=20, progress=False)
    assert all(1e-8 <= lr <= 1.0 for lr in res.lrs) and res.total_steps <= 200
    one = lrkit.lightning.find_lr(trainer(), model, start_lr=1e-8, end_lr=1.0, num_iter=5, **QUIET)
    assert one.total_steps <= 5
    with pytest.raises(LrkitError, match="smaller than end_lr"):
        lrkit.lightning.find_lr(trainer(), model, start_lr=1.0, end_lr=1e-8, progress=False)


def test_lightning_repeated_calls_give_the_same_results():
    """test_multiple_lr_find_calls_gives_same_results."""
    model = Boring(lr=0.1)
    t = trainer(max_epochs=2, limit_train_batches=10)
    runs = [lrkit.lightning.find_lr(t, model, progress=False) for _ in range(3)]
    for r in runs[1:]:
        np.testing.assert_array_equal(r.lrs, runs[0].lrs)
        np.testing.assert_array_equal(r.losses, runs[0].losses)
        assert r.suggestion == runs[0].suggestion


def test_lightning_callback_leaves_validation_alone_and_works_with_early_stopping_and_a_plateau_scheduler():
    """test_lr_finder_callback_val_batches and test_lr_finder_with_early_stopping (EarlyStopping and a
    ReduceLROnPlateau that monitors val_loss, issue #20355 of Lightning)."""
    from lightning.pytorch.callbacks import EarlyStopping

    class WithVal(Boring):
        def validation_step(self, batch, batch_idx):
            loss = self.step(batch)
            self.log("val_loss", loss, on_epoch=True)
            return loss

        def configure_optimizers(self):
            opt = torch.optim.Adam(self.parameters(), lr=self.lr)
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=2)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "interval": "epoch",
                                                       "monitor": "val_loss"}}

    model = WithVal(lr=0.1)
    finder = lrkit.lightning.LRFinder(num_iter=20, max_steps=40, progress=False, apply=False)
    t = trainer(max_epochs=10, limit_train_batches=5, limit_val_batches=3, num_sanity_val_steps=0,
                callbacks=[finder, EarlyStopping(monitor="val_loss", patience=3)])
    t.fit(model)
    assert t.state.finished and finder.result is not None
    assert t.num_val_batches[0] == 3  # fit's own validation: not limited by the test


def test_lightning_a_frozen_backbone_filtered_in_configure_optimizers_works_and_fit_follows():
    """test_lr_finder_with_backbone_finetuning_callback (an optimiser over the trainable parameters only)."""
    from lightning.pytorch.callbacks.finetuning import BackboneFinetuning

    class WithBackbone(Boring):
        def __init__(self):
            super().__init__(lr=1e-3)
            self.backbone = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8))
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.backbone(x))

        def configure_optimizers(self):
            return torch.optim.Adam(filter(lambda p: p.requires_grad, self.parameters()), lr=self.lr)

    model = WithBackbone()
    t = trainer(max_epochs=3, limit_train_batches=4, callbacks=[BackboneFinetuning(unfreeze_backbone_at_epoch=1)])
    res = lrkit.lightning.find_lr(t, model, num_iter=10, **QUIET)
    assert len(res.lrs) == 10
    t.fit(model)
    assert all(p.requires_grad for p in model.backbone.parameters())


def test_group_ramps_for_another_number_of_param_groups_are_refused_before_any_step():
    from lrkit.torch import TorchStepper

    model, opt, crit, loader, _ = xor_task(groups=True)
    before = [p.detach().clone() for p in model.parameters()]
    stepper = TorchStepper(model, opt, crit, loader)
    with pytest.raises(LrkitError, match="3 \\(start_lr, end_lr\\) pairs for 2 param groups"):
        stepper.use_group_ramps([(1e-6, 1.0), (1e-7, 0.1), (1e-8, 0.01)], "exponential")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
