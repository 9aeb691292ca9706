"""Schedule families: each factory checks its arguments and returns an immutable :class:`Schedule`.

Conventions (length, floors, boundaries, step 0) are pinned in :mod:`lrkit.schedules.conventions`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lrkit.errors import LrkitError
from lrkit.schedules import _check as ck
from lrkit.schedules._base import Schedule, _scalar, register
from lrkit.schedules.conventions import ANNEALS, anneal, progress

# ---------------------------------------------------------------------------------------------------------------


class _Constant(Schedule):
    kind = "constant"

    @property
    def length(self) -> float | None:
        return self.steps

    def _eval(self, xp: Any, t: Any) -> Any:
        return t * 0.0 + self.lr


@register("constant")
def constant(lr: float, steps: int | None = None) -> Schedule:
    """A fixed ``lr``; ``steps`` (optional) gives it a length so that ``constant(lr, steps) >> s`` sequences."""
    return _Constant(lr=ck.lr("constant", "lr", lr),
                     steps=None if steps is None else ck.count("constant", "steps", steps))


class _Step(Schedule):
    kind = "step"

    def _eval(self, xp: Any, t: Any) -> Any:
        return self.lr * self.gamma ** xp.floor(t / self.step_size)


@register("step")
def step(lr: float, step_size: int, gamma: float = 0.1) -> Schedule:
    """``lr * gamma ** floor(t / step_size)`` (torch ``StepLR``; ``step_size`` in optimiser steps)."""
    return _Step(lr=ck.lr("step", "lr", lr), step_size=ck.count("step", "step_size", step_size),
                 gamma=ck.number("step", "gamma", gamma, low=0.0, low_open=True))


class _MultiStep(Schedule):
    kind = "multistep"

    def _eval(self, xp: Any, t: Any) -> Any:
        k = t * 0.0
        for m in self.milestones:
            k = k + xp.where(t >= m, 1.0, 0.0)
        return self.lr * self.gamma ** k

    def phases(self) -> list[tuple[int, str]]:
        return [(m, f"x{self.gamma:g}") for m in self.milestones]


@register("multistep")
def multistep(lr: float, milestones: Sequence[int], gamma: float = 0.1) -> Schedule:
    """``lr * gamma ** (number of milestones <= t)`` (torch ``MultiStepLR``; optax ``piecewise_constant_schedule``
    with equal scales)."""
    ms = [ck.count("multistep", "milestones[]", m, low=0) for m in milestones]
    if any(b <= a for a, b in zip(ms, ms[1:])):
        raise LrkitError(f"multistep: milestones must be strictly increasing, got {ms}; sort them")
    return _MultiStep(lr=ck.lr("multistep", "lr", lr), milestones=ms,
                      gamma=ck.number("multistep", "gamma", gamma, low=0.0, low_open=True))


def _exponent(xp: Any, t: Any, steps: int, staircase: bool) -> Any:
    return xp.floor(t / steps) if staircase else t / steps


class _Exponential(Schedule):
    kind = "exponential"

    def _eval(self, xp: Any, t: Any) -> Any:
        v = self.lr * self.rate ** _exponent(xp, t, self.steps, self.staircase)
        if self.final is None:
            return v
        return xp.maximum(v, self.final) if self.rate < 1 else xp.minimum(v, self.final)


@register("exponential")
def exponential(lr: float, rate: float, steps: int = 1, staircase: bool = False,
                final: float | None = None) -> Schedule:
    """``lr * rate ** (t / steps)`` (floored exponent if ``staircase``), clipped at ``final`` when given.

    torch ``ExponentialLR(gamma)`` is ``exponential(lr, gamma)``; Keras ``ExponentialDecay`` and optax
    ``exponential_decay`` (``end_value`` = ``final``) use ``steps`` = their ``decay_steps``/``transition_steps``.
    """
    w = "exponential"
    return _Exponential(lr=ck.lr(w, "lr", lr), rate=ck.number(w, "rate", rate, low=0.0, low_open=True),
                        steps=ck.count(w, "steps", steps), staircase=bool(staircase),
                        final=None if final is None else ck.lr(w, "final", final))


class _InverseTime(Schedule):
    kind = "inverse_time"

    def _eval(self, xp: Any, t: Any) -> Any:
        return self.lr / (1.0 + self.rate * _exponent(xp, t, self.steps, self.staircase))


@register("inverse_time")
def inverse_time(lr: float, rate: float, steps: int = 1, staircase: bool = False) -> Schedule:
    """``lr / (1 + rate * t / steps)`` (Keras ``InverseTimeDecay``; not the transformer inverse square root)."""
    w = "inverse_time"
    return _InverseTime(lr=ck.lr(w, "lr", lr), rate=ck.number(w, "rate", rate, low=0.0),
                        steps=ck.count(w, "steps", steps), staircase=bool(staircase))


class _Polynomial(Schedule):
    kind = "polynomial"

    @property
    def length(self) -> float:
        return self.steps

    def _eval(self, xp: Any, t: Any) -> Any:
        return (self.peak - self.final) * (1.0 - progress(xp, t, self.steps)) ** self.power + self.final


@register("polynomial")
def polynomial(peak: float, steps: int, final: float = 0.0, power: float = 1.0) -> Schedule:
    """``(peak - final) * (1 - t/steps) ** power + final``, held at ``final`` after ``steps``.

    torch ``PolynomialLR`` is ``final=0``; Keras ``PolynomialDecay`` (``cycle=False``) and optax
    ``polynomial_schedule`` match with ``final`` = their end value.
    """
    w = "polynomial"
    pk = ck.lr(w, "peak", peak)
    return _Polynomial(peak=pk, steps=ck.count(w, "steps", steps), final=ck.final(w, final, pk),
                       power=ck.number(w, "power", power, low=0.0, low_open=True))


class _Linear(Schedule):
    kind = "linear"

    @property
    def length(self) -> float:
        return self.steps

    def _eval(self, xp: Any, t: Any) -> Any:
        p = progress(xp, t, self.steps)
        return self.start * (1.0 - p) + self.end * p  # exact at both ends


@register("linear")
def linear(start: float, end: float, steps: int) -> Schedule:
    """A straight line from ``start`` (step 0) to ``end`` (step ``steps``), then held (optax ``linear_schedule``;
    torch ``LinearLR`` with ``start = start_factor * lr``)."""
    w = "linear"
    return _Linear(start=ck.lr(w, "start", start), end=ck.lr(w, "end", end), steps=ck.count(w, "steps", steps))


class _Cosine(Schedule):
    kind = "cosine"

    @property
    def length(self) -> float:
        return self.steps

    def _eval(self, xp: Any, t: Any) -> Any:
        p = progress(xp, t, self.steps)
        c = 0.5 * (1.0 + xp.cos(math.pi * self.cycles * 2.0 * p))
        if self.exponent != 1.0:
            c = c**self.exponent
        return self.final + (self.peak - self.final) * c


@register("cosine")
def cosine(peak: float, steps: int, final: float = 0.0, exponent: float = 1.0, cycles: float = 0.5) -> Schedule:
    """Half-cosine from ``peak`` (step 0) to ``final`` (absolute, step ``steps``), then held.

    lr = final + (peak - final) * (0.5 * (1 + cos(2 pi cycles t/steps))) ** exponent. torch ``CosineAnnealingLR``
    (``eta_min`` = final; torch keeps oscillating past ``T_max``, lrkit holds); optax ``cosine_decay_schedule`` and
    Keras ``CosineDecay`` with ``final = alpha * peak``; ``cycles`` as transformers' ``num_cycles``.
    """
    w = "cosine"
    pk = ck.lr(w, "peak", peak)
    return _Cosine(peak=pk, steps=ck.count(w, "steps", steps), final=ck.final(w, final, pk),
                   exponent=ck.number(w, "exponent", exponent, low=0.0, low_open=True),
                   cycles=ck.number(w, "cycles", cycles, low=0.0, low_open=True))


class _CosineRestarts(Schedule):
    kind = "cosine_restarts"

    def _cycle(self, xp: Any, t: Any) -> tuple[Any, Any, Any]:
        """(cycle index i, step within the cycle, cycle length)."""
        p, m = self.period, self.period_mult
        if m == 1.0:
            i = xp.floor(t / p)
            return i, t - i * p, t * 0.0 + p
        i = xp.floor(xp.log(1.0 + t * (m - 1.0) / p) / math.log(m))
        if xp is _scalar:  # one step: plain branches
            mi = m**i
            start = p * (mi - 1.0) / (m - 1.0)
            if t - start >= p * mi:
                i, start, mi = i + 1, start + p * mi, mi * m
            elif t < start:
                i, mi = i - 1, mi / m
                start -= p * mi
            return i, t - start, p * mi
        mi = m**i
        start = p * (mi - 1.0) / (m - 1.0)
        # repair float rounding of the log at exact restart steps (off by one cycle at most)
        up = t - start >= p * mi
        i, start, mi = xp.where(up, i + 1.0, i), xp.where(up, start + p * mi, start), xp.where(up, mi * m, mi)
        down = t < start
        i, mi = xp.where(down, i - 1.0, i), xp.where(down, mi / m, mi)
        start = xp.where(down, start - p * mi, start)
        return i, t - start, p * mi

    def _eval(self, xp: Any, t: Any) -> Any:
        i, tc, length = self._cycle(xp, t)
        scale = self.decay**i if self.decay != 1.0 else 1.0
        lo = self.final
        span = (self.peak - lo) * scale if self.decay_span else self.peak * scale - lo
        return lo + span * (1.0 + xp.cos(math.pi * tc / length)) / 2.0


@register("cosine_restarts")
def cosine_restarts(peak: float, period: float, final: float = 0.0, period_mult: float = 1.0, decay: float = 1.0,
                    decay_span: bool = False) -> Schedule:
    """SGDR: cosine from ``peak * decay**i`` to ``final`` over cycle i of ``period * period_mult**i`` steps.

    torch ``CosineAnnealingWarmRestarts(T_0, T_mult, eta_min)`` is ``decay=1``; timm (``cycle_decay``) decays the
    peak as here; Keras ``CosineDecayRestarts(m_mul)`` decays the span above the floor instead, peak_i =
    final + (peak - final) * decay**i: ``decay_span=True, final=alpha*peak``.
    """
    w = "cosine_restarts"
    pk = ck.lr(w, "peak", peak)
    return _CosineRestarts(
        peak=pk, period=ck.number(w, "period", period, low=0.0, low_open=True), final=ck.final(w, final, pk), period_mult=ck.number(w, "period_mult", period_mult, low=1.0),
        decay=ck.number(w, "decay", decay, low=0.0, low_open=True), decay_span=bool(decay_span))


# ---- one-cycle: piecewise annealing between points -------------------------------------------------------------

def _onecycle_points(where: str, steps: int, pct_start: float, three_phase: bool, convention: str,
                     pct_end: float | None) -> list[float]:
    a = pct_start * steps
    b = (2 * pct_start if pct_end is None else pct_end) * steps
    if convention == "torch":  # torch OneCycleLR: phase ends at pct*T - 1 and 2*pct*T - 2 (floats), last at T - 1
        xs = [0.0, a - 1, b - 2, steps - 1.0] if three_phase else [0.0, a - 1, steps - 1.0]
    elif convention == "optax":  # optax *_onecycle_schedule: int(pct*T), int(pct_final*T), T
        xs = [0.0, float(int(a)), float(int(b)), float(steps)] if three_phase else [0.0, float(int(a)), float(steps)]
    else:  # fastai fit_one_cycle: position i/T, phases at pct*T, final at T (never reached)
        xs = [0.0, a, b, float(steps)] if three_phase else [0.0, a, float(steps)]
    if any(b <= x for x, b in zip(xs, xs[1:])):
        raise LrkitError(f"{where}: steps={steps} with pct_start={pct_start} leaves an empty phase "
                         f"(phase ends {xs}); use more steps or a pct_start in (1/steps, 0.5)")
    return xs


class _Piecewise(Schedule):
    """Annealing through (step, value) points with ``self.anneal``; before/after: first/last value."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.__dict__["_cached_points"] = self._compute_points()  # also checks that no phase is empty

    def _points(self) -> tuple[list[float], list[float]]:
        return self.__dict__["_cached_points"]

    def _compute_points(self) -> tuple[list[float], list[float]]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def length(self) -> float:
        return self.steps  # the steps it occupies in a sequence (torch's last value is at steps - 1)

    def _eval(self, xp: Any, t: Any) -> Any:
        xs, vs = self._points()
        # pick the segment with cheap selects, then anneal once (torch's rule: step <= phase end stays in it)
        x0, x1, v0, v1 = xs[0], xs[1], vs[0], vs[1]
        for i in range(1, len(xs) - 1):
            later = t > xs[i]
            x0, x1 = xp.where(later, xs[i], x0), xp.where(later, xs[i + 1], x1)
            v0, v1 = xp.where(later, vs[i], v0), xp.where(later, vs[i + 1], v1)
        pct = xp.minimum(xp.maximum((t - x0) / (x1 - x0), 0.0), 1.0)
        return anneal(xp, self.anneal, v0, v1, pct)

    def phases(self) -> list[tuple[int, str]]:
        xs, vs = self._points()
        return [(math.ceil(x), f"at {v:.3g}") for x, v in zip(xs[1:-1], vs[1:-1])]


