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
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from lrkit.curve import EMA, Curve, SpikeDetector, step_noise
from lrkit.doctor.checks import MAX_POINTS, Diagnosis, Thresholds, chance_classes, diagnose
from lrkit.errors import LrkitError

ACTIONS = ("warn", "rollback", "lower_lr", "raise_lr", "skip_batches")
DEFAULT_ACTIONS = frozenset({"rollback", "skip_batches", "lower_lr"})  # what act=True lets the framework helpers do
ALL_ACTIONS = frozenset({"rollback", "skip_batches", "lower_lr", "raise_lr"})
NOISE_WINDOW = 64  # the batch noise is read over this many recent losses
DIVERGENCES = ("nan", "divergence", "relapse", "stuck")  # the events after which a guard rolls back and cuts the lr
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


def start_level(first: Sequence[float]) -> float:
    """The untrained loss of a live run from its first (up to 5) losses: the first one, which no update has touched
    (at a far too high lr the next ones have already blown up), unless its jump to the second stands out of the
    next jumps by more than 6 batch-noise sds while the median of the five is within |first| of it (a lucky low
    first batch, at most half the level): then that median."""
    head = float(first[0])
    if len(first) < 5:
        return head
    jumps = np.diff(np.asarray(first, dtype=np.float64))
    med = float(np.median(first))
    noise = max(step_noise(first[1:]), 1e-9 * abs(med))
    lucky = jumps[0] - float(np.median(jumps[1:])) > 6.0 * noise and med - head <= abs(head)
    return med if lucky else head


def _versus(value: float, ref: float) -> str:
    """``value`` against ``ref`` in words: a ratio ("3.2x") when both are positive, else a difference ("1.3 above"),
    so a negative or near-zero reference never makes a ratio."""
    if ref > 0 and value > 0:
        return f"{value / ref:.2f}x"
    return f"{value - ref:.4g} above"


@dataclass
class Event:
    """One thing the Monitor saw at ``step``: ``kind`` (spike, divergence, nan, relapse, plateau, too_slow), a message, the
    suggested ``action`` (warn, rollback, lower_lr, raise_lr, skip_batches) and lr ``factor`` (or None)."""

    kind: str
    step: int
    message: str
    action: str
    factor: float | None = None


class SnapshotKeeper:
    """The last good state a guard can go back to, for any framework: a subclass says how to ``copy()`` the state
    (None when it is not worth keeping, e.g. a weight is already NaN) and how to ``put_back(state)``.

    A snapshot is taken when the :class:`Monitor` is healthy, at least ``every`` steps after the last good one; it
    stays pending until ``confirm_after`` (5) healthy updates followed it (the weights after an update have no loss
    yet: at a far too high lr the first update can already have ruined them), then replaces the last good one and the
    Monitor learns its level (:meth:`Monitor.took_snapshot`). A rollback (:meth:`restore`) goes back to the last good
    one and drops a pending one; so a helper holds at most two copies (the one it let go of waits in :attr:`spare`, for
    ``copy()`` to write the next one into instead of allocating anew)."""

    confirm_after = 5

    def __init__(self, every: int = 50) -> None:
        if int(every) < 1:
            raise LrkitError(f"snapshot_every must be >= 1, got {every}")
        self.every = int(every)
        self.state: Any = None
        self.step: int | None = None  # the step of the last good snapshot (-1: before the first update)
        self._pending: tuple[int, Any] | None = None
        self.spare: Any = None  # a state let go of, for copy() to reuse

    def copy(self) -> Any:  # pragma: no cover - every helper implements it
        raise NotImplementedError

    def put_back(self, state: Any) -> None:  # pragma: no cover - every helper implements it
        raise NotImplementedError

    def take(self, step: int, monitor: Monitor | None = None) -> bool:
        """Keep the state of now as good at once (the state before the first update: it has the start's loss);
        True when kept."""
        state = self.copy()
        if state is None:
            return False
        self.spare = self.state
        self.state, self.step, self._pending = state, int(step), None
        if monitor is not None:
            monitor.took_snapshot(int(step))
        return True

    def keep(self, step: int, monitor: Monitor) -> None:
        """After an update that raised no event: confirm a pending snapshot the Monitor has vouched for, or take one
        when one is due."""
        if not monitor.healthy:
            return
        if self._pending is not None:
            if step - self._pending[0] >= self.confirm_after:
                self.spare = self.state
                (self.step, self.state), self._pending = self._pending, None
                monitor.took_snapshot(self.step)
            return
        if self.step is None or step - self.step >= self.every:
            state = self.copy()
            if state is not None:
                self._pending = (int(step), state)

    def restore(self) -> int | None:
        """Put the last good snapshot back (dropping a pending one); its step, or None when there is none yet."""
        if self._pending is not None:
            self.spare, self._pending = self._pending[1], None
        if self.state is None:
            return None
        self.put_back(self.state)
        return self.step


