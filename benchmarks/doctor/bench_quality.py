"""Quality of the doctor's direction (raise / lower / keep) on real curves over lr grids.

Run: ``python benchmarks/doctor/bench_quality.py`` (generates the curves first if they are not cached; about 15
minutes on 2 cores after that, with ``--live --final --long``). ``--final`` also scores the round's held-out tasks
(FINAL11) with the shipped model, alone and pooled with the earlier held-out sets never fitted on (FINAL9, FINAL10);
``--long`` the 1500-step runs (``make_curves.py --long``); ``--dump FILE`` writes every run's calls as JSON lines;
``--live`` adds the live Monitor's divergence alarms on the fitting runs (the held-out ones come with ``--final``);
``--no-cv`` skips the cross-validated tables (only --final / --long, with the shipped model); ``--forest`` scores
the CV with the random-forest classifiers of rounds 1-5 instead of the boosted trees.

The doctor = threshold rules (NaN, blow-up, climb-back, spikes) + a small fitted shape model
(:mod:`lrkit.doctor.direction`: boosted trees, averaged with a sequence model where the update ratio is logged; the
trees alone are scored beside it) for runs that neither diverged nor spiked. The shape model is fitted on 88 tasks
(15 of them warmup+cosine; ``fit_direction.py``), four seeds each, so its accuracy on those is reported by
**task-grouped 12-fold cross-validation**: the tasks are dealt into 12 folds, and each task's curves are diagnosed by
models fitted without its fold (up to round 11 it was leave-one-task-out: 88 fits instead of 12, 90 minutes instead
of 15, each fit on all tasks but one instead of 11/12 of them). Every run logs the loss, the gradient
norm, the update-to-weight ratio and the gradient alignment; the doctor is scored with all four and as if the log had
only the first three, only the loss and gradient norm, or only the loss. The FINAL11 tasks were never used to fit
anything (the FINAL..FINAL8 and FINAL_SCHED sets were each scored, then folded into fitting; FINAL9 was scored in
rounds 10 and 11, FINAL10 in round 12, and neither is fitted on). A run that went
NaN is labelled too high (``labelled.py``). Tasks where no lr of the grid learned (``labelled.MIN_LEARNED``) are left
out, and named. It also prints how reproducible the labels are: the share of labels that the best lr of two other
seeds repeats.
Side by side, on the same curves: the threshold rules alone (the doctor before the shape model) and the eyeballing
rule users apply by hand (NaN or ended above the start: lower; fell < 30%: raise; else keep), since no library offers
an lr doctor to compare with. Targets: >= 90% on too-high and good, >= 80% on too-low.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one process per core fits the boosted trees (no thread oversubscription)

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import make_curves  # noqa: E402
from fit_direction import dataset, fit, fit_forest, fit_seq, profiles  # noqa: E402
from labelled import EXPECTED, MATERIAL, MIN_LEARNED, UNLEARNED, label_agreement, load, load_set  # noqa: E402

from lrkit.curve import Curve  # noqa: E402
from lrkit.doctor import diagnose, direction  # noqa: E402

CLASSES = ("too_high", "good", "too_low")
ACTIONS = ("lower", "keep", "raise")


def eyeball(curve) -> str:
    """The by-hand rule: NaN or ended above where it started -> lower; fell less than 30% -> raise; else keep."""
    y = curve.values
    if not np.isfinite(y).all():
        return "lower"
    first, last = np.median(y[:10]), np.median(y[-max(3, len(y) // 10):])
    if last > first:
        return "lower"
    return "raise" if (first - last) / abs(first) < 0.3 else "keep"


def only(c: Curve, *keep: str) -> Curve:
    """The curve with only the ``keep`` side signals (e.g. without the update ratio, as a log without it)."""
    return Curve(c.steps, c.values, c.lrs, name=c.name, extra={k: v for k, v in c.extra.items() if k in keep},
                 meta=c.meta)


HARM = {"too_high": "raise", "too_low": "lower"}  # the wrong direction: the worst outcome


def table(runs: list[dict], key: str, title: str) -> dict[str, float]:
    """Accuracy per label, and the harmful calls apart (a raise on a too-high run, a lower on a too-low one)."""
    conf = {c: dict.fromkeys(ACTIONS, 0) for c in CLASSES}
    for r in runs:
        conf[r["label"]][r[key]] += 1
    print(f"\n{title} ({len(runs)} curves)")
    print(f"{'label':10s} {'n':>4s}   " + "  ".join(f"{a:>6s}" for a in ACTIONS) + "   accuracy (target)  harmful")
    acc = {}
    for c in CLASSES:
        n = sum(conf[c].values())
        acc[c] = conf[c][EXPECTED[c]] / n if n else float("nan")
        harm = conf[c][HARM[c]] if c in HARM else 0
        print(f"{c:10s} {n:4d}   " + "  ".join(f"{conf[c][a]:6d}" for a in ACTIONS)
              + f"   {acc[c]:6.1%} ({0.8 if c == 'too_low' else 0.9:.0%})  {harm:7d}")
    return acc


def score(runs: list[dict]) -> None:
    """Fill each run's calls: the doctor (current models) and the rules alone, each with every logged signal and with
    the loss and grad norm only; the doctor on the loss only; the eyeballing rule."""
    for r in runs:
        c = r["curve"]
        d = diagnose(c)
        rec = d.recommendation
        r["doctor"], r["doctor_factor"] = rec.action, rec.factor
        weight, direction.SEQ_WEIGHT = direction.SEQ_WEIGHT, 0.0  # the boosted trees alone (as up to round 9)
        try:
            r["doctor_trees"] = diagnose(c).recommendation.action
        finally:
            direction.SEQ_WEIGHT = weight
        r["doctor_kinds"] = [x.kind for x in d.findings]
        r["p"] = [d.stats.get(f"p_{k}", float("nan")) for k in CLASSES]
        r["rules"] = diagnose(c, use_shape=False).recommendation.action
        r["doctor_ur"] = diagnose(only(c, "grad_norm", "update_ratio")).recommendation.action
        gn = only(c, "grad_norm")
        r["doctor_gn"] = diagnose(gn).recommendation.action
        r["rules_gn"] = diagnose(gn, use_shape=False).recommendation.action
        r["doctor_loss_only"] = diagnose(only(c)).recommendation.action
        r["eyeball"] = eyeball(c)


def tables(runs: list[dict], where: str) -> None:
    """The accuracy tables of every method on ``runs``."""
    table(runs, "doctor", f"lrkit doctor (loss, grad norm, update/weight ratio, gradient alignment), {where}")
    moved = [r for r in runs if r["label"] != r["lr_label"]]
    if moved:  # a run that went NaN is labelled too high; by its lr alone (as up to round 8) it was good / too low
        by_lr = [r for r in runs if r["lr_label"] is not None]
        acc = {c: np.mean([r["doctor"] == EXPECTED[c] for r in by_lr if r["lr_label"] == c]) for c in CLASSES}
        print(f"{len(moved)} runs that went NaN are labelled too high (by their lr alone: "
              + ", ".join(f"{c} {sum(r['lr_label'] == c for r in moved)}" for c in ("good", "too_low"))
              + "); the doctor with labels by lr alone, as up to round 8: "
              + "  ".join(f"{c} {v:.1%}" for c, v in acc.items()))
    table(runs, "doctor_trees", f"lrkit doctor, boosted trees alone (no sequence model, as up to round 9), {where}")
    table([r for r in runs if r["material"]], "doctor", f"lrkit doctor, {where}, material labels")
    table(runs, "doctor_ur", f"lrkit doctor, loss, grad norm and update ratio (no alignment logged), {where}")
    table(runs, "doctor_gn", f"lrkit doctor, loss and grad norm (no update ratio logged), {where}")
    table(runs, "doctor_loss_only", f"lrkit doctor, loss only, {where}")
    print()
    by_distance(runs, where)
    table(runs, "rules", f"threshold rules alone, all signals, {where}")
    table(runs, "rules_gn", f"threshold rules alone, loss and grad norm (the doctor before the shape model), {where}")
    table(runs, "eyeball", f"eyeballing rule, {where}")


def by_distance(runs: list[dict], title: str) -> None:
    """The doctor's accuracy on the too-high and too-low runs by how far their lr sits from the best lr (x 2^k)."""
    cells = []
    for c in ("too_low", "too_high"):
        of_class = [r for r in runs if r["label"] == c]
        ks = np.array([round(np.log2(r["lr"] / r["best_lr"])) for r in of_class])
        ok = np.array([r["doctor"] == EXPECTED[c] for r in of_class])
        far = np.abs(ks) > 5  # the far ends pooled
        row = [f"{2 ** k if k >= 0 else f'1/{2 ** -k}'}x {ok[ks == k].mean():.0%} ({(ks == k).sum()})"
               for k in np.unique(ks[~far])]
        if far.any():
            end = f"{'< 1/32' if c == 'too_low' else '> 32'}x {ok[far].mean():.0%} ({far.sum()})"
            row = [end, *row] if c == "too_low" else [*row, end]
        cells += row
    print(f"doctor by lr / best lr, {title}: " + "  ".join(cells))


