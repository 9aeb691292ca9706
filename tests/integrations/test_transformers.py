"""transformers: range test with a Trainer's own model/data/optimiser/loss, exact restore, train() unchanged
afterwards, lrkit schedules as the Trainer's scheduler, missing extra. Tiny GPT-2 built from a config."""

from __future__ import annotations

import importlib
import random
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer needs it

import lrkit.schedules  # noqa: E402
import lrkit.transformers  # noqa: E402
from lrkit.errors import LrkitError  # noqa: E402
from lrkit.finder import Replay, range_test, suggest  # noqa: E402
from lrkit.integrations.torch import TorchStepper  # noqa: E402
from lrkit.integrations.torch import find_lr as torch_find_lr  # noqa: E402

torch.set_num_threads(1)
transformers.logging.set_verbosity_error()


class TokenData(torch.utils.data.Dataset):
    def __init__(self, n: int = 64, length: int = 16, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, 64, (n, length), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def tiny_gpt2(seed: int = 0):
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=64, n_positions=32))


def make(tmp_path, seed: int = 0, callbacks=(), optimizers=(None, None), model=None, **args):
    model = tiny_gpt2(seed) if model is None else model
    opts = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, report_to=[], use_cpu=True,
                max_steps=3, save_strategy="no", logging_strategy="no", disable_tqdm=True, learning_rate=1e-3,
                weight_decay=0.01, seed=seed)
    opts.update(args)
    return transformers.Trainer(model=model, args=transformers.TrainingArguments(**opts), train_dataset=TokenData(),
                                callbacks=list(callbacks), optimizers=optimizers)


def state(model):
    return {"params": {k: v.clone() for k, v in model.state_dict().items()},
            "training": [m.training for m in model.modules()], "torch": torch.get_rng_state(),
            "numpy": np.random.get_state()[1].copy(), "python": random.getstate()}


def assert_same(a, b):
    assert a["params"].keys() == b["params"].keys()
    for k in a["params"]:
        assert torch.equal(a["params"][k], b["params"][k]), k
    assert a["training"] == b["training"] and torch.equal(a["torch"], b["torch"])
    assert np.array_equal(a["numpy"], b["numpy"]) and a["python"] == b["python"]


def loaders(trainer):
    """The dataloaders accelerate's (process-wide) gradient state holds as being read."""
    return list(trainer.accelerator.gradient_state.dataloader_references)


def no_new_loader(trainer, registered):
    """No loader was left registered beyond those before (earlier tests' loaders may linger until collected)."""
    return all(any(d is r for r in registered) for d in loaders(trainer) if d is not None)


def test_find_lr_restores_exactly_and_matches_the_torch_adapter(tmp_path):
    trainer = make(tmp_path, gradient_accumulation_steps=2)
    before = state(trainer.model)
    registered = loaders(trainer)
    res = lrkit.transformers.find_lr(trainer, num_iter=20, end_lr=1.0, progress=False, confirm=False)
    assert_same(before, state(trainer.model))
    assert trainer.optimizer is None and trainer.lr_scheduler is None and trainer.state.global_step == 0
    assert no_new_loader(trainer, registered)  # the partly read loader was released
    assert len(res.lrs) == 20
    # the plain torch adapter, with the optimiser the Trainer builds, its loader, clipping and accumulation
    opt = trainer.create_optimizer()
    assert len(opt.param_groups) == 2 and opt.param_groups[0]["weight_decay"] == 0.01
    loader = trainer.get_train_dataloader()
    ref = torch_find_lr(trainer.model, opt, None, loader, num_iter=20, end_lr=1.0,
                        max_grad_norm=1.0, accumulation_steps=2, progress=False, confirm=False)
    loader.end()  # the plain adapter does not know accelerate's loaders: release the partly read one
    trainer.optimizer = None
    assert np.array_equal(res.losses, ref.losses)
    assert res.suggestion == suggest(res.lrs, res.losses, family=res.config['family'], momentum=res.config['momentum'])
    assert res.suggest("steepest") == suggest(res.lrs, res.smoothed_losses, rule="steepest")
    replay = range_test(Replay(res.losses), num_iter=20, end_lr=1.0, progress=False, confirm=False,
                        family=res.config['family'], momentum=res.config['momentum'])
    assert replay.suggestion == res.suggestion


