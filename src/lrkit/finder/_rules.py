"""Suggestion rules: pure functions of a recorded range-test curve ``(lrs, losses)``, registered by name.

:func:`suggest` applies one by name; :func:`rules` lists them; :func:`register_rule` adds one. The default,
``robust``, fits a spike-robust smooth model of the raw loss against log-lr (:func:`fit_curve`) and picks a
family-aware factor (:func:`divergence_factor`) below the lr where the fit turns back up. A curve is judged on a
log-lr axis (an exponential ramp) or on a linear one (``mode="linear"``, a linear ramp).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, NamedTuple

import numpy as np

from lrkit.curve import kept_points
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


Rule = Callable[..., Suggestion]
_RULES: dict[str, Rule] = {}
_WANTS_END: set[str] = set()
_WANTS_FAMILY: set[str] = set()
_WANTS_RAW: set[str] = set()
_WANTS_MODE: set[str] = set()
DEFAULT_RULE = "robust"
MODES = ("exponential", "linear")


def register_rule(name: str, *, wants_end: bool = False, wants_family: bool = False,
                  raw: bool = False, wants_mode: bool = False) -> Callable[[Rule], Rule]:
    """Decorator: register ``fn(lrs, losses) -> Suggestion`` under ``name`` so ``suggest(..., rule=name)`` finds it.

    With ``wants_end=True`` the rule is also told ``ended_nonfinite=True|False``: whether the recorded curve was
    cut at a NaN/inf loss (the strongest sign of divergence); with ``wants_family=True`` it is also passed
    ``family=`` and ``momentum=`` (see :func:`suggest`); with ``wants_mode=True`` it is passed ``mode=``
    ("exponential" or "linear": how the ramp grew the lr, so a slope is per decade or per unit of lr). With
    ``raw=True`` a range test hands the rule its raw losses; otherwise the bias-corrected EMA of them (the classic
    rules are defined on the smoothed curve).
    """

    def deco(fn: Rule) -> Rule:
        _RULES[name] = fn
        for flag, names in ((raw, _WANTS_RAW), (wants_end, _WANTS_END), (wants_family, _WANTS_FAMILY),
                            (wants_mode, _WANTS_MODE)):
            if flag:
                names.add(name)
        return fn

    return deco


_ADAM_LIKE = ("adam", "rmsprop", "adagrad", "adadelta", "adafactor", "lamb", "lion", "nadam", "radam", "sophia",
              "adan", "lars", "shampoo", "muon")


def infer_family(optimizer: Any) -> tuple[str | None, float | None]:
    """("adam" | "sgd" | None, SGD's momentum) of an optimiser, for the rules that know the family.

    ``optimizer`` is an optimiser object (torch, Keras: read from its class name, and the momentum from its first
    param group or its ``momentum`` attribute; a wrapper that holds it as ``.optimizer`` is unwrapped), or the mapping of hyperparameter names to values that optax's
    ``inject_hyperparams`` keeps in its state (a second-moment decay ``b2``/``decay`` means Adam-like; only
    ``learning_rate``/``momentum``/``nesterov`` means SGD), or None (unknown: ``(None, None)``).
    """
    if optimizer is None:
        return None, None
    if isinstance(optimizer, Mapping):
        names = set(optimizer)
        if names & {"b2", "decay"}:
            return "adam", None
        if "learning_rate" in names and names <= {"learning_rate", "momentum", "nesterov"}:
            m = optimizer.get("momentum")
            return "sgd", 0.0 if m is None else round(float(np.asarray(m)), 6)
        return None, None
    inner = getattr(optimizer, "optimizer", None)  # a wrapper (accelerate, Lightning) holds the real optimiser
    if inner is not None and not isinstance(inner, Mapping):
        optimizer = inner
    name = type(optimizer).__name__.lower()
    groups = getattr(optimizer, "param_groups", None) or [{}]
    if name in ("sgd", "sgdw") or name.startswith("sgd"):
        m = groups[0].get("momentum", getattr(optimizer, "momentum", 0.0))  # torch: param group; keras: attribute
        return "sgd", float(m) if isinstance(m, (int, float)) else 0.0
    if any(k in name for k in _ADAM_LIKE):
        return "adam", None
    return None, None


def wants_raw(rule: str | None = None) -> bool:
    """Whether the rule (default :data:`DEFAULT_RULE`) judges the raw losses rather than the smoothed ones."""
    return (rule or DEFAULT_RULE) in _WANTS_RAW


def rules() -> list[str]:
    """The names of all registered rules."""
    return sorted(_RULES)


def check_rule(rule: str | None) -> str:
    """The rule's name (``None``: :data:`DEFAULT_RULE`); :class:`LrkitError` naming the known ones if unknown."""
    name = rule or DEFAULT_RULE
    if name not in _RULES:
        raise LrkitError(f"unknown suggestion rule {name!r}; choose one of: {', '.join(rules())}")
    return name


def suggest(lrs, losses, rule: str | None = None, *, family: str | None = None, momentum: float | None = None,
            mode: str | None = None, skip_start: int = 0, skip_end: int = 0) -> Suggestion:
    """Apply the rule ``rule`` (default :data:`DEFAULT_RULE`) to a curve of lrs and losses.

    ``family`` ("adam" for Adam-like optimisers: Adam, AdamW, RMSprop, Adagrad...; "sgd") and ``momentum`` (SGD's,
    default 0) are passed to rules registered with ``wants_family=True``; ``mode`` ("exponential" or "linear": the
    ramp's shape; default: read from the lrs, see :func:`ramp_mode`) to those with ``wants_mode=True``; the others
    ignore them. ``skip_start`` and ``skip_end`` leave out that many recorded points at the start and the end
    (e.g. the first steps, where the loss says little, or a divergence tail). Points at an lr <= 0 and NaN/inf
    losses before the first finite one are left out, and the reason says so; the curve ends at the first NaN/inf
    loss after that (see :func:`clean_curve`).
    """
    name = check_rule(rule)
    if mode is not None and mode not in MODES:
        raise LrkitError(f"mode must be 'exponential' or 'linear' (the ramp's shape), got {mode!r}")
    lrs, losses = _arrays(lrs, losses)
    keep = kept_points(len(lrs), skip_start, skip_end)
    c = _clean(lrs[keep], losses[keep])
    if len(c.lrs) < 5:
        skipped = (f" (after skipping {skip_start} at the start and {skip_end} at the end)"
                   if skip_start or skip_end else "")
        return Suggestion(None, None, name, f"only {len(c.lrs)} finite points were recorded{skipped}, too few to "
                          "judge; lower start_lr or raise num_iter so that more steps run before the loss diverges"
                          + c.note, 0.0)
    kwargs: dict = {}
    if name in _WANTS_END:
        kwargs["ended_nonfinite"] = c.ended_nonfinite
    if name in _WANTS_FAMILY:
        kwargs.update(family=family, momentum=momentum)
    if name in _WANTS_MODE:
        kwargs["mode"] = mode or ramp_mode(c.lrs)
    sug = _RULES[name](c.lrs, c.losses, **kwargs)
    return replace(sug, reason=sug.reason + c.note) if c.note else sug


def ramp_mode(lrs) -> str:
    """"linear" when the lrs grow by a constant step (a linear ramp), else "exponential"."""
    lrs = np.asarray(lrs, dtype=np.float64)
    if len(lrs) < 3:
        return "exponential"
    d = np.diff(lrs)
    if d.min() > 0 and d.max() - d.min() <= 1e-6 * d.max():
        ratio = lrs[1:] / lrs[:-1]
        if ratio.max() - ratio.min() > 1e-6 * ratio.max():
            return "linear"
    return "exponential"


def _arrays(lrs, losses) -> tuple[np.ndarray, np.ndarray]:
    lrs = np.asarray(lrs, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    if lrs.shape != losses.shape:
        raise LrkitError(f"lrs and losses must have the same length, got {lrs.shape} and {losses.shape}")
    return lrs, losses


class Cleaned(NamedTuple):
    """A recorded curve ready for a rule (see :func:`clean_curve`), and what was left out."""

    lrs: np.ndarray
    losses: np.ndarray
    ended_nonfinite: bool  # cut at a NaN/inf loss: the ramp diverged there
    leading_nonfinite: int  # NaN/inf losses before the first finite one, left out
    at_zero_lr: int  # points at an lr <= 0 (or NaN), left out

    @property
    def note(self) -> str:
        """What was left out, as a sentence to append to a reason ("" when nothing was)."""
        parts = []
        if self.leading_nonfinite:
            parts.append(f"the first {self.leading_nonfinite} loss(es) were NaN/inf and were left out")
        if self.at_zero_lr:
            parts.append(f"{self.at_zero_lr} point(s) at an lr <= 0 were left out")
        return (". Note: " + "; ".join(parts)) if parts else ""


def _clean(lrs, losses) -> Cleaned:
    lrs, losses = _arrays(lrs, losses)
    good_lr = np.isfinite(lrs) & (lrs > 0)
    at_zero = int((~good_lr).sum())
    lrs, losses = lrs[good_lr], losses[good_lr]
    finite = np.isfinite(losses)
    first = int(np.argmax(finite)) if finite.any() else len(losses)
    lrs, losses, finite = lrs[first:], losses[first:], finite[first:]
    # keep the prefix before the first non-finite loss: what follows a NaN is not information about the lr
    bad = np.flatnonzero(~finite)
    end = int(bad[0]) if bad.size else len(lrs)
    return Cleaned(lrs[:end], losses[:end], end < len(lrs), first, at_zero)


def clean_curve(lrs, losses) -> tuple[np.ndarray, np.ndarray]:
    """The recorded curve as float arrays, ready for a rule: points at an lr <= 0 (or NaN) and NaN/inf losses before
    the first finite one are left out, and the curve ends at the first NaN/inf loss after that (what follows a NaN
    says nothing about the lr). Raises :class:`LrkitError` when the lengths differ."""
    c = _clean(lrs, losses)
    return c.lrs, c.losses


def _interval(lrs: np.ndarray, lo: int, hi: int) -> tuple[float, float]:
    return (float(lrs[max(lo, 0)]), float(lrs[min(hi, len(lrs) - 1)]))


@register_rule("steepest", wants_mode=True)
def steepest(lrs: np.ndarray, losses: np.ndarray, *, mode: str = "exponential") -> Suggestion:
    """The lr where the loss falls fastest (torch-lr-finder's and Lightning's classic pick): per decade of lr on an
    exponential ramp, per unit of lr on a linear one."""
    linear = mode == "linear"
    grad = np.gradient(losses, lrs if linear else np.log10(lrs))
    i = int(np.argmin(grad))
    return Suggestion(float(lrs[i]), _interval(lrs, i - 5, i + 5), "steepest",
                      f"the loss falls fastest here ({grad[i]:.3g} per {'unit' if linear else 'decade'} of lr)", 0.4)


@register_rule("minimum")
def minimum(lrs: np.ndarray, losses: np.ndarray) -> Suggestion:
    """One tenth of the lr at the minimum of the loss (fastai's ``minimum`` rule)."""
    i = int(np.argmin(losses))
    lr = float(lrs[i]) / 10.0
    return Suggestion(lr, (lr / 3.0, float(lrs[i]) / 3.0), "minimum",
                      f"one tenth of the lr where the loss is lowest ({lrs[i]:.3g})", 0.5)


@register_rule("valley")
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


@register_rule("slide")
def slide(lrs: np.ndarray, losses: np.ndarray, *, lr_diff: int = 15, thresh: float = 0.005,
          adjust_value: float = 1.0) -> Suggestion:
    """fastai's interval slide rule (A. Chang): from the end of the curve, slide a window of ``lr_diff`` points
    towards the start while the loss's slope per point (``np.gradient``) differs between the window's two ends by
    more than ``thresh`` (loss units per point); the pick is the lr at the left end of the last window that did,
    times ``adjust_value``. Registered with fastai's defaults (15 points, 0.005, 1.0), on the smoothed loss."""
    n = len(losses)
    if n <= lr_diff:
        return Suggestion(None, None, "slide", f"only {n} points, and the slide rule compares points {lr_diff} "
                          "apart: raise num_iter", 0.0)
    slope = np.gradient(np.asarray(losses, dtype=np.float64))
    right = n - 1
    left = right - lr_diff
    while right - lr_diff >= 0 and abs(slope[right] - slope[right - lr_diff]) > thresh:
        left = right - lr_diff
        right -= 1
    lr = float(lrs[left]) * adjust_value
    return Suggestion(lr, _interval(lrs, left, left + lr_diff), "slide",
                      f"sliding a window of {lr_diff} points down from the end of the curve, the loss's slope stops "
                      f"changing by more than {thresh:g} per point across it at {lrs[left]:.3g}", 0.4)


# ---- the curve model shared by the robust rules ----------------------------------------------------------------
@dataclass(frozen=True)
class CurveFit:
    """A robust smooth fit of loss against log10(lr) (or lr, ``scale="linear"``) and the landmarks read off it
    (lrs in the curve's units)."""

    log_lrs: np.ndarray        # log10 of the recorded lrs (the plot's axis)
    fitted: np.ndarray         # the smooth loss at each recorded lr
    noise: float               # robust std of the raw points around the fit
    fit_noise: float           # std of the fit itself: noise / sqrt(points under the kernel)
    start_loss: float          # fitted loss at the low end of the ramp
    min_loss: float            # lowest fitted loss
    lr_min: float              # lr at the lowest fitted loss
    lr_diverge: float | None   # first lr past the minimum where the fit climbs back a quarter of the descent above
    #                            it (when the loss never fell clearly: climbs 4 fit_noise and stays up to the end)
    lr_steep: float            # lr where the fit falls fastest (per decade, or per unit of lr on a linear scale)
    steep_interval: tuple[float, float]  # where the fit falls at >= half its fastest rate
    diverged: bool             # the curve turned up clearly (or ended in NaN/inf) after its minimum
    rise: float                # how far the fit climbed after the minimum, in units of the descent
    rise_significance: float   # how far the fit climbed after the minimum, in units of fit_noise
    scale: str = "log"         # the axis the fit was made on: "log" (log10 lr) or "linear" (lr)
    fell: bool = True          # the loss fell clearly: a descent >= 3.5 fit_noise (2 when it then clearly diverged)


#: kernel matrix elements computed at once (a block of rows): memory stays bounded whatever the curve's length
_BLOCK = 1 << 18
#: grid points per bandwidth when the fit is evaluated on a grid (long curves), then interpolated (cubic)
_GRID_PER_BANDWIDTH = 8
#: a rise of the fit this many fit_noise above its minimum is significant (the same bar as ``diverged``)
_RISE_Z = 4.0


def _local_linear(x: np.ndarray, y: np.ndarray, h: float, w0: np.ndarray, at: np.ndarray | None = None
                  ) -> np.ndarray:
    """Kernel-weighted local linear regression of y on x (Gaussian kernel of bandwidth ``h``) at every point of
    ``at`` (default: at every x), a block of rows at a time (memory O(``_BLOCK``))."""
    at = x if at is None else at
    out = np.empty(len(at))
    rows = max(1, _BLOCK // max(len(x), 1))
    for a in range(0, len(at), rows):
        d = x[None, :] - at[a:a + rows, None]
        k = np.exp(-0.5 * (d / h) ** 2) * w0[None, :]
        s0, s1, s2 = k.sum(1), (k * d).sum(1), (k * d * d).sum(1)
        t0, t1 = (k * y[None, :]).sum(1), (k * d * y[None, :]).sum(1)
        det = s0 * s2 - s1 * s1
        ok = det > 1e-12 * np.maximum(s0 * s2, 1e-300)
        out[a:a + rows] = np.where(ok, (s2 * t0 - s1 * t1) / np.where(ok, det, 1.0), t0 / np.maximum(s0, 1e-300))
    return out


def _cubic_interp(grid: np.ndarray, values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Values on an evenly spaced ``grid`` interpolated at ``x`` by the cubic through the 4 nearest grid points."""
    m = len(grid)
    if m < 4:
        return np.interp(x, grid, values)
    step = (grid[-1] - grid[0]) / (m - 1)
    j = np.clip(np.floor((x - grid[0]) / step).astype(np.int64) - 1, 0, m - 4)  # the 4 points j .. j+3
    t = (x - grid[j]) / step  # in [0, 3]
    v0, v1, v2, v3 = values[j], values[j + 1], values[j + 2], values[j + 3]
    return (-v0 * (t - 1) * (t - 2) * (t - 3) / 6 + v1 * t * (t - 2) * (t - 3) / 2
            - v2 * t * (t - 1) * (t - 3) / 2 + v3 * t * (t - 1) * (t - 2) / 6)


def _smoother(x: np.ndarray, h: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``fit(y, w)``: the local linear fit at every x. At every point when the curve has no more points than a grid
    of ``_GRID_PER_BANDWIDTH`` points per bandwidth over its span; otherwise on that grid, interpolated (a long
    curve costs O(points x grid), not O(points^2))."""
    span = float(x.max() - x.min()) if len(x) else 0.0
    m = int(np.ceil(span / h * _GRID_PER_BANDWIDTH)) + 1
    if len(x) <= m:
        return lambda y, w: _local_linear(x, y, h, w)
    grid = np.linspace(float(x.min()), float(x.max()), m)
    return lambda y, w: _cubic_interp(grid, _local_linear(x, y, h, w, at=grid), x)


def fit_curve(lrs: np.ndarray, losses: np.ndarray, bandwidth: float | None = None,
              ended_nonfinite: bool = False, diverge_level: float = 0.25, scale: str = "log") -> CurveFit:
    """Fit a robust LOESS (local linear, Gaussian kernel, bisquare re-weighting against spikes) to loss vs log10(lr)
    (``scale="linear"``: vs lr, for a linear ramp).

    ``bandwidth`` is in decades of lr (default: 0.2 decades or 2.5 point spacings, whichever is wider); on a linear
    scale in units of lr (default: 1/40 of the span or 2.5 point spacings). The divergence point is the first lr
    past the minimum where the fit climbs ``diverge_level`` (default 0.25) times the descent depth (start loss -
    minimum) above its minimum; when the loss never fell clearly (``fell`` is False) that depth is noise: the
    divergence point is then where the fit climbs 4 fit_noise above its minimum and stays above to the end. Long
    curves are fitted on a grid (see :func:`_smoother`), in time and memory linear in their length.
    """
    if scale not in ("log", "linear"):
        raise LrkitError(f"scale must be 'log' or 'linear', got {scale!r}")
    lrs = np.asarray(lrs, dtype=np.float64)
    linear = scale == "linear"
    x = lrs if linear else np.log10(lrs)
    y = np.asarray(losses, dtype=np.float64)
    n = len(x)
    spacing = float(np.median(np.diff(x))) if n > 1 else 1.0
    if bandwidth is not None:
        h = bandwidth
    elif linear:
        h = max(float(x[-1] - x[0]) / 40 if n > 1 else 1.0, 2.5 * spacing)
    else:
        h = max(0.2, 2.5 * spacing)
    to_lr = (lambda i: float(lrs[i])) if linear else (lambda i: float(10 ** x[i]))
    smooth = _smoother(x, h)
    w = np.ones(n)
    fitted = smooth(y, w)
    for _ in range(2):  # robustness iterations: points far off the fit (spikes) lose their weight
        r = y - fitted
        # the scale of "far off": 6 MADs, but never below 1% of the loss level (a clean curve has MAD ~ 0)
        s = 6.0 * max(float(np.median(np.abs(r))), 0.01 * abs(float(np.median(y))), 1e-12)
        w = np.clip(1.0 - (r / s) ** 2, 0.0, None) ** 2
        # the final run of points above the fit is the divergence itself, not a spike: keep its weight
        below = np.flatnonzero(r <= 0)
        w[(below[-1] + 1) if below.size else 0:] = 1.0
        if w.sum() < 3:
            w = np.ones(n)
        fitted = smooth(y, w)
    noise = 1.4826 * float(np.median(np.abs(y - fitted)))
    k_eff = max(1.0, np.sqrt(2 * np.pi) * h / max(spacing, 1e-12))
    fit_noise = max(noise / np.sqrt(k_eff), 1e-9 * max(abs(float(np.median(y))), 1e-300))
    i_min = int(np.argmin(fitted))
    start = float(np.median(fitted[: max(3, n // 20)]))
    lo = float(fitted[i_min])
    depth = max(start - lo, 1e-12)
    after = fitted[i_min:]
    rise = float((after.max() - lo) / depth)
    rise_sig = float((after.max() - lo) / fit_noise)
    # a clear descent: deep enough against the fit's noise (less is asked of a curve that then clearly diverged)
    fell = bool(start - lo > 0 and start - lo >= 0.01 * abs(start)
                and (start - lo) / fit_noise >= (2.0 if ended_nonfinite or rise_sig > 10 else 3.5))
    if fell:  # the divergence point: where the fit first climbs back a quarter of its descent above its minimum
        above = np.flatnonzero(after > lo + diverge_level * depth)
        lr_div = to_lr(i_min + above[0]) if above.size else None
        diverged = ended_nonfinite or (rise_sig > _RISE_Z and (lr_div is not None or rise > 0.5))
    else:
        # a quarter of no descent is noise, and so is a wiggle of a flat, noisy curve: the divergence is where the
        # fit climbs 4 fit_noise above its minimum and stays there to the end of the curve
        high = after > lo + max(diverge_level * depth, _RISE_Z * fit_noise)
        low = np.flatnonzero(~high)
        lr_div = to_lr(i_min + int(low[-1]) + 1) if high[-1] else None
        diverged = ended_nonfinite or lr_div is not None
    if lr_div is None and diverged:
        lr_div = to_lr(n - 1) if ended_nonfinite or rise > 0.5 else None
    slope = np.gradient(fitted, x) if n > 1 else np.zeros(1)
    pre = slope[: i_min + 1]
    j = int(np.argmin(pre))
    fast = np.flatnonzero(pre <= 0.5 * pre[j]) if pre[j] < 0 else np.array([j])
    # the contiguous run of fast descent around the steepest point
    a = b = j
    fast_set = set(fast.tolist())
    while a - 1 in fast_set:
        a -= 1
    while b + 1 in fast_set:
        b += 1
    return CurveFit(np.log10(lrs), fitted, noise, fit_noise, start, lo, to_lr(i_min), lr_div, to_lr(j),
                    (to_lr(a), to_lr(b)), diverged, rise, rise_sig, scale, fell)


def fit_recorded(lrs, losses, mode: str | None = None) -> CurveFit | None:
    """:func:`fit_curve` on a recorded curve (cleaned as :func:`suggest` cleans it, on the axis of its ramp's
    ``mode``, read from the lrs when None); None with fewer than 5 points left."""
    c = _clean(lrs, losses)
    if len(c.lrs) < 5:
        return None
    linear = (mode or ramp_mode(c.lrs)) == "linear"
    return fit_curve(c.lrs, c.losses, ended_nonfinite=c.ended_nonfinite, scale="linear" if linear else "log")


def never_diverged(lrs, losses, mode: str | None = None) -> bool:
    """True when a recorded ramp (raw losses) never turned up: the divergence point lies beyond its end."""
    fit = fit_recorded(lrs, losses, mode)
    return fit is not None and not fit.diverged


#: How far below the divergence point the robust rule picks, per optimiser family (measured on
#: benchmarks/regret, tuning part): Adam-like optimisers train best about 10x below where a 100-step ramp
#: diverges; SGD about ``SGD_BASE + SGD_PER_MOMENTUM * momentum`` below (1.2 plain, 3.9 at momentum 0.9), since
#: a ramp outruns the momentum buffer; when the family is unknown the geometric middle of the two.
ADAM_FACTOR = 10.0
SGD_BASE, SGD_PER_MOMENTUM = 1.2, 3.0
UNKNOWN_FACTOR = 6.0
FAMILIES = ("adam", "sgd")


def divergence_factor(family: str | None, momentum: float | None = None) -> float:
    """How many times below the ramp's divergence point to train, for an optimiser family ("adam", "sgd", None)."""
    if family is None:
        return UNKNOWN_FACTOR
    if family not in FAMILIES:
        raise LrkitError(f"unknown optimiser family {family!r}; use 'adam' (Adam, AdamW, RMSprop, Adagrad...), "
                         "'sgd', or None when unknown")
    if family == "adam":
        return ADAM_FACTOR
    m = 0.0 if momentum is None else float(momentum)
    if not 0.0 <= m < 1.0:
        raise LrkitError(f"momentum must be in [0, 1), got {momentum!r}")
    return SGD_BASE + SGD_PER_MOMENTUM * m


@register_rule("robust", wants_end=True, wants_family=True, raw=True, wants_mode=True)
def robust(lrs: np.ndarray, losses: np.ndarray, *, ended_nonfinite: bool = False, family: str | None = None,
           momentum: float | None = None, mode: str = "exponential") -> Suggestion:
    """A fixed fraction of the lr where a robust smooth fit of the curve diverges (lrkit's default).

    Fits a robust LOESS to loss vs log-lr (vs lr on a linear ramp; :func:`fit_curve`) instead of differentiating
    noise, finds where the fit climbs back a quarter of its descent above its minimum (or where the loss became
    NaN/inf), and picks :func:`divergence_factor` (family-aware) below it. Best on the raw (unsmoothed) per-step
    losses.
    """
    name = "robust"
    lrs = np.asarray(lrs, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    factor = divergence_factor(family, momentum)
    fit = fit_curve(lrs, losses, ended_nonfinite=ended_nonfinite, scale="linear" if mode == "linear" else "log")
    n = len(lrs)
    depth = fit.start_loss - fit.min_loss
    fit_noise = fit.fit_noise
    significance = depth / fit_noise
    span = float(np.log10(lrs[-1] / lrs[0]))
    i_min = int(np.argmin(fit.fitted))
    early = max(3, n // 10)
    family_note = ("" if family else f"; the optimiser family is unknown, so {factor:g}x (between Adam-like 10x and "
                   "SGD's 1.2-4x) is used: pass family='adam'|'sgd' for a sharper pick")
    # the loss rose from the start: its lowest point is among the first, and it climbed soon after (a flat, noisy
    # start whose lowest point is a chance one and that climbs only later is a curve that never fell)
    i_div = int(np.argmin(np.abs(lrs - fit.lr_diverge))) if fit.lr_diverge is not None else n
    if i_min < early and fit.diverged and i_div < 2 * early:
        return Suggestion(None, None, name, f"the loss rose almost from the start (lowest at {fit.lr_min:.3g}, step "
                          f"{i_min} of {n}): the ramp began too high. Lower start_lr (e.g. to "
                          f"{lrs[0] / 100:.3g}) and run again", 0.0)
    if not fit.fell:
        return Suggestion(None, None, name, f"the loss never fell clearly (a descent of {depth:.3g} against noise "
                          f"{fit_noise:.3g}): no trustworthy suggestion. Raise end_lr (the ramp may stop before "
                          "the lr matters), run more steps (num_iter), or check that the model can learn at all",
                          0.0)
    if fit.diverged and fit.lr_diverge is not None:
        lr_div = fit.lr_diverge
        why_div = ("the loss became NaN/inf" if ended_nonfinite and fit.rise <= 0.25
                   else "the fitted loss climbs back a quarter of its descent")
        lr = lr_div / factor
        lo = max(lr / 3.0, float(lrs[0]))
        hi = min(lr * 2.5, lr_div / 1.2)
        confidence = float(np.clip(0.1 * np.log2(significance) + (0.1 if span >= 4 else 0.0), 0.2, 0.95))
        if family is None:
            confidence *= 0.8
        noisy = significance < 8
        reason = (f"{why_div} at lr {lr_div:.3g}; {factor:g}x below that is {lr:.3g} "
                  f"(the fit falls fastest between {fit.steep_interval[0]:.3g} and {fit.steep_interval[1]:.3g}, "
                  f"lowest at {fit.lr_min:.3g})" + family_note)
        if noisy:
            reason += (f". The curve is noisy (descent only {significance:.1f}x the noise): run more steps "
                       "(num_iter) or a larger batch for a surer pick")
        return Suggestion(float(lr), (float(lo), float(max(hi, lo))), name, reason, confidence)
    # fell but never turned up: the divergence point lies beyond end_lr, so end_lr bounds it from below; but first,
    # the raw losses must have fallen from the first tenth of the ramp to the last (the fit's lowest point at the
    # very end of a flat, noisy curve is often a chance one: an end point of a local fit is its noisiest)
    k = early
    fall = float(np.median(losses[:k]) - np.median(losses[-k:]))
    fall_se = 1.2533 * fit.noise * np.sqrt(2.0 / k)  # standard error of a difference of two medians of k points
    if fall <= 2.5 * fall_se:
        return Suggestion(None, None, name, f"the loss never fell clearly (the last {k} losses are {fall:.3g} below "
                          f"the first {k}, against noise {fall_se:.3g}) and never turned up: no trustworthy "
                          "suggestion. Raise end_lr (the ramp may stop before the lr matters), run more steps "
                          "(num_iter), or check that the model can learn at all", 0.0)
    lr_end = float(lrs[-1])
    lr = lr_end / factor
    return Suggestion(float(lr), (float(max(lr / 3.0, lrs[0])), float(lr_end)), name,
                      f"the loss was still falling at the end of the ramp ({lr_end:.3g}) without diverging, so "
                      f"{lr:.3g} ({factor:g}x below the end) is only a lower bound of a good lr. Raise end_lr "
                      f"(e.g. to {lr_end * 100:.3g}) so the ramp reaches divergence" + family_note, 0.25)
