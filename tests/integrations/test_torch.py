"""The PyTorch range test: exact restore on every exit, AMP, accumulation, batch shapes, bad input."""

from __future__ import annotations

import copy
import os
import random

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import lrkit  # noqa: E402
import lrkit.torch  # noqa: E402
from lrkit.errors import LrkitError  # noqa: E402
from lrkit.integrations.torch import TorchStepper, find_lr  # noqa: E402

torch.set_num_threads(1)


def make_task(seed: int = 0, n: int = 256, batch_size: int = 32, shuffle: bool = True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(10, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle,
                        generator=torch.Generator().manual_seed(seed + 1))
    crit = nn.CrossEntropyLoss()
    # a few real steps first, so the optimiser has state (Adam moments, step counts) to restore
    for xb, yb in list(loader)[:3]:
        opt.zero_grad()
        crit(model(xb), yb).backward()
        opt.step()
    return model, opt, crit, loader


def full_state(model, opt, loader):
    """Everything the range test may touch, deep-copied for a later bit-for-bit comparison."""
    return {
        "model": {k: v.clone() for k, v in model.state_dict().items()},
        "opt": copy.deepcopy(opt.state_dict()),
        "training": [m.training for m in model.modules()],
        "torch_rng": torch.get_rng_state().clone(),
        "np_rng": np.random.get_state(),
        "py_rng": random.getstate(),
        "loader_gen": loader.generator.get_state().clone() if loader.generator is not None else None,
    }


def assert_same_state(before, model, opt, loader):
    after = full_state(model, opt, loader)
    assert before["model"].keys() == after["model"].keys()
    for k in before["model"]:
        assert torch.equal(before["model"][k], after["model"][k]), k
    sb, sa = before["opt"], after["opt"]
    assert sb["param_groups"] == sa["param_groups"]  # lrs included
    assert sb["state"].keys() == sa["state"].keys()
    for pid in sb["state"]:
        for key, v in sb["state"][pid].items():
            w = sa["state"][pid][key]
            assert torch.equal(v, w) if isinstance(v, torch.Tensor) else v == w, (pid, key)
    assert before["training"] == after["training"]
    assert torch.equal(before["torch_rng"], after["torch_rng"])
    b_np, a_np = before["np_rng"], after["np_rng"]
    assert b_np[0] == a_np[0] and np.array_equal(b_np[1], a_np[1]) and b_np[2:] == a_np[2:]
    assert before["py_rng"] == after["py_rng"]
    if before["loader_gen"] is not None:
        assert torch.equal(before["loader_gen"], after["loader_gen"])


def test_normal_exit_restores_bit_for_bit_and_suggests():
    model, opt, crit, loader = make_task()
    model.eval()  # a non-default mode must come back too
    before = full_state(model, opt, loader)
    res = find_lr(model, opt, crit, loader, num_iter=30, end_lr=1e-2, progress=False, confirm=False)
    assert len(res.lrs) == 30 and res.stopped_at is None
    assert_same_state(before, model, opt, loader)
    assert res.suggestion == lrkit.finder.suggest(res.lrs, res.losses, family="adam")
    assert res.suggestion == res.suggest()


def test_early_stop_restores_bit_for_bit():
    model, opt, crit, loader = make_task()
    before = full_state(model, opt, loader)
    res = find_lr(model, opt, crit, loader, start_lr=1e-3, end_lr=1e4, num_iter=100, progress=False, confirm=False)
    assert res.stopped_at is not None and len(res.lrs) < 100
    assert_same_state(before, model, opt, loader)


def test_exception_in_user_code_restores_bit_for_bit():
    model, opt, crit, loader = make_task()
    before = full_state(model, opt, loader)
    calls = {"n": 0}

    def flaky_loss(m, batch):
        calls["n"] += 1
        if calls["n"] == 12:
            raise RuntimeError("boom in user code")
        x, y = batch
        return crit(m(x), y)

    with pytest.raises(RuntimeError, match="boom"):
        find_lr(model, opt, None, loader, loss_fn=flaky_loss, num_iter=50, progress=False, confirm=False)
    assert_same_state(before, model, opt, loader)


def test_disk_snapshot_restores_and_cleans_up(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model, opt, crit, loader = make_task()
    before = full_state(model, opt, loader)
    find_lr(model, opt, crit, loader, num_iter=20, snapshot="disk", progress=False, confirm=False)
    assert_same_state(before, model, opt, loader)
    assert os.listdir(tmp_path) == []


def test_snapshot_is_a_cpu_copy_not_a_view():
    model, opt, crit, loader = make_task()
    snap = TorchStepper(model, opt, crit, loader).snapshot()
    for k, v in snap["model"].items():
        assert v.device.type == "cpu"
        assert v.data_ptr() != model.state_dict()[k].data_ptr()


def test_every_param_group_is_driven_keeping_ratios():
    model, _, crit, loader = make_task()
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 1e-2},
                           {"params": model[4].parameters(), "lr": 1e-3}], lr=0.5, momentum=0.9)
    seen = []

    def loss_fn(m, batch):
        seen.append([g["lr"] for g in opt.param_groups])
        x, y = batch
        return crit(m(x), y)

    res = find_lr(model, opt, None, loader, loss_fn=loss_fn, num_iter=20, end_lr=1.0, progress=False, confirm=False)
    seen = np.array(seen)
    np.testing.assert_allclose(seen[:, 0], res.lrs, rtol=1e-12)
    np.testing.assert_allclose(seen[:, 1] / seen[:, 0], 0.1, rtol=1e-12)
    assert [g["lr"] for g in opt.param_groups] == [1e-2, 1e-3]


