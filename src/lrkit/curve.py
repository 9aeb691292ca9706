"""A loss trace (steps, values, lrs) and the math on it shared by the finder, the doctor and the monitor."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lrkit.errors import LrkitError


def ema(values: Sequence[float] | np.ndarray, beta: float = 0.98) -> np.ndarray:
    """Exponential moving average with bias correction (Adam-style): ``avg_t / (1 - beta**(t+1))``.

    Non-finite values propagate from where they occur (the average becomes NaN/inf there, as the raw loss did).
    """
    if not 0.0 <= beta < 1.0:
        raise LrkitError(f"smoothing beta must be in [0, 1), got {beta!r}")
    x = np.asarray(values, dtype=np.float64)
    out = np.empty_like(x)
    avg = 0.0
    for i, v in enumerate(x):  # a recurrence; n is small (hundreds) wherever this is used on a full array
        avg = beta * avg + (1.0 - beta) * v
        out[i] = avg / (1.0 - beta ** (i + 1))
    return out


class EMA:
    """Online bias-corrected exponential moving average: O(1) per update, the same numbers as :func:`ema`."""

    __slots__ = ("beta", "_avg", "_n")

    def __init__(self, beta: float = 0.98) -> None:
        if not 0.0 <= beta < 1.0:
            raise LrkitError(f"smoothing beta must be in [0, 1), got {beta!r}")
        self.beta, self._avg, self._n = float(beta), 0.0, 0

    def update(self, value: float) -> float:
        """Add one value; return the bias-corrected average so far."""
        self._n += 1
        self._avg = self.beta * self._avg + (1.0 - self.beta) * float(value)
        return self._avg / (1.0 - self.beta**self._n)

    @property
    def value(self) -> float:
        """The current bias-corrected average (NaN before the first update)."""
        return self._avg / (1.0 - self.beta**self._n) if self._n else float("nan")


@dataclass
class Curve:
    """A loss trace: ``steps`` (optimiser steps), ``values`` (loss), and ``lrs`` (the lr at each step, or None)."""

    steps: np.ndarray
    values: np.ndarray
    lrs: np.ndarray | None = None
    name: str = "loss"
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # where it came from: format, source, columns, notes

    def __post_init__(self) -> None:
        self.steps = np.asarray(self.steps, dtype=np.int64)
        self.values = np.asarray(self.values, dtype=np.float64)
        if self.steps.shape != self.values.shape or self.values.ndim != 1:
            raise LrkitError(f"a Curve needs 1-d steps and values of the same length, got {self.steps.shape} "
                             f"and {self.values.shape}")
        if self.lrs is not None:
            self.lrs = np.asarray(self.lrs, dtype=np.float64)
            if self.lrs.shape != self.values.shape:
                raise LrkitError(f"lrs must have one value per step: {self.lrs.shape} vs {self.values.shape}")

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def smoothed(self, beta: float = 0.98) -> np.ndarray:
        """The bias-corrected EMA of ``values``."""
        return ema(self.values, beta)


# ---------------------------------------------------------------------------------------------------------------
# Robust statistics shared by the doctor (whole curve) and the Monitor (online). Each idea has one implementation:
# the online classes below are O(1) per value, and the array functions run exactly those classes over the array,
# so ``lrkit diagnose`` on a finished log and ``Monitor`` during training see the same events at the same steps.
# ---------------------------------------------------------------------------------------------------------------

_MAD_TO_STD = 1.2533141373155  # sqrt(pi/2): mean absolute deviation -> standard deviation for a normal law


def kept_points(n: int, skip_start: int = 0, skip_end: int = 0) -> np.ndarray:
    """Which of ``n`` recorded points are kept after leaving out ``skip_start`` at the start and ``skip_end`` at the
    end (a boolean mask); :class:`LrkitError` unless both are counts >= 0."""
    for what, v in (("skip_start", skip_start), ("skip_end", skip_end)):
        if not (isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0):
            raise LrkitError(f"{what} must be a count of points >= 0, got {v!r}")
    keep = np.zeros(n, dtype=bool)
    keep[skip_start:n - skip_end] = True
    return keep


def robust_std(values: Sequence[float] | np.ndarray) -> float:
    """The median absolute deviation scaled to a standard deviation (x 1.4826, exact for a normal law)."""
    a = np.asarray(values, dtype=np.float64)
    return 1.4826 * float(np.median(np.abs(a - np.median(a))))


def step_noise(values: Sequence[float] | np.ndarray) -> float:
    """The batch-to-batch noise of a series, robust to its trend and to outliers: the :func:`robust_std` of its first
    differences over sqrt(2) (two independent draws differ by sqrt(2) standard deviations). Non-finite values are
    left out; 0 for fewer than 3 finite values. The doctor and the live Monitor read noise through this one rule."""
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size < 3:
        return 0.0
    return robust_std(np.diff(a)) / math.sqrt(2.0)


def running_median(values: Sequence[float] | np.ndarray, window: int) -> np.ndarray:
    """The centred running median over ``window`` points (made odd), the ends padded with the median of the first and
    last ``window // 2`` values:
    a smoother that follows a fast descent without the lag of an EMA and ignores spikes shorter than half the window."""
    a = np.asarray(values, dtype=np.float64)
    w = max(1, int(window)) | 1
    if w == 1 or a.size < 2:
        return a.copy()
    h = w // 2
    # the ends padded with the median of the first / last h values: one lucky first batch does not set the start
    padded = np.concatenate([np.full(h, np.median(a[:h])), a, np.full(h, np.median(a[-h:]))])
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, w), axis=1)


def robust_slope(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Slope of ``y`` against ``x``, robust to outliers: the median of the slopes between points half the span
    apart (a fast Theil–Sen, O(n)). Non-finite points are ignored; NaN when fewer than 2 remain."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    h = x.shape[0] // 2
    if h < 1:
        return float("nan")
    dx = x[h:2 * h] - x[:h]
    dy = y[h:2 * h] - y[:h]
    good = dx != 0
    return float(np.median(dy[good] / dx[good])) if good.any() else float("nan")


class RobustZ:
    """Online robust z-score of each new value against its forecast from the recent past: O(1) per update.

    The forecast is a damped Holt linear trend (level + slope, both EMAs), so a loss that is still falling fast
    does not look noisy; the scale is an EMA of absolute forecast errors (times sqrt(pi/2)). Level, slope and
    scale are updated with the error clipped to ``clip`` scales (Huber), so outliers barely move them. ``beta``
    sets the memory (about ``1/(1-beta)`` values, default 0.95 = 20 values); the first ``min_periods`` values only
    warm up (a robust line through them starts level, slope and scale) and score 0. A non-finite value scores +inf and does not update the statistics.
    """

    __slots__ = ("beta", "clip", "min_periods", "_n", "_loc", "_slope", "_scale", "_warm")

    def __init__(self, beta: float = 0.95, clip: float = 3.0, min_periods: int = 10) -> None:
        if not 0.0 < beta < 1.0:
            raise LrkitError(f"RobustZ beta must be in (0, 1), got {beta!r}")
        self.beta, self.clip, self.min_periods = float(beta), float(clip), int(min_periods)
        self._n, self._loc, self._slope, self._scale = 0, 0.0, 0.0, 0.0
        self._warm: list[float] = []

    def update(self, value: float) -> float:
        """Score ``value`` against the forecast from the values so far, then fold it in; returns the z-score."""
        v = float(value)
        if not math.isfinite(v):
            return math.inf
        self._n += 1
        if self._n <= max(self.min_periods, 2):  # warm-up: collect, then start from a robust line through them
            self._warm.append(v)
            if self._n == max(self.min_periods, 2):
                x = np.arange(len(self._warm), dtype=np.float64)
                w = np.asarray(self._warm)
                slope = robust_slope(x, w)
                self._slope = 0.0 if math.isnan(slope) else slope
                resid = w - self._slope * x
                icpt = float(np.median(resid))
                self._loc = icpt + self._slope * x[-1]
                self._scale = _MAD_TO_STD * float(np.mean(np.abs(resid - icpt)))
                self._warm = []
            return 0.0
        pred = self._loc + self._slope
        dev = v - pred
        scale = self._scale
        floor = 1e-8 * (pred if pred > 0 else -pred) + 1e-300
        if scale < floor:
            scale = floor
        z = dev / scale
        lim = self.clip * scale
        d = lim if dev > lim else (-lim if dev < -lim else dev)
        a = 1.0 - self.beta
        new_loc = pred + a * d
        self._slope += 0.2 * (new_loc - self._loc - self._slope)  # Holt trend gain 0.2: follows a loss still falling
        self._loc = new_loc
        self._scale += a * (_MAD_TO_STD * (d if d > 0 else -d) - self._scale)
        return z

    def skip(self, value: float) -> float:
        """Score ``value`` without folding it in (an outlier already known to be one); time still advances."""
        pred = self._loc + self._slope
        scale = max(self._scale, 1e-8 * abs(pred) + 1e-300)
        self._loc = pred
        return (float(value) - pred) / scale

    @property
    def loc(self) -> float:
        """The current robust level (the baseline a new value is compared with, before the slope)."""
        return self._loc

    @property
    def forecast(self) -> float:
        """The value expected next (level + slope)."""
        return self._loc + self._slope

    @property
    def scale(self) -> float:
        """The current robust scale (a standard deviation for normal noise)."""
        return self._scale

    def state_dict(self) -> dict:
        return {"n": self._n, "loc": self._loc, "slope": self._slope, "scale": self._scale, "warm": list(self._warm)}

    def load_state_dict(self, state: dict) -> None:
        self._n, self._loc, self._scale = int(state["n"]), float(state["loc"]), float(state["scale"])
        self._slope = float(state.get("slope", 0.0))
        self._warm = [float(v) for v in state.get("warm", [])]


def rolling_robust_z(values: Sequence[float] | np.ndarray, beta: float = 0.95, clip: float = 3.0,
                     min_periods: int = 10) -> np.ndarray:
    """The :class:`RobustZ` score of every value against the values before it (same numbers as online)."""
    rz = RobustZ(beta, clip, min_periods)
    return np.fromiter((rz.update(v) for v in np.asarray(values, dtype=np.float64)), dtype=np.float64,
                       count=len(values))


@dataclass
class Spike:
    """A persistent outlier run: where it began, peaked and ended (``end`` None: it never came back)."""

    start: int
    peak: int
    end: int | None
    peak_value: float
    baseline: float
    peak_z: float

    @property
    def recovered(self) -> bool:
        return self.end is not None

    @property
    def ratio(self) -> float:
        """Peak value over the baseline before the spike."""
        return self.peak_value / self.baseline if self.baseline else float("inf")


class SpikeDetector:
    """Online spike rule: a value more than ``z`` robust scales above the baseline for ``persistence``
    consecutive updates (each also more than ``z/2`` scales above the median of the last 5 ordinary values, so a
    stale trend forecast after a steep start is no spike) starts a spike, reported at its first step; it ends when a
    value is back within ``z/2`` scales of the pre-spike baseline (or of the forecast). Values inside a spike do not
    move the baseline;
    a spike longer than ``max_len`` updates (default ``2/(1-beta)``) is a new level: it stays unrecovered and the
    baseline is learnt afresh. O(1) per update; one detector per series (loss, grad norm).

    ``log=True`` scores ``log(value)`` (for positive, multiplicative series such as the gradient norm).
    """

    def __init__(self, z: float = 6.0, persistence: int = 3, beta: float = 0.95, clip: float = 3.0,
                 min_periods: int = 10, log: bool = False, max_len: int | None = None) -> None:
        if persistence < 1 or z <= 0:
            raise LrkitError(f"SpikeDetector needs z > 0 and persistence >= 1, got z={z}, persistence={persistence}")
        self.z, self.persistence, self.log = float(z), int(persistence), bool(log)
        self.max_len = int(max_len) if max_len else int(round(2 / (1 - beta)))  # longer: a level shift
        self.rz = RobustZ(beta, clip, min_periods)
        self._run: list = []  # (step, value, z) of the current outlier run
        self._open: Spike | None = None
        self._open_base: tuple[float, float] = (0.0, 0.0)  # pre-spike (loc, scale) in the scored space
        self._open_len = 0
        self._recent: deque[float] = deque(maxlen=5)  # the last 5 ordinary (non-outlier) values, scored space

    def update(self, step: int, value: float) -> tuple[Spike | None, Spike | None]:
        """Add one value; returns (spike that starts now or None, spike that ended now or None)."""
        v = float(value)
        if self.log:
            v = math.log(v) if v > 0 else (-math.inf if v == 0 else math.nan)
        if not math.isfinite(v):
            return None, None  # non-finite values are the divergence check's business
        loc, scale = self.rz._loc, self.rz._scale
        started = ended = None
        if self._open is not None:  # inside a spike: its values must not move the baseline
            zscore = self.rz.skip(v)
            self._open_len += 1
            if zscore > self._open.peak_z:
                self._open.peak, self._open.peak_value, self._open.peak_z = step, float(value), zscore
            base_loc, base_scale = self._open_base
            if v <= base_loc + 0.5 * self.z * base_scale or zscore <= 0.5 * self.z:
                self._open.end = step
                ended, self._open = self._open, None
            elif self._open_len >= self.max_len:  # it never came back: a new level, learn it afresh
                self._open = None
                self.rz = RobustZ(self.rz.beta, self.rz.clip, self.rz.min_periods)
            return None, ended
        zscore = self.rz.update(v)
        # an outlier must also stand out of the last few ordinary values, not only of the trend's forecast: right
        # after a steep start the forecast extrapolates a slope that has already flattened, and every value is
        # "above" it without any jump
        r = self._recent
        if zscore > self.z and len(r) >= 3 and v <= sorted(r)[len(r) // 2] + 0.5 * self.z * scale:
            zscore = 0.0
        if zscore <= self.z:
            r.append(v)
        if zscore > self.z:
            if not self._run:
                self._open_base = (loc, scale)
            self._run.append((step, float(value), zscore))
            if len(self._run) >= self.persistence:
                first = self._run[0]
                pk = max(self._run, key=lambda r: r[2])
                base = math.exp(self._open_base[0]) if self.log else self._open_base[0]
                started = self._open = Spike(first[0], pk[0], None, pk[1], base, pk[2])
                self._open_len = len(self._run)
                self._run = []
        elif self._run:
            self._run = []
        return started, ended

    def state_dict(self) -> dict:
        o = self._open
        return {"rz": self.rz.state_dict(), "run": list(self._run), "base": list(self._open_base),
                "open_len": self._open_len, "recent": list(self._recent),
                "open": None if o is None else [o.start, o.peak, o.end, o.peak_value, o.baseline, o.peak_z]}

    def load_state_dict(self, state: dict) -> None:
        self.rz.load_state_dict(state["rz"])
        self._run = [tuple(r) for r in state["run"]]
        self._open_base = tuple(state["base"])
        self._open_len = int(state.get("open_len", 0))
        self._recent = deque((float(v) for v in state.get("recent", [])), maxlen=5)
        self._open = None if state["open"] is None else Spike(*state["open"])


def spikes(values: Sequence[float] | np.ndarray, steps: Sequence[int] | np.ndarray | None = None,
           z: float = 6.0, persistence: int = 3, beta: float = 0.95, log: bool = False) -> list[Spike]:
    """Every spike of a series by the :class:`SpikeDetector` rule (the same events the Monitor raises online)."""
    values = np.asarray(values, dtype=np.float64)
    steps = np.arange(len(values)) if steps is None else np.asarray(steps, dtype=np.int64)
    det = SpikeDetector(z=z, persistence=persistence, beta=beta, log=log)
    found: list[Spike] = []
    for s, v in zip(steps.tolist(), values.tolist()):
        started, _ = det.update(s, v)
        if started is not None:
            found.append(started)  # the same object is closed in place when the spike ends
    return found


def unroll_running_mean(values: Sequence[float] | np.ndarray, epochs: Sequence[float] | np.ndarray) -> np.ndarray:
    """Per-batch values from running means that restart each epoch (Keras batch logs): within an epoch,
    ``x_k = (k+1) m_k - k m_(k-1)`` for the k-th logged batch (k from 0)."""
    m = np.asarray(values, dtype=np.float64)
    e = np.asarray(epochs)
    if m.shape != e.shape:
        raise LrkitError(f"unroll_running_mean needs one epoch per value: {m.shape} vs {e.shape}")
    starts = np.r_[True, e[1:] != e[:-1]]
    k = np.arange(len(m)) - np.maximum.accumulate(np.where(starts, np.arange(len(m)), 0))
    prev = np.r_[0.0, m[:-1]]
    return np.where(starts, m, (k + 1) * m - k * prev)


@dataclass
class Trend:
    """Robust slopes of a (smoothed) loss over the first and the last part of a run."""

    start_slope: float  # loss units per step over the first part
    end_slope: float  # loss units per step over the last part
    relative_drop: float  # (start level - end level) / |start level|

    @property
    def deceleration(self) -> float:
        """end slope / start slope: ~0 for a run that has levelled off, ~1 for a steady crawl."""
        return self.end_slope / self.start_slope if self.start_slope else float("nan")


def trend(values: Sequence[float] | np.ndarray, steps: Sequence[int] | np.ndarray | None = None,
          part: float = 1 / 3) -> Trend:
    """Robust slope over the first and the last ``part`` of the curve, and the relative drop between them."""
    y = np.asarray(values, dtype=np.float64)
    x = np.arange(len(y), dtype=np.float64) if steps is None else np.asarray(steps, dtype=np.float64)
    k = max(int(len(y) * part), 2)
    head, tail = y[:k][np.isfinite(y[:k])], y[-k:][np.isfinite(y[-k:])]
    start = float(np.median(head)) if head.size else float("nan")
    end = float(np.median(tail)) if tail.size else float("nan")
    drop = (start - end) / abs(start) if start else float("nan")
    return Trend(robust_slope(x[:k], y[:k]), robust_slope(x[-k:], y[-k:]), drop)