class Monitor:
    """Online lr doctor: the same statistics and thresholds as :func:`lrkit.diagnose`, O(1) per update, and the
    policy of the guards that act on it (``lrkit.<framework>.LrMonitor(act=True)``).

    Keyword arguments: any :class:`~lrkit.doctor.checks.Thresholds` field, plus ``beta`` (loss smoothing,
    default 0.98), ``patience`` (steps without a ``min_delta`` relative improvement (default 1%) before a plateau
    event, default 500), ``check_after`` (updates before the crawl and plateau checks may fire, default 100),
    ``cooldown`` (steps before the same kind of warning may fire again, default 100), ``window`` (the loss is a mean
    over this many steps, as in Hugging Face logs: spikes then need no persistence), ``spike_action``
    ("skip_batches" or "rollback"), ``use_shape`` (kept for saved states; a crawl's raise is at most 3x).

    The guard's policy (what a helper does when it acts; it tells the Monitor what it did with :meth:`acted` and
    :meth:`took_snapshot`): a NaN, a blow-up, a climb back or a relapse rolls back to the last good snapshot and cuts
    the lr by ``cut`` (default 0.3; ``hard_cut``, default 0.1, after a NaN or a blow-up to 10x the start); after each
    rollback the run is on ``probation`` (default 50 steps): it takes no snapshot, and unless its smoothed loss comes
    back below the level of the restored snapshot (or when it diverges again) it is rolled back and cut again. The
    lowest lr that diverged is remembered: no raise takes the lr above half of it, and none is advised within
    ``calm`` steps (default 300) of a divergence or a cut.
    """

    def __init__(self, *, beta: float = 0.98, patience: int = 500, min_delta: float = 0.01, check_after: int = 100,
                 cooldown: int = 100, window: int | None = None, spike_action: str = "skip_batches",
                 use_shape: bool = True, probation: int = 50, calm: int = 300, cut: float = 0.3,
                 hard_cut: float = 0.1, **thresholds: float) -> None:
        bad = [k for k in thresholds if k not in Thresholds.__dataclass_fields__]
        if bad:
            raise LrkitError(f"unknown Monitor threshold(s) {bad}; choose from "
                             f"{list(Thresholds.__dataclass_fields__)} or beta, patience, check_after, cooldown, "
                             "probation, calm, cut, hard_cut")
        if spike_action not in ("skip_batches", "rollback", "warn"):
            raise LrkitError(f"spike_action must be 'skip_batches', 'rollback' or 'warn', got {spike_action!r}")
        if not (0.0 < hard_cut <= cut < 1.0):
            raise LrkitError(f"the lr cuts must satisfy 0 < hard_cut <= cut < 1 (factors the lr is multiplied by), "
                             f"got cut={cut!r}, hard_cut={hard_cut!r}")
        if int(probation) < 1 or int(calm) < 0:
            raise LrkitError(f"probation must be >= 1 step and calm >= 0 steps, got probation={probation!r}, "
                             f"calm={calm!r}")
        self.t = Thresholds(**thresholds)
        self.beta, self.patience, self.check_after, self.cooldown = float(beta), int(patience), int(check_after), \
            int(cooldown)
        self.window, self.spike_action, self.min_delta = window, spike_action, float(min_delta)
        self.use_shape = bool(use_shape)
        self.probation, self.calm, self.cut, self.hard_cut = int(probation), int(calm), float(cut), float(hard_cut)
        self._crawl_cache: list = []  # [history length, lr, lr / best-lr estimate] of the last shape estimate
        persistence = 1 if window else self.t.spike_persistence
        self._loss_spikes = SpikeDetector(z=self.t.spike_z, persistence=persistence)
        self._gn_spikes = SpikeDetector(z=self.t.spike_z, persistence=persistence, log=True)
        self._ema = EMA(self.beta)
        self._n = 0
        self._init = math.nan
        self._first: list[float] = []
        self._best, self._best_step = math.inf, -1
        self._span = 0.0  # the largest descent seen (start - best smoothed loss): with |start|, the loss's scale
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
        self._window_best: tuple[float, ...] | None = None  # the window at the best, until its noise is needed
        # the last 5 losses since the start or a rollback: a blow-up must lift their median too, as the offline
        # doctor's running median does (one bad batch lifts the smoothed loss but not the median)
        self._recent: deque[float] = deque(maxlen=5)
        self._alarming = False  # a divergence check held at the last update
        # the guard's policy: the lr now (as last seen or reported), the lowest lr that diverged (inf: none; 0: one
        # did at an unknown lr), the step before which no raise is advised, the probation after a rollback
        # ([until step, level to come back below, restored step] or None) and the smoothed loss at each snapshot
        self._lr = math.nan
        self._ceiling = math.inf
        self._calm_until = -1
        self._probation: list | None = None
        self._snap_levels: dict[int, float] = {}
        # the first loss after each rollback to a state from before any update: more draws of the untrained loss, so
        # one low first batch does not stay the start (the start is the median of them and start_level's)
        self._starts: list[float] = []
        self._sample_start = False
        # updates since the start or the last rollback, and how many of them had the smoothed loss above the start
        # by more than three batch-noise sds (the offline doctor's "stuck" rule, live)
        self._since, self._above = 0, 0
        self._chance_due = 0  # the next step the chance rule is read at
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
        if lr is not None and math.isfinite(lr):
            self._lr = float(lr)
        out: list[Event] = []
        if not math.isfinite(loss):
            self._fire(out, "nan", step, f"the loss is {loss} at step {step}", "rollback", self.hard_cut)
            return out
        self._n += 1
        self._since += 1
        if update_ratio is not None and math.isfinite(update_ratio):  # one ratio stands for the steps since the last
            gap = max(step - self._last_step, 1) if self._last_step is not None else 1
            self._moved = (0.0 if math.isnan(self._moved) else self._moved) + float(update_ratio) * gap
        self._last_step = step
        self._window.append(loss)
        self._recent.append(loss)
        sm = self._ema.update(loss)
        if len(self._first) < 5:  # the untrained loss, from the first 5 losses (see start_level)
            self._first.append(loss)
            self._init = start_level(self._first)
        if self._sample_start:  # the first loss of the restored untrained state: one more draw of the start
            self._sample_start = False
            self._starts.append(loss)
            self._init = float(np.median([start_level(self._first)] + self._starts[-9:]))
            if self._probation is not None and not math.isfinite(self._snap_levels.get(self._probation[2], math.nan)):
                self._probation[1] = self._init
        if sm < self._best:
            self._best, self._moved_best = sm, self._moved
            # NaN until a few losses are in: no progress proven
            # (read lazily, when a climb back is in question: O(64) numpy work at most once per best)
            self._window_best, self._noise_best = (tuple(self._window), math.nan) if len(self._window) >= 3 else \
                (None, math.nan)
            if self._init - sm > self._span:
                self._span = self._init - sm
        if sm < self._ref * (1.0 - self.min_delta) if self._ref > 0 else sm < self._ref - self.min_delta:
            self._ref, self._best_step = sm, step  # a significant improvement (plateau clock restarts)
        started, _ = self._loss_spikes.update(step, loss)
        gn_started = None
        if grad_norm is not None and math.isfinite(grad_norm) and grad_norm > 0:
            gn_started, _ = self._gn_spikes.update(step, grad_norm)
        if started is not None:
            gn = " (the gradient norm spiked too)" if gn_started is not None else ""
            level = float(np.median(self._window))
            self._fire(out, "spike", started.start, f"loss spike from step {started.start}: {started.peak_value:.4g}, "
                       f"{started.peak_value - level:+.4g} over the median {level:.4g} of the last "
                       f"{len(self._window)} losses{gn}", self.spike_action,
                       None if self.spike_action == "skip_batches" else 0.5, now=step)
        init, t = self._init, self.t
        scale = self._scale()
        limit = (t.early_blowup - 1.0) * scale  # a blow-up: the loss rose this much above its start
        med5 = sorted(self._recent)[2] if len(self._recent) == 5 else math.nan
        span = init - self._best
        # a rise while the weights barely moved (summed update ratio below still_weights) is batch noise, not the lr
        blowup = (len(self._recent) == 5 and sm - init > limit and med5 - init > limit and not self._still(0.0))
        climb = (not blowup and span > 0.05 * scale and self._n >= 20 and (sm - self._best) / span > t.rise
                 and span > 3 * self._noise_at_best() and not self._still(self._moved_best))
        self._alarming = blowup or climb  # while it holds, no snapshot is a good state (even if no event may fire)
        if blowup and self._ready("divergence", step):
            # the harder the blow-up, the harder the cut: 1 / sqrt(how many times the start the smoothed loss is),
            # between cut and hard_cut
            factor = min(max((1.0 + (sm - init) / scale) ** -0.5, self.hard_cut), self.cut)
            self._fire(out, "divergence", step, f"the smoothed loss {sm:.4g} is {_versus(sm, init)} its start "
                       f"{init:.4g} (the median of the last 5 losses {med5:.4g})", "rollback", factor)
        elif climb and self._ready("divergence", step):
            self._fire(out, "divergence", step, f"the smoothed loss climbed from its best {self._best:.4g} "
                       f"(step {self._best_step}) to {sm:.4g}: {(sm - self._best) / span:.0%} of the progress lost",
                       "rollback", 0.5)
        elif self._probation is not None and step >= self._probation[0]:
            until, level, restored = self._probation
            if sm >= level and self._ready("divergence", step):
                self._fire(out, "relapse", step, f"after the rollback to {'the start' if restored < 0 else f'step {restored}'}, the smoothed loss {sm:.4g} "
                           f"did not come back below {level:.4g} in {self.probation} steps at lr "
                           f"{self._lr:.3g}: still too high", "rollback", self.cut)
            else:
                self._probation = None  # passed: the run is stable again
        if sm > init and self._since > 5:  # (noise read only while the loss sits above its start: O(64), rare)
            self._above += sm > init + max(3.0 * step_noise(self._window), 0.002 * abs(init))
        if (self._since >= self.check_after and self._above >= t.stuck_share * self._since
                and self._ready("stuck", step)):
            self._fire(out, "stuck", step, f"the smoothed loss sat above its start {init:.4g} for {self._above} of "
                       f"the last {self._since} steps (now {sm:.4g}): the model is not learning, the lr is too high",
                       "rollback", self.cut)
        if self._n >= self.check_after and not self._diverged and (
                self._ready("plateau", step) or self._ready("too_slow", step)):
            drop = (init - sm) / scale if scale > 0 else 0.0
            if step - self._best_step >= self.patience and drop >= t.slow_drop:
                self._fire(out, "plateau", step, f"no {self.min_delta:.0%} improvement of the smoothed loss "
                           f"({self._ref:.4g}) for {step - self._best_step} steps", "lower_lr", 0.5)
                # the clock starts again from here (as ReduceLROnPlateau's does after a cut): the next plateau needs
                # another `patience` steps without improvement on today's level, not one cooldown
                self._ref, self._best_step = sm, step
            elif drop < t.slow_drop and self._ready("too_slow", step) and self._at_chance(step) is not None:
                level, k = self._at_chance(step)
                self._fire(out, "stuck", step, f"the loss sits at {level:.4g} = ln {k} with almost no batch noise: "
                           f"chance level for {k} classes, a model collapsed to a constant prediction (a far too high "
                           "lr, or labels that carry no signal)", "rollback", self.hard_cut)
            elif 0.0 < drop < t.slow_drop and self._ready("too_slow", step) and step >= self._calm_until:
                # only a loss that fell (one that rose is no crawl), never soon after a divergence or a cut, and
                # never up to the lr that diverged
                factor, how = self._crawl_factor(10.0 if drop < 0.1 else 3.0)
                if factor > 1.0:
                    what = f"is flat ({init:.4g} -> {sm:.4g})" if drop < t.flat_drop else \
                        f"fell only {drop:.0%} ({init:.4g} -> {sm:.4g})"
                    self._fire(out, "too_slow", step, f"after {self._n} steps the loss {what}: raise the lr about "
                               f"{factor:.2g}x{how}", "raise_lr", factor)
        return out

    def _noise_at_best(self) -> float:
        """The batch noise (:func:`lrkit.curve.step_noise` of the last NOISE_WINDOW losses) when the smoothed loss last
        set its best; NaN until a few losses were in."""
        if self._window_best is not None:
            self._noise_best, self._window_best = step_noise(self._window_best), None
        return self._noise_best

    def _at_chance(self, step: int) -> tuple[float, int] | None:
        """(level, K) when the recent losses sit at ln K with almost no batch noise (the offline doctor's chance rule:
        ``chance_tol``, ``chance_noise``), else None; after a no, the next look is 16 steps later (O(64) work)."""
        if step < self._chance_due:
            return None
        level = float(np.median(self._window))
        k = chance_classes(level, self.t.chance_tol)
        if k is None or step_noise(self._window) > self.t.chance_noise * abs(level):
            self._chance_due = step + 16
            return None
        return level, k

    def _scale(self) -> float:
        """The loss's scale, for a blow-up test that holds for a loss of any sign: |start|, or the largest descent
        seen when that is larger (a loss that starts near 0 or below it), and at least three batch-noise sds."""
        scale = max(abs(self._init), self._span)
        if scale <= 0 or not math.isfinite(scale):
            return max(3.0 * step_noise(self._window), 1e-12)
        return scale

    def _still(self, since: float) -> bool:
        """Whether the weights moved by less than ``still_weights`` (summed update ratio) since the movement
        ``since`` (0: since the start); False when no ratio was given."""
        moved = self._moved - since
        return math.isfinite(moved) and moved < self.t.still_weights

    def _crawl_factor(self, default: float) -> tuple[float, str]:
        """How much to raise the lr of a crawling run: ``default`` capped at 3x (a crawl seen live is no direct
        evidence for more) and at half the lowest lr that diverged, with the words saying so (1: no raise)."""
        factor = min(default, 3.0)
        how = "" if factor == default else " (at most 3x from a crawl; a sweep would tell more)"
        if math.isfinite(self._ceiling):
            room = 0.5 * self._ceiling / self._lr if self._lr > 0 else 0.0
            if room < factor:
                factor, how = room, f" (at most half the lr {self._ceiling:.3g} that diverged)"
        return factor, how

    def _ready(self, kind: str, now: int) -> bool:
        """Whether an event of this kind may fire now (cooldown; a divergence fires once until the run is rolled
        back); cheap, checked first."""
        if kind in DIVERGENCES:
            return not self._diverged
        last = self._last_fired.get(kind)
        return last is None or now - last >= self.cooldown

    def _fire(self, out: list[Event], kind: str, step: int, msg: str, action: str, factor: float | None,
              now: int | None = None) -> None:
        now = step if now is None else now
        if not self._ready(kind, now):
            return  # cooldown; a divergence fires once until the run is rolled back (acted(restored=...))
        self._last_fired[kind] = now
        if kind in DIVERGENCES:
            self._diverged = True
            self._ceiling = min(self._ceiling, self._lr if self._lr > 0 else 0.0)
        if factor is not None and factor < 1.0:
            self._calm_until = max(self._calm_until, now + self.calm)
        ev = Event(kind, int(step), msg, action, factor)
        out.append(ev)
        self.events.append(ev)

    def took_snapshot(self, step: int) -> None:
        """Tell the Monitor a helper saved the state of ``step`` (after its update, or before any): a rollback to it
        must bring the smoothed loss back below the level of then."""
        self._snap_levels[int(step)] = self._ema.value if self._n else math.nan
        while len(self._snap_levels) > 4:  # helpers keep the last one; a few are plenty
            del self._snap_levels[next(iter(self._snap_levels))]

    def acted(self, step: int, restored: int | None = None, lr: float | None = None) -> None:
        """Tell the Monitor what a helper did at ``step`` about its events: ``restored`` the snapshot of that step
        (None: nothing restored) and set the lr to ``lr`` (None: unchanged or unknown). A restore re-arms the
        divergence checks and starts the probation: the smoothed loss must come back below the snapshot's level (see
        :meth:`took_snapshot`; the start for one taken before any update) within ``probation`` steps."""
        if lr is not None and math.isfinite(lr):
            self._lr = float(lr)
        if restored is None:
            return
        level = self._snap_levels.get(int(restored), math.nan)
        if not math.isfinite(level):  # a state from before any update: the start (and one more draw of it)
            level, self._sample_start = self._init, True
        self._diverged = False
        self._ema = EMA(self.beta)
        self._best, self._best_step, self._ref = (level if math.isfinite(level) else math.inf), int(step), math.inf
        self._moved_best = self._moved
        self._window.clear()  # the restored weights' losses are no batch-to-batch differences of the run before
        self._recent.clear()
        self._alarming = False
        self._since, self._above = 0, 0
        self._probation = [int(step) + self.probation, level, int(restored)]

    @property
    def healthy(self) -> bool:
        """A good moment for a snapshot: no spike in progress, no divergence since the last rollback and none
        showing now (a check that holds while its event waits), and not on probation after a rollback."""
        return (not self._diverged and not self._alarming and self._probation is None
                and self._loss_spikes._open is None and not self._loss_spikes._run)


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
                "policy": {"probation": self.probation, "calm": self.calm, "cut": self.cut, "hard_cut": self.hard_cut},
                "guard": {"span": self._span, "lr": self._lr, "ceiling": self._ceiling, "calm_until": self._calm_until,
                          "probation": self._probation, "snap_levels": [[k, v] for k, v in self._snap_levels.items()],
                          "starts": list(self._starts), "sample_start": self._sample_start,
                          "above": [self._since, self._above], "chance_due": self._chance_due},
                "min_delta": self.min_delta, "ref": self._ref,
                "spike_action": self.spike_action, "use_shape": self.use_shape, "crawl_cache": list(self._crawl_cache),
                "loss_spikes": self._loss_spikes.state_dict(), "gn_spikes": self._gn_spikes.state_dict(),
                "ema": [self._ema._avg, self._ema._n],
                "n": self._n, "init": self._init, "first": list(self._first), "best": [self._best, self._best_step],
                "last_fired": dict(self._last_fired), "diverged": self._diverged,
                "moved": [self._moved, self._moved_best, self._last_step],
                "noise": [list(self._window), self._noise_at_best()],
                "recent": list(self._recent), "alarming": self._alarming, "hist": [list(h) for h in self._hist],
                "stride": self._stride, "pending": [list(p) for p in self._pending],
                "events": [asdict(e) for e in self.events]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (thresholds included)."""
        self.__init__(beta=state["beta"], patience=state["patience"], min_delta=state["min_delta"],
                      check_after=state["check_after"],
                      cooldown=state["cooldown"], window=state["window"], spike_action=state["spike_action"],
                      use_shape=state.get("use_shape", True), **state.get("policy", {}), **state["thresholds"])
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
        guard = state.get("guard")  # absent in a state saved before the guard's policy: as after no divergence
        if guard is not None:
            self._span, self._lr, self._ceiling = float(guard["span"]), float(guard["lr"]), float(guard["ceiling"])
            self._calm_until = int(guard["calm_until"])
            p = guard["probation"]
            self._probation = None if p is None else [int(p[0]), float(p[1]), int(p[2])]
            self._snap_levels = {int(k): float(v) for k, v in guard["snap_levels"]}
            self._starts, self._sample_start = [float(v) for v in guard["starts"]], bool(guard["sample_start"])
            self._since, self._above = (int(v) for v in guard["above"])
            self._chance_due = int(guard["chance_due"])