def left_out(where: str, tasks: set[str] | None = None) -> None:
    """Say which tasks (of ``tasks``; default all loaded so far) the labelled set left out because no lr of their grid
    learned."""
    gone = {t: v for t, v in UNLEARNED.items() if tasks is None or t in tasks}
    if gone:
        print(f"left out of the {where} tasks (no lr learned {MIN_LEARNED:.0%} below the untrained loss): "
              + ", ".join(f"{t} ({v:+.0%})" for t, v in sorted(gone.items())))


def live_events(c: Curve, ratio: bool = True, **monitor_kwargs):
    """Feed a run to a fresh live Monitor step by step, as a training loop would (loss, lr, grad norm and, with
    ``ratio``, the update ratio and gradient alignment); yields every event as it fires."""
    from lrkit.doctor import Monitor

    m = Monitor(**monitor_kwargs)
    ur = c.extra.get("update_ratio") if ratio else None
    al = c.extra.get("grad_alignment") if ratio else None
    for i in range(len(c)):
        yield from m.update(i, c.values[i], lr=c.lrs[i], grad_norm=c.extra["grad_norm"][i],
                            update_ratio=ur[i] if ur is not None else None,
                            grad_alignment=al[i] if al is not None else None)


def live_alarms(runs: list[dict], title: str) -> None:
    """How often the live Monitor raises a divergence (or NaN) alarm per class, with and without the update ratio,
    beside a NaN-only guard (what Keras' TerminateOnNaN or a ``torch.isfinite(loss)`` check catch). An alarm on a
    too-high run is wanted; on a good or too-low run it is a false alarm (with ``act=True``, a needless rollback)."""
    rows = {"lrkit Monitor, update ratio logged": [], "lrkit Monitor, loss + grad norm": [], "NaN-only guard": []}
    for r in runs:
        c = r["curve"]
        for name, ratio in (("lrkit Monitor, update ratio logged", True), ("lrkit Monitor, loss + grad norm", False)):
            fired = any(e.kind in ("divergence", "nan") for e in live_events(c, ratio))
            rows[name].append((r["label"], fired))
        rows["NaN-only guard"].append((r["label"], not np.isfinite(c.values).all()))
    print(f"\nlive divergence alarms, {title} (share of runs with at least one; wanted on too-high only)")
    for name, got in rows.items():
        print(f"  {name:36s} " + "  ".join(
            f"{c} {np.mean([f for lab, f in got if lab == c]):6.1%}" for c in CLASSES))