def test_short_loader_is_cycled():
    model, opt, crit, _ = make_task()
    x, y = torch.randn(64, 10), torch.randint(0, 2, (64,))
    loader = DataLoader(TensorDataset(x, y), batch_size=32)  # 2 batches for 25 steps
    res = find_lr(model, opt, crit, loader, num_iter=25, end_lr=1e-3, progress=False, confirm=False)
    assert len(res.lrs) == 25


def test_gradient_accumulation_equals_the_big_batch():
    """4 micro-batches of 8 per step give the same points as one batch of 32 (mean loss of the window)."""
    results = []
    for bs, acc in ((32, 1), (8, 4)):
        torch.manual_seed(0)  # no dropout or BatchNorm: micro-batching is then mathematically identical
        model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 2))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        x = torch.randn(320, 10)
        y = (x[:, 0] > 0).long()
        loader = DataLoader(TensorDataset(x, y), batch_size=bs, shuffle=False)
        results.append(find_lr(model, opt, nn.CrossEntropyLoss(), loader, num_iter=10, end_lr=1e-1,
                               accumulation_steps=acc, progress=False, confirm=False))
    big, small = results
    np.testing.assert_allclose(small.losses, big.losses, rtol=1e-5)
    assert not np.allclose(big.losses, big.losses[0])  # the weights did move between points


def test_gradient_clipping_bounds_the_update():
    model, _, crit, loader = make_task()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    norms = []
    orig = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **k):
        total = orig(params, max_norm, *a, **k)
        params = list(params)
        norms.append(float(torch.norm(torch.stack([p.grad.norm() for p in model.parameters()]))))
        return total

    torch.nn.utils.clip_grad_norm_ = spy
    try:
        find_lr(model, opt, crit, loader, num_iter=10, max_grad_norm=0.05, progress=False, confirm=False)
    finally:
        torch.nn.utils.clip_grad_norm_ = orig
    assert len(norms) == 10 and max(norms) <= 0.05 * (1 + 1e-5)


def test_amp_bfloat16_autocast_on_cpu():
    model, opt, crit, loader = make_task()
    before = full_state(model, opt, loader)
    dtypes = []

    def loss_fn(m, batch):
        x, y = batch
        out = m(x)
        dtypes.append(out.dtype)
        return crit(out.float(), y)

    res = find_lr(model, opt, None, loader, loss_fn=loss_fn, amp=torch.bfloat16, num_iter=15, progress=False, confirm=False)
    assert set(dtypes) == {torch.bfloat16}
    assert np.isfinite(res.losses).all()
    assert_same_state(before, model, opt, loader)


def test_gradscaler_disabled_path_records_every_step():
    model, opt, crit, loader = make_task()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    res = find_lr(model, opt, crit, loader, scaler=scaler, num_iter=15, end_lr=1e-2, progress=False, confirm=False)
    assert len(res.lrs) == 15


