"""Keras batch logs hold running means since the start of each epoch: the doctor unrolls them (real Keras)."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lrkit.curve import unroll_running_mean  # noqa: E402
from lrkit.doctor import read_log  # noqa: E402

keras = pytest.importorskip("keras")


def test_unroll_closed_form():
    x = np.array([3.0, 1.0, 2.0, 5.0, 4.0, 0.5])
    epochs = np.array([0, 0, 0, 1, 1, 1])
    running = np.r_[np.cumsum(x[:3]) / np.arange(1, 4), np.cumsum(x[3:]) / np.arange(1, 4)]
    np.testing.assert_allclose(unroll_running_mean(running, epochs), x)


def test_real_keras_batch_logs_are_running_means(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype("float32")
    y = rng.standard_normal((64, 1)).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), loss="mse")  # frozen weights
    rows = []

    class Log(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            rows.append((len(rows), self.epoch, batch, float(logs["loss"])))

    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[Log()])
    p = tmp_path / "keras_batches.csv"
    p.write_text("step,epoch,batch,loss\n" + "".join(f"{s},{e},{b},{v!r}\n" for s, e, b, v in rows))
    pred = np.asarray(model.predict(x, batch_size=64, verbose=0))
    per_batch = ((pred - y) ** 2).reshape(8, 8).mean(axis=1)  # the true loss of each batch of 8
    raw = read_log(p)
    assert not np.allclose(raw.values[:8], per_batch, rtol=1e-4)  # as logged: running means, not batch losses
    c = read_log(p, running_mean=True)
    np.testing.assert_allclose(c.values, np.tile(per_batch, 2), rtol=1e-4, atol=1e-6)
    assert "running means" in c.meta["semantics"]
