"""The task the guard tests run in every framework: a linear regression trained with plain SGD by minibatches, started
at a far too high lr; and what a rescue must show, checked against a closed form.

For the mean squared error of a linear model the Hessian is 2 X^T X / n, so full-batch gradient descent is stable
iff lr < n / lambda_max(X^T X); minibatch SGD is stable only below that too. A rescued run ends below that bound,
having learned, with its lr changed by exactly the factors of the events the helper acted on.
"""

from __future__ import annotations

import numpy as np

N, D, BATCH = 640, 8, 8
LR_GOOD = 0.05  # well inside the bound (about 0.8 on this data)
LR_HIGH = 50 * LR_GOOD


def regression() -> tuple[np.ndarray, np.ndarray]:
    """x (N, D) standard normal, y = x w + 0.1 noise (N, 1), float32."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, D)).astype(np.float32)
    y = (x @ rng.standard_normal((D, 1)) + 0.1 * rng.standard_normal((N, 1))).astype(np.float32)
    return x, y


def stable_bound(x: np.ndarray) -> float:
    """The largest lr at which full-batch gradient descent on the mean squared error is stable: n / lambda_max(X^T X)."""
    x = x.astype(np.float64)
    return len(x) / float(np.linalg.eigvalsh(x.T @ x)[-1])


def check_rescue(events: list, lr_final: float, start_loss: float, final_loss: float, x: np.ndarray) -> None:
    """What a guard acting on a run started at LR_HIGH must show: it rolled back on a NaN or a divergence, ended
    below the stability bound by cuts only (the lr is LR_HIGH times the factors of the events it acted on), and
    learned (the full-data loss at most a tenth of the start's)."""
    kinds = [e.kind for e in events]
    assert {"nan", "divergence"} & set(kinds), kinds
    factors = [e.factor for e in events if e.factor is not None and e.action in ("rollback", "lower_lr")]
    assert abs(lr_final / (LR_HIGH * float(np.prod(factors))) - 1) < 1e-5, (lr_final, factors)
    assert all(f < 1 for f in factors)  # never a raise
    assert lr_final < stable_bound(x)
    assert np.isfinite(final_loss) and final_loss < 0.1 * start_loss, (start_loss, final_loss)
