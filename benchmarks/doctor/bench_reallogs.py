"""The doctor on real public training logs with expert labels: agreement, harmful advice and unread logs.

Run: ``python benchmarks/doctor/bench_reallogs.py`` (the development corpus ``../shared/reallogs``), or
``--corpus DIR`` (any folder in the same layout: the logs, ``labels.json`` and optionally ``groups.json``), several
``--corpus`` to score each apart and pooled. Every method reads the same files in the same run:

- ``doctor``: ``lrkit.diagnose(path)``, as shipped, one log at a time: a log whose name carries its lr is compared
  with the runs of its sweep found beside it (``lrkit.doctor.compare.sweep_siblings``);
- ``doctor, alone``: ``lrkit.diagnose(path, siblings=False)``: each log judged by itself;
- ``doctor, sweeps``: the logs of one lr sweep diagnosed together (``lrkit.diagnose_runs``), where ``groups.json``
  (or, for the development corpus, :data:`DEV_GROUPS`) says which logs belong to one sweep; logs outside any group
  are diagnosed alone;
- ``rules, alone``: ``lrkit.diagnose(path, siblings=False, use_shape=False)``: without the fitted shape model;
- ``always keep``: the answer "keep" for every log.

A label (``labels.json``) lists the actions an expert accepts (``ok``) and those that would hurt (``harm``), out of
keep, lower, raise, raise<=3 (a raise of at most 3x), raise>3. A verdict's action is ``keep``, ``lower``, or ``raise``
with its factor (so both ``raise`` and ``raise<=3`` or ``raise>3`` name it). It *agrees* when one of its names is in
``ok`` and is *harmful* when one is in ``harm``; a log the doctor cannot read is *unread* (a clean refusal of a log
under 8 points counts as a keep). The class of a log is ``lower`` or ``raise`` when its ``ok`` holds that direction
and not keep, else ``keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections import defaultdict
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEV = os.path.join(ROOT, "..", "shared", "reallogs")
# which development logs are runs of one lr sweep (from the corpus' SOURCES.md): the doctor may compare them
DEV_GROUPS = {
    "unet_pets": ["unet_pets_lr1e-3", "unet_pets_lr2e-3", "unet_pets_lr5e-4", "unet_pets_lr7e-5"],
    "deeplab_pets": ["deeplab_pets_lr7e-5", "deeplab_pets_lr2e-4", "deeplab_pets_lr5e-4"],
    "mnist_pl": ["mnist_pl_lr5e-4.metrics.csv", "mnist_pl_lr1.5e-3.metrics.csv"],
    "peft_adaptionprompt": ["peft_adaptionprompt_lr5e-4.json", "peft_adaptionprompt_lr5e-3.json"],
    "peft_ia3": ["peft_ia3_lr1e-4.json", "peft_ia3_lr1e-3.json"],
    "peft_prompt_tuning": ["peft_prompt_tuning_lr1e-4.json", "peft_prompt_tuning_lr1e-3.json"],
    "peft_ptuning": ["peft_ptuning_vt50_lr5e-5.json", "peft_ptuning_vt50_lr1e-3.json"],
    "algoperf_nadamp_wmt": ["algoperf_nadamp_wmt_lr1.4e-3.measurements.csv",
                            "algoperf_nadamp_wmt_lr3.7e-3.measurements.csv"],
}
METHODS = ("doctor", "doctor, alone", "doctor, sweeps", "rules, alone", "always keep")


def names(action: str, factor: float) -> set[str]:
    """Every name of a verdict's action in the labels' vocabulary."""
    if action == "raise":
        return {"raise", "raise<=3" if factor <= 3.0 + 1e-9 else "raise>3"}
    return {action}


def label_class(label: dict) -> str:
    ok = set(label["ok"])
    if "keep" in ok:
        return "keep"
    if "lower" in ok:
        return "lower"
    return "raise"


def score(action: str | None, factor: float, label: dict, points: int | None) -> str:
    """'agree', 'harm', 'other' or 'unread' (None action: the log was not read)."""
    if action is None:
        if points is not None and points < 8:
            action, factor = "keep", 1.0
        else:
            return "unread"
    n = names(action, factor)
    if n & set(label.get("harm", [])):
        return "harm"
    return "agree" if n & set(label["ok"]) else "other"


def _points(path: str) -> int | None:
    import lrkit

    try:
        return max(len(c) for c in lrkit.read_runs(path))
    except Exception:  # noqa: BLE001 - the benchmark counts what cannot be read
        return None


def verdicts(corpus: str, labels: dict, groups: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """method -> file -> {action, factor, verdict, error}."""
    import lrkit

    out: dict[str, dict[str, Any]] = {m: {} for m in METHODS}
    for name in labels:
        path = os.path.join(corpus, name)
        for method, kw in (("doctor", {}), ("doctor, alone", {"siblings": False}),
                           ("rules, alone", {"siblings": False, "use_shape": False})):
            try:
                d = lrkit.diagnose(path, **kw)
                r = d.recommendation
                out[method][name] = {"action": r.action, "factor": r.factor, "verdict": d.verdict,
                                     "reason": r.reason}
            except Exception as e:  # noqa: BLE001 - unread logs are what this counts
                out[method][name] = {"action": None, "factor": 1.0, "error": f"{type(e).__name__}: {e}"}
        out["always keep"][name] = {"action": "keep", "factor": 1.0}
    grouped = {f for g in groups.values() for f in g}
    for name in labels:
        if name not in grouped:
            out["doctor, sweeps"][name] = out["doctor, alone"][name]
    for g, files in groups.items():
        files = [f for f in files if f in labels]
        try:
            s = lrkit.diagnose_runs([os.path.join(corpus, f) for f in files])
            for f, d in zip(files, s.runs):
                r = d.recommendation
                out["doctor, sweeps"][f] = {"action": r.action, "factor": r.factor, "verdict": d.verdict,
                                            "reason": r.reason, "group": g}
        except Exception as e:  # noqa: BLE001
            for f in files:
                out["doctor, sweeps"][f] = {"action": None, "factor": 1.0, "error": f"{type(e).__name__}: {e}"}
    return out


def table(results: dict[str, dict[str, Any]], labels: dict, points: dict[str, int | None], title: str) -> str:
    classes = ("lower", "raise", "keep")
    by_class = {c: [f for f in labels if label_class(labels[f]) == c] for c in classes}
    lines = [f"{title}: {len(labels)} logs ({', '.join(f'{len(by_class[c])} {c}' for c in classes)})",
             f"{'method':16s} {'agree':>9s} {'lower':>7s} {'raise':>7s} {'keep':>7s} {'raise|lower':>11s} "
             f"{'harmful':>7s} {'unread':>6s}"]
    for m in METHODS:
        s = {f: score(results[m][f]["action"], results[m][f]["factor"], labels[f], points[f]) for f in labels}
        agree = sum(v == "agree" for v in s.values())
        cls = {c: sum(s[f] == "agree" for f in by_class[c]) for c in classes}
        rl = cls["lower"] + cls["raise"]
        n_rl = len(by_class["lower"]) + len(by_class["raise"])
        lines.append(f"{m:16s} {agree:3d}/{len(labels):<3d}{100 * agree / max(len(labels), 1):3.0f}% "
                     + " ".join(f"{cls[c]:3d}/{len(by_class[c]):<3d}" for c in classes)
                     + f" {rl:4d}/{n_rl:<3d}{100 * rl / max(n_rl, 1):3.0f}% {sum(v == 'harm' for v in s.values()):7d} "
                       f"{sum(v == 'unread' for v in s.values()):6d}")
    return "\n".join(lines)


def details(results: dict[str, dict[str, Any]], labels: dict, points: dict[str, int | None]) -> str:
    lines = []
    for f in labels:
        row = []
        for m in ("doctor", "doctor, alone", "rules, alone"):
            r = results[m][f]
            s = score(r["action"], r["factor"], labels[f], points[f])
            act = "unread" if r["action"] is None else (f"{r['action']} x{r['factor']:.2g}" if r["action"] != "keep"
                                                        else "keep")
            row.append(f"{act:12s}{'!' if s == 'harm' else ('+' if s == 'agree' else ' ')}")
        lines.append(f"  {f[:48]:48s} {label_class(labels[f]):5s} " + " ".join(row))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", action="append", help="a labelled corpus folder (default: ../shared/reallogs)")
    ap.add_argument("--details", action="store_true", help="print every log's verdict by method")
    ap.add_argument("--json", help="write every verdict to this file")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    corpora = args.corpus or [DEV]
    pooled_res: dict[str, dict[str, Any]] = defaultdict(dict)
    pooled_lab: dict[str, dict] = {}
    pooled_pts: dict[str, int | None] = {}
    dump = {}
    for corpus in corpora:
        with open(os.path.join(corpus, "labels.json")) as f:
            labels = json.load(f)
        gfile = os.path.join(corpus, "groups.json")
        if os.path.exists(gfile):
            with open(gfile) as f:
                groups = json.load(f)
        else:
            groups = DEV_GROUPS if os.path.realpath(corpus) == os.path.realpath(DEV) else {}
        results = verdicts(corpus, labels, groups)
        points = {f: _points(os.path.join(corpus, f)) for f in labels}
        print(table(results, labels, points, os.path.basename(os.path.normpath(corpus))))
        if args.details:
            print(details(results, labels, points))
        print()
        key = os.path.basename(os.path.normpath(corpus))
        dump[key] = results
        for m, r in results.items():
            pooled_res[m].update({f"{key}/{f}": v for f, v in r.items()})
        pooled_lab.update({f"{key}/{f}": v for f, v in labels.items()})
        pooled_pts.update({f"{key}/{f}": v for f, v in points.items()})
    if len(corpora) > 1:
        print(table(pooled_res, pooled_lab, pooled_pts, "pooled"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dump, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