class _OneCycle(_Piecewise):
    kind = "onecycle"

    def _compute_points(self) -> tuple[list[float], list[float]]:
        xs = _onecycle_points("onecycle", self.steps, self.pct_start, self.three_phase, self.convention,
                              self.pct_end)
        init = self.peak / self.div
        low = init / self.final_div
        return xs, ([init, self.peak, init, low] if self.three_phase else [init, self.peak, low])

    def momentum(self, low: float = 0.85, high: float = 0.95) -> Schedule:
        """The companion momentum (or Adam beta1) schedule: ``high`` -> ``low`` while the lr rises, back after."""
        return onecycle_momentum(self.steps, low, high, self.pct_start, self.anneal, self.three_phase,
                                 self.convention, self.pct_end)


def _onecycle_common(w: str, steps: Any, pct_start: Any, anneal_: Any, three_phase: Any, convention: Any,
                     pct_end: Any) -> dict:
    if pct_end is not None:
        pct_end = ck.number(w, "pct_end", pct_end, low=pct_start, high=1.0, low_open=True,
                            fix="pct_end (three-phase) is where the lr is back at peak/div, after pct_start")
    return dict(steps=ck.count(w, "steps", steps, low=2), pct_end=pct_end,
                pct_start=ck.number(w, "pct_start", pct_start, low=0.0, high=1.0, low_open=True, high_open=True),
                anneal=ck.choice(w, "anneal", anneal_, ANNEALS[:2]), three_phase=bool(three_phase),
                convention=ck.choice(w, "convention", convention, ("torch", "optax", "fastai")))


