"""Quality of the doctor's direction (raise / lower / keep) on real curves over lr grids.

Run: ``python benchmarks/doctor/bench_quality.py`` (generates the curves first if they are not cached; about a
minute after that). ``--final`` also scores the FINAL3 held-out tasks and the warmup+cosine FINAL_SCHED ones with
the shipped model, ``--long`` the 1500-step runs (``make_curves.py --long``).

The doctor = threshold rules (NaN, blow-up, climb-back, spikes) + a small fitted shape model
(:mod:`lrkit.doctor.direction`) for runs that neither diverged nor spiked. The shape model is fitted on 58 tasks (8 of them warmup+cosine)
(``fit_direction.py``), so its accuracy on those is reported **leave-one-task-out**: each task's curves are
diagnosed by forests fitted without that task. The FINAL3 tasks were never used to fit or choose anything (the
FINAL and FINAL2 sets were each scored once, with the shape model of their round, then folded into fitting).
Side by side, on the same curves: the threshold rules alone (the doctor before the shape model) and the eyeballing
rule users apply by hand (NaN or ended above the start: lower; fell < 30%: raise; else keep), since no library
offers an lr doctor to compare with. Targets: >= 90% on too-high and good, >= 80% on too-low.
"""

from __future__ import annotations

import glob
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import make_curves  # noqa: E402
from fit_direction import dataset, fit, fit_ratio, ratio_dataset  # noqa: E402
from labelled import EXPECTED, MATERIAL, _load, load  # noqa: E402

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


def without_gn(c: Curve) -> Curve:
    return Curve(c.steps, c.values, c.lrs, name=c.name, meta=c.meta)


def table(runs: list[dict], key: str, title: str) -> dict[str, float]:
    conf = {c: dict.fromkeys(ACTIONS, 0) for c in CLASSES}
    for r in runs:
        conf[r["label"]][r[key]] += 1
    print(f"\n{title} ({len(runs)} curves)")
    print(f"{'label':10s} {'n':>4s}   " + "  ".join(f"{a:>6s}" for a in ACTIONS) + "   accuracy (target)")
    acc = {}
    for c in CLASSES:
        n = sum(conf[c].values())
        acc[c] = conf[c][EXPECTED[c]] / n if n else float("nan")
        print(f"{c:10s} {n:4d}   " + "  ".join(f"{conf[c][a]:6d}" for a in ACTIONS)
              + f"   {acc[c]:6.1%} ({0.8 if c == 'too_low' else 0.9:.0%})")
    return acc


def factors(runs: list[dict], title: str) -> None:
    """How far the recommended factor is from the one that would land on the grid's best lr (|log2| error), on
    the runs whose direction both the doctor and the rules got right, against the rules' fixed factors; all such
    runs, and the finite ones within 30x of the best lr (those a factor can reach, where the shape model sets it)."""
    ok = [r for r in runs if r["label"] != "good" and r["doctor"] == EXPECTED[r["label"]]
          and r["rules"] == r["doctor"]]
    near = [r for r in ok if np.isfinite(r["curve"].values).all() and 1 / 30 <= r["lr"] / r["best_lr"] <= 30]
    for sub, what in ((ok, "all"), (near, "finite, within 30x")):
        if not sub:
            continue
        want = np.array([np.log2(r["best_lr"] / r["lr"]) for r in sub])
        err_doc = np.abs(np.log2([r["doctor_factor"] for r in sub]) - want)
        err_rule = np.abs(np.log2([r["rules_factor"] for r in sub]) - want)
        print(f"factor ('by about how much'), {title}, {what} ({len(sub)} too-high/too-low runs both directed "
              f"right): median |log2(factor x lr / best lr)| doctor {np.median(err_doc):.2f}, rules' fixed factors "
              f"{np.median(err_rule):.2f}; lands within 2x of the best lr: {np.mean(err_doc <= 1):.0%} vs "
              f"{np.mean(err_rule <= 1):.0%}")


def score(runs: list[dict]) -> None:
    """Fill each run's calls: doctor (current models), doctor without grad norm, rules alone, eyeball."""
    for r in runs:
        c = r["curve"]
        rec = diagnose(c).recommendation
        r["doctor"], r["doctor_factor"] = rec.action, rec.factor
        rule = diagnose(c, use_shape=False).recommendation
        r["rules_factor"] = rule.factor
        r["doctor_loss_only"] = diagnose(without_gn(c)).recommendation.action
        r["rules"] = rule.action
        r["eyeball"] = eyeball(c)


