"""The Schedule type: an immutable config (kind + params, children among the params) and a pure function
``step -> lr`` evaluated on ints, numpy arrays, or arrays of any namespace with numpy's names (jax.numpy, keras.ops).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from lrkit.errors import LrkitError

# kind -> factory; the factory's signature is the spec's signature (positional order, defaults)
_FACTORIES: dict[str, Callable[..., Any]] = {}

_CHUNK = 1 << 16  # steps per block when evaluating long numpy arrays
_KEY_BLOCK = 1 << 22  # steps per block when reading key points (32 MB of float64)
MAX_KEY_STEPS = 10**8  # key points over more steps would take a minute or more

# operator precedence when formatting a spec: ``a >> b`` < ``a * b`` < a call
_SHIFT, _MUL, _ATOM = 1, 2, 3


def register(kind: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a factory under ``kind`` so that ``from_dict`` and ``parse`` can rebuild its schedules."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        _FACTORIES[kind] = fn
        return fn

    return deco


class Schedule:
    """A learning rate as a pure function of the optimiser step (0-based; steps count optimiser updates).

    Subclasses set ``kind`` and implement ``_eval(xp, t)`` with array operations of the namespace ``xp``
    (numpy, jax.numpy, keras.ops), so the same code is vectorised and jit-traceable. ``s(1234) -> float``;
    ``s(np.arange(n)) -> ndarray``. Objects are immutable, compare by config, pickle, and print as a spec
    that :func:`lrkit.schedules.parse` reads back.
    """

    kind: str = "schedule"

    def __init__(self, **params: Any) -> None:
        object.__setattr__(self, "_params", params)
        self.__dict__.update(params)  # params read as plain attributes (fast: the adapters call once per step)

    # ---- config -------------------------------------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"schedules are immutable (tried to set {name!r}); build a new one instead")

    @property
    def params(self) -> dict[str, Any]:
        """The config (a copy): the factory's arguments, children included."""
        return dict(self._params)

    @property
    def children(self) -> tuple[Schedule, ...]:
        """The schedules this one is built from, in order."""
        out: list[Schedule] = []
        for v in self._params.values():
            if isinstance(v, Schedule):
                out.append(v)
            elif isinstance(v, (list, tuple)):
                out.extend(x for x in v if isinstance(x, Schedule))
        return tuple(out)

    @property
    def length(self) -> float | None:
        """Steps the schedule occupies before ``>>`` starts the next piece (its ``steps``; a warmup adds its own),
        or None where it never ends (constant without steps, exponential, restarts, cyclical)."""
        return None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schedule) and self.kind == other.kind and self._params == other._params

    def __hash__(self) -> int:
        return hash(str(self))

    def __str__(self) -> str:
        return self._format()[0]

    def __repr__(self) -> str:
        return str(self)

    # ---- evaluation ---------------------------------------------------------------------------------------
    def _eval(self, xp: Any, t: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, step: Any) -> Any:
        if isinstance(step, (int, float)) and not isinstance(step, bool) and step >= 0:
            try:  # fast scalar path (the torch adapter calls this once per step)
                return float(self._eval(_scalar, float(step)))
            except (OverflowError, ValueError, ZeroDivisionError):
                pass  # numpy gives inf/nan/0 where Python floats raise
        t = np.asarray(step, dtype=np.float64)
        if t.size and not (t.min() >= 0):
            raise LrkitError(f"steps must be >= 0 (0 is the first optimiser update), got {step!r}")
        with np.errstate(all="ignore"):  # branches of np.where that are not selected may overflow
            if t.size > _CHUNK:  # blocks that stay in cache: ~1.5-2x faster than whole-array passes
                flat = t.ravel()
                out = np.empty(flat.shape, dtype=np.float64)
                for i in range(0, flat.size, _CHUNK):
                    out[i:i + _CHUNK] = self._eval(np, flat[i:i + _CHUNK])
                return out.reshape(t.shape)
            out = np.asarray(self._eval(np, t), dtype=np.float64)
        if out.shape != t.shape:
            out = np.broadcast_to(out, t.shape).copy()
        return float(out) if out.ndim == 0 else out

    def phases(self) -> list[tuple[int, str]]:
        """Steps where a phase starts (warmup end, boundaries, milestones), with a short label."""
        out: list[tuple[int, str]] = []
        for c in self.children:
            out.extend(c.phases())
        return out

    def key_points(self, steps: int | None = None, sample: int | None = None) -> dict[str, Any]:
        """Peak, final and minimum lr over steps ``0..steps-1`` (default: the length) and where phases start.

        Every step is evaluated, in blocks (memory stays small), at most :data:`MAX_KEY_STEPS`. With ``sample`` and
        more steps than that, only :func:`sample_steps` ``(steps, phase starts, sample)`` are read: exact for
        schedules monotone between their phase starts, within ``steps / sample`` steps of a cyclic one's turns;
        ``"sampled"`` in the result says how many steps were read (None: all of them)."""
        n = int(steps if steps is not None else (math.ceil(self.length) + 1 if self.length is not None else 0))
        if n < 1:
            raise LrkitError(f"{self} never ends; say how many steps to look at (steps=N, or --steps N)")
        if n > 2**53:
            raise LrkitError(f"{self} over {n:.3g} steps: beyond 2**53 (9e15) steps float64 cannot tell one step from "
                             "the next; look at fewer steps (steps=N, or --steps N)")
        phases = [(int(t), label) for t, label in self.phases() if 0 <= t < n]
        if sample is not None and n > sample:
            t = sample_steps(n, [p for p, _ in phases], sample)
            v = self(t)
            i = int(np.argmax(v))
            return {"steps": n, "first": float(v[0]), "peak": float(v[i]), "peak_step": int(t[i]),
                    "final": float(v[-1]), "min": float(v.min()), "phases": phases, "sampled": len(t)}
        if n > MAX_KEY_STEPS:
            raise LrkitError(f"{self} over {n:.3g} steps: key points read every step, at most {MAX_KEY_STEPS:.0e}; "
                             "look at fewer steps (steps=N, or --steps N)")
        first = peak = low = last = math.nan
        peak_step = 0
        for start in range(0, n, _KEY_BLOCK):
            v = self(np.arange(start, min(n, start + _KEY_BLOCK)))
            i = int(np.argmax(v))
            if start == 0:
                first, peak, peak_step, low = float(v[0]), float(v[i]), i, float(v.min())
            else:
                if v[i] > peak:
                    peak, peak_step = float(v[i]), start + i
                low = min(low, float(v.min()))
            last = float(v[-1])
        return {"steps": n, "first": first, "peak": peak, "peak_step": peak_step, "final": last, "min": low,
                "phases": phases, "sampled": None}

    # ---- composition --------------------------------------------------------------------------------------
    def __rshift__(self, other: Any) -> Schedule:
        from lrkit.schedules.combinators import sequence

        return sequence(self, other)

    def __mul__(self, other: Any) -> Schedule:
        from lrkit.schedules.combinators import mul, scale

        if isinstance(other, Schedule):
            return mul(self, other)
        return scale(self, other)

    __rmul__ = __mul__

    # ---- state (only reduce-on-plateau has any) -----------------------------------------------------------
    def observe(self, metric: float, step: int | None = None) -> None:
        """Report a metric (e.g. validation loss) to the stateful pieces; ``step`` routes it to the active piece
        of a ``join`` so a plateau after a warmup ignores metrics seen during the warmup."""
        for c in self.children:
            c.observe(metric, step)

    def _stateful(self) -> list[Schedule]:
        out: list[Schedule] = [self] if "_state" in self.__dict__ else []
        for c in self.children:
            out.extend(c._stateful())
        return out

    def state_dict(self) -> dict[str, Any]:
        """The mutable state (observed-metric bookkeeping of plateau pieces), JSON-friendly."""
        return {"plateaus": [dict(p.__dict__["_state"]) for p in self._stateful()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (from a schedule with the same config)."""
        nodes = self._stateful()
        saved = list(state.get("plateaus", []))
        if len(saved) != len(nodes):
            raise LrkitError(f"state has {len(saved)} plateau piece(s) but this schedule has {len(nodes)}; "
                             "load it into a schedule built from the same spec")
        for node, st in zip(nodes, saved):
            node.__dict__["_state"].update(st)

    # ---- serialisation ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """``{"kind": ..., **params}`` with children as nested dicts (JSON-friendly)."""
        return {"kind": self.kind, **{k: _to_plain(v) for k, v in self._params.items()}}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Schedule:
        """Rebuild a schedule from :meth:`to_dict` output (arguments validated by the factory)."""
        return _from_plain(d)

    # ---- spec formatting ----------------------------------------------------------------------------------
    def _format(self) -> tuple[str, int]:
        """``(text, precedence)``; the generic form is ``kind(required, ..., name=value)``."""
        return f"{self.kind}({_format_args(self.kind, self._params)})", _ATOM


def sample_steps(steps: int, marks: Any = (), points: int = 4000) -> np.ndarray:
    """Steps to read a schedule over ``0..steps-1`` at: every step up to ``points`` of them, else ``points`` evenly
    spaced ones plus each step in ``marks`` (phase starts) and the one before it, so a drop is seen where it is."""
    n = int(steps)
    if n <= points:
        return np.arange(n)
    extra = np.asarray([m for t in marks for m in (int(t) - 1, int(t)) if 0 <= m < n], dtype=np.int64)
    return np.unique(np.concatenate([np.linspace(0, n - 1, points).round().astype(np.int64), extra]))


class _ScalarNamespace:
    """numpy's names for Python floats, so ``_eval`` runs on one step without array overhead."""

    cos, sqrt, log, exp, floor = math.cos, math.sqrt, math.log, math.exp, math.floor
    minimum, maximum = staticmethod(min), staticmethod(max)

    @staticmethod
    def where(cond: Any, a: Any, b: Any) -> Any:
        return a if cond else b


_scalar = _ScalarNamespace()


def _to_plain(v: Any) -> Any:
    if isinstance(v, Schedule):
        return v.to_dict()
    if isinstance(v, (list, tuple)):
        return [_to_plain(x) for x in v]
    return v


def _from_plain(v: Any) -> Any:
    if isinstance(v, dict):
        d = dict(v)
        kind = d.pop("kind", None)
        if kind not in _FACTORIES:
            raise LrkitError(f"unknown schedule kind {kind!r}; known kinds: {', '.join(sorted(_FACTORIES))}")
        return _FACTORIES[kind](**{k: _from_plain(x) for k, x in d.items()})
    if isinstance(v, list):
        return [_from_plain(x) for x in v]
    return v


def format_value(v: Any) -> str:
    """A param value as spec text."""
    if isinstance(v, Schedule):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(format_value(x) for x in v) + "]"
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else f"float({str(v)!r})"
    return repr(v)


def _format_args(kind: str, params: dict[str, Any]) -> str:
    sig = inspect.signature(_FACTORIES[kind])
    parts: list[str] = []
    positional = True
    for name, p in sig.parameters.items():
        if name not in params:
            continue
        v = params[name]
        if p.default is inspect.Parameter.empty and positional:
            parts.append(format_value(v))
        elif p.default is inspect.Parameter.empty or not _same(v, p.default):
            positional = False
            parts.append(f"{name}={format_value(v)}")
        else:
            positional = False
    return ", ".join(parts)


def _same(a: Any, b: Any) -> bool:
    def num(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    return a == b if num(a) and num(b) else (type(a) is type(b) and a == b)


class _Ramp(Schedule):
    kind = "ramp"

    @property
    def length(self) -> float:
        return self.steps

    def _eval(self, xp: Any, t: Any) -> Any:
        frac = xp.minimum(xp.maximum(t / max(self.steps - 1, 1), 0.0), 1.0)
        if self.mode == "exponential":
            return self.start_lr * (self.end_lr / self.start_lr) ** frac
        return self.start_lr + (self.end_lr - self.start_lr) * frac


@register("ramp")
def ramp(start_lr: float, end_lr: float, steps: int, mode: str = "exponential") -> Schedule:
    """The range test's ramp: ``start_lr`` at step 0 to ``end_lr`` at step ``steps - 1``, then held.

    ``mode="exponential"``: lr = start * (end/start) ** (t / (steps-1)); ``"linear"``: straight line.
    """
    if mode not in ("exponential", "linear"):
        raise LrkitError(f"ramp mode must be 'exponential' or 'linear', got {mode!r}")
    if not (np.isfinite(start_lr) and start_lr > 0):
        raise LrkitError(f"start_lr must be a positive finite number, got {start_lr!r}")
    if not (np.isfinite(end_lr) and end_lr > start_lr):
        raise LrkitError(f"end_lr must be larger than start_lr, got start_lr={start_lr!r} >= end_lr={end_lr!r}; "
                         "swap them or raise end_lr")
    if int(steps) < 2:
        raise LrkitError(f"a ramp needs at least 2 steps, got steps={steps!r}")
    return _Ramp(start_lr=float(start_lr), end_lr=float(end_lr), steps=int(steps), mode=mode)
