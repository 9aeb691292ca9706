"""Combinators: warmup, join (``>>``), cycle, scale/multiply (``*``) and clamps."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lrkit.errors import LrkitError
from lrkit.schedules import _check as ck
from lrkit.schedules._base import _ATOM, _MUL, _SHIFT, Schedule, _scalar, format_value, register
from lrkit.schedules.conventions import anneal, progress, switched


def _wrap(s: Schedule, prec: int) -> str:
    text, p = s._format()
    return text if p >= prec else f"({text})"


# ---- warmup ---------------------------------------------------------------------------------------------------

class _Warmup(Schedule):
    kind = "warmup"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.__dict__["_fixed_peak"] = not self.schedule._stateful()  # peak = schedule(0) can be a constant

    @property
    def length(self) -> float | None:
        n = self.schedule.length
        return None if n is None else self.steps + n

    def _eval(self, xp: Any, t: Any) -> Any:
        w = self.steps
        if xp is _scalar and t >= w:  # one step: evaluate the active piece only
            return self.schedule._eval(xp, t - w)
        after = self.schedule._eval(xp, xp.maximum(t - w, 0.0))
        if self.mode == "none":
            return after
        peak = self.schedule._eval(_scalar, 0.0) if self.__dict__["_fixed_peak"] else self.schedule._eval(xp, 0.0)
        p = progress(xp, t, w)
        if self.mode == "linear":
            ramp = peak * (self.start + (1.0 - self.start) * p)
        else:
            ramp = anneal(xp, "exp", self.start, 1.0, p) * peak
        return xp.where(switched(t, w), after, ramp)

    def observe(self, metric: float, step: int | None = None) -> None:
        if step is None or step >= self.steps:  # metrics seen during the warmup are ignored
            self.schedule.observe(metric, None if step is None else step - self.steps)

    def phases(self) -> list[tuple[int, str]]:
        return [(self.steps, "warmup end")] + [(s + self.steps, n) for s, n in self.schedule.phases()]

    def _format(self) -> tuple[str, int]:
        extra = "".join(f", {k}={format_value(v)}" for k, v in (("start", self.start), ("mode", self.mode))
                        if v != {"start": 0.0, "mode": "linear"}[k])
        return f"warmup({self.steps}{extra}) >> {_wrap(self.schedule, _MUL)}", _SHIFT


class WarmupPrefix:
    """``warmup(steps)`` without its schedule yet: ``warmup(500) >> cosine(...)`` completes it."""

    def __init__(self, steps: int, start: float, mode: str) -> None:
        self.steps, self.start, self.mode = steps, start, mode

    def __rshift__(self, other: Any) -> Schedule:
        return warmup(ck.schedule("warmup", "the schedule after >>", other), self.steps, self.start, self.mode)

    def __call__(self, step: Any) -> Any:
        raise LrkitError(f"warmup({self.steps}) has no schedule to warm up to; write warmup({self.steps}) >> "
                         "cosine(3e-4, 10000) or warmup(schedule, steps)")

    def __repr__(self) -> str:
        return f"warmup({self.steps})"


@register("warmup")
def warmup(schedule: Schedule | int, steps: int | None = None, start: float = 0.0,
           mode: str = "linear") -> Any:
    """Prepend ``steps`` warmup steps to ``schedule``: from ``start * peak`` at step 0 to ``peak = schedule(0)``
    at step ``steps``, where ``schedule`` starts in its own time (total = steps + schedule.length).

    ``mode``: "linear" (transformers/optax/Keras), "exp" (geometric, needs ``start > 0``) or "none" (no ramp: a
    flat ``peak`` prefix, then ``schedule``). ``warmup(500)`` alone is a prefix for ``warmup(500) >> schedule``.
    """
    w = "warmup"
    if isinstance(schedule, int) and not isinstance(schedule, bool) and steps is None:
        return WarmupPrefix(ck.count(w, "steps", schedule, low=0), _warm_start(start, mode), mode)
    if steps is None:
        raise LrkitError("warmup: steps is missing; write warmup(schedule, steps) or warmup(steps) >> schedule")
    steps = ck.count(w, "steps", steps, low=0)
    start = _warm_start(start, mode)
    s = ck.schedule(w, "schedule", schedule)
    if isinstance(s, _Join):  # canonical form: warm up the first piece, so warmup(a >> b) == warmup(W) >> a >> b
        first = warmup(s.schedules[0], steps, start, mode)
        return join([first, *s.schedules[1:]], [b + steps for b in s.boundaries])
    if steps == 0:
        return s
    return _Warmup(schedule=s, steps=steps, start=start, mode=mode)


def _warm_start(start: Any, mode: Any) -> float:
    ck.choice("warmup", "mode", mode, ("linear", "exp", "none"))
    v = ck.number("warmup", "start", start, low=0.0, high=1.0,
                  fix="start is the fraction of the peak lr at step 0, e.g. 0.0 or 0.01")
    if mode == "exp" and v == 0.0:
        raise LrkitError("warmup: mode='exp' needs start > 0 (a geometric ramp cannot start at 0); pass start=0.01")
    return v


# ---- join / sequence ----------------------------------------------------------------------------------------

class _Join(Schedule):
    kind = "join"

    @property
    def length(self) -> float | None:
        n = self.schedules[-1].length
        return None if n is None else self.boundaries[-1] + n

    def _eval(self, xp: Any, t: Any) -> Any:
        bounds = [0, *self.boundaries]
        if xp is _scalar:  # one step: evaluate the active piece only
            i = sum(t >= b for b in self.boundaries)
            return self.schedules[i]._eval(xp, t - bounds[i])
        out = self.schedules[-1]._eval(xp, xp.maximum(t - bounds[-1], 0.0))
        for s, b, nxt in reversed(list(zip(self.schedules[:-1], bounds[:-1], bounds[1:]))):
            out = xp.where(switched(t, nxt), out, s._eval(xp, xp.maximum(t - b, 0.0)))
        return out

    def observe(self, metric: float, step: int | None = None) -> None:
        if step is None:
            return super().observe(metric, step)
        i = sum(step >= b for b in self.boundaries)
        self.schedules[i].observe(metric, step - ([0, *self.boundaries][i]))

    def phases(self) -> list[tuple[int, str]]:
        out: list[tuple[int, str]] = []
        bounds = [0, *self.boundaries]
        for i, (s, b) in enumerate(zip(self.schedules, bounds)):
            if i:
                out.append((b, f"-> {s.kind}"))
            out.extend((b + x, n) for x, n in s.phases() if i + 1 >= len(bounds) or b + x < bounds[i + 1])
        return out

    def _is_sequence(self) -> bool:
        total = 0.0
        for s, b in zip(self.schedules, self.boundaries):
            if s.length is None or isinstance(s, _Join):
                return False
            total += s.length
            if total != b:
                return False
        return not isinstance(self.schedules[-1], _Join)

    def _format(self) -> tuple[str, int]:
        if self._is_sequence():
            first, *rest = self.schedules
            return " >> ".join([_wrap(first, _SHIFT), *(_wrap(s, _MUL) for s in rest)]), _SHIFT
        return super()._format()


@register("join")
def join(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """Piece i runs from ``boundaries[i-1]`` (switching at ``step >= boundary``) in local time ``t - boundary``,
    as optax ``join_schedules``; ``len(boundaries) == len(schedules) - 1``."""
    w = "join"
    pieces = [ck.schedule(w, f"schedules[{i}]", s) for i, s in enumerate(schedules)]
    bounds = [ck.count(w, "boundaries[]", b, low=1) for b in boundaries]
    if len(bounds) != len(pieces) - 1 or not pieces:
        raise LrkitError(f"join: needs one boundary fewer than schedules, got {len(pieces)} schedule(s) and "
                         f"{len(bounds)} boundar{'y' if len(bounds) == 1 else 'ies'}")
    if any(b <= a for a, b in zip(bounds, bounds[1:])):
        raise LrkitError(f"join: boundaries must be strictly increasing, got {bounds}")
    if len(pieces) == 1:
        return pieces[0]
    return _Join(schedules=pieces, boundaries=bounds)


def sequence(first: Any, then: Any) -> Schedule:
    """``first >> then``: ``then`` starts (in local time) when ``first`` ends (needs ``first.length``)."""
    a = ck.schedule(">>", "the left side", first)
    b = ck.schedule(">>", "the right side", then)
    pieces, bounds = ([*a.schedules], [*a.boundaries]) if isinstance(a, _Join) else ([a], [])
    if pieces[-1].length is None:
        raise LrkitError(f"'{pieces[-1]} >> ...': the left side never ends, so the right side cannot start; give it "
                         "a length (e.g. constant(1e-3, steps=1000)) or use join([...], boundaries)")
    start = (bounds[-1] if bounds else 0) + pieces[-1].length
    if start != int(start) or start < 1:
        raise LrkitError(f"'{a} >> ...': the left side lasts {start} steps; a boundary must be a whole step >= 1")
    if isinstance(b, _Join):
        return join([*pieces, *b.schedules], [*bounds, int(start), *(int(start) + x for x in b.boundaries)])
    return join([*pieces, b], [*bounds, int(start)])


# ---- cycle, scale, multiply, clamp --------------------------------------------------------------------------

class _Cycle(Schedule):
    kind = "cycle"

    def _eval(self, xp: Any, t: Any) -> Any:
        return self.schedule._eval(xp, t - self.period * xp.floor(t / self.period))


@register("cycle")
def cycle(schedule: Schedule, period: int | None = None) -> Schedule:
    """Repeat ``schedule`` every ``period`` steps (default: its length): ``schedule(t mod period)``."""
    s = ck.schedule("cycle", "schedule", schedule)
    if period is None:
        if s.length is None:
            raise LrkitError(f"cycle: {s} has no length; pass period=N")
        period = s.length
        if period != int(period):
            period = math.ceil(period)
    return _Cycle(schedule=s, period=ck.count("cycle", "period", period))


class _Scale(Schedule):
    kind = "scale"

    @property
    def length(self) -> float | None:
        return self.schedule.length

    def _eval(self, xp: Any, t: Any) -> Any:
        return self.schedule._eval(xp, t) * self.factor

    def _format(self) -> tuple[str, int]:
        return f"{_wrap(self.schedule, _MUL)} * {self.factor!r}", _MUL


@register("scale")
def scale(schedule: Schedule, factor: float) -> Schedule:
    """``schedule(t) * factor`` (also ``schedule * factor``)."""
    return _Scale(schedule=ck.schedule("scale", "schedule", schedule),
                  factor=ck.number("scale", "factor", factor, low=0.0))


class _Mul(Schedule):
    kind = "mul"

    @property
    def length(self) -> float | None:
        n = [x for x in (self.a.length, self.b.length) if x is not None]
        return max(n) if n else None

    def _eval(self, xp: Any, t: Any) -> Any:
        return self.a._eval(xp, t) * self.b._eval(xp, t)

    def _format(self) -> tuple[str, int]:
        return f"{_wrap(self.a, _MUL)} * {_wrap(self.b, _ATOM)}", _MUL


@register("mul")
def mul(a: Schedule, b: Schedule) -> Schedule:
    """The product ``a(t) * b(t)`` (also ``a * b``), e.g. an lr schedule times a multiplier."""
    return _Mul(a=ck.schedule("mul", "a", a), b=ck.schedule("mul", "b", b))


class _Clamp(Schedule):
    kind = "clamp"

    @property
    def length(self) -> float | None:
        return self.schedule.length

    def _eval(self, xp: Any, t: Any) -> Any:
        v = self.schedule._eval(xp, t)
        if self.low is not None:
            v = xp.maximum(v, self.low)
        if self.high is not None:
            v = xp.minimum(v, self.high)
        return v


@register("clamp")
def clamp(schedule: Schedule, low: float | None = None, high: float | None = None) -> Schedule:
    """``schedule`` clipped to [low, high] (absolute lrs; either may be None)."""
    w = "clamp"
    lo = None if low is None else ck.lr(w, "low", low)
    hi = None if high is None else ck.number(w, "high", high, low=lo or 0.0, fix="high must be >= low")
    return _Clamp(schedule=ck.schedule(w, "schedule", schedule), low=lo, high=hi)


class _Shift(Schedule):
    kind = "shift"

    @property
    def length(self) -> float | None:
        n = self.schedule.length
        return None if n is None else max(n - self.steps, 1)

    def _eval(self, xp: Any, t: Any) -> Any:
        return self.schedule._eval(xp, xp.maximum(t + self.steps, 0.0))

    def phases(self) -> list[tuple[int, str]]:
        return [(s - self.steps, n) for s, n in self.schedule.phases() if s - self.steps >= 0]


@register("shift")
def shift(schedule: Schedule, steps: int) -> Schedule:
    """``schedule(t + steps)``: ``steps > 0`` starts it later in its course (an off-by-one convention, or resuming
    under another step count); ``steps < 0`` delays it, holding ``schedule(0)`` meanwhile."""
    if not (isinstance(steps, int) and not isinstance(steps, bool)):
        raise LrkitError(f"shift: steps must be an int (positive: advance, negative: delay), got {steps!r}")
    s = ck.schedule("shift", "schedule", schedule)
    return s if steps == 0 else _Shift(schedule=s, steps=steps)
