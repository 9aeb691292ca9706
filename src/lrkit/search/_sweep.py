"""``lrkit.sweep``: a short training at each candidate lr (or at lrs an Optuna sampler draws), as trials of one
Optuna study."""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral
from typing import Any

from lrkit.errors import LrkitError
from lrkit.search import _engine, _storage
from lrkit.search._lrs import parse_lrs
from lrkit.search._records import SweepResult, attach_verdicts

SAMPLERS = ("grid", "random", "tpe", "qmc", "gp", "cmaes")
PRUNERS = ("none", "median", "percentile", "hyperband", "successive-halving")


def make_sampler(name: str | Any, seed: int | None = None) -> Any:
    """An Optuna sampler by name (random, tpe, qmc, gp, cmaes), or the object given; None for "grid"."""
    if name is None or name == "grid":
        return None
    if not isinstance(name, str):
        return name
    s = _storage.optuna_module().samplers
    table = {"random": s.RandomSampler, "tpe": s.TPESampler, "qmc": s.QMCSampler, "gp": s.GPSampler,
             "cmaes": s.CmaEsSampler}
    if name not in table:
        raise LrkitError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")
    return table[name](seed=seed)


def make_pruner(name: str | Any) -> Any:
    """An Optuna pruner by name (median, percentile, hyperband, successive-halving), or the object given; None for
    "none"."""
    if name is None or name == "none":
        return None
    if not isinstance(name, str):
        return name
    p = _storage.optuna_module().pruners
    table = {"median": p.MedianPruner, "percentile": lambda: p.PercentilePruner(25.0),
             "hyperband": p.HyperbandPruner, "successive-halving": p.SuccessiveHalvingPruner}
    if name not in table:
        raise LrkitError(f"unknown pruner {name!r}; choose one of: {', '.join(PRUNERS)}")
    return table[name]()


