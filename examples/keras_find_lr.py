"""Find an lr for a Keras 3 model (torch backend, no TensorFlow), in fit and with find_lr, then train with an
lrkit schedule (CPU, a few seconds)."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is imported

import keras  # noqa: E402
import numpy as np  # noqa: E402

import lrkit.keras  # noqa: E402


def build(learning_rate) -> keras.Model:
    model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dropout(0.1, seed=0), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def main() -> None:
    keras.utils.set_random_seed(0)
    x = np.random.randn(1024, 20).astype("float32")
    y = (x[:, 0] + x[:, 1] ** 2 > 1).astype("int64")
    model = build(1e-3)
    result = lrkit.keras.find_lr(model, x, y, batch_size=64, num_iter=100, progress=False)
    print(result)
    finder = lrkit.keras.LRFinder(num_iter=100, progress=False)  # the same test inside model.fit, then the pick
    model.fit(x, y, batch_size=64, epochs=50, verbose=0, callbacks=[finder])
    print("in fit:", finder.result.suggestion.lr)
    lr = result.suggestion.lr or 1e-3
    model = build(lrkit.keras.scheduler(f"warmup(8) >> cosine({lr:.3g}, 72)"))
    history = model.fit(x, y, batch_size=64, epochs=5, verbose=0)
    print("final loss", round(history.history["loss"][-1], 4))


if __name__ == "__main__":
    main()
