"""JAX/optax: range test on a train_step (closed form, exact restore even with donated buffers, same curve as a
plain loop), lr injection, lrkit schedules as optax schedules inside jit, missing extra."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
import jax.numpy as jnp  # noqa: E402

import lrkit.jax  # noqa: E402
import lrkit.schedules  # noqa: E402
from lrkit.errors import LrkitError  # noqa: E402
from lrkit.finder import Replay, infer_family, range_test, suggest  # noqa: E402
from lrkit.schedules import ramp  # noqa: E402


def mlp_loss(params, batch):
    x, y = batch
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return jnp.mean((h @ params["w2"] - y) ** 2)


class Batches:
    """Re-iterable batches in a fresh random order each pass, drawn from numpy's global RNG (restored too)."""

    def __init__(self, x, y, size=16):
        self.x, self.y, self.size = x, y, size

    def __iter__(self):
        order = np.random.permutation(len(self.x))
        for i in range(0, len(order), self.size):
            idx = order[i:i + self.size]
            yield self.x[idx], self.y[idx]


def task(seed=0):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = jax.random.normal(k1, (64, 4))
    y = x @ jnp.array([[1.0], [-2.0], [0.5], [0.0]])
    params = {"w1": jax.random.normal(k2, (4, 16)) * 0.5, "b1": jnp.zeros(16),
              "w2": jax.random.normal(k3, (16, 1)) * 0.5}
    tx = lrkit.jax.inject_lr(optax.adamw, learning_rate=1e-3, weight_decay=1e-4)
    return params, tx, Batches(np.asarray(x), np.asarray(y))


def leaves(tree):
    return [np.array(v, copy=True) for v in jax.tree_util.tree_leaves(tree)]


def test_closed_form_sgd_losses_follow_the_ramp():
    # loss = |w|^2 / 2, SGD: w' = (1 - lr) w  =>  loss_i = loss_0 * prod_{j<i} (1 - lr_j)^2
    params = {"w": jnp.array([2.0, -1.0, 0.5])}
    tx = lrkit.jax.inject_lr(optax.sgd, learning_rate=0.1)
    step = lrkit.jax.make_train_step(lambda p, b: 0.5 * jnp.sum(p["w"] ** 2), tx)
    res = lrkit.jax.find_lr(step, params, tx.init(params), [None], start_lr=1e-3, end_lr=0.5, num_iter=10,
                            progress=False, confirm=False)
    factor = np.concatenate([[1.0], np.cumprod((1 - res.lrs[:-1]) ** 2)])
    np.testing.assert_allclose(res.losses, 2.625 * factor, rtol=1e-5)


def test_restores_exactly_even_with_donated_buffers_and_matches_a_plain_loop():
    params, tx, batches = task()
    step = jax.jit(lrkit.jax.make_train_step(mlp_loss, tx, jit=False), donate_argnums=(0, 1))
    opt_state = tx.init(params)
    np.random.seed(3)
    for b in list(batches)[:3]:  # warm optimiser state; from here on these arrays are the user's
        params, opt_state, _ = step(params, opt_state, b, 1e-3)
    before_p, before_o, before_rng = leaves(params), leaves(opt_state), np.random.get_state()[1].copy()
    res = lrkit.jax.find_lr(step, params, opt_state, batches, num_iter=25, end_lr=1.0, progress=False,
                            confirm=False)
    assert not any(v.is_deleted() for v in jax.tree_util.tree_leaves((params, opt_state)))
    for a, b in zip(before_p + before_o, leaves(params) + leaves(opt_state)):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert np.array_equal(before_rng, np.random.get_state()[1])
    assert res.suggestion == suggest(res.lrs, res.losses, family=res.config['family'], momentum=res.config['momentum'])
    assert res.suggest("steepest") == suggest(res.lrs, res.smoothed_losses, rule="steepest")
    assert range_test(Replay(res.losses), num_iter=25, end_lr=1.0, progress=False, confirm=False,
                        family=res.config['family'], momentum=res.config['momentum']).suggestion == res.suggestion
    # the same curve from a plain loop over the ramp's lrs, with an undonated step
    plain = lrkit.jax.make_train_step(mlp_loss, tx)
    p, o, losses = params, opt_state, []
    lrs = ramp(1e-7, 1.0, 25)(np.arange(25))
    for lr, b in zip(lrs, _cycle(batches, len(res.lrs))):  # same numpy RNG state as the finder saw
        p, o, loss = plain(p, o, b, lr)
        losses.append(float(loss))
    assert np.array_equal(np.asarray(losses), res.losses)


