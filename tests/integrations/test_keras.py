"""Keras 3 (torch backend, no TensorFlow): range test via train_on_batch and inside fit, exact restore of every
variable, per-batch losses (closed form), lrkit schedules as LearningRateSchedule, missing extra."""

from __future__ import annotations

import importlib
import os
import sys

os.environ["KERAS_BACKEND"] = "torch"  # before keras is imported

import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip("keras")
if keras.backend.backend() != "torch":  # keras was imported earlier in this process with another backend
    pytest.skip("these tests need KERAS_BACKEND=torch", allow_module_level=True)

import lrkit.keras  # noqa: E402
import lrkit.schedules  # noqa: E402
from lrkit.errors import LrkitError  # noqa: E402
from lrkit.finder import Replay, infer_family, range_test, suggest  # noqa: E402

rng = np.random.default_rng(0)
X = rng.normal(size=(64, 4)).astype("float32")
Y = (X @ np.array([[1.0], [-2.0], [0.5], [0.0]], dtype="float32")).astype("float32")


def make(seed: int = 0, optimizer=None, warm: bool = True):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16), keras.layers.BatchNormalization(),
                              keras.layers.ReLU(), keras.layers.Dropout(0.2, seed=seed), keras.layers.Dense(1)])
    # a seeded Dropout draws its masks from its own seed state (a model variable); an unseeded one would share
    # torch's global RNG with the torch DataLoader that fit builds each epoch, so fit and train_on_batch differ
    model.compile(optimizer=optimizer or keras.optimizers.Adam(learning_rate=1e-3), loss="mse")
    if warm:  # optimiser moments, iteration count, BN statistics and seed states all non-trivial
        for i in range(3):
            model.train_on_batch(X[16 * i:16 * i + 16], Y[16 * i:16 * i + 16])
    return model


def all_values(model):
    vs = [*model.variables, *model.optimizer.variables, *model.metrics_variables]
    return {v.path: np.array(keras.ops.convert_to_numpy(v.value), copy=True) for v in vs}


def assert_same(before, model):
    after = all_values(model)
    assert before.keys() == after.keys()
    for k in before:
        assert np.array_equal(before[k], after[k]), k


def test_find_lr_restores_every_variable_and_suggests_like_the_engine():
    model = make()
    before = all_values(model)
    assert any("seed_generator" in k for k in before) and any("moving_mean" in k for k in before)
    res = lrkit.keras.find_lr(model, X, Y, batch_size=16, num_iter=20, end_lr=1.0, progress=False, confirm=False)
    assert_same(before, model)
    assert len(res.lrs) == 20
    assert res.suggestion == suggest(res.lrs, res.losses, family=res.config['family'], momentum=res.config['momentum'])
    assert res.suggest("steepest") == suggest(res.lrs, res.smoothed_losses, rule="steepest")
    replay = range_test(Replay(res.losses), num_iter=20, end_lr=1.0, progress=False, confirm=False,
                        family=res.config['family'], momentum=res.config['momentum'])
    assert replay.suggestion == res.suggestion
    # a second run from the restored state records the very same curve
    again = lrkit.keras.find_lr(model, X, Y, batch_size=16, num_iter=20, end_lr=1.0, progress=False, confirm=False)
    assert np.array_equal(again.losses, res.losses)


def test_default_path_is_the_adaptive_test_within_200_steps_and_restores_every_variable():
    model = make(seed=3)
    before = all_values(model)
    res = lrkit.keras.find_lr(model, X, Y, batch_size=16, num_iter=40, end_lr=10.0, progress=False)
    assert_same(before, model)
    steps = res.config["steps"]
    assert res.config["confirm"] and res.config["family"] == "adam"  # read from model.optimizer
    assert sum(steps.values()) <= 200 and steps["ramp"] == len(res.lrs) - steps.get("extend", 0)
    assert len(res.confirmations) == 3 and steps["confirm"] == sum(c["steps"] for c in res.confirmations)
    # the confirmation runs only ever move the pick down from the rule's pick on the recorded ramp
    rule = suggest(res.lrs, res.losses, family="adam")
    assert rule.lr is not None and res.suggestion.lr <= rule.lr
    assert res.suggestion.lr in [c["lr"] for c in res.confirmations]
    sgd = lrkit.keras.KerasStepper(make(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), warm=False), X, Y)
    assert infer_family(sgd.optimizer) == ("sgd", 0.9)


def test_fit_after_find_lr_equals_fit_without_it():
    a = make(seed=4, warm=False)
    lrkit.keras.find_lr(a, X, Y, batch_size=16, num_iter=20, end_lr=1.0, progress=False)
    # shuffle=False: a model's first fit draws one extra torch seed while it builds (not after train_on_batch
    # built it), which would shift fit's shuffle order; weights and optimiser start identical either way
    ha = a.fit(X, Y, batch_size=16, epochs=2, verbose=0, shuffle=False).history
    b = make(seed=4, warm=False)
    hb = b.fit(X, Y, batch_size=16, epochs=2, verbose=0, shuffle=False).history
    assert ha == hb
    for u, v in zip(a.variables, b.variables):
        assert np.array_equal(keras.ops.convert_to_numpy(u.value), keras.ops.convert_to_numpy(v.value)), u.path