def test_gradscaler_skipped_steps_are_not_points():
    """A real GradScaler finds inf gradients, skips optimizer.step(); that step is retried, not recorded."""
    model, opt, crit, loader = make_task()
    before = full_state(model, opt, loader)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    calls = {"n": 0}

    def loss_fn(m, batch):
        calls["n"] += 1
        x, y = batch
        loss = crit(m(x), y)
        return loss * float("inf") if calls["n"] in (3, 7) else loss  # inf gradients on two calls

    res = find_lr(model, opt, None, loader, loss_fn=loss_fn, scaler=scaler, num_iter=12, end_lr=1e-2,
                  progress=False, confirm=False)
    assert calls["n"] == 14 and len(res.lrs) == 12
    assert np.isfinite(res.losses).all()
    assert scaler.get_scale() == 2.0**8  # the scaler's own state is restored too
    assert_same_state(before, model, opt, loader)


class DictModel(nn.Module):
    def __init__(self, returns_loss: bool):
        super().__init__()
        self.lin = nn.Linear(10, 2)
        self.returns_loss = returns_loss

    def forward(self, features, labels=None):
        logits = self.lin(features)
        out = {"logits": logits}
        if self.returns_loss and labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


def dict_loader(n=128):
    x, y = torch.randn(n, 10), torch.randint(0, 2, (n,))
    return DataLoader([{"features": a, "labels": b} for a, b in zip(x, y)], batch_size=16)


def test_dict_batches_with_model_loss_and_with_criterion():
    for returns_loss, crit in ((True, None), (False, nn.CrossEntropyLoss())):
        torch.manual_seed(0)
        model = DictModel(returns_loss)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        w = model.lin.weight.clone()
        res = find_lr(model, opt, crit, dict_loader(), num_iter=10, progress=False, confirm=False)
        assert len(res.lrs) == 10 and np.isfinite(res.losses).all()
        assert torch.equal(model.lin.weight, w)


def test_validation_loss_mode():
    model, opt, crit, loader = make_task()
    val = DataLoader(TensorDataset(torch.randn(64, 10), torch.randint(0, 2, (64,))), batch_size=32)
    before = full_state(model, opt, loader)
    res = find_lr(model, opt, crit, loader, val_loader=val, val_every=4, num_iter=20, end_lr=1e-2, progress=False, confirm=False)
    assert list(res.val_steps) == [0, 4, 8, 12, 16, 19]
    assert_same_state(before, model, opt, loader)


# -- bad input: a clear message and the model untouched ----------------------------------------------------

class NoLrOptimizer(torch.optim.Optimizer):
    def __init__(self, params):
        super().__init__(params, defaults={})

    def step(self, closure=None):
        pass


@pytest.mark.parametrize("case, match", [
    ("empty loader", "no batches"),
    ("nan first loss", "first step"),
    ("start >= end", "smaller than end_lr"),
    ("num_iter < 5", "num_iter"),
    ("no lr", "no positive 'lr'"),
    ("strings", "cannot compute a loss"),
])
def test_bad_input_is_a_clear_error_and_leaves_the_model_untouched(case, match):
    model, opt, crit, loader = make_task()
    kwargs = dict(num_iter=20, progress=False, confirm=False)
    if case == "empty loader":
        loader = DataLoader(TensorDataset(torch.randn(0, 10), torch.zeros(0, dtype=torch.long)), batch_size=4)
    elif case == "nan first loss":
        loader = DataLoader(TensorDataset(torch.full((32, 10), float("nan")), torch.zeros(32, dtype=torch.long)),
                            batch_size=8)
    elif case == "start >= end":
        kwargs.update(start_lr=1.0, end_lr=0.1)
    elif case == "num_iter < 5":
        kwargs.update(num_iter=3)
    elif case == "no lr":
        opt = NoLrOptimizer(model.parameters())
    elif case == "strings":
        loader = ["a", "b"]
    before = full_state(model, opt, loader if hasattr(loader, "generator") else DataLoader([]))
    with pytest.raises(LrkitError, match=match) as info:
        find_lr(model, opt, crit, loader, **kwargs)
    assert len(str(info.value)) > 40  # says what to do, not only what failed
    for k, v in before["model"].items():
        assert torch.equal(v, model.state_dict()[k]), k
    assert torch.equal(before["torch_rng"], torch.get_rng_state())


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(num_iter=st.integers(5, 30), log_end=st.floats(-3, 3), fail_at=st.one_of(st.none(), st.integers(1, 30)),
       seed=st.integers(0, 3), disk=st.booleans(), confirm=st.booleans())