def test_default_path_is_the_adaptive_test_within_200_steps_and_restores_exactly():
    params, tx, batches = task(seed=1)
    step = jax.jit(lrkit.jax.make_train_step(mlp_loss, tx, jit=False), donate_argnums=(0, 1))
    opt_state = tx.init(params)
    before_p, before_o, before_rng = leaves(params), leaves(opt_state), np.random.get_state()[1].copy()
    res = lrkit.jax.find_lr(step, params, opt_state, batches, num_iter=40, end_lr=10.0, progress=False)
    assert not any(v.is_deleted() for v in jax.tree_util.tree_leaves((params, opt_state)))
    for a, b in zip(before_p + before_o, leaves(params) + leaves(opt_state)):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert np.array_equal(before_rng, np.random.get_state()[1])
    steps = res.config["steps"]
    assert res.config["confirm"] and res.config["family"] == "adam"  # read from the injected hyperparams
    assert sum(steps.values()) <= 200 and steps["ramp"] == len(res.lrs) - steps.get("extend", 0)
    assert len(res.confirmations) == 3 and steps["confirm"] == sum(c["steps"] for c in res.confirmations)
    rule = suggest(res.lrs, res.losses, family="adam")  # confirmation only ever moves the rule's pick down
    assert rule.lr is not None and res.suggestion.lr <= rule.lr
    assert res.suggestion.lr in [c["lr"] for c in res.confirmations]
    sgd = lrkit.jax.inject_lr(optax.sgd, learning_rate=0.1, momentum=0.9)
    assert infer_family(lrkit.jax.hyperparams(sgd.init(params))) == ("sgd", 0.9)


def _full_batch(seed=2):
    params, tx, batches = task(seed)
    return params, tx, [(batches.x, batches.y)]  # one batch: no order to differ between two loops


def test_lrfinder_in_your_own_loop_runs_the_find_lr_test_and_applies_the_pick():
    params, tx, data = _full_batch()
    step = jax.jit(lrkit.jax.make_train_step(mlp_loss, tx, jit=False), donate_argnums=(0, 1))
    opt_state = tx.init(params)
    before_p, before_o = leaves(params), leaves(opt_state)
    ref = lrkit.jax.find_lr(step, params, opt_state, data, num_iter=30, end_lr=10.0, progress=False)
    finder = lrkit.jax.LRFinder(params, opt_state, num_iter=30, end_lr=10.0, progress=False)
    p, o, n = params, opt_state, 0
    while not finder.done:
        p, o, loss = step(p, o, data[0], finder.lr)  # donates p and o: the finder keeps its own copies
        p, o = finder.record(loss, p, o)
        n += 1
    res = finder.result
    np.testing.assert_array_equal(res.losses, ref.losses)
    assert res.suggestion == ref.suggestion and res.confirmations == ref.confirmations
    assert n == ref.total_steps and res.config["family"] == "adam"
    assert lrkit.jax.get_lr(o) == pytest.approx(res.suggestion.lr, rel=1e-6)  # apply=True: the pick injected
    o = lrkit.jax.set_lr(o, 1e-3)
    for a, b in zip(before_p + before_o, leaves(p) + leaves(o)):  # the state it started from, though the loop
        assert np.array_equal(a, b)                                 # donated (deleted) every input it was given


def test_validation_batches_need_a_loss_fn_and_are_judged_on_one_ramp():
    params, tx, data = _full_batch()
    step = lrkit.jax.make_train_step(mlp_loss, tx)
    with pytest.raises(LrkitError, match="loss_fn"):
        lrkit.jax.find_lr(step, params, tx.init(params), data, val_loader=data, progress=False)
    res = lrkit.jax.find_lr(step, params, tx.init(params), data, val_loader=data[:1] * 2, loss_fn=mlp_loss,
                            num_iter=20, progress=False)
    assert list(res.val_steps[:2]) == [0, 5] and not res.confirmations
    p, o, _ = step(params, tx.init(params), data[0], 1e-7)  # the first step, then the validation loss after it
    assert res.val_losses[0] == pytest.approx(float(mlp_loss(p, data[0])), rel=1e-6)


def test_lr_monitor_rolls_back_to_the_last_good_state_and_lowers_the_lr():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype("float32")
    y = x @ rng.normal(size=(8, 1)).astype("float32") + 0.3 * rng.normal(size=(256, 1)).astype("float32")
    tx = lrkit.jax.inject_lr(optax.sgd, learning_rate=0.05)
    step = lrkit.jax.make_train_step(lambda p, b: jnp.mean((b[0] @ p["w"] - b[1]) ** 2), tx)
    params = {"w": jnp.zeros((8, 1))}
    opt_state = tx.init(params)
    monitor = lrkit.jax.LrMonitor(act=True)
    after = {}
    # snapshots 50 steps apart, each good once 5 healthy steps followed it: 0, 50, ..., 200; the one taken at step
    # 250 (after the first update at lr 1.5) is still pending when the loss blows up, so 200 is restored
    with pytest.warns(RuntimeWarning, match="restored the snapshot of step 200"):
        for t in range(300):
            if t == 250:  # too high: the loss blows up
                opt_state = lrkit.jax.set_lr(opt_state, 1.5)
            i = (t * 32) % 256
            params, opt_state, loss = step(params, opt_state, (x[i:i + 32], y[i:i + 32]), lrkit.jax.get_lr(opt_state))
            after[t] = np.array(params["w"])
            n_events = len(monitor.events)
            params, opt_state = monitor.update(t, loss, params, opt_state)
            if len(monitor.events) > n_events and monitor.events[-1].kind == "divergence":
                assert np.array_equal(np.array(params["w"]), after[200])  # the snapshot after step 200
                assert lrkit.jax.get_lr(opt_state) == pytest.approx(1.5 * monitor.events[-1].factor)
                break
    assert [e.kind for e in monitor.events][-1] == "divergence" and monitor.events[-1].factor < 1
    with pytest.raises(LrkitError, match="skip"):
        lrkit.jax.LrMonitor(act="skip_batches")


