"""Reduce-on-plateau: the one stateful schedule. It multiplies a base schedule by ``factor ** k`` after k plateaus
of an observed metric, so it composes: ``warmup(500) >> plateau(1e-3, patience=5)``."""

from __future__ import annotations

import math
from typing import Any

from lrkit.schedules import _check as ck
from lrkit.schedules._base import Schedule, register


class _Plateau(Schedule):
    kind = "plateau"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.__dict__["_state"] = {"scale": 1.0, "best": math.inf if params["mode"] == "min" else -math.inf,
                                   "num_bad": 0, "cooldown_counter": 0, "observations": 0}

    @property
    def length(self) -> float | None:
        return self.schedule.length

    @property
    def reductions(self) -> int:
        """How many times the lr has been cut so far."""
        return round(math.log(self._state["scale"]) / math.log(self.factor)) if self._state["scale"] < 1 else 0

    def _eval(self, xp: Any, t: Any) -> Any:
        return xp.maximum(self.schedule._eval(xp, t) * self._state["scale"], self.min_lr)

    def _better(self, a: float, best: float) -> bool:
        th = self.threshold
        if self.mode == "min":
            return a < best * (1.0 - th) if self.threshold_mode == "rel" else a < best - th
        return a > best * (th + 1.0) if self.threshold_mode == "rel" else a > best + th

    def observe(self, metric: float, step: int | None = None) -> None:
        st = self._state
        current = float(metric)
        st["observations"] += 1
        if self._better(current, st["best"]):
            st["best"], st["num_bad"] = current, 0
        else:
            st["num_bad"] += 1
        if st["cooldown_counter"] > 0:
            st["cooldown_counter"] -= 1
            st["num_bad"] = 0
        if st["num_bad"] > self.patience:
            base = float(self.schedule(step or 0))
            old = max(base * st["scale"], self.min_lr)
            new = max(old * self.factor, self.min_lr)
            if old - new > self.eps and base > 0:
                st["scale"] *= self.factor
            st["cooldown_counter"], st["num_bad"] = self.cooldown, 0


@register("plateau")
def plateau(schedule: Schedule | float, factor: float = 0.1, patience: int = 10, threshold: float = 1e-4,
            threshold_mode: str = "rel", mode: str = "min", cooldown: int = 0, min_lr: float = 0.0,
            eps: float = 1e-8) -> Schedule:
    """``schedule`` (or a constant lr) times ``factor ** k`` after k plateaus of the metric given to
    ``.observe(metric)``: no improvement beyond ``threshold`` for more than ``patience`` observations; floored at
    ``min_lr``. The same rules and defaults as torch ``ReduceLROnPlateau``; state in ``state_dict()``."""
    w = "plateau"
    return _Plateau(schedule=ck.schedule(w, "schedule", schedule),
                    factor=ck.number(w, "factor", factor, low=0.0, high=1.0, low_open=True, high_open=True),
                    patience=ck.count(w, "patience", patience, low=0, fix="patience counts observations"),
                    threshold=ck.number(w, "threshold", threshold, low=0.0),
                    threshold_mode=ck.choice(w, "threshold_mode", threshold_mode, ("rel", "abs")),
                    mode=ck.choice(w, "mode", mode, ("min", "max")),
                    cooldown=ck.count(w, "cooldown", cooldown, low=0, fix="cooldown counts observations"),
                    min_lr=ck.lr(w, "min_lr", min_lr), eps=ck.number(w, "eps", eps, low=0.0))
