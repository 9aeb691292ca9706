"""Suggestion rules: pure functions of a recorded range-test curve, registered by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from lrkit.errors import LrkitError


@dataclass(frozen=True)
class Suggestion:
    """A suggested lr with an interval of good lrs, the rule that chose it, and why, in words.

    ``lr`` is None when the rule finds no trustworthy suggestion; ``reason`` then says why and what to try.
    ``confidence`` is in [0, 1].
    """

    lr: float | None
    interval: tuple[float, float] | None
    rule: str
    reason: str
    confidence: float = 0.5

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        d = asdict(self)
        d["interval"] = list(self.interval) if self.interval is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Suggestion:
        """Inverse of :meth:`to_dict`."""
        iv = d.get("interval")
        return cls(lr=d.get("lr"), interval=tuple(iv) if iv is not None else None, rule=d["rule"],
                   reason=d.get("reason", ""), confidence=float(d.get("confidence", 0.5)))


Rule = Callable[[np.ndarray, np.ndarray], Suggestion]
_RULES: dict[str, Rule] = {}
DEFAULT_RULE = "valley"


def register(name: str) -> Callable[[Rule], Rule]:
    """Decorator: register ``fn(lrs, losses) -> Suggestion`` under ``name`` so ``suggest(..., rule=name)`` finds it."""

    def deco(fn: Rule) -> Rule:
        _RULES[name] = fn
        return fn

    return deco


def rules() -> list[str]:
    """The names of all registered rules."""
    return sorted(_RULES)


def suggest(lrs, losses, rule: str | None = None) -> Suggestion:
    """Apply the rule ``rule`` (default :data:`DEFAULT_RULE`) to a curve of lrs and (smoothed) losses."""
    name = rule or DEFAULT_RULE
    if name not in _RULES:
        raise LrkitError(f"unknown suggestion rule {name!r}; choose one of: {', '.join(rules())}")
    lrs, losses = _clean(lrs, losses)
    if len(lrs) < 5:
        return Suggestion(None, None, name, f"only {len(lrs)} finite points were recorded, too few to judge; "
                          "lower start_lr or raise num_iter so that more steps run before the loss diverges", 0.0)
    return _RULES[name](lrs, losses)


def _clean(lrs, losses) -> tuple[np.ndarray, np.ndarray]:
    lrs = np.asarray(lrs, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    if lrs.shape != losses.shape:
        raise LrkitError(f"lrs and losses must have the same length, got {lrs.shape} and {losses.shape}")
    ok = np.isfinite(lrs) & np.isfinite(losses) & (lrs > 0)
    # keep the prefix before the first non-finite loss: what follows a NaN is not information about the lr
    bad = np.flatnonzero(~ok)
    end = int(bad[0]) if bad.size else len(lrs)
    return lrs[:end], losses[:end]


def _interval(lrs: np.ndarray, lo: int, hi: int) -> tuple[float, float]:
    return (float(lrs[max(lo, 0)]), float(lrs[min(hi, len(lrs) - 1)]))


@register("steepest")
def steepest(lrs: np.ndarray, losses: np.ndarray) -> Suggestion:
    """The lr where the loss falls fastest per unit of log-lr (torch-lr-finder's and Lightning's classic pick)."""
    grad = np.gradient(losses, np.log10(lrs))
    i = int(np.argmin(grad))
    return Suggestion(float(lrs[i]), _interval(lrs, i - 5, i + 5), "steepest",
                      f"the loss falls fastest here ({grad[i]:.3g} per decade of lr)", 0.4)


@register("minimum")
def minimum(lrs: np.ndarray, losses: np.ndarray) -> Suggestion:
    """One tenth of the lr at the minimum of the loss (fastai's ``minimum`` rule)."""
    i = int(np.argmin(losses))
    lr = float(lrs[i]) / 10.0
    return Suggestion(lr, (lr / 3.0, float(lrs[i]) / 3.0), "minimum",
                      f"one tenth of the lr where the loss is lowest ({lrs[i]:.3g})", 0.5)


@register("valley")
def valley(lrs: np.ndarray, losses: np.ndarray) -> Suggestion:
    """The point of the longest steady descent before the minimum (fastai's ``valley`` rule)."""
    n = len(losses)
    end = int(np.argmin(losses)) + 1
    # longest run of steps where each loss is below the one before it, up to the minimum
    best_len, best_start, run_start = 0, 0, 0
    for i in range(1, end):
        if losses[i] >= losses[i - 1]:
            run_start = i
        if i - run_start > best_len:
            best_len, best_start = i - run_start, run_start
    if best_len < 2:
        i = max(end - 1, 0) // 2
        return Suggestion(float(lrs[i]), _interval(lrs, 0, end - 1), "valley",
                          "the loss never fell steadily; this is half-way to its minimum, a weak guess", 0.2)
    lo, hi = best_start, best_start + best_len
    i = lo + (hi - lo) * 2 // 3
    return Suggestion(float(lrs[i]), _interval(lrs, lo, hi), "valley",
                      f"two thirds along the longest steady descent of the loss ({lrs[lo]:.3g} to {lrs[hi]:.3g}, "
                      f"{hi - lo} steps of {n})", 0.5)
