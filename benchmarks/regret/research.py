"""Rule research on the FITTING tasks only: why lrkit's default misses, and simpler candidate rules scored as pure
functions of the curves ``find_lr`` recorded (its ramp, raw and smoothed losses, and its confirmation runs).

    python benchmarks/regret/research.py [--seeds N] [--jobs 2] [--json results/research.json]
    python benchmarks/regret/research.py --held-out     # score the one chosen candidate on the held-out tasks

Reads the cache ``run.py`` builds (the grid, ``find_lr``'s results) and trains each candidate's pick (cached).
Never touches a held-out task (``tasks.HELD_OUT``): the candidates must not be scored there in this phase. Once the
research has chosen, ``--held-out`` scores that one candidate (``CHOSEN``) on the held-out tasks, beside the default,
and nothing else: a number to read once, not to tune on.
Per-family factors are also scored leave-one-family-out: each fitting family's factor comes from the other
fitting families only, an estimate of how a fitted factor carries to a family it has not seen.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Callable

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import engine  # noqa: E402
import run  # noqa: E402


def _arr(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _prefix(lrs, losses) -> tuple[np.ndarray, np.ndarray, bool]:
    """The curve up to its first non-finite loss, and whether it was cut there."""
    lrs, losses = _arr(lrs), _arr(losses)
    bad = np.flatnonzero(~np.isfinite(losses))
    end = int(bad[0]) if bad.size else len(lrs)
    return lrs[:end], losses[:end], end < len(lrs)


def fit(rec: dict):
    """lrkit's robust LOESS fit of the recorded raw ramp (the only non-public lrkit name this benchmark uses)."""
    from lrkit.finder import fit_curve
    lrs, losses, cut = _prefix(rec["lrs"], rec["losses"])
    if len(lrs) < 5:
        return None
    return fit_curve(lrs, losses, ended_nonfinite=cut)


def landmarks(rec: dict) -> dict:
    """What a rule may read off one recorded find_lr run (all pure functions of the curve)."""
    f = fit(rec)
    lrs, raw, _ = _prefix(rec["lrs"], rec["losses"])
    _, sm, _ = _prefix(rec["lrs"], rec["smoothed_losses"])
    out = {"lr_end": float(lrs[-1]) if len(lrs) else None, "confirm": rec.get("confirmations") or []}
    if f is not None:
        out.update(lr_div=f.lr_diverge if f.diverged else None, lr_min=f.lr_min, lr_steep=f.lr_steep,
                   diverged=f.diverged)
    if len(sm):
        out["lr_min_smoothed"] = float(lrs[int(np.argmin(sm))])
    if len(raw):
        out["lr_min_raw"] = float(lrs[int(np.argmin(raw))])
    return out


# ---- candidate rules: (landmarks, task) -> lr or None --------------------------------------------------------
def _div_or_end(lm: dict) -> float | None:
    """The divergence lr of the fit, or the end of the curve when it never diverged (a lower bound)."""
    return lm.get("lr_div") or lm.get("lr_end")


def div_over(k: float) -> Callable:
    return lambda lm, task: None if _div_or_end(lm) is None else _div_or_end(lm) / k


def min_over(k: float, key: str = "lr_min") -> Callable:
    return lambda lm, task: None if lm.get(key) is None else lm[key] / k


def steep(lm, task):
    return lm.get("lr_steep")


def geo_steep_min10(lm, task):
    if lm.get("lr_steep") is None or lm.get("lr_min") is None:
        return None
    return math.sqrt(lm["lr_steep"] * lm["lr_min"] / 10)


def lrkit_factors(lm, task):
    """lr_div over lrkit's current family factors (Adam-like 10, SGD 1.2 + 3 x momentum): the robust rule."""
    d = _div_or_end(lm)
    momentum = 0.0 if task.optimizer == "sgd" else 0.9
    return None if d is None else d / (10.0 if task.opt_family == "adam" else 1.2 + 3.0 * momentum)