def sweep(
    train_fn: _engine.TrainFn,
    lrs: str | Sequence[float] = "1e-4:1e-1:7",
    *,
    seeds: Sequence[int] = (0,),
    storage: str | None = None,
    study_name: str | None = None,
    n_workers: int = 1,
    sampler: str | Any = "grid",
    n_trials: int | None = None,
    pruner: str | Any = None,
    direction: str = "minimize",
    retry_failed: bool = False,
    timeout_s: float | None = None,
    progress: bool = True,
    diagnose: bool = True,
    heartbeat_interval: int | None = 10,
) -> SweepResult:
    """Sweep the lr: run ``train_fn(lr, trial)`` (a short training that calls ``trial.report(loss, step)`` and
    returns the final score) at each lr as a trial of an Optuna study, and collect the results.

    Args:
        lrs: ``"lo:hi:n"`` (n log-spaced lrs, default ``1e-4:1e-1:7``), ``"a,b,c"`` or a sequence of lrs.
        seeds: each lr runs once per seed (``trial.seed``; seeding the training is up to ``train_fn``).
        storage: see :class:`SweepStudy` (default: the SQLite file ``lrkit-sweep.db`` in the working directory).
        study_name: default ``"sweep:<module>.<function>"``. A study is defined by the objective, the direction,
            the lrs (or the sampler and its range) and the seeds: rerunning the same sweep resumes it; a different
            sweep under the same name is an error.
        n_workers: worker processes on this machine (default 1: in this process). The same call on other
            machines with the same database storage shares the work.
        sampler: "grid" (default: every lr of ``lrs``) or an Optuna sampler (name or object) drawing ``n_trials``
            (default ``len(lrs)``) lrs between ``min(lrs)`` and ``max(lrs)``, with one seed.
        pruner: None, "median" (Optuna's median rule on the reported values) or another name/object.
        direction: "minimize" (default, a loss) or "maximize" (an accuracy).
        retry_failed: rerun trials that failed in an earlier run (default: keep them as failed); on a journal
            file, also trials left running by a worker that is gone (Optuna keeps no heartbeat there), so use it
            there only when no other worker runs.
        timeout_s: the most seconds one trial may take; a trial past it fails with "timed out" (default: none).
        progress: one line on stderr per finished trial: lr, seed, score, time, and the best lr so far.
        diagnose: attach the doctor's verdict (:func:`lrkit.diagnose`) to each trial's curve.
        heartbeat_interval: seconds between Optuna heartbeats of a running trial (database storages): a trial
            silent for 3 intervals is failed and run again, at most 3 times (None: no heartbeat).
    """
    _storage.optuna_module()  # a clear error naming the extra when Optuna is missing
    if not callable(train_fn):
        raise LrkitError(f"train_fn must be a callable train_fn(lr, trial), got {type(train_fn).__name__}")
    candidates = parse_lrs(lrs)
    seed_list = _seeds(seeds)
    n_workers = _engine.check_workers(n_workers)
    timeout_s = _engine.check_timeout(timeout_s, n_workers)
    name = _engine.objective_name(train_fn)
    spec = _engine.SweepStudy(storage=storage, study_name=study_name or f"sweep:{name}", direction=direction,
                              heartbeat_interval=heartbeat_interval)
    sampler_obj, pruner_obj = make_sampler(sampler, seed=seed_list[0]), make_pruner(pruner)
    identity: dict[str, Any] = {"kind": "sweep", "objective": name, "direction": direction}
    if sampler_obj is None:
        if n_trials is not None:
            raise LrkitError(f"n_trials={n_trials!r} is the number of lrs a sampler draws; the grid runs every lr "
                             "of lrs: leave n_trials unset, or choose a sampler (e.g. sampler='tpe')")
        identity.update(lrs=candidates, seeds=seed_list)
        points: list[tuple[float, int]] | None = [(lr, s) for lr in candidates for s in seed_list]
    else:
        if len(candidates) < 2:
            raise LrkitError("a sampler needs a range of lrs to draw from; give lrs='lo:hi:n'")
        if len(seed_list) > 1:
            raise LrkitError(f"a sampler draws each lr once, with one seed; got seeds {seed_list}: give one seed, "
                             "or use the grid to run every lr on several seeds")
        identity.update(sampler=sampler if isinstance(sampler, str) else type(sampler_obj).__name__,
                        lr_range=[candidates[0], candidates[-1]], seeds=seed_list)
        n_trials = _positive_int("n_trials", len(candidates) if n_trials is None else n_trials)
        points = None
    _engine.check_sendable(spec, train_fn, n_workers if points is None else min(n_workers, len(points)))
    opened = spec.open_storage()
    study, created = spec.open(identity, opened)
    claim = retry_failed and not _storage.has_heartbeat(opened)
    if points is not None:
        _engine.plan(study, created, points)
        if not created:
            _engine.queue_points(study, points, retry_failed, claim)
    else:  # redo the interrupted (and, asked to, failed) draws of an earlier run
        _engine.queue_points(study, [(t.lr, t.seed) for t in _engine.collect(study, None)], retry_failed, claim)
        if isinstance(sampler, str):  # a resumed study draws new lrs, not the first run's again
            sampler_obj = make_sampler(sampler, seed=seed_list[0] + 1000 * len(study.get_trials(deepcopy=False)))
    job = _engine.Job(spec, train_fn, (candidates[0], candidates[-1]), points=points, n_trials=n_trials,
                      seed=seed_list[0], sampler=sampler_obj, pruner=pruner_obj, timeout_s=timeout_s,
                      progress=progress, label="sweep")
    _engine.run_workers(job, n_workers if points is None else min(n_workers, len(points)), opened)
    result = SweepResult(_engine.collect(study, points, "sweep"), direction=direction, study_name=spec.study_name,
                         storage=spec.display)
    if diagnose:
        attach_verdicts(result.trials)
    return result


def _seeds(seeds: Any) -> list[int]:
    values = list(seeds) if isinstance(seeds, Sequence) and not isinstance(seeds, str) else [seeds]
    if not values or any(isinstance(s, bool) or not isinstance(s, Integral) for s in values):
        raise LrkitError(f"seeds must be a non-empty list of integers, e.g. seeds=(0, 1, 2); got {seeds!r}")
    values = [int(s) for s in values]
    if len(set(values)) != len(values):
        raise LrkitError(f"seeds must be distinct, got {values}")
    return values


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise LrkitError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)