def test_restore_is_exact_whatever_the_exit(num_iter, log_end, fail_at, seed, disk, confirm):
    """Property: for any ramp, stop point and failure point, every piece of state comes back bit for bit."""
    model, opt, crit, loader = make_task(seed=seed, n=96)
    before = full_state(model, opt, loader)
    calls = {"n": 0}

    def loss_fn(m, batch):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise RuntimeError("fail")
        x, y = batch
        return crit(m(x), y)

    try:
        find_lr(model, opt, None, loader, loss_fn=loss_fn, num_iter=num_iter, end_lr=10.0**log_end,
                snapshot="disk" if disk else "memory", progress=False, confirm=confirm)
    except (RuntimeError, LrkitError):  # LrkitError: a failure in the very first batch is reported as bad input
        assert fail_at is not None
    assert_same_state(before, model, opt, loader)


def test_default_confirms_within_two_ramps_and_restores():
    """The default path: one ramp, short confirmation runs at the pick, /3 and /9, all within 200 steps."""
    model, opt, crit, loader = make_task()
    before = full_state(model, opt, loader)
    calls = {"n": 0}

    def loss_fn(m, batch):
        calls["n"] += 1
        x, y = batch
        return crit(m(x), y)

    res = find_lr(model, opt, None, loader, loss_fn=loss_fn, progress=False)
    assert_same_state(before, model, opt, loader)
    assert res.config["confirm"] and res.config["family"] == "adam"
    assert calls["n"] == sum(res.config["steps"].values()) <= 200
    assert len(res.confirmations) == 3
    first = res.confirmations[0]["lr"]
    np.testing.assert_allclose([c["lr"] for c in res.confirmations], [first, first / 3, first / 9])
    # the confirmation may move the ramp's pick down, never up
    ramp_pick = lrkit.finder.suggest(res.lrs, res.losses, family="adam")
    assert res.suggestion.lr is not None and res.suggestion.lr <= ramp_pick.lr * (1 + 1e-12)
    assert res.suggestion.rule == "robust+confirm"


