"""Overhead of the Keras live doctor (``LrMonitor``) on ``model.fit``, beside Keras' own per-batch
callback ``TerminateOnNaN``, in the same run.

Run: ``python benchmarks/doctor/bench_keras_monitor_overhead.py`` (Keras 3 on the torch backend, 1 thread; about two
minutes). An MLP 64-256-256-10, batch 64, AdamW; each variant fits one epoch of 300 batches, interleaved, 7 times;
medians of the per-batch time.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
import warnings

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from lrkit.integrations.keras_monitor import LrMonitor  # noqa: E402

BATCHES, BATCH, REPEATS = 300, 64, 7


def main() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", RuntimeWarning)  # random labels: the doctor's warnings are not the point here
    logging.getLogger("lrkit.monitor").setLevel(logging.ERROR)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCHES * BATCH, 64)).astype("float32")
    y = rng.integers(0, 10, BATCHES * BATCH)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256, activation="relu"),
                              keras.layers.Dense(256, activation="relu"), keras.layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.AdamW(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:BATCH * 20], y[:BATCH * 20], batch_size=BATCH, epochs=1, verbose=0)  # warm up
    variants = {"bare fit": lambda: [], "+ keras TerminateOnNaN": lambda: [keras.callbacks.TerminateOnNaN()],
                "+ lrkit LrMonitor": lambda: [LrMonitor()]}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(REPEATS):
        for name, callbacks in variants.items():
            cbs = callbacks()
            t0 = time.perf_counter()
            model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False, callbacks=cbs)
            times[name].append((time.perf_counter() - t0) / BATCHES)
    med = {k: statistics.median(v) for k, v in times.items()}
    bare = med["bare fit"]
    print(f"Keras {keras.__version__} ({keras.backend.backend()}), MLP 64-256-256-10, batch {BATCH}, AdamW, 1 thread; "
          f"medians of {REPEATS} interleaved fits of {BATCHES} batches")
    for name, t in med.items():
        extra = "" if name == "bare fit" else f"  (+{(t - bare) / bare:.2%})"
        print(f"  {name:32s} {t * 1e6:8.1f} us per batch{extra}")
    # isolated: the callbacks' own per-batch work on the fitted model (the fit timings above are noisy on a busy box)
    mine, theirs = LrMonitor(), keras.callbacks.TerminateOnNaN()
    mine.set_model(model)
    theirs.set_model(model)
    logs = {"loss": keras.ops.convert_to_tensor(2.3)}
    n = 20_000
    per = {}
    for name, cb in (("lrkit", mine), ("keras", theirs)):
        t0 = time.perf_counter()
        for i in range(n):
            if cb is mine:
                mine._prev = (0.0, 0.0)  # as at an epoch's first batch: every call reads the tracker and feeds the Monitor
            cb.on_train_batch_end(i, logs)
        per[name] = (time.perf_counter() - t0) / n
    ratio_cb = LrMonitor(update_ratio=True)  # one copy of the weights per batch, and two reductions
    ratio_cb.set_model(model)
    t0 = time.perf_counter()
    for i in range(n // 10):
        ratio_cb._prev = (0.0, 0.0)
        ratio_cb.on_train_batch_begin(i)
        ratio_cb.on_train_batch_end(i, logs)
    per["ratio"] = (time.perf_counter() - t0) / (n // 10)
    print(f"with update_ratio=True: {per['ratio'] * 1e6:.1f} us per batch ({per['ratio'] / bare:.2%} of a bare fit batch)")
    print(f"isolated cost per batch: LrMonitor {per['lrkit'] * 1e6:.1f} us ({per['lrkit'] / bare:.2%} of a "
          f"bare fit batch), TerminateOnNaN {per['keras'] * 1e6:.1f} us ({per['keras'] / bare:.2%}); ratio "
          f"{per['lrkit'] / per['keras']:.1f}x")


if __name__ == "__main__":
    main()