def committee(lm, task):
    """The geometric median of three independent reads: lrkit's factors on lr_div, min/10 of the smoothed curve,
    and the fit's lr_min / 3."""
    xs = [x for x in (lrkit_factors(lm, task), min_over(10, "lr_min_smoothed")(lm, task), min_over(3)(lm, task))
          if x]
    return float(np.exp(np.median(np.log(xs)))) if xs else None


def geo_robust_min10(lm, task):
    a, b = lrkit_factors(lm, task), min_over(10, "lr_min_smoothed")(lm, task)
    return math.sqrt(a * b) if a and b else (a or b)


def best_confirmation(lm, task):
    c = [x for x in lm["confirm"] if x.get("score") is not None and math.isfinite(x["score"])]
    return min(c, key=lambda x: x["score"])["lr"] if c else None


CANDIDATES: dict[str, Callable] = {
    "robust fit: lr_div / 3": div_over(3),
    "robust fit: lr_div / 5": div_over(5),
    "robust fit: lr_div / 10": div_over(10),
    "robust fit: lr_div / 20": div_over(20),
    "robust fit: lr_min / 3": min_over(3),
    "robust fit: lr_min / 10": min_over(10),
    "robust fit: steepest": steep,
    "sqrt(steepest x lr_min/10)": geo_steep_min10,
    "min/10 on raw losses": min_over(10, "lr_min_raw"),
    "min/10 on smoothed losses": min_over(10, "lr_min_smoothed"),
    "min/3 on smoothed losses": min_over(3, "lr_min_smoothed"),
    "best confirmation run (lowest score)": best_confirmation,
    "lr_div / lrkit's factors (10; 1.2 + 3 x momentum)": lrkit_factors,
    "sqrt(lrkit factors x min/10 smoothed)": geo_robust_min10,
    "median of (lrkit factors, min/10 smoothed, lr_min/3)": committee,
}


# ---- evaluation ----------------------------------------------------------------------------------------------
def gather(task, seeds, mod) -> dict:
    """Grid, find_lr records and their landmarks for one fitting task; trains nothing new but the grid (cached)."""
    assert not task.held_out, f"{task.name} is held out; the research never reads it"
    g = engine.grid(task, seeds, mod)
    recs = [engine.lrkit_find(task, s, mod) for s in seeds]
    return {"task": task.name, "grid": g, "landmarks": [landmarks(r) for r in recs],
            "default": [r["lr"] for r in recs], "robust": [r["rules"]["robust"] for r in recs],
            "stop": [r["stop_reason"] for r in recs], "confirm": [r.get("confirmations") for r in recs]}


def score(task, seeds, mod, lrs: list[float | None], best: float) -> tuple[list[float], list[bool]]:
    """Regret per seed of training at each seed's lr (None: the fixed default, counted as no pick)."""
    regrets, picked = [], []
    for seed, lr in zip(seeds, lrs):
        ok = run.usable(lr)
        regrets.append(engine.train(task, lr if ok else run.fixed_default(task), seed, mod=mod)["score"] / best)
        picked.append(ok)
    return regrets, picked


def _worker(args):
    name, tasks_path, seeds, rules = args
    tasks, mod = engine.load_tasks(tasks_path)
    task = next(t for t in tasks if t.name == name)
    info = gather(task, seeds, mod)
    out = {}
    for rule_name, lrs in rules.items():
        out[rule_name] = score(task, seeds, mod, lrs, info["grid"]["best"])
    return name, out


def opt_kind(task) -> str:
    """adam (Adam, AdamW, RMSprop) | sgd (plain) | sgdm (momentum or Nesterov)."""
    return "adam" if task.opt_family == "adam" else ("sgdm" if task.optimizer in ("sgdm", "nesterov") else "sgd")


def opt_schedule(task) -> str:
    """The optimiser kind and whether the lr stays constant or decays (a rule told the user's schedule)."""
    return f"{opt_kind(task)}/{'constant' if task.schedule == 'constant' else 'decaying'}"