def _full_batch_task(seed: int = 0):
    """A task whose loader is one full batch and whose model has no dropout: the data order cannot differ between
    a loop the finder drives and one it does not."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(128, 10, generator=g)
    y = (x[:, 0] - x[:, 2] > 0).long()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 2))
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1},
                           {"params": model[2].parameters(), "lr": 0.05}], lr=0.1, momentum=0.9)
    return model, opt, nn.CrossEntropyLoss(), [(x, y)]


def test_lrfinder_in_your_own_loop_runs_the_find_lr_test_and_applies_the_pick():
    model, opt, crit, batches = _full_batch_task()
    reference = find_lr(model, opt, crit, batches, progress=False)
    before = full_state(model, opt, DataLoader(TensorDataset(torch.zeros(1)), batch_size=1))
    finder = lrkit.torch.LRFinder(model, opt, progress=False)
    steps = 0
    while not finder.done:
        for x, y in batches:
            opt.zero_grad()
            loss = crit(model(x), y)
            loss.backward()
            opt.step()
            steps += 1
            if finder.record(loss):
                break
    res = finder.result
    np.testing.assert_array_equal(res.losses, reference.losses)
    assert res.suggestion == reference.suggestion and res.confirmations == reference.confirmations
    assert steps == reference.total_steps and len(res.confirmations) == 3 and res.config["family"] == "sgd"
    # restored bit for bit, then the pick applied with the groups' 2:1 ratio kept
    pick = res.suggestion.lr
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([pick, pick / 2], rel=1e-12)
    for g, b in zip(opt.param_groups, before["opt"]["param_groups"]):
        g["lr"] = b["lr"]
    assert_same_state(before, model, opt, DataLoader(TensorDataset(torch.zeros(1)), batch_size=1))


def test_lrfinder_closed_early_restores_and_apply_false_leaves_the_lr():
    model, opt, crit, batches = _full_batch_task()
    loader = DataLoader(TensorDataset(torch.zeros(1)), batch_size=1)
    before = full_state(model, opt, loader)
    finder = lrkit.torch.LRFinder(model, opt, progress=False, apply=False)
    for _ in range(30):
        x, y = batches[0]
        opt.zero_grad()
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
        finder.record(loss.item())
    assert opt.param_groups[0]["lr"] == pytest.approx(finder.lr)  # the finder drives the lr
    finder.close()
    assert_same_state(before, model, opt, loader)


def test_find_lr_apply_sets_the_pick_keeping_group_ratios_and_scheduler_base_lrs():
    model, opt, crit, batches = _full_batch_task()
    res = find_lr(model, opt, crit, batches, progress=False, apply=True)
    pick = res.suggestion.lr
    assert pick is not None and [g["lr"] for g in opt.param_groups] == pytest.approx([pick, pick / 2], rel=1e-12)
    # with a scheduler attached, its base lrs follow, so the schedule continues from the pick
    model, opt, crit, batches = _full_batch_task()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min(1.0, (t + 1) / 10))  # a warmup: lr 0.01 now
    lrkit.torch.apply_lr(opt, 2e-3, sched)
    assert sched.base_lrs == pytest.approx([2e-3, 1e-3]) and opt.param_groups[0]["lr"] == pytest.approx(2e-4)
    opt.step()  # no gradients: nothing moves, but torch's scheduler wants a step first
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-3 * 0.2)


def test_a_stepper_has_evaluate_only_with_validation_batches():
    model, opt, crit, loader = make_task()
    assert TorchStepper(model, opt, crit, loader).evaluate is None
    val = [(torch.randn(16, 10), torch.zeros(16, dtype=torch.long))]
    stepper = TorchStepper(model, opt, crit, loader, val_loader=val)
    model.eval()
    with torch.no_grad():
        expected = float(crit(model(val[0][0]), val[0][1]))
    model.train()
    assert stepper.evaluate() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(LrkitError, match="unknown range-test option"):
        find_lr(model, opt, crit, loader, num_iters=10)


# ---- issue 23: scenarios the peers test -------------------------------------------------------------------------
class UserError(Exception):
    """An exception type of the user's own."""


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("mat1 and mat2 shapes cannot be multiplied"),
                                   UserError("my data pipeline broke")], ids=["oom", "runtime", "user"])
def test_an_error_on_the_first_batch_keeps_its_type_and_the_model_is_restored(error):
    """A script that catches torch.OutOfMemoryError to retry with a smaller batch must see it as such."""
    model, opt, crit, loader = make_task()
    before = full_state(model, opt, loader)

    class Failing(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            self.inner(x)  # the forward runs (and would change BatchNorm statistics) before the failure
            raise error

    wrapped = Failing(model)
    with pytest.raises(type(error)) as info:
        find_lr(wrapped, opt, crit, loader, progress=False)
    assert info.value is error and not isinstance(info.value, LrkitError)
    assert any("lrkit: the first batch" in note for note in getattr(info.value, "__notes__", []))
    assert_same_state(before, model, opt, loader)


def test_tuple_batches_give_the_model_the_first_item_and_the_criterion_the_second():
    """(x, y, extra...) as torch-lr-finder and Lightning read it: the model gets x, the target is y; the extra
    items (here sample ids) reach nothing unless loss_fn says so."""
    model, opt, crit, loader = make_task()
    triples = [(x, y, torch.arange(len(y))) for x, y in loader]
    state = full_state(model, opt, loader)
    res = find_lr(model, opt, crit, triples, num_iter=20, confirm=False, progress=False)
    assert_same_state(state, model, opt, loader)
    ref = find_lr(model, opt, None, triples, num_iter=20, confirm=False, progress=False,
                  loss_fn=lambda m, b: crit(m(b[0]), b[1]))
    np.testing.assert_array_equal(res.losses, ref.losses)
    assert len(res.losses) == 20


class Stream:
    """A one-shot iterator of batches (like a generator), counting what it handed out."""

    def __init__(self, batches):
        self._it, self.drawn = iter(batches), 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self._it)
        self.drawn += 1
        return batch