def test_default_path_is_the_adaptive_test_restores_exactly_and_equals_it_on_the_torch_adapter(tmp_path):
    trainer = make(tmp_path)
    before = state(trainer.model)
    registered = loaders(trainer)
    res = lrkit.transformers.find_lr(trainer, num_iter=30, end_lr=100.0, progress=False)
    assert_same(before, state(trainer.model))
    assert trainer.optimizer is None and trainer.state.global_step == 0
    assert no_new_loader(trainer, registered)
    assert res.config["confirm"] and sum(res.config["steps"].values()) <= 200 and res.confirmations
    # the engine on the plain torch stepper with the Trainer's optimiser, loader, clipping: the same everything
    loader = trainer.get_train_dataloader()
    ref = range_test(TorchStepper(trainer.model, trainer.create_optimizer(), None, loader, max_grad_norm=1.0),
                     num_iter=30, end_lr=100.0, progress=False)
    loader.end()
    trainer.optimizer = None
    assert res.suggestion == ref.suggestion and res.suggestion.lr is not None
    assert res.confirmations == ref.confirmations and res.config == ref.config
    assert np.array_equal(res.losses, ref.losses)
    assert_same(before, state(trainer.model))


def test_train_after_find_lr_equals_train_without_it(tmp_path):
    a = make(tmp_path, seed=1)
    lrkit.transformers.find_lr(a, num_iter=20, end_lr=1.0, progress=False)
    a.train()
    b = make(tmp_path, seed=1)
    b.train()
    assert a.state.global_step == b.state.global_step == 3
    for (k, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(x, y), k


def test_apply_sets_the_learning_rate(tmp_path):
    trainer = make(tmp_path)
    res = lrkit.transformers.find_lr(trainer, num_iter=30, end_lr=100.0, apply=True, progress=False,
                                     rule="valley")  # random tokens barely fall: the default rule abstains
    assert res.suggestion.lr is not None and trainer.args.learning_rate == res.suggestion.lr
    own = torch.optim.SGD(trainer.model.parameters(), lr=0.1)
    with pytest.raises(LrkitError, match="its own optimizer"):
        lrkit.transformers.find_lr(make(tmp_path, optimizers=(own, None)), apply=True, progress=False)
    with pytest.raises(LrkitError, match="transformers.Trainer"):
        lrkit.transformers.find_lr(trainer.model, progress=False)


def test_lrfinder_callback_equals_a_train_started_at_the_pick(tmp_path):
    cb = lrkit.transformers.LRFinder(num_iter=30, end_lr=100.0, rule="valley", progress=False)
    a = make(tmp_path, seed=2, callbacks=[cb], warmup_steps=2, lr_scheduler_type="linear")
    a.train()
    lr = cb.result.suggestion.lr
    assert lr is not None and cb.result.confirmations  # the adaptive test, as find_lr
    # the same run, without the callback, with learning_rate = the pick: the same lrs and the same weights
    rec_b = RecordLr()
    b = make(tmp_path, seed=2, callbacks=[rec_b], warmup_steps=2, lr_scheduler_type="linear", learning_rate=lr)
    b.train()
    assert a.lr_scheduler.base_lrs == pytest.approx([lr, lr], rel=1e-12)
    assert a.state.global_step == b.state.global_step == 3
    for (k, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.allclose(x, y, rtol=1e-6, atol=1e-7), k


def test_validation_batches_are_judged_with_compute_loss(tmp_path):
    trainer = make(tmp_path)
    val = [next(iter(trainer.get_eval_dataloader(TokenData(n=16, seed=9))))]
    res = lrkit.transformers.find_lr(trainer, val_loader=val, num_iter=20, end_lr=1.0, progress=False)
    assert list(res.val_steps[:2]) == [0, 5] and not res.confirmations
    with torch.no_grad():
        trainer.model.eval()
        expected = float(trainer.model(**val[0]).loss)
        trainer.model.train()
    assert res.val_losses[0] == pytest.approx(expected, rel=1e-5)


class RecordLr(transformers.TrainerCallback):
    def __init__(self):
        self.lrs = []

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.lrs.append(optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize("how", ["use_schedule", "optimizers"])
def test_lrkit_schedule_drives_the_trainer(tmp_path, how):
    spec = "warmup(2) >> cosine(1e-2, 6)"
    rec = RecordLr()
    if how == "use_schedule":
        trainer = make(tmp_path, callbacks=[rec], max_steps=6, gradient_accumulation_steps=2)
        lrkit.transformers.use_schedule(trainer, spec)
        assert len(trainer.optimizer.param_groups) == 2  # the Trainer's own optimiser (decay groups)
    else:
        model = tiny_gpt2()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        trainer = make(tmp_path, callbacks=[rec], max_steps=6, gradient_accumulation_steps=2, model=model,
                       optimizers=(opt, lrkit.transformers.scheduler(opt, spec)))
    trainer.train()
    assert np.array_equal(np.array(rec.lrs), lrkit.schedules.parse(spec)(np.arange(6)))


def test_missing_transformers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    for name in ("lrkit.integrations.transformers", "lrkit.transformers"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(LrkitError, match=r"pip install 'lrkit\[transformers\]'"):
        importlib.import_module("lrkit.transformers")
