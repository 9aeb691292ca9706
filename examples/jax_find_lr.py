"""Find an lr for a JAX/optax train_step, then train with an lrkit schedule inside jax.jit (CPU, a few seconds)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lrkit.jax


def loss_fn(params, batch):
    x, y = batch
    h = jax.nn.relu(x @ params["w1"] + params["b1"])
    logits = h @ params["w2"] + params["b2"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2048, 20)).astype("float32")
    y = (x[:, 0] + x[:, 1] ** 2 > 1).astype("int32")
    batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, len(x), 64)]
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    params = {"w1": jax.random.normal(k1, (20, 64)) * 0.2, "b1": jnp.zeros(64),
              "w2": jax.random.normal(k2, (64, 2)) * 0.2, "b2": jnp.zeros(2)}

    tx = lrkit.jax.inject_lr(optax.adamw, learning_rate=1e-3, weight_decay=1e-4)
    train_step = lrkit.jax.make_train_step(loss_fn, tx)  # train_step(params, opt_state, batch, lr)
    result = lrkit.jax.find_lr(train_step, params, tx.init(params), batches, num_iter=100, progress=False)
    print(result)

    lr = result.suggestion.lr or 1e-3
    tx = optax.adamw(lrkit.jax.scheduler(f"warmup(30) >> cosine({lr:.3g}, 290)"), weight_decay=1e-4)
    opt_state = tx.init(params)

    @jax.jit
    def update(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    for _epoch in range(10):
        for batch in batches:
            params, opt_state, loss = update(params, opt_state, batch)
    print("final loss", round(float(loss), 4))


if __name__ == "__main__":
    main()
