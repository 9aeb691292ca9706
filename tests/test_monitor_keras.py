"""The live doctor in Keras 3 (torch backend): each batch's own loss read from the loss tracker (not the running
epoch mean in the logs), and the callback's rollback against a twin model trained batch by batch."""

from __future__ import annotations

import os
import warnings

os.environ["KERAS_BACKEND"] = "torch"  # before keras is imported

import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip("keras")
if keras.backend.backend() != "torch":  # keras was imported earlier in this process with another backend
    pytest.skip("these tests need KERAS_BACKEND=torch", allow_module_level=True)

from lrkit.errors import LrkitError  # noqa: E402
from lrkit.integrations.keras_monitor import LrMonitor  # noqa: E402

rng = np.random.default_rng(0)
X = rng.normal(size=(72, 4)).astype("float32")  # 72 = 4 batches of 16 and a last one of 8
Y = (X @ np.array([[1.0], [-2.0], [0.5], [0.0]], dtype="float32") + 0.1).astype("float32")


def make(lr=0.05):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr), loss="mse")
    return model


def batches(x, y, size=16):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


def test_each_batch_loss_not_the_running_epoch_mean():
    cb = LrMonitor()
    model = make()
    model.fit(X, Y, batch_size=16, epochs=3, shuffle=False, verbose=0, callbacks=[cb])
    twin = make()  # train_on_batch returns each batch's own loss (it resets the metrics first)
    want = [float(twin.train_on_batch(xb, yb)) for _ in range(3) for xb, yb in batches(X, Y)]
    assert len(cb.losses) == 15
    np.testing.assert_allclose(cb.losses, want, rtol=1e-5)
    assert cb.monitor.curve().values.tolist() == cb.losses
    np.testing.assert_allclose(cb.monitor.curve().lrs, 0.05, rtol=1e-6)  # the optimiser's lr, read at each batch


def test_update_to_weight_ratio_of_each_batch():
    """The measured ratio equals ||w_after - w_before|| / ||w_before|| computed in numpy from a twin's get_weights
    around each train_on_batch, and reaches the Monitor."""
    cb = LrMonitor(update_ratio=True)
    make().fit(X, Y, batch_size=16, epochs=2, shuffle=False, verbose=0, callbacks=[cb])
    twin, want = make(), []
    for _ in range(2):
        for xb, yb in batches(X, Y):
            w0 = twin.get_weights()
            twin.train_on_batch(xb, yb)
            moved = sum(float(np.sum((a - b).astype(np.float64) ** 2)) for a, b in zip(twin.get_weights(), w0))
            want.append((moved / sum(float(np.sum(b.astype(np.float64) ** 2)) for b in w0)) ** 0.5)
    np.testing.assert_allclose(cb.ratios, want, rtol=1e-4)
    np.testing.assert_allclose(cb.monitor.curve().extra["update_ratio"], want, rtol=1e-4)
    assert not LrMonitor().ratios  # off by default
    # the gradient alignment (torch backend): plain SGD moves by -lr * gradient, so it is the cosine of consecutive
    # batches' weight changes (none at the first batch)
    twin, moves = make(), []
    for _ in range(2):
        for xb, yb in batches(X, Y):
            w0 = twin.get_weights()
            twin.train_on_batch(xb, yb)
            moves.append(np.concatenate([(a - b).astype(np.float64).ravel() for a, b in zip(twin.get_weights(), w0)]))
    cos = [a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(moves[1:], moves[:-1])]
    al = cb.monitor.curve().extra["grad_alignment"]
    assert np.isnan(al[0])
    np.testing.assert_allclose(al[1:], cos, rtol=1e-3, atol=1e-5)