def test_losses_are_per_batch_and_follow_the_ramp_closed_form():
    # w <- w - lr * d/dw (w - 1)^2 on x = 1, y = 1:  (1 - w') = (1 - w)(1 - 2 lr);  loss_i = (1 - w_i)^2
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="mse")
    ones = np.ones((8, 1), dtype="float32")
    res = lrkit.keras.find_lr(model, ones, ones, batch_size=4, start_lr=1e-3, end_lr=0.3, num_iter=10,
                              progress=False, confirm=False)
    gap = np.concatenate([[1.0], np.cumprod(1 - 2 * res.lrs[:-1])])
    np.testing.assert_allclose(res.losses, gap ** 2, rtol=1e-5)
    assert float(keras.ops.convert_to_numpy(model.layers[0].kernel)[0, 0]) == 0.0


def test_callback_inside_fit_runs_the_find_lr_test_restores_and_applies_the_pick():
    """One batch per epoch (the whole data, in order: the Dropout masks follow the rows), so fit's batches are
    find_lr's: the same adaptive test, bit for bit."""
    model = make(seed=1)
    before = all_values(model)
    ref = lrkit.keras.find_lr(model, X, Y, batch_size=64, num_iter=20, end_lr=1.0, shuffle=False, progress=False)
    assert ref.confirmations and ref.suggestion.lr is not None
    cb = lrkit.keras.LRFinder(num_iter=20, end_lr=1.0, progress=False)
    history = model.fit(X, Y, batch_size=64, epochs=1000, shuffle=False, verbose=0, callbacks=[cb])
    assert len(history.epoch) == ref.total_steps  # fit stopped itself when the test was over
    assert np.array_equal(cb.result.losses, ref.losses)  # batch losses, not running means
    assert np.array_equal(cb.result.lrs, ref.lrs)
    assert cb.result.suggestion == ref.suggestion and cb.result.confirmations == ref.confirmations
    lr = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    assert lr == pytest.approx(ref.suggestion.lr, rel=1e-6)  # apply=True: fit goes on at the pick
    model.optimizer.learning_rate = before_lr = float(before[model.optimizer._learning_rate.path])
    assert before_lr == pytest.approx(1e-3)
    assert_same(before, model)
    with pytest.raises(LrkitError, match="epochs=100"):
        model.fit(X, Y, batch_size=16, epochs=1, verbose=0,
                  callbacks=[lrkit.keras.LRFinder(num_iter=20, progress=False)])
    assert_same(before, model)


def test_callback_stops_at_divergence_like_the_engine():
    model = make(seed=2, optimizer=keras.optimizers.SGD(learning_rate=0.01))
    before = all_values(model)
    cb = lrkit.keras.LRFinder(start_lr=1e-3, end_lr=1e3, num_iter=30, confirm=False, apply=False, progress=False)
    batches = []

    class Count(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            batches.append(batch)

    model.fit(X, Y, batch_size=16, epochs=100, verbose=0, callbacks=[cb, Count()])
    assert_same(before, model)
    assert cb.result.stopped_at is not None and len(cb.result.lrs) < 30
    assert len(batches) == len(cb.result.losses)  # fit stopped exactly where the engine stops


def test_find_lr_apply_and_validation_batches():
    model = make(seed=3)
    # a ramp long enough (60 steps up to 10) for the noisy batches of 16 to show a clear descent and its turn
    res = lrkit.keras.find_lr(model, X, Y, batch_size=16, num_iter=60, end_lr=10.0, apply=True, progress=False)
    lr = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    assert res.suggestion.lr is not None and lr == pytest.approx(res.suggestion.lr, rel=1e-6)
    val = [(X[:32], Y[:32]), (X[32:], Y[32:])]
    twin = make(seed=3)
    expected = float(np.mean([twin.test_on_batch(x, y, return_dict=True)["loss"] for x, y in val]))
    model = make(seed=3)
    before = all_values(model)
    res = lrkit.keras.find_lr(model, X, Y, batch_size=16, num_iter=20, end_lr=1.0, val_loader=val,
                              progress=False)
    assert_same(before, model)
    assert list(res.val_steps[:2]) == [0, 5] and not res.confirmations
    assert res.val_losses[0] == pytest.approx(expected, rel=1e-3)  # one step at lr 1e-7 barely moves it


def test_schedule_built_optimizer_is_refused_clearly():
    model = make(optimizer=keras.optimizers.Adam(learning_rate=keras.optimizers.schedules.ExponentialDecay(
        1e-3, 10, 0.9)), warm=False)
    with pytest.raises(LrkitError, match="float lr"):
        lrkit.keras.find_lr(model, X, Y, progress=False)
    with pytest.raises(LrkitError, match="float lr"):
        model.fit(X, Y, epochs=1, verbose=0, callbacks=[lrkit.keras.LRFinder(progress=False)])


def test_scheduler_gives_the_pure_schedule_lrs_in_fit():
    spec = "warmup(3) >> cosine(1e-2, 10)"
    pure = lrkit.schedules.parse(spec)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    model = make(optimizer=keras.optimizers.SGD(learning_rate=lrkit.keras.scheduler(spec)), warm=False)
    model.fit(X, Y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[Record()])
    np.testing.assert_allclose(seen, pure(np.arange(16)), rtol=1e-6, atol=1e-9)  # float32 in Keras


def test_missing_keras_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras", None)
    for name in ("lrkit.integrations.keras", "lrkit.integrations.keras_schedule", "lrkit.keras"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(LrkitError, match=r"pip install 'lrkit\[keras\]'"):
        importlib.import_module("lrkit.keras")