def loo_factors(fitting, infos, key: Callable) -> dict[str, dict[str, float]]:
    """Per group ``key(task)``, the geometric median over tasks and seeds of the ideal factor lr_div / best lr,
    fitted leave-one-family-out: {family: {group: factor}}, and on all fitting tasks under "_all". A group with
    no example elsewhere falls back to all groups pooled."""
    ideal = []
    for t in fitting:
        best = infos[t.name]["grid"]["best_lr"]
        for lm in infos[t.name]["landmarks"]:
            d = _div_or_end(lm)
            if d:
                ideal.append((t.family, key(t), d / best))
    groups = sorted({key(t) for t in fitting})

    def gmed(xs):
        return float(np.exp(np.median(np.log(xs))))

    out = {}
    for fam in sorted({t.family for t in fitting}) + ["_all"]:
        rest = [(g, x) for f, g, x in ideal if f != fam]
        out[fam] = {g: gmed([x for gg, x in rest if gg == g] or [x for _, x in rest]) for g in groups}
    return out


def factor_rule(factors: dict[str, dict[str, float]], key: Callable, fam: str) -> Callable:
    def rule(lm, task):
        d = _div_or_end(lm)
        return None if d is None else d / factors[fam][key(task)]
    return rule


#: the candidate the fitting-task research chose (the simplest of the best: lrkit's robust rule without its vetoes
#: and without the confirmation runs, about 100 steps instead of 200); ``--held-out`` scores it there, once
CHOSEN = "lr_div / lrkit's factors (10; 1.2 + 3 x momentum)"