@register("onecycle")
def onecycle(peak: float, steps: int, pct_start: float = 0.3, anneal: str = "cos", div: float = 25.0,
             final_div: float = 1e4, three_phase: bool = False, convention: str = "torch",
             pct_end: float | None = None) -> Schedule:
    """One-cycle (Smith 2018): ``peak/div`` -> ``peak`` over ``pct_start`` of ``steps``, then down to
    ``peak/(div*final_div)``; ``three_phase`` goes back to ``peak/div`` first (as the paper).

    ``convention`` places the phase ends: "torch" (``OneCycleLR``: pct*T-1 and T-1, the default), "optax"
    (``cosine_onecycle_schedule``/``linear_onecycle_schedule``, which is three-phase: int(pct*T) and T), "fastai"
    (pct*T and T; fastai's defaults are pct_start=0.25, final_div=1e5: see :func:`onecycle_fastai`).
    ``pct_end`` (three-phase): where the lr is back at ``peak/div``; default ``2*pct_start`` (torch, the paper);
    optax's ``linear_onecycle_schedule`` uses ``pct_final=0.85``.
    Past the end the lr holds at its final value (no "Tried to step N times" error).
    """
    w = "onecycle"
    common = _onecycle_common(w, steps, pct_start, anneal, three_phase, convention, pct_end)
    return _OneCycle(peak=ck.lr(w, "peak", peak), div=ck.number(w, "div", div, low=0.0, low_open=True),
                     final_div=ck.number(w, "final_div", final_div, low=0.0, low_open=True), **common)