def _cycle(batches, n):
    out = []
    while len(out) < n:
        out.extend(batches)
    return out[:n]


def test_set_lr_needs_an_injected_learning_rate():
    params = {"w": jnp.ones(2)}
    with pytest.raises(LrkitError, match="inject"):
        lrkit.jax.set_lr(optax.adam(1e-3).init(params), 0.1)
    with pytest.raises(LrkitError, match="factory"):
        lrkit.jax.inject_lr(optax.adam(1e-3), learning_rate=1e-3)
    state = lrkit.jax.inject_lr(optax.adam, learning_rate=1e-3).init(params)
    assert float(optax.tree_utils.tree_get(lrkit.jax.set_lr(state, 0.25), "learning_rate")) == 0.25
    scheduled = lrkit.jax.inject_lr(optax.adam, learning_rate=optax.constant_schedule(1e-3)).init(params)
    with pytest.raises(LrkitError, match="schedule"):
        lrkit.jax.set_lr(scheduled, 0.1)


def test_scheduler_inside_jit_gives_the_pure_schedule():
    spec = "warmup(3) >> cosine(1e-2, 12)"
    pure = lrkit.schedules.parse(spec)
    sched = lrkit.jax.scheduler(spec)
    np.testing.assert_allclose(jax.jit(sched)(jnp.arange(15)), pure(np.arange(15)), rtol=1e-6, atol=1e-10)
    params = {"w": jnp.ones(3)}
    tx = lrkit.jax.inject_lr(optax.sgd, learning_rate=sched)
    state = tx.init(params)

    @jax.jit
    def update(params, state):
        grads = jax.tree_util.tree_map(jnp.ones_like, params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    used = []
    for _ in range(15):
        params, state = update(params, state)
        used.append(float(state.hyperparams["learning_rate"]))  # the lr of the update just made
    np.testing.assert_allclose(used, pure(np.arange(15)), rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(params["w"], 1 - np.sum(np.float32(pure(np.arange(15)))), rtol=1e-5)


def test_missing_jax_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "jax", None)
    monkeypatch.setitem(sys.modules, "jax.numpy", None)
    for name in ("lrkit.integrations.jax", "lrkit.integrations.optax_schedule", "lrkit.jax"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(LrkitError, match=r"pip install 'lrkit\[jax\]'"):
        importlib.import_module("lrkit.jax")


def test_lr_monitor_rescues_a_run_started_at_50x_a_good_lr():
    """A JAX loop at 50x a good lr: unguarded it goes NaN; with the helper acting (and the state before the first
    update kept with ``start``) it is rolled back and cut until stable, below the closed-form stability bound, and
    learns (``_guard_task``)."""
    import warnings
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent.parent))
    from _guard_task import BATCH, LR_HIGH, N, check_rescue, regression

    x, y = regression()
    tx = lrkit.jax.inject_lr(optax.sgd, learning_rate=LR_HIGH)
    mse = lambda p, b: jnp.mean((b[0] @ p["w"] + p["b"] - b[1]) ** 2)  # noqa: E731
    step = lrkit.jax.make_train_step(mse, tx)

    def train(act):
        params = {"w": jnp.zeros((x.shape[1], 1)), "b": jnp.zeros(1)}
        opt_state = tx.init(params)
        monitor = lrkit.jax.LrMonitor(act=act)
        monitor.start(params, opt_state)
        start = float(mse(params, (x, y)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for t in range(300):
                i = (t * BATCH) % N
                params, opt_state, loss = step(params, opt_state, (x[i:i + BATCH], y[i:i + BATCH]),
                                               lrkit.jax.get_lr(opt_state))
                params, opt_state = monitor.update(t, loss, params, opt_state)
        return monitor, lrkit.jax.get_lr(opt_state), start, float(mse(params, (x, y)))

    assert not np.isfinite(train(False)[3])
    monitor, lr, start, final = train(True)
    check_rescue(monitor.events, lr, start, final, x)