def held_out(tasks, mod, seeds) -> None:
    """The chosen candidate and the default on the held-out tasks: median regret over seeds per task, then the
    median, worst and count within 1.10 over tasks."""
    rule = CANDIDATES[CHOSEN]
    rows = []
    for t in (t for t in tasks if t.held_out):
        g = engine.grid(t, seeds, mod)
        recs = [engine.lrkit_find(t, s, mod) for s in seeds]
        lrs = [rule(landmarks(r), t) for r in recs]
        chosen, picked = score(t, seeds, mod, lrs, g["best"])
        default, _ = score(t, seeds, mod, [r["lr"] for r in recs], g["best"])
        rows.append((t.name, float(np.median(default)), float(np.median(chosen)), sum(picked)))
        print(f"  {t.name:36s} default {rows[-1][1]:6.3f}   chosen {rows[-1][2]:6.3f}   picks {rows[-1][3]}/{len(seeds)}",
              flush=True)
    for i, label in ((1, "lrkit default: find_lr (robust+confirm)"), (2, f"chosen: {CHOSEN}")):
        v = [r[i] for r in rows]
        print(f"HELD OUT {label:60s} median {np.median(v):.3f}  max {max(v):.2f}  "
              f"<=1.10 {sum(x <= 1.10 for x in v)}/{len(v)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default=None)
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", default=os.path.join(HERE, "results", "research.json"))
    ap.add_argument("--held-out", action="store_true", help=f"score only the chosen candidate ({CHOSEN}) on the "
                    "held-out tasks, beside the default")
    args = ap.parse_args()
    tasks, mod = engine.load_tasks(args.tasks)
    seeds = engine.SEEDS[: args.seeds or len(engine.SEEDS)]
    if args.held_out:
        held_out(tasks, mod, seeds)
        return
    fitting = [t for t in tasks if not t.held_out]  # never a held-out task
    t0 = time.time()
    infos = {t.name: gather(t, seeds, mod) for t in fitting}
    by_name = {t.name: t for t in fitting}

    # 1. why the default misses: its pick against the grid's best lr
    print(f"FITTING tasks only ({len(fitting)} tasks x {len(seeds)} seeds); held-out families "
          f"{sorted(mod.HELD_OUT)} are never read\n")
    print(f"{'task':36s} {'opt':>8s} {'sched':>13s} {'best lr':>8s} {'pick/best':>17s} {'robust/best':>11s} "
          f"{'div/best':>8s} {'moved by confirm':>16s}")
    for t in fitting:
        info = infos[t.name]
        best = info["grid"]["best_lr"]
        ratio = [x / best for x in info["default"] if x]
        rob = [x / best for x in info["robust"] if x]
        div = [_div_or_end(lm) / best for lm in info["landmarks"] if _div_or_end(lm)]
        moved = sum(1 for a, b in zip(info["default"], info["robust"]) if a and b and abs(a / b - 1) > 1e-6)
        rng = f"{np.median(ratio):.2g} [{min(ratio):.2g}-{max(ratio):.2g}]" if ratio else "none"
        print(f"{t.name:36s} {t.optimizer:>8s} {t.schedule:>13s} {best:8.2g} {rng:>17s} "
              f"{np.median(rob) if rob else float('nan'):11.2g} {np.median(div) if div else float('nan'):8.3g} "
              f"{moved:>10d}/{len(seeds)}")

    # 2. candidate rules
    cands = dict(CANDIDATES)
    fitted = {name: (key, loo_factors(fitting, infos, key)) for name, key in
              (("optimiser", opt_kind), ("optimiser x schedule", opt_schedule))}
    for name, (key, factors) in fitted.items():
        cands[f"lr_div / factor per {name}, fitted on all fitting tasks"] = factor_rule(factors, key, "_all")
    rules: dict[str, dict[str, list]] = {}
    for t in fitting:
        lms = infos[t.name]["landmarks"]
        r = {name: [fn(lm, t) for lm in lms] for name, fn in cands.items()}
        for name, (key, factors) in fitted.items():
            r[f"lr_div / factor per {name}, leave-one-family-out"] = [
                factor_rule(factors, key, t.family)(lm, t) for lm in lms]
        r["lrkit robust rule, no confirmation (reference)"] = infos[t.name]["robust"]
        r["lrkit default: find_lr (reference)"] = infos[t.name]["default"]
        rules[t.name] = r
    jobs = [(t.name, args.tasks, tuple(seeds),
             {k: [float(x) if x else None for x in v] for k, v in rules[t.name].items()}) for t in fitting]
    if args.jobs > 1:
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            scored = dict(pool.imap_unordered(_worker, jobs))
    else:
        scored = dict(map(_worker, jobs))
    names = list(rules[fitting[0].name])
    print(f"\ncandidate rules on the fitting tasks (median over seeds per task; {len(fitting)} tasks)")
    head = f"{'rule':66s} {'median':>7s} {'max':>7s} {'<=1.10':>7s} {'picks':>7s}  by family (median)"
    print(head + "\n" + "-" * (len(head) + 40))
    summary = {}
    fams = sorted({t.family for t in fitting})
    for n in names:
        reg = {t: float(np.median(scored[t][n][0])) for t in scored}
        picks = sum(sum(scored[t][n][1]) for t in scored)
        vals = np.array(list(reg.values()))
        fam = {f: float(np.median([reg[t] for t in reg if by_name[t].family == f])) for f in fams}
        summary[n] = {"median": float(np.median(vals)), "max": float(vals.max()),
                      "within_1_10": int((vals <= 1.10).sum()), "picks": int(picks), "per_task": reg,
                      "by_family": fam}
        print(f"{n:66s} {np.median(vals):7.3f} {vals.max():7.2f} {int((vals <= 1.10).sum()):>3d}/{len(vals):<3d} "
              f"{picks:>3d}/{len(seeds) * len(vals):<3d}  " + " ".join(f"{f[:5]} {fam[f]:.2f}" for f in fams))
    for name, (_, factors) in fitted.items():
        print(f"\nfactors lr_div / best lr per {name} (geometric median; '_all': every fitting task, else "
              "without that family):")
        for fam, v in factors.items():
            print(f"  {fam:12s} " + ", ".join(f"{g} {x:.2g}" for g, x in v.items()))
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"seeds": list(seeds), "tasks": [t.name for t in fitting],
                   "factors": {name: f for name, (_, f) in fitted.items()},
                   "summary": summary, "lrs": rules}, f, indent=1)
    print(f"\nwall time {time.time() - t0:.0f}s; every number in {os.path.relpath(args.json)}")


if __name__ == "__main__":
    main()