def onecycle_fastai(peak: float, steps: int, pct_start: float = 0.25, div: float = 25.0,
                    final_div: float = 1e5) -> Schedule:
    """fastai's ``fit_one_cycle`` lr: cosine, pct_start 0.25, final lr peak/(25*1e5), positions i/steps."""
    return onecycle(peak, steps, pct_start, "cos", div, final_div, False, "fastai")


class _OneCycleMomentum(_Piecewise):
    kind = "onecycle_momentum"

    def _compute_points(self) -> tuple[list[float], list[float]]:
        xs = _onecycle_points(self.kind, self.steps, self.pct_start, self.three_phase, self.convention,
                              self.pct_end)
        hi, lo = self.high, self.low
        return xs, ([hi, lo, hi, hi] if self.three_phase else [hi, lo, hi])


@register("onecycle_momentum")
def onecycle_momentum(steps: int, low: float = 0.85, high: float = 0.95, pct_start: float = 0.3,
                      anneal: str = "cos", three_phase: bool = False, convention: str = "torch",
                      pct_end: float | None = None) -> Schedule:
    """Momentum (or beta1) for one-cycle: ``high`` -> ``low`` as the lr rises, then back to ``high`` (torch
    ``OneCycleLR(cycle_momentum=True)``: base_momentum=0.85, max_momentum=0.95)."""
    w = "onecycle_momentum"
    lo = ck.number(w, "low", low, low=0.0, high=1.0)
    hi = ck.number(w, "high", high, low=lo, high=1.0, fix="high must be >= low")
    return _OneCycleMomentum(low=lo, high=hi,
                             **_onecycle_common(w, steps, pct_start, anneal, three_phase, convention, pct_end))