def main() -> None:
    for name in make_curves.FITTING:
        tasks, path, _ = make_curves.SETS[name]
        parts = glob.glob(path.replace(".npz", ".part*.npz"))
        if not os.path.exists(path) and not parts:
            make_curves.generate(path, tasks)
    t0 = time.time()
    every = load(fresh=True, unlabelled=True)  # the ratio regressors also learn from the runs between the classes
    runs = [r for r in every if r["label"] is not None]
    tasks = sorted({r["task"] for r in runs})
    print(f"{len(runs)} labelled curves from {len(tasks)} fitting tasks, 300 steps each")
    fitting = {}  # model name -> (X, target, task of each row, feature names, fitter)
    for name, fs in (("with_gn", direction.LOSS_FEATURES + direction.GN_FEATURES),
                     ("loss_only", direction.LOSS_FEATURES)):
        fitting[name] = (*dataset(runs, fs)[:3], fs, fit)
        fitting[f"ratio_{name}"] = (*ratio_dataset(every, fs), fs, fit_ratio)
    try:
        for task in tasks:  # leave-one-task-out: forests fitted without this task diagnose its curves
            models = {name: direction.export_forest(fitter(X[groups != task], y[groups != task]), fs)
                      for name, (X, y, groups, fs, fitter) in fitting.items()}
            direction.set_models(models)
            score([r for r in runs if r["task"] == task])
    finally:
        direction.set_models(None)
    material = [r for r in runs if r["material"]]
    print(f"({len(runs) - len(material)} too-high/too-low curves lost < {MATERIAL:.0%} of the achievable descent: "
          "'material' tables leave them out)")
    table(runs, "doctor", "lrkit doctor, leave-one-task-out, all fitting tasks")
    table(material, "doctor", "lrkit doctor, leave-one-task-out, material labels")
    table(runs, "doctor_loss_only", "lrkit doctor without the grad-norm column, leave-one-task-out")
    print()
    factors(runs, "leave-one-task-out")
    table(runs, "rules", "threshold rules alone (the doctor before the shape model)")
    table(runs, "eyeball", "eyeballing rule")
    if "--final" in sys.argv:
        if not os.path.exists(make_curves.FINAL3_CACHE):
            make_curves.generate(make_curves.FINAL3_CACHE, make_curves.FINAL3_TASKS)
        final = _load(make_curves.FINAL3_CACHE, "--final3")
        score(final)
        print(f"\nFINAL3 held-out tasks (never used to fit or choose anything): "
              f"{sorted({r['task'] for r in final})}")
        table(final, "doctor", "lrkit doctor (shipped model), FINAL3 held-out tasks")
        table([r for r in final if r["material"]], "doctor", "lrkit doctor (shipped model), FINAL3, material labels")
        table(final, "doctor_loss_only", "lrkit doctor without the grad-norm column, FINAL3 held-out tasks")
        factors(final, "FINAL3 held-out tasks")
        table(final, "rules", "threshold rules alone, FINAL3 held-out tasks")
        table(final, "eyeball", "eyeballing rule, FINAL3 held-out tasks")
        if not os.path.exists(make_curves.FINAL_SCHED_CACHE):
            make_curves.generate(make_curves.FINAL_SCHED_CACHE, make_curves.FINAL_SCHED_TASKS)
        fs = _load(make_curves.FINAL_SCHED_CACHE, "--final-sched")
        score(fs)
        print(f"\nFINAL_SCHED held-out warmup+cosine tasks: {sorted({r['task'] for r in fs})}")
        table(fs, "doctor", "lrkit doctor (shipped model), FINAL_SCHED held-out tasks")
        table(fs, "rules", "threshold rules alone, FINAL_SCHED held-out tasks")
        table(fs, "eyeball", "eyeballing rule, FINAL_SCHED held-out tasks")
    if "--long" in sys.argv:  # the same tasks trained 5x longer: does the shape model carry over to longer runs?
        parts = glob.glob(make_curves.LONG_CACHE.replace(".npz", ".part*.npz"))
        if not parts and not os.path.exists(make_curves.LONG_CACHE):
            make_curves.generate(make_curves.LONG_CACHE, make_curves.LONG_TASKS)
        long = [r for p in sorted(parts or [make_curves.LONG_CACHE]) for r in _load(p, "--long")]
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
