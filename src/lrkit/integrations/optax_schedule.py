"""JAX/optax adapter: an lrkit schedule as an optax schedule (``count -> lr``), traceable inside ``jax.jit``.

    tx = optax.adamw(lrkit.jax.scheduler("warmup(500) >> cosine(3e-4, 10000)"))
"""

from __future__ import annotations

from typing import Any

from lrkit.errors import LrkitError, missing_extra
from lrkit.schedules._base import Schedule
from lrkit.schedules.spec import as_schedule

try:
    import jax.numpy as jnp
except ImportError as e:  # pragma: no cover - exercised only without jax
    raise missing_extra("jax", "jax") from e


class OptaxSchedule:
    """Callable ``count -> lr`` (a jax array, float32 unless x64 is enabled); picklable; ``.schedule`` is the
    lrkit schedule it evaluates."""

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule

    def __call__(self, count: Any) -> Any:
        t = jnp.asarray(count)
        t = t.astype(jnp.result_type(float))
        return self.schedule._eval(jnp, t)

    def __repr__(self) -> str:
        return f"lrkit.jax.scheduler({str(self.schedule)!r})"


def scheduler(schedule: Schedule | str) -> OptaxSchedule:
    """An optax-compatible schedule from a Schedule or spec (no Python branching on the step: jit-safe).
    Plateau pieces are refused: their state lives in Python and would be frozen by ``jax.jit``."""
    schedule = as_schedule(schedule)
    if schedule._stateful():
        raise LrkitError(f"{schedule} has a plateau piece, whose state cannot live inside jax.jit; use "
                         "optax.contrib.reduce_on_plateau with optax, or drive plateau from Python with torch")
    return OptaxSchedule(schedule)


__all__ = ["OptaxSchedule", "scheduler"]