KEYS = ("doctor", "doctor_trees", "doctor_factor", "doctor_kinds", "p", "rules", "doctor_ur",
        "doctor_gn", "rules_gn", "doctor_loss_only", "eyeball")
_SHARED: tuple = ()


FOLDS = 12  # task-grouped folds of the fitting tasks (each task's curves are scored by models fitted without its fold)


def folds(tasks: list[str]) -> list[list[str]]:
    """The fitting tasks dealt into ``FOLDS`` folds in a fixed random order (numpy seed 0): every task in one fold."""
    order = np.random.default_rng(0).permutation(len(tasks))
    return [sorted(tasks[i] for i in order[k::FOLDS]) for k in range(FOLDS)]


def _cv_fold(held: list[str]) -> list[dict]:
    """One fold of the task-grouped CV: models (trees, forests, sequence models) fitted without the ``held`` tasks
    diagnose their curves; returns their calls, in the order of ``runs``."""
    fitting, runs = _SHARED
    models = {}
    for name, (X, y, groups, fs, fitter) in fitting.items():
        keep = ~np.isin(groups, held)
        models[name] = (fitter(X[keep], y[keep], name[4:]) if name.startswith("seq_")
                        else direction.export_forest(fitter(X[keep], y[keep]), fs))
    direction.set_models(models)
    try:
        mine = [r for r in runs if r["task"] in held]
        score(mine)
        return [{k: r[k] for k in KEYS} for r in mine]
    finally:
        direction.set_models(None)