# ---- cyclical (CLR) ---------------------------------------------------------------------------------------------

class _Cyclical(Schedule):
    kind = "cyclical"

    def _eval(self, xp: Any, t: Any) -> Any:
        up = float(self.up)
        total = up + float(self.up if self.down is None else self.down)
        ratio = up / total
        cyc = xp.floor(1.0 + t / total)
        x = 1.0 + t / total - cyc
        scale = xp.where(x <= ratio, x / ratio, (x - 1.0) / (ratio - 1.0))
        height = (self.high - self.low) * scale
        if self.mode == "triangular2":
            height = height * (1.0 / (2.0 ** (cyc - 1.0)))
        elif self.mode == "exp_range":
            height = height * self.gamma**t
        return self.low + height


@register("cyclical")
def cyclical(low: float, high: float, up: int = 2000, down: int | None = None, mode: str = "triangular",
             gamma: float = 1.0) -> Schedule:
    """Cyclical lr (Smith 2017) between ``low`` and ``high``: ``up`` steps rising, ``down`` (default ``up``)
    falling; mode "triangular", "triangular2" (amplitude halves each cycle) or "exp_range" (times gamma**t).
    Same values as torch ``CyclicLR``."""
    w = "cyclical"
    lo = ck.lr(w, "low", low)
    return _Cyclical(low=lo, high=ck.number(w, "high", high, low=lo, fix="high must be >= low"),
                     up=ck.count(w, "up", up), down=None if down is None else ck.count(w, "down", down),
                     mode=ck.choice(w, "mode", mode, ("triangular", "triangular2", "exp_range")),
                     gamma=ck.number(w, "gamma", gamma, low=0.0, high=1.0, low_open=True))