def test_a_generator_that_runs_out_is_a_clear_error_naming_what_to_pass_and_the_model_is_restored():
    model, opt, crit, loader = make_task()
    batches = list(loader) * 5  # 40 batches: the ramp's 100 steps need more
    before = full_state(model, opt, loader)
    gen = (b for b in batches)
    with pytest.raises(LrkitError, match=r"ran out after 40 batches and cannot start again.*re-iterable loader"):
        find_lr(model, opt, crit, gen, progress=False)
    assert_same_state(before, model, opt, loader)


def test_a_long_enough_iterator_is_used_as_it_is_and_a_one_shot_val_loader_is_kept():
    model, opt, crit, loader = make_task()
    batches = list(loader)
    stream = Stream(batches * 40)  # 320 batches
    val = Stream(batches[:2])
    res = find_lr(model, opt, crit, stream, val_loader=val, val_every=None, progress=False)
    assert res.suggestion.lr is not None and len(res.confirmations) == 3
    assert stream.drawn == res.total_steps  # every phase drew new batches from the one stream
    assert val.drawn == 2  # read once: every later evaluation reused its two batches
    # in validation mode (an evaluation every 5 steps) the kept batches give the loader's own numbers
    one = find_lr(model, opt, crit, batches, val_loader=Stream(batches[:2]), num_iter=20, progress=False)
    ref = find_lr(model, opt, crit, batches, val_loader=batches[:2], num_iter=20, progress=False)
    np.testing.assert_array_equal(one.val_losses, ref.val_losses)


def test_start_lr_none_starts_at_the_optimisers_lr_and_num_iter_none_is_one_epoch():
    model, opt, crit, loader = make_task()  # Adam at lr 1e-3, 8 batches of 32
    big = DataLoader(loader.dataset, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(3))
    res = find_lr(model, opt, crit, big, start_lr=None, end_lr=1.0, num_iter=None, confirm=False, progress=False)
    assert len(big) == 64 and res.config["num_iter"] == 64 and len(res.lrs) <= 64
    assert res.lrs[0] == pytest.approx(1e-3) and res.config["start_lr"] == pytest.approx(1e-3)
    with pytest.raises(LrkitError, match="num_iter=None.*one epoch.*unknown"):
        find_lr(model, opt, crit, Stream(list(loader)), num_iter=None, progress=False)
    with pytest.raises(LrkitError, match="only 2 optimiser steps"):
        find_lr(model, opt, crit, list(loader)[:2], num_iter=None, progress=False)


def test_per_group_start_and_end_lrs_ramp_each_group_and_apply_sets_each_groups_pick():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1},
                           {"params": model[2].parameters(), "lr": 0.01}], lr=0.1, momentum=0.5)
    _, _, crit, loader = make_task()
    seen = []
    orig_step = opt.step

    def step(*a, **k):
        seen.append([g["lr"] for g in opt.param_groups])
        return orig_step(*a, **k)

    opt.step = step
    res = find_lr(model, opt, crit, loader, start_lr=[1e-4, 1e-6], end_lr=[1.0, 1e-1], num_iter=20,
                  confirm=False, progress=False, apply=True)
    t = np.arange(len(res.lrs)) / 19
    np.testing.assert_allclose([s[0] for s in seen[:len(t)]], 1e-4 * (1.0 / 1e-4) ** t, rtol=1e-9)
    np.testing.assert_allclose([s[1] for s in seen[:len(t)]], 1e-6 * (1e-1 / 1e-6) ** t, rtol=1e-9)
    assert res.config["group_ranges"] == [[1e-4, 1.0], [1e-6, 1e-1]]
    g0, g1 = res.group_suggestions
    assert g0 == res.suggestion.lr
    # group 1's pick sits at the same place on its own ramp: the same fraction of its decades
    frac = np.log(g0 / 1e-4) / np.log(1.0 / 1e-4)
    assert g1 == pytest.approx(1e-6 * (1e-1 / 1e-6) ** frac, rel=1e-12)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([g0, g1], rel=1e-12)  # apply=True, per group
    with pytest.raises(LrkitError, match="3 values but the optimiser has 2 param groups"):
        find_lr(model, opt, crit, loader, start_lr=[1e-4, 1e-6, 1e-7], end_lr=1.0, progress=False)
    with pytest.raises(LrkitError, match="param group 1: start_lr"):
        find_lr(model, opt, crit, loader, start_lr=[1e-4, 1.0], end_lr=[1.0, 0.5], progress=False)