def _parallel(fn, items: list, shared: tuple) -> list:
    """``fn`` over ``items`` in one process per CPU (forked: they share ``shared``), in order."""
    global _SHARED
    _SHARED = shared
    import multiprocessing as mp

    with mp.get_context("fork").Pool(os.cpu_count() or 1) as pool:
        return pool.map(fn, items, chunksize=1)


def cv_tables() -> list[dict]:
    """Task-grouped ``FOLDS``-fold CV over every fitting set: the accuracy tables (``--dump FILE``: every run's calls);
    returns the labelled runs."""
    for name in make_curves.FITTING:
        make_curves.ensure(name)
    runs = load(fresh=True)
    tasks = sorted({r["task"] for r in runs})
    print(f"{len(runs)} labelled curves from {len(tasks)} fitting tasks, 300 steps each")
    left_out("fitting")
    agree = label_agreement(tasks)
    print("label reproducibility (the labels from two seeds' best lr that the other two seeds' best lr repeats): "
          + "  ".join(f"{c} {v:.1%}" for c, v in agree.items()))
    fitting = {}  # model name -> (X, target, task of each row, feature names, fitter)
    for name, fs in direction.VARIANTS.items():
        X, y, groups, kept = dataset(runs, fs)
        fitting[name] = (X, y, groups, fs, fit_forest if "--forest" in sys.argv else fit)
        if name in direction.SEQ_VARIANTS:
            fitting[f"seq_{name}"] = (profiles(kept), y, groups, fs, fit_seq)
    parts = folds(tasks)
    calls = _parallel(_cv_fold, parts, (fitting, runs))
    for held, scored in zip(parts, calls):
        for r, c in zip([r for r in runs if r["task"] in held], scored):
            r.update(c)
    print(f"({sum(not r['material'] for r in runs)} too-high/too-low curves lost < {MATERIAL:.0%} of the achievable "
          "descent: 'material' tables leave them out)")
    tables(runs, f"task-grouped {FOLDS}-fold CV, all fitting tasks")
    if "--dump" in sys.argv:  # every run's calls, for a look at the misses
        import json

        with open(sys.argv[sys.argv.index("--dump") + 1], "w") as fh:
            for r in runs:
                fh.write(json.dumps({k: r[k] for k in ("task", "seed", "lr", "best_lr", "label", "group", *KEYS)}) + "\n")
    return runs


def main() -> None:
    t0 = time.time()
    runs = cv_tables() if "--no-cv" not in sys.argv else None
    if "--live" in sys.argv:  # the live Monitor's divergence alarms on every fitting run (no fitted model involved)
        live_alarms(runs if runs is not None else load(fresh=True), "all fitting tasks")
    if "--final" in sys.argv:  # the round's held-out tasks, scored with the shipped models
        name = make_curves.HELD_OUT_SET
        make_curves.ensure(name)
        final = load_set(name)
        left_out(name.upper(), {"|".join(map(str, t)) for t in make_curves.SETS[name][0]})
        score(final)
        print(f"\n{name.upper()} held-out tasks (never fitted on): {sorted({r['task'] for r in final})}")
        tables(final, f"{name.upper()} held-out tasks, shipped model")
        live_alarms(final, f"{name.upper()} held-out tasks")
        # one 8-task set is a noisy measure: the earlier held-out sets (never fitted on) pooled with it
        sets = (*make_curves.EARLIER_HELD_OUT, name)
        earlier = []
        for s in sets[:-1]:
            make_curves.ensure(s)
            earlier += load_set(s)
        score(earlier)
        table(final + earlier, "doctor", f"lrkit doctor, {' + '.join(s.upper() for s in sets)} held-out tasks pooled, "
              "shipped model")
    if "--long" in sys.argv:  # the same tasks trained 5x longer: does the shape model carry over to longer runs?
        make_curves.ensure("long")
        long = load_set("long")
        score(long)
        for r in long:
            r["all_points"] = diagnose(r["curve"], shape_points=0).recommendation.action
        print(f"\nLONG runs, 1500 steps: {sorted({r['task'] for r in long})}")
        table(long, "doctor", "lrkit doctor (shipped model; reads 300 evenly spaced points), LONG runs")
        table(long, "all_points", "lrkit doctor reading every point (shape_points=0), LONG runs")
        table(long, "rules", "threshold rules alone, LONG runs")
        table(long, "eyeball", "eyeballing rule, LONG runs")
    print(f"\nscored in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
