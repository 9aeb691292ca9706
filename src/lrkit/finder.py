"""The LR range test engine: framework-free, driven through the :class:`Trainer` protocol.

Ramp the lr from ``start_lr`` to ``end_lr`` over ``num_iter`` optimiser steps, record the raw and smoothed
loss, stop when the smoothed loss diverges, and restore the trainer exactly (also on an exception).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from lrkit.curve import EMA, Curve, ema
from lrkit.errors import LrkitError
from lrkit.schedules import ramp
from lrkit.suggest import Suggestion, infer_family, suggest, wants_raw

FORMAT_VERSION = 1


@runtime_checkable
class Trainer(Protocol):
    """What a framework must provide for the range test.

    ``step(lr)`` runs one optimiser step at this lr and returns the training loss, or None when the step was
    skipped (e.g. a GradScaler found inf gradients) and must not be recorded. ``snapshot()`` captures
    everything the test changes; ``restore(snap)`` puts it back bit for bit. An optional ``evaluate() -> float``
    enables the validation-loss mode.
    """

    def step(self, lr: float) -> float | None: ...

    def snapshot(self) -> object: ...

    def restore(self, snap: object) -> None: ...


class Replay:
    """A :class:`Trainer` that plays recorded losses back, one per step: the engine's verdict on a recorded curve
    (e.g. losses logged inside a framework's own loop). Restoring rewinds it."""

    def __init__(self, losses: Sequence[float]) -> None:
        self.losses, self.i = list(losses), 0

    def step(self, lr: float) -> float:
        self.i += 1
        return self.losses[self.i - 1]

    def snapshot(self) -> None:
        return None

    def restore(self, snap: object) -> None:
        self.i = 0


@dataclass
class FinderResult:
    """What a range test recorded: lrs, raw and smoothed losses, why it stopped, and the suggestion."""

    lrs: np.ndarray
    losses: np.ndarray
    smoothed_losses: np.ndarray
    stop_reason: str
    stopped_at: int | None
    suggestion: Suggestion
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

    def suggest(self, rule: str | None = None) -> Suggestion:
        """Apply a suggestion rule (by name; default :data:`lrkit.suggest.DEFAULT_RULE`) to the recorded curve:
        the validation losses in validation mode, else the raw or the smoothed losses as the rule asks."""
        if self.val_losses is not None:
            idx = np.asarray(self.val_steps, dtype=np.int64)
            lrs, y = self.lrs[idx], np.asarray(self.val_losses)
        else:
            lrs, y = self.lrs, self.losses if wants_raw(rule) else self.smoothed_losses
        return suggest(lrs, y, rule=rule, family=self.config.get("family"), momentum=self.config.get("momentum"))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite losses become null)."""

        def arr(a):
            return None if a is None else [float(v) if np.isfinite(v) else None for v in np.asarray(a, float)]

        return {
            "format": "lrkit.find", "version": FORMAT_VERSION,
            "lrs": arr(self.lrs), "losses": arr(self.losses), "smoothed_losses": arr(self.smoothed_losses),
            "stop_reason": self.stop_reason, "stopped_at": self.stopped_at,
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

    def plot(self, path: str | os.PathLike | None = None, ax: Any = None, rules: Sequence[str] = ()) -> Any:
        """Plot loss against lr (log axis) with the suggestion marked; save to ``path`` if given. Returns the Axes."""
        from lrkit.plot import plot_finder

        return plot_finder(self, path=path, ax=ax, rules=rules)

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


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder, so no half-written file is left."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".lrkit-", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_range(start_lr: float, end_lr: float, num_iter: int) -> None:
    """Raise :class:`LrkitError` for a range the test cannot run."""
    if not isinstance(num_iter, (int, np.integer)) or num_iter < 5:
        raise LrkitError(f"num_iter must be an integer >= 5 (the test needs a curve), got {num_iter!r}; "
                         "use about 100")
    if not (isinstance(start_lr, (int, float)) and math.isfinite(start_lr) and start_lr > 0):
        raise LrkitError(f"start_lr must be a positive number, got {start_lr!r}")
    if not (isinstance(end_lr, (int, float)) and math.isfinite(end_lr)):
        raise LrkitError(f"end_lr must be a finite number, got {end_lr!r}")
    if start_lr >= end_lr:
        raise LrkitError(f"start_lr ({start_lr:g}) must be smaller than end_lr ({end_lr:g}); "
                         "the test ramps the lr up, e.g. start_lr=1e-7, end_lr=10")


def range_test(
    trainer: Trainer,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_iter: int = 100,
    mode: str = "exponential",
    smooth: float = 0.98,
    diverge_factor: float = 4.0,
    val_every: int | None = None,
    rule: str | None = None,
    progress: bool = True,
    max_skipped: int | None = None,
    family: str | None = None,
    momentum: float | None = None,
    max_seconds: float | None = None,
) -> FinderResult:
    """Run the LR range test on any :class:`Trainer` and restore it exactly afterwards (also on an exception).

    Args:
        start_lr, end_lr: the ramp's first and last lr; ``mode`` "exponential" (default) or "linear".
        num_iter: optimiser steps in the ramp (>= 5; default 100).
        smooth: EMA factor of the bias-corrected smoothed loss (default 0.98).
        diverge_factor: stop once the smoothed loss exceeds this times the best so far (default 4).
        val_every: evaluate ``trainer.evaluate()`` every k steps and judge on that loss (default: off).
        rule: suggestion rule by name (default :data:`lrkit.suggest.DEFAULT_RULE`).
        max_skipped: how many skipped steps (returned None) are tolerated in all (default ``num_iter``).
        family, momentum: the optimiser family ("adam" | "sgd") and SGD momentum, for rules that use them
            (default: read from ``trainer.optimizer`` when the trainer has one).
        max_seconds: time budget in seconds (default: none); no new step starts once it is spent (the first
            step always runs), and the stop reason says so.
    """
    check_range(start_lr, end_lr, num_iter)
    if max_seconds is not None and not (isinstance(max_seconds, (int, float)) and max_seconds > 0):
        raise LrkitError(f"max_seconds must be a positive number of seconds, got {max_seconds!r}; or None for no "
                         "time budget")
    if diverge_factor <= 1:
        raise LrkitError(f"diverge_factor must be > 1, got {diverge_factor!r}; the usual value is 4")
    if val_every is not None:
        if int(val_every) < 1:
            raise LrkitError(f"val_every must be a positive number of steps, got {val_every!r}")
        if not callable(getattr(trainer, "evaluate", None)):
            raise LrkitError("validation-loss mode needs a trainer with evaluate(); pass val_loader= to find_lr")
    if family is None and momentum is None:  # adapters that wrap an optimiser expose it as .optimizer
        family, momentum = infer_family(getattr(trainer, "optimizer", None))
    schedule = ramp(start_lr, end_lr, num_iter, mode)
    lr_at = schedule(np.arange(num_iter))
    max_skipped = num_iter if max_skipped is None else max_skipped
    config = dict(start_lr=start_lr, end_lr=end_lr, num_iter=num_iter, mode=mode, smooth=smooth,
                  diverge_factor=diverge_factor, val_every=val_every, family=family, momentum=momentum,
                  max_seconds=max_seconds)

    from tqdm.auto import tqdm

    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    val_steps: list[int] = []
    val_losses: list[float] = []
    avg = EMA(smooth)
    val_avg = EMA(smooth)
    best = math.inf
    stop_reason, stopped_at = f"reached end_lr ({end_lr:g}) after {num_iter} steps without diverging", None
    skipped = 0
    t0 = time.perf_counter()
    snap = trainer.snapshot()
    try:
        bar = tqdm(total=num_iter, desc="lrkit find", unit="step", disable=not progress, leave=False)
        try:
            i = 0
            while i < num_iter:
                lr = float(lr_at[i])
                if max_seconds is not None and i > 0 and time.perf_counter() - t0 >= max_seconds:
                    stop_reason = (f"time budget spent: max_seconds={max_seconds:g} s ran out after {i} steps "
                                   f"(lr {float(lr_at[i - 1]):.3g}), before end_lr ({end_lr:g})")
                    break
                loss = trainer.step(lr)
                if loss is None:  # the optimiser skipped this step (AMP overflow): not a point, same lr again
                    skipped += 1
                    if skipped > max_skipped:
                        raise LrkitError(f"{skipped} optimiser steps were skipped (e.g. by a GradScaler finding "
                                         "inf/NaN gradients); the model overflows at these lrs. Lower end_lr, "
                                         "or use bfloat16 instead of float16")
                    continue
                loss = float(loss)
                if i == 0 and not math.isfinite(loss):
                    raise LrkitError(f"the loss is {loss} at the first step (lr={lr:.3g}), before the lr can "
                                     "matter; check the data and the loss (e.g. log of 0, labels out of range) "
                                     "or lower start_lr")
                lrs.append(lr)
                losses.append(loss)
                value = loss
                if val_every is not None and (i % int(val_every) == 0 or i == num_iter - 1):
                    value = float(trainer.evaluate())
                    val_steps.append(i)
                    val_losses.append(value)
                    s = val_avg.update(value)
                    smoothed.append(avg.update(loss))
                else:
                    s = avg.update(loss)
                    smoothed.append(s)
                bar.update(1)
                if progress:
                    bar.set_postfix(lr=f"{lr:.2e}", loss=f"{s:.4g}", refresh=False)
                if not math.isfinite(value):
                    stop_reason, stopped_at = f"non-finite loss: the loss became {value} at step {i} (lr {lr:.3g})", i
                    break
                if (val_every is None or val_steps and val_steps[-1] == i):
                    if i > 0 and s > diverge_factor * best:
                        stop_reason = (f"diverged at step {i} (lr {lr:.3g}): smoothed loss {s:.4g} exceeded "
                                       f"{diverge_factor:g}x the best ({best:.4g})")
                        stopped_at = i
                        break
                    best = min(best, s)
                i += 1
        finally:
            bar.close()
    finally:
        trainer.restore(snap)
    result = FinderResult(
        lrs=np.asarray(lrs), losses=np.asarray(losses), smoothed_losses=np.asarray(smoothed),
        stop_reason=stop_reason, stopped_at=stopped_at,
        suggestion=Suggestion(None, None, "", ""), config=config,
        val_steps=np.asarray(val_steps, dtype=np.int64) if val_every is not None else None,
        val_losses=np.asarray(val_losses) if val_every is not None else None,
        elapsed_s=time.perf_counter() - t0,
    )
    result.suggestion = result.suggest(rule)
    result.config["rule"] = result.suggestion.rule
    return result


__all__ = ["Trainer", "FinderResult", "Replay", "range_test", "ema"]