def test_update_ratio_on_the_jax_backend_too():
    """On another backend the ratio is measured with keras.ops (here JAX, in its own process: a process has one
    Keras backend); the same numpy check as above."""
    pytest.importorskip("jax")
    import subprocess
    import sys

    code = """
import numpy as np, keras
assert keras.backend.backend() == "jax"
from lrkit.integrations.keras_monitor import LrMonitor
rng = np.random.default_rng(0)
X = rng.normal(size=(48, 4)).astype("float32"); Y = X[:, :1] * 2.0
def make():
    keras.utils.set_random_seed(1)
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)])
    m.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05), loss="mse")
    return m
cb = LrMonitor(update_ratio=True)
make().fit(X, Y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[cb])
twin, want = make(), []
for i in range(0, 48, 16):
    w0 = twin.get_weights(); twin.train_on_batch(X[i:i + 16], Y[i:i + 16])
    moved = sum(float(np.sum((a - b).astype(np.float64) ** 2)) for a, b in zip(twin.get_weights(), w0))
    want.append((moved / sum(float(np.sum(b.astype(np.float64) ** 2)) for b in w0)) ** 0.5)
np.testing.assert_allclose(cb.ratios, want, rtol=1e-4)
print("ok", len(cb.ratios))
"""
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "KERAS_BACKEND": "jax"},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok 3" in out.stdout, out.stderr[-2000:]


def test_nan_batch_rolls_back_to_the_last_good_state_and_cuts_the_lr():
    """A snapshot is good once 5 healthy batches followed it: with snapshot_every=1, the state after batch 0 is kept
    (pending) and good from batch 5; batch 6's is still pending when batch 8 goes NaN, so the rollback restores batch
    0's state and cuts the lr 10x (a NaN cuts hard)."""
    x = np.random.default_rng(1).normal(size=(160, 4)).astype("float32")  # 10 batches of 16
    y = (x @ np.array([[1.0], [-2.0], [0.5], [0.0]], dtype="float32") + 0.1).astype("float32")
    x[130] = np.inf  # batch 8 (rows 128-143) makes the loss and then every weight NaN
    cb = LrMonitor(act=True, snapshot_every=1)
    model = make()
    with pytest.warns(RuntimeWarning, match=r"\[nan\] step 8.*restored the snapshot of batch 0, lr x0.1 -> 0.005"):
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[cb])
    # the twin: batch 0 at lr 0.05, then (batches 1-8 undone) batch 9 at lr 0.005
    twin = make()
    bs = batches(x, y)
    twin.train_on_batch(*bs[0])
    twin.optimizer.learning_rate = 0.005
    twin.train_on_batch(*bs[9])
    assert [e.kind for e in cb.events] == ["nan"]
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(0.005)
    for a, b in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_warns_and_stops_on_nan_by_default():
    x = X.copy()
    x[40] = np.inf
    cb = LrMonitor()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        make().fit(x, Y, batch_size=16, epochs=2, shuffle=False, verbose=0, callbacks=[cb])
    assert len(cb.losses) == 3 and not np.isfinite(cb.losses[-1])  # stopped after the NaN batch
    assert any("stopped training" in str(m.message) for m in w)


def test_bad_arguments():
    with pytest.raises(LrkitError, match="skipping batches is not possible"):
        LrMonitor(act={"skip_batches"})
    with pytest.raises(LrkitError, match="snapshot_every must be >= 1"):
        LrMonitor(snapshot_every=0)


def test_callback_rescues_a_run_started_at_50x_a_good_lr():
    """Keras at 50x a good lr: unguarded it goes NaN; with the callback acting it is rolled back and cut until stable,
    below the closed-form stability bound, and learns (``_guard_task``)."""
    from _guard_task import BATCH, LR_HIGH, N, check_rescue, regression

    x, y = regression()

    def train(act):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=LR_HIGH), loss="mse")
        start = float(model.evaluate(x, y, batch_size=N, verbose=0))
        cb = LrMonitor(act=act, stop_on_nan=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(x, y, batch_size=BATCH, epochs=4, shuffle=False, verbose=0, callbacks=[cb])
        lr = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
        return cb, lr, start, float(model.evaluate(x, y, batch_size=N, verbose=0))

    assert not np.isfinite(train(False)[3])
    cb, lr, start, final = train(True)
    check_rescue(cb.events, lr, start, final, x)