# ---- warmup-stable-decay and inverse sqrt -------------------------------------------------------------------

_SHAPES = ("linear", "cos", "1-sqrt")


def _rise(xp: Any, mode: str, p: Any) -> Any:
    """0 -> 1 as p goes 0 -> 1; the cooldown uses ``_rise(1 - p)``."""
    if mode == "linear":
        return p
    if mode == "cos":
        return 0.5 * (1.0 - xp.cos(math.pi * p))
    return 1.0 - xp.sqrt(1.0 - p)


class _WSD(Schedule):
    kind = "wsd"

    def _parts(self) -> tuple[int, int, int]:
        d = self.decay if isinstance(self.decay, int) else round(self.decay * self.steps)
        return self.warmup, self.steps - self.warmup - d, d

    @property
    def length(self) -> float:
        return self.steps

    def _eval(self, xp: Any, t: Any) -> Any:
        w, s, d = self._parts()
        span = self.peak - self.final
        out = self.final + span * _rise(xp, self.cooldown, 1.0 - progress(xp, t - w - s, max(d, 1)))
        out = xp.where(t < w + s, self.peak, out)
        if w:
            out = xp.where(t < w, self.final + span * _rise(xp, self.warmup_mode, progress(xp, t, w)), out)
        return out

    def phases(self) -> list[tuple[int, str]]:
        w, s, _ = self._parts()
        return ([(w, "stable")] if w else []) + [(w + s, "decay")]


@register("wsd")
def wsd(peak: float, steps: int, warmup: int = 0, decay: float = 0.2, cooldown: str = "linear",
        final: float = 0.0, warmup_mode: str = "linear") -> Schedule:
    """Warmup-stable-decay: ``warmup`` steps from ``final`` up to ``peak``, hold, then a cooldown of ``decay``
    steps (an int) or fraction of ``steps`` (a float < 1) down to ``final``; the total is ``steps``.

    cooldown "linear", "cos" or "1-sqrt" (Hägele et al. 2024). Same values as transformers ``get_wsd_schedule``
    with ``min_lr_ratio = final/peak`` (its warmup also starts at the floor).
    """
    w = "wsd"
    steps = ck.count(w, "steps", steps, low=2)
    warm = ck.count(w, "warmup", warmup, low=0)
    if isinstance(decay, float) and 0 < decay < 1:
        dec: float | int = decay
        d = round(decay * steps)
    else:
        dec = d = ck.count(w, "decay", decay, low=1, fix="give the cooldown in steps (int) or as a fraction < 1")
    if warm + d > steps:
        raise LrkitError(f"wsd: warmup ({warm}) + decay ({d}) exceed steps ({steps}); shorten them or raise steps")
    pk = ck.lr(w, "peak", peak)
    cooldown = "cos" if cooldown == "cosine" else cooldown
    warmup_mode = "cos" if warmup_mode == "cosine" else warmup_mode
    return _WSD(peak=pk, steps=steps, warmup=warm, decay=dec, cooldown=ck.choice(w, "cooldown", cooldown, _SHAPES),
                final=ck.final(w, final, pk),
                warmup_mode=ck.choice(w, "warmup_mode", warmup_mode, _SHAPES))


class _InverseSqrt(Schedule):
    kind = "inverse_sqrt"

    def _eval(self, xp: Any, t: Any) -> Any:
        return self.peak * (1.0 / xp.sqrt((t + self.timescale) / self.timescale))


@register("inverse_sqrt")
def inverse_sqrt(peak: float, timescale: float = 10_000) -> Schedule:
    """``peak / sqrt((t + timescale) / timescale)`` (the transformer schedule after warmup; transformers'
    ``get_inverse_sqrt_schedule`` is ``warmup(W) >> inverse_sqrt(peak, timescale)``; fairseq/Noam: timescale=W)."""
    w = "inverse_sqrt"
    return _InverseSqrt(peak=ck.lr(w, "peak", peak),
                        timescale=ck.number(w, "timescale", timescale, low=0.0, low_open=True))
