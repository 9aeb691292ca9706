"""What a range test recorded (:class:`FinderResult`) and why it stopped (:class:`Stop`)."""

from __future__ import annotations

import enum
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lrkit._files import atomic_write_text
from lrkit.curve import Curve
from lrkit.errors import LrkitError
from lrkit.finder._rules import CurveFit, Suggestion, fit_recorded, suggest, wants_raw
from lrkit.finder._stepper import group_lrs

FORMAT_VERSION = 1


class Stop(enum.Enum):
    """Why the ramp stopped; :attr:`FinderResult.stop_reason` says it in words, with the numbers."""

    END = "end"                # reached end_lr (or the extension's top) without diverging
    DIVERGED = "diverged"      # the smoothed loss exceeded diverge_factor x its best
    NON_FINITE = "non_finite"  # a loss was NaN or inf
    TIME = "time"              # the time budget (max_seconds) ran out

    @classmethod
    def from_reason(cls, reason: str) -> Stop:
        """The stop of a result saved before :class:`Stop` existed, read from its ``stop_reason`` text."""
        for prefix, stop in (("time budget", cls.TIME), ("diverged", cls.DIVERGED), ("non-finite", cls.NON_FINITE)):
            if reason.startswith(prefix):
                return stop
        return cls.END


@dataclass
class FinderResult:
    """What a range test recorded: the lr and the raw and smoothed loss of every ramp step, why it stopped
    (``stop``, and ``stop_reason`` in words; ``stopped_at`` the step), the ``suggestion``, the confirmation runs
    (``confirmations``: lr, score, steps each), ``config`` (the options and the optimiser steps each phase cost,
    ``config["steps"]``), and in validation mode the steps and values of the validation loss."""

    lrs: np.ndarray
    losses: np.ndarray
    smoothed_losses: np.ndarray
    stop_reason: str
    stopped_at: int | None
    suggestion: Suggestion
    stop: Stop = Stop.END
    config: dict[str, Any] = field(default_factory=dict)
    val_steps: np.ndarray | None = None
    val_losses: np.ndarray | None = None
    elapsed_s: float = 0.0
    confirmations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def curve(self) -> Curve:
        """The recorded (training or validation) loss as a :class:`~lrkit.curve.Curve` over lr."""
        if self.val_losses is not None:
            idx = np.asarray(self.val_steps, dtype=np.int64)
            return Curve(idx, self.val_losses, self.lrs[idx], name="val_loss")
        return Curve(np.arange(len(self.lrs)), self.losses, self.lrs, name="loss")

    def suggest(self, rule: str | None = None, *, skip_start: int = 0, skip_end: int = 0) -> Suggestion:
        """Apply a suggestion rule (by name; default ``"robust"``) to the recorded curve: the validation losses in
        validation mode, else the raw or the smoothed losses as the rule asks; ``skip_start``/``skip_end`` leave
        out that many points at either end (see :func:`lrkit.finder.suggest`)."""
        if self.val_losses is not None:
            idx = np.asarray(self.val_steps, dtype=np.int64)
            lrs, y = self.lrs[idx], np.asarray(self.val_losses)
        else:
            lrs, y = self.lrs, self.losses if wants_raw(rule) else self.smoothed_losses
        return suggest(lrs, y, rule=rule, family=self.config.get("family"), momentum=self.config.get("momentum"),
                       mode=self.config.get("mode"), skip_start=skip_start, skip_end=skip_end)

    @property
    def group_suggestions(self) -> list[float] | None:
        """The pick for every param group, group 0 first: the groups' own ramps mapped at the pick when the test
        ramped each group over its own ``start_lr``..``end_lr`` (``config["group_ranges"]``); else None (the
        groups keep their ratios to ``suggestion.lr``). None without a pick."""
        ranges = self.config.get("group_ranges")
        if not ranges or self.suggestion.lr is None:
            return None
        return group_lrs(self.suggestion.lr, ranges, self.config.get("mode", "exponential"))

    def robust_fit(self) -> CurveFit | None:
        """The robust fit of the raw losses that the rule judged (None in validation mode, for rules that judge the
        smoothed loss, or with fewer than 5 finite points)."""
        if self.val_losses is not None or not wants_raw(self.config.get("rule", "").split("+")[0] or None):
            return None
        return fit_recorded(self.lrs, self.losses, self.config.get("mode"))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite losses become null)."""

        def arr(a):
            return None if a is None else [float(v) if np.isfinite(v) else None for v in np.asarray(a, float)]

        return {
            "format": "lrkit.find", "version": FORMAT_VERSION,
            "lrs": arr(self.lrs), "losses": arr(self.losses), "smoothed_losses": arr(self.smoothed_losses),
            "stop_reason": self.stop_reason, "stop": self.stop.value, "stopped_at": self.stopped_at,
            "suggestion": self.suggestion.to_dict(), "config": self.config,
            "val_steps": None if self.val_steps is None else [int(s) for s in self.val_steps],
            "val_losses": arr(self.val_losses), "elapsed_s": self.elapsed_s,
            "confirmations": [{k: (v if not isinstance(v, float) or np.isfinite(v) else None) for k, v in c.items()}
                              for c in self.confirmations],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinderResult:
        """Inverse of :meth:`to_dict`."""
        if d.get("format") != "lrkit.find":
            raise LrkitError("this JSON is not an lrkit range-test result (no \"format\": \"lrkit.find\"); "
                             "pass a file written by FinderResult.save or `lrkit find`")

        def arr(a):
            return None if a is None else np.array([np.nan if v is None else v for v in a], dtype=np.float64)

        return cls(lrs=arr(d["lrs"]), losses=arr(d["losses"]), smoothed_losses=arr(d["smoothed_losses"]),
                   stop_reason=d["stop_reason"], stopped_at=d.get("stopped_at"),
                   stop=Stop(d["stop"]) if "stop" in d else Stop.from_reason(d["stop_reason"]),
                   suggestion=Suggestion.from_dict(d["suggestion"]), config=d.get("config", {}),
                   val_steps=None if d.get("val_steps") is None else np.asarray(d["val_steps"], dtype=np.int64),
                   val_losses=arr(d.get("val_losses")), elapsed_s=float(d.get("elapsed_s", 0.0)),
                   confirmations=[{k: (math.inf if v is None and k == "score" else v) for k, v in c.items()}
                                  for c in d.get("confirmations", [])])

    def save(self, path: str | os.PathLike) -> None:
        """Write the result as JSON, atomically (a temporary file renamed into place)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> FinderResult:
        """Read a result written by :meth:`save`."""
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise LrkitError(f"cannot read range-test result {os.fspath(path)!r}: {e}") from e
        return cls.from_dict(d)

    @property
    def total_steps(self) -> int:
        """Optimiser steps the test took in all (ramp, extension and confirmation runs)."""
        steps = self.config.get("steps")
        return int(sum(steps.values())) if steps else len(self.lrs)

    def plot(self, path: str | os.PathLike | None = None, ax: Any = None, rules: Sequence[str] = (), *,
             skip_start: int = 0, skip_end: int = 0) -> Any:
        """Plot loss against lr (log axis) with the suggestion marked; save to ``path`` if given. Returns the Axes.
        ``skip_start``/``skip_end`` leave out that many points at either end of the drawn curve (and of the extra
        ``rules``' curve)."""
        from lrkit.plot import plot_finder

        return plot_finder(self, path=path, ax=ax, rules=rules, skip_start=skip_start, skip_end=skip_end)

    def __str__(self) -> str:
        s = self.suggestion
        if s.lr is None:
            head = "no trustworthy suggestion"
        else:
            lo, hi = s.interval if s.interval else (s.lr, s.lr)
            head = f"suggested lr {s.lr:.3g} (interval {lo:.3g} .. {hi:.3g}, rule {s.rule!r})"
        text = f"{head}\n  why: {s.reason}\n  stopped: {self.stop_reason}"
        if self.confirmations:
            runs = ", ".join(f"{c['lr']:.3g} -> {c['score']:.4g}" for c in self.confirmations)
            text += f"\n  confirmation runs ({self.confirmations[0].get('steps', '?')} steps each, lr -> loss): {runs}"
        return text
