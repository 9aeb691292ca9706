"""The live doctor: :class:`Monitor` runs the doctor's checks online, O(1) work per step.

Feed it ``update(step, loss, lr=None, grad_norm=None, update_ratio=None, grad_alignment=None)`` after each optimiser
step; it returns the
:class:`Event` s that step raised (a spike, divergence, NaN, plateau, or a crawl), each with a suggested action
and lr factor. Acting on them (restore a snapshot, skip batches, change the lr) is the framework helpers' job:
``lrkit.integrations.torch_monitor``, ``lightning_monitor``, ``transformers_monitor``, ``keras_monitor``.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from lrkit.curve import EMA, Curve, SpikeDetector, step_noise
from lrkit.doctor.checks import MAX_POINTS, Diagnosis, Thresholds, diagnose, initial_level
from lrkit.errors import LrkitError

ACTIONS = ("warn", "rollback", "lower_lr", "raise_lr", "skip_batches")
DEFAULT_ACTIONS = frozenset({"rollback", "skip_batches", "lower_lr"})  # what act=True lets the framework helpers do
ALL_ACTIONS = frozenset({"rollback", "skip_batches", "lower_lr", "raise_lr"})
NOISE_WINDOW = 64  # the batch noise is read over this many recent losses
log = logging.getLogger("lrkit.monitor")


def resolve_actions(act: bool | str | Iterable[str], default: frozenset[str] = DEFAULT_ACTIONS,
                    allowed: frozenset[str] = ALL_ACTIONS, why: str = "") -> frozenset[str]:
    """``False`` -> warn only; ``True`` -> ``default``; or an explicit set of actions out of ``allowed`` (a clear
    error otherwise, ending with ``why``)."""
    if act is False or act is None:
        return frozenset()
    if act is True:
        return default
    acts = frozenset([act] if isinstance(act, str) else act)
    bad = acts - allowed
    if bad:
        raise LrkitError(f"unknown action(s) {sorted(bad)}; choose from {sorted(allowed)} (or act=True/False){why}")
    return acts


def report(ev: Event, acted: str = "", stacklevel: int = 4) -> None:
    """Log and warn about one event: what was done about it, or the suggested action."""
    msg = f"lrkit monitor [{ev.kind}] step {ev.step}: {ev.message}" + (f" ({acted})" if acted else
                                                                       f" (suggested: {ev.action})")
    log.warning(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=stacklevel)


def _finite_mean(values: Iterable[float]) -> float:
    """The mean of the finite values (NaN when there are none)."""
    ok = [v for v in values if math.isfinite(v)]
    return sum(ok) / len(ok) if ok else math.nan


@dataclass
class Event:
    """One thing the Monitor saw at ``step``: ``kind`` (spike, divergence, nan, plateau, too_slow), a message, the
    suggested ``action`` (warn, rollback, lower_lr, raise_lr, skip_batches) and lr ``factor`` (or None)."""

    kind: str
    step: int
    message: str
    action: str
    factor: float | None = None


class Monitor:
    """Online lr doctor: the same statistics and thresholds as :func:`lrkit.diagnose`, O(1) per update.

    Keyword arguments: any :class:`~lrkit.doctor.checks.Thresholds` field, plus ``beta`` (loss smoothing,
    default 0.98), ``patience`` (steps without a ``min_delta`` relative improvement (default 1%) before a plateau
    event, default 500),
    ``check_after`` (updates before the crawl and plateau checks may fire, default 100), ``cooldown`` (steps
    before the same kind of event may fire again, default 100), ``window`` (the loss is a mean over this many steps, as in Hugging Face
    logs: spikes then need no persistence), ``spike_action`` ("skip_batches" or "rollback"), ``use_shape`` (default
    True: a crawl event's "raise by about" comes from the doctor's shape model on the steps seen so far, when they are
    raw per-step losses; False: fixed 10x / 3x).
    """

    def __init__(self, *, beta: float = 0.98, patience: int = 500, min_delta: float = 0.01, check_after: int = 100,
                 cooldown: int = 100, window: int | None = None, spike_action: str = "skip_batches",
                 use_shape: bool = True, **thresholds: float) -> None:
        bad = [k for k in thresholds if k not in Thresholds.__dataclass_fields__]
        if bad:
            raise LrkitError(f"unknown Monitor threshold(s) {bad}; choose from "
                             f"{list(Thresholds.__dataclass_fields__)} or beta, patience, check_after, cooldown")
        if spike_action not in ("skip_batches", "rollback", "warn"):
            raise LrkitError(f"spike_action must be 'skip_batches', 'rollback' or 'warn', got {spike_action!r}")
        self.t = Thresholds(**thresholds)
        self.beta, self.patience, self.check_after, self.cooldown = float(beta), int(patience), int(check_after), \
            int(cooldown)
        self.window, self.spike_action, self.min_delta = window, spike_action, float(min_delta)
        self.use_shape = bool(use_shape)
        self._crawl_cache: list = []  # [history length, lr, lr / best-lr estimate] of the last shape estimate
        persistence = 1 if window else self.t.spike_persistence
        self._loss_spikes = SpikeDetector(z=self.t.spike_z, persistence=persistence)
        self._gn_spikes = SpikeDetector(z=self.t.spike_z, persistence=persistence, log=True)
        self._ema = EMA(self.beta)
        self._n = 0
        self._init = math.nan
        self._first: list[float] = []
        self._best, self._best_step = math.inf, -1
        self._ref = math.inf
        self._last_fired: dict[str, int] = {}
        self._diverged = False
        # the weights' movement (summed update ratios; NaN until one is given), at the best step, the last step seen
        self._moved, self._moved_best, self._last_step = math.nan, math.nan, None
        # batch noise (:func:`lrkit.curve.step_noise`, the offline doctor's estimator, over the last NOISE_WINDOW
        # losses), taken when the smoothed loss last set its best: a climb back counts only after progress that stood
        # out of that noise
        self._window: deque[float] = deque(maxlen=NOISE_WINDOW)
        self._noise_best = math.nan
        # the last 5 losses since the start or a rollback: a blow-up must lift their median too, as the offline
        # doctor's running median does (one bad batch lifts the smoothed loss but not the median)
        self._recent: deque[float] = deque(maxlen=5)
        self._alarming = False  # a divergence check held at the last update
        # steps, loss, lr, grad_norm, update_ratio, grad_alignment (downsampled when long)
        self._hist: list[list[float]] = [[], [], [], [], [], []]
        self._stride, self._pending = 1, []
        self.events: list[Event] = []

    # ------------------------------------------------------------------------------------------------ updating
    def update(self, step: int, loss: float, lr: float | None = None, grad_norm: float | None = None,
               update_ratio: float | None = None, grad_alignment: float | None = None) -> list[Event]:
        """Record one optimiser step (``update_ratio``: ||w_new - w_old|| / ||w_old|| of the step; ``grad_alignment``:
        cos(-gradient, previous update); if measured, the doctor's shape model reads them); returns the events it
        raised (usually none)."""
        step, loss = int(step), float(loss)
        self._record(step, loss, lr, grad_norm, update_ratio, grad_alignment)
        out: list[Event] = []
        if not math.isfinite(loss):
            self._fire(out, "nan", step, f"the loss is {loss} at step {step}", "rollback", 0.5)
            self._diverged = True
            return out
        self._n += 1
        if update_ratio is not None and math.isfinite(update_ratio):  # one ratio stands for the steps since the last
            gap = max(step - self._last_step, 1) if self._last_step is not None else 1
            self._moved = (0.0 if math.isnan(self._moved) else self._moved) + float(update_ratio) * gap
        self._last_step = step
        self._window.append(loss)
        self._recent.append(loss)
        sm = self._ema.update(loss)
        if len(self._first) < 5:  # the initial level from the first 5 losses, as the offline doctor reads it (not
            self._first.append(loss)  # their minimum, which one lucky batch biases low)
            self._init = initial_level(self._first)
        if sm < self._best:
            self._best, self._moved_best = sm, self._moved
            # NaN until a few losses are in: no progress proven
            self._noise_best = step_noise(self._window) if len(self._window) >= 3 else math.nan
        if sm < self._ref * (1.0 - self.min_delta) if self._ref > 0 else sm < self._ref - self.min_delta:
            self._ref, self._best_step = sm, step  # a significant improvement (plateau clock restarts)
        started, _ = self._loss_spikes.update(step, loss)
        gn_started = None
        if grad_norm is not None and math.isfinite(grad_norm) and grad_norm > 0:
            gn_started, _ = self._gn_spikes.update(step, grad_norm)
        if started is not None:
            gn = " (the gradient norm spiked too)" if gn_started is not None else ""
            self._fire(out, "spike", started.start, f"loss spike from step {started.start}: {started.peak_value:.4g} "
                       f"= {started.ratio:.2f}x the baseline {started.baseline:.4g}{gn}", self.spike_action,
                       None if self.spike_action == "skip_batches" else 0.5, now=step)
        init, t = self._init, self.t
        span = init - self._best
        # a rise while the weights barely moved (summed update ratio below still_weights) is batch noise, not the lr
        blowup = (len(self._recent) == 5 and init > 0 and sm > t.early_blowup * init
                  and sorted(self._recent)[2] > t.early_blowup * init and not self._still(0.0))
        climb = (not blowup and span > 0.05 * abs(init) and span > 3 * self._noise_best
                 and (sm - self._best) / span > t.rise and self._n >= 20 and not self._still(self._moved_best))
        self._alarming = blowup or climb  # while it holds, no snapshot is a good state (even if no event may fire)
        if blowup and self._ready("divergence", step):
            self._fire(out, "divergence", step, f"the smoothed loss {sm:.4g} is {sm / init:.2f}x its initial "
                       f"value {init:.4g} (the median of the last 5 losses {sorted(self._recent)[2]:.4g})",
                       "rollback", 0.3)
        elif climb and self._ready("divergence", step):
            self._fire(out, "divergence", step, f"the smoothed loss climbed from its best {self._best:.4g} "
                       f"(step {self._best_step}) to {sm:.4g}: {(sm - self._best) / span:.0%} of the progress lost",
                       "rollback", 0.5)
        if self._n >= self.check_after and not self._diverged and (
                self._ready("plateau", step) or self._ready("too_slow", step)):
            drop = (init - sm) / abs(init) if init else 0.0
            if step - self._best_step >= self.patience and drop >= t.slow_drop:
                self._fire(out, "plateau", step, f"no {self.min_delta:.0%} improvement of the smoothed loss "
                           f"({self._ref:.4g}) for {step - self._best_step} steps", "lower_lr", 0.5)
            elif drop < t.slow_drop and self._ready("too_slow", step):
                factor, how = self._crawl_factor(10.0 if drop < 0.1 else 3.0)
                what = f"is flat ({init:.4g} -> {sm:.4g})" if drop < t.flat_drop else \
                    f"fell only {drop:.0%} ({init:.4g} -> {sm:.4g})"
                self._fire(out, "too_slow", step, f"after {self._n} steps the loss {what}: raise the lr about "
                           f"{factor:.2g}x{how}", "raise_lr", factor)
        return out

    def _still(self, since: float) -> bool:
        """Whether the weights moved by less than ``still_weights`` (summed update ratio) since the movement
        ``since`` (0: since the start); False when no ratio was given."""
        moved = self._moved - since
        return math.isfinite(moved) and moved < self.t.still_weights

    def _crawl_factor(self, default: float) -> tuple[float, str]:
        """How much to raise the lr of a crawling run: ``default`` capped at 3x (a crawl seen live is no direct
        evidence for more), with the words saying so."""
        factor = min(default, 3.0)
        return factor, "" if factor == default else " (at most 3x from a crawl; a sweep would tell more)"

    def _ready(self, kind: str, now: int) -> bool:
        """Whether an event of this kind may fire now (cooldown, once per divergence); cheap, checked first."""
        if kind in ("divergence", "nan") and self._diverged:
            return False
        last = self._last_fired.get(kind)
        return last is None or now - last >= self.cooldown

    def _fire(self, out: list[Event], kind: str, step: int, msg: str, action: str, factor: float | None,
              now: int | None = None) -> None:
        now = step if now is None else now
        if not self._ready(kind, now):
            return  # cooldown; a divergence fires once until reset_after_rollback()
        self._last_fired[kind] = now
        if kind in ("divergence", "nan"):
            self._diverged = True
        ev = Event(kind, int(step), msg, action, factor)
        out.append(ev)
        self.events.append(ev)

    def reset_after_rollback(self, step: int) -> None:
        """Tell the Monitor the model was restored (the lr may have changed): re-arm the divergence checks."""
        self._diverged = False
        self._ema = EMA(self.beta)
        self._best, self._best_step, self._ref = math.inf, int(step), math.inf
        self._moved_best = self._moved
        self._window.clear()  # the restored weights' losses are no batch-to-batch differences of the run before
        self._recent.clear()
        self._alarming = False

    @property
    def healthy(self) -> bool:
        """No spike in progress, no divergence since the last reset and none showing now (a divergence check that
        holds while its event waits for the cooldown): a good moment for a snapshot."""
        return (not self._diverged and not self._alarming and self._loss_spikes._open is None
                and not self._loss_spikes._run)

    # ------------------------------------------------------------------------------------------------- history
    def _record(self, step: int, loss: float, lr: float | None, gn: float | None, ur: float | None,
                al: float | None) -> None:
        """Keep a bounded history for :meth:`diagnosis`: past 2*MAX_POINTS points, pairs are averaged (O(1)
        amortised per step)."""
        lr = math.nan if lr is None else float(lr)
        gn = math.nan if gn is None else float(gn)
        ur = math.nan if ur is None else float(ur)
        al = math.nan if al is None else float(al)
        if self._stride == 1:  # fast path until the run gets long
            h = self._hist
            h[0].append(step)
            h[1].append(loss)
            h[2].append(lr)
            h[3].append(gn)
            h[4].append(ur)
            h[5].append(al)
            if len(h[0]) >= 2 * MAX_POINTS:
                self._halve()
            return
        self._pending.append((step, loss, lr, gn, ur, al))
        if len(self._pending) < self._stride:
            return
        p = self._pending
        self._pending = []
        vals = [x[1] for x in p]
        finite = [v for v in vals if math.isfinite(v)]
        loss_v = sum(finite) / len(finite) if len(finite) == len(vals) else math.nan
        for h, v in zip(self._hist, (p[0][0], loss_v, p[-1][2], max((x[3] for x in p), default=math.nan),
                                     _finite_mean(x[4] for x in p), _finite_mean(x[5] for x in p))):
            h.append(v)
        if len(self._hist[0]) >= 2 * MAX_POINTS:
            self._halve()

    def _halve(self) -> None:
        """Average the history in pairs (loss mean, last lr, max grad norm, mean update ratio and alignment); later
        points come in pairs too."""
        s, lo, lr_, g, u, al = self._hist
        self._hist = [s[0::2], [(a + b) / 2 for a, b in zip(lo[0::2], lo[1::2])], lr_[1::2],
                      [max(a, b) for a, b in zip(g[0::2], g[1::2])], [(a + b) / 2 for a, b in zip(u[0::2], u[1::2])],
                      [(a + b) / 2 for a, b in zip(al[0::2], al[1::2])]]
        self._stride *= 2

    def curve(self) -> Curve:
        """The recorded history as a Curve (downsampled by averaging when the run is long)."""
        s, lo, lr, g, u, al = (np.asarray(h, dtype=np.float64) for h in self._hist)
        n = min(len(h) for h in self._hist)
        s, lo, lr, g, u, al = s[:n], lo[:n], lr[:n], g[:n], u[:n], al[:n]
        extra = {k: v for k, v in (("grad_norm", g), ("update_ratio", u), ("grad_alignment", al))
                 if np.isfinite(v).any()}
        return Curve(s.astype(np.int64), lo, lr if np.isfinite(lr).any() else None, name="loss", extra=extra,
                     meta={"format": "monitor", "window": self.window})

    def diagnosis(self) -> Diagnosis:
        """The offline doctor's verdict on everything seen so far (the same checks as ``lrkit.diagnose``)."""
        c = self.curve()
        if len(c) < 8 and (len(c) == 0 or np.isfinite(c.values).all()):
            raise LrkitError(f"the Monitor has seen {len(c)} step(s); the doctor needs at least 8")
        return diagnose(c, **self.t.__dict__)

    # --------------------------------------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly (plain Python types, JSON/pickle friendly)."""
        return {"thresholds": dict(self.t.__dict__), "beta": self.beta, "patience": self.patience,
                "check_after": self.check_after, "cooldown": self.cooldown, "window": self.window,
                "min_delta": self.min_delta, "ref": self._ref,
                "spike_action": self.spike_action, "use_shape": self.use_shape, "crawl_cache": list(self._crawl_cache),
                "loss_spikes": self._loss_spikes.state_dict(), "gn_spikes": self._gn_spikes.state_dict(),
                "ema": [self._ema._avg, self._ema._n],
                "n": self._n, "init": self._init, "first": list(self._first), "best": [self._best, self._best_step],
                "last_fired": dict(self._last_fired), "diverged": self._diverged,
                "moved": [self._moved, self._moved_best, self._last_step],
                "noise": [list(self._window), self._noise_best],
                "recent": list(self._recent), "alarming": self._alarming, "hist": [list(h) for h in self._hist],
                "stride": self._stride, "pending": [list(p) for p in self._pending],
                "events": [asdict(e) for e in self.events]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (thresholds included)."""
        self.__init__(beta=state["beta"], patience=state["patience"], min_delta=state["min_delta"],
                      check_after=state["check_after"],
                      cooldown=state["cooldown"], window=state["window"], spike_action=state["spike_action"],
                      use_shape=state.get("use_shape", True), **state["thresholds"])
        self._loss_spikes.load_state_dict(state["loss_spikes"])
        self._gn_spikes.load_state_dict(state["gn_spikes"])
        self._ema._avg, self._ema._n = float(state["ema"][0]), int(state["ema"][1])
        self._n, self._init, self._first = int(state["n"]), float(state["init"]), list(state["first"])
        self._best, self._best_step = float(state["best"][0]), int(state["best"][1])
        self._ref = float(state["ref"])
        self._last_fired = {k: int(v) for k, v in state["last_fired"].items()}
        self._diverged = bool(state["diverged"])
        moved = state.get("moved", [math.nan, math.nan, None])  # absent in a state saved before it was tracked
        self._moved, self._moved_best = float(moved[0]), float(moved[1])
        self._last_step = None if moved[2] is None else int(moved[2])
        noise = state.get("noise", [[], math.nan])  # absent in a state saved before it was kept
        # a state of the earlier estimator ([ema, n, previous loss, noise at the best]) keeps its noise at the best
        window, self._noise_best = (noise if len(noise) == 2 else ([], noise[3]))
        self._window.extend(float(v) for v in window)
        self._noise_best = float(self._noise_best)
        self._recent.extend(float(v) for v in state.get("recent", []))  # an older state: refilled by 5 updates
        self._alarming = bool(state.get("alarming", False))
        self._hist = [list(h) for h in state["hist"]]
        while len(self._hist) < 6:  # a state saved before the update ratio or the alignment was recorded
            self._hist.append([math.nan] * len(self._hist[0]))
        self._stride = int(state["stride"])
        self._pending = [tuple(p) + (math.nan,) * (6 - len(p)) for p in state["pending"]]
        self._crawl_cache = list(state.get("crawl_cache", []))
        self.events = [Event(**e) for e in state["events"]]
