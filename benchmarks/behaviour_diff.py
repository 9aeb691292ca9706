"""Prove that a refactoring left lrkit's behaviour unchanged: dump what it computes, then compare two dumps.

    python benchmarks/behaviour_diff.py dump before.json          # on the old tree (PYTHONPATH=old/src)
    python benchmarks/behaviour_diff.py dump after.json           # on the new tree
    python benchmarks/behaviour_diff.py compare before.json after.json

What a dump holds, every number as the exact float (``repr``):

- ``finder``: on every task and seed of ``benchmarks/regret`` (``--tasks`` / ``--seeds`` for a subset), four range
  tests on a fresh model: the benchmark's default pick (the adaptive test whose confirmation runs are scored on the
  validation loss), the torch ``find_lr`` default, ``find_lr`` with one ramp (``confirm=False``) and ``find_lr`` in
  validation mode. Each records the suggestion (lr, interval, rule, reason, confidence), why the test stopped, every
  lr and loss, the confirmation runs, the config, and whether the model came back bit for bit.
- ``schedules``: every family, combinator and preset on a grid of steps (0..63 and 200 log-spaced steps up to 1e6),
  with its spec text and the spec parsed back.
- ``doctor``: ``lrkit.diagnose`` and the live ``Monitor`` on synthetic curves (healthy, too high, too low, spiking,
  oscillating, NaN, with and without lr and gradient norm), generated here from fixed seeds.

The script runs against the public API of the tree on ``PYTHONPATH`` and knows both the layout before issue 22
(``lrkit.adaptive.find``, ``TorchTrainer``) and after it (``lrkit.range_test`` with ``FinderOptions``,
``TorchStepper``). The full finder part is 11 tasks x 3 seeds x 4 tests (about 10 minutes on one core).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


# ---- the finder on benchmarks/regret -----------------------------------------------------------------------------
def _api() -> dict[str, Any]:
    """The range-test entry points of the tree on the path, new layout first."""
    try:
        from lrkit.finder import FinderOptions, range_test
        from lrkit.integrations.torch import TorchStepper, find_lr

        def adaptive(model, opt, crit, batches, val):
            stepper = TorchStepper(model, opt, crit, batches, val_loader=val)
            return range_test(stepper, FinderOptions(val_every=None, progress=False))

        return {"layout": "finder package", "adaptive": adaptive, "find_lr": find_lr}
    except ImportError:
        from lrkit.adaptive import find

        from lrkit.integrations.torch import TorchTrainer, find_lr

        def adaptive(model, opt, crit, batches, val):
            return find(TorchTrainer(model, opt, crit, batches, val_loader=val)).ramp

        return {"layout": "lrkit.adaptive", "adaptive": adaptive, "find_lr": find_lr}


def _floats(a: Any) -> list[str] | None:
    return None if a is None else [repr(float(v)) for v in np.asarray(a, dtype=np.float64).ravel()]


def _state_digest(model: Any) -> str:
    h = hashlib.sha1()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _plain(v: Any) -> Any:
    """JSON-ready, floats as their exact repr."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, (bool, type(None), str)):
        return v
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    return repr(v)


def _record(result: Any, model: Any, before: str) -> dict[str, Any]:
    s = result.suggestion
    config = {k: v for k, v in result.config.items() if k not in ("elapsed_s",)}
    return {
        "suggestion": _plain({"lr": s.lr, "interval": s.interval, "rule": s.rule, "reason": s.reason,
                              "confidence": s.confidence}),
        "stop_reason": result.stop_reason, "stopped_at": result.stopped_at,
        "lrs": _floats(result.lrs), "losses": _floats(result.losses), "smoothed": _floats(result.smoothed_losses),
        "val_steps": None if result.val_steps is None else [int(v) for v in result.val_steps],
        "val_losses": _floats(result.val_losses),
        "confirmations": _plain(result.confirmations), "config": _plain(config),
        "restored": _state_digest(model) == before,
    }


def dump_finder(task_names: list[str] | None, seeds: list[int]) -> dict[str, Any]:
    import torch

    sys.path.insert(0, os.path.join(HERE, "regret"))
    import engine  # benchmarks/regret/engine.py: the Batches the benchmark feeds its range tests

    torch.set_num_threads(1)
    api = _api()
    tasks, mod = engine.load_tasks(None)
    out: dict[str, Any] = {}
    for task in tasks:
        if task_names and task.name not in task_names:
            continue
        t0 = time.perf_counter()
        for seed in seeds:
            runs = {
                "adaptive_val": lambda m, o, c, b, v: api["adaptive"](m, o, c, b, v),
                "find_lr": lambda m, o, c, b, v: api["find_lr"](m, o, c, b, progress=False),
                "find_lr_one_ramp": lambda m, o, c, b, v: api["find_lr"](m, o, c, b, confirm=False, progress=False),
                "find_lr_val": lambda m, o, c, b, v: api["find_lr"](m, o, c, b, val_loader=v, progress=False),
            }
            for name, run in runs.items():
                model, (xtr, ytr), (xva, yva), crit = task.build(seed)
                opt = mod.make_optimizer(task, model.parameters(), 1e-3)
                before = _state_digest(model)
                result = run(model, opt, crit, engine.Batches(xtr, ytr, task.batch_size, seed), [(xva, yva)])
                out[f"{task.name}/seed{seed}/{name}"] = _record(result, model, before)
        print(f"  finder {task.name}: {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    return out


# ---- schedules -----------------------------------------------------------------------------------------------------
def _schedules() -> dict[str, Any]:
    import lrkit.schedules as S
    from lrkit.schedules import presets as P

    c = S.cosine(3e-4, 1000, final=3e-5)
    return {
        "constant": S.constant(1e-3), "constant_steps": S.constant(1e-3, 500),
        "step": S.step(0.1, 30, gamma=0.5), "multistep": S.multistep(0.1, [100, 300, 600], gamma=0.2),
        "exponential": S.exponential(0.1, 0.9, steps=50), "exponential_stair": S.exponential(0.1, 0.9, 50, True),
        "inverse_time": S.inverse_time(0.1, 0.5, steps=100), "polynomial": S.polynomial(0.1, 800, 1e-4, 2.0),
        "linear": S.linear(1e-3, 1e-5, 700), "cosine": c, "cosine_cycles": S.cosine(1e-3, 900, 1e-5, 2.0, 1.5),
        "cosine_restarts": S.cosine_restarts(1e-3, 100, 1e-5, period_mult=2.0, decay=0.7),
        "onecycle": S.onecycle(1e-2, 1000), "onecycle_linear": S.onecycle(1e-2, 1000, 0.25, "linear", 10.0),
        "onecycle_fastai": S.onecycle_fastai(1e-2, 1000), "onecycle_momentum": S.onecycle_momentum(1000),
        "cyclical": S.cyclical(1e-4, 1e-2, 50), "cyclical_exp": S.cyclical(1e-4, 1e-2, 40, 60, mode="exp_range"),
        "wsd": S.wsd(1e-3, 1000, warmup=50), "wsd_cos": S.wsd(1e-3, 1000, 100, 0.3, "cosine", final=1e-5),
        "inverse_sqrt": S.inverse_sqrt(1e-3, 400), "ramp": S.ramp(1e-7, 10.0, 100),
        "ramp_linear": S.ramp(1e-4, 1.0, 80, "linear"),
        "warmup": S.warmup(c, 100), "warmup_start": S.warmup(c, 100, start=0.1), "join": S.join(
            [S.linear(0.0, 1e-3, 100), c], [100]), "sequence": S.warmup(50) >> c,
        "cycle": S.cycle(S.linear(1e-3, 1e-4, 200)), "scale": 0.5 * c, "mul": c * S.exponential(1.0, 0.99),
        "clamp": S.clamp(S.exponential(0.1, 0.5, 10), low=1e-4), "shift": S.shift(c, 25),
        "transformers_linear": P.transformers("linear", 5e-5, 100, 1000),
        "transformers_cosine": P.transformers("cosine", 5e-5, 100, 1000),
        "transformers_restarts": P.transformers("cosine_with_restarts", 5e-5, 100, 1000, num_cycles=3),
        "transformers_polynomial": P.transformers("polynomial", 5e-5, 100, 1000, lr_end=1e-7, power=2.0),
        "transformers_constant": P.transformers("constant", 5e-5),
        "transformers_constant_warmup": P.transformers("constant_with_warmup", 5e-5, 100),
        "transformers_inverse_sqrt": P.transformers("inverse_sqrt", 5e-5, 100),
        "transformers_min_lr": P.transformers("cosine_with_min_lr", 5e-5, 100, 1000, min_lr=1e-6),
        "transformers_warmup_min_lr": P.transformers("cosine_warmup_with_min_lr", 5e-5, 100, 1000,
                                                     min_lr_rate=0.1),
        "transformers_wsd": P.transformers("warmup_stable_decay", 5e-5, 100, 1000, num_decay_steps=200),
        "optax_warmup_cosine": P.optax_warmup_cosine_decay(0.0, 1e-3, 100, 1000, 1e-5),
        "keras_cosine": P.keras_cosine_decay(1e-3, 1000, alpha=0.1),
        "keras_cosine_warmup": P.keras_cosine_decay(0.0, 1000, 0.1, warmup_target=1e-3, warmup_steps=100),
    }


def dump_schedules() -> dict[str, Any]:
    from lrkit.schedules import parse

    grid = np.unique(np.concatenate([np.arange(64), np.geomspace(1, 1e6, 200).astype(np.int64)]))
    out: dict[str, Any] = {}
    for name, s in _schedules().items():
        values = s(grid)
        scalar = [s(int(t)) for t in grid[::7]]
        out[name] = {"spec": str(s), "parsed_back_equal": parse(str(s)) == s, "values": _floats(values),
                     "scalar_values": _floats(scalar)}
    import lrkit.schedules as S

    p = S.warmup(20) >> S.plateau(1e-3, factor=0.5, patience=3)
    values = []
    for t, metric in enumerate([1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8] * 4):
        p.observe(metric, 20 + t)
        values.append(p(20 + t))
    out["plateau_after_warmup"] = {"spec": str(p), "values": _floats(values), "state": _plain(p.state_dict())}
    return out


# ---- the doctor ----------------------------------------------------------------------------------------------------
def _curves() -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(2024)
    n = 600
    t = np.arange(n)
    curves: dict[str, dict[str, np.ndarray]] = {}
    for name, rate, floor, noise in (("healthy", 0.01, 0.3, 0.03), ("too_low", 0.0008, 0.3, 0.01),
                                     ("noisy_floor_early", 0.08, 0.9, 0.08)):
        curves[name] = {"loss": floor + 2.0 * np.exp(-rate * t) + noise * rng.standard_normal(n),
                        "lr": np.full(n, 1e-3)}
    div = 0.5 + 2.0 * np.exp(-0.02 * t)
    div[350:] += np.exp(0.03 * (t[350:] - 350)) - 1
    curves["diverging"] = {"loss": div + 0.02 * rng.standard_normal(n), "lr": np.full(n, 1e-2)}
    nan = curves["healthy"]["loss"].copy()
    nan[420:] = np.nan
    curves["nan"] = {"loss": nan}
    spikes = curves["healthy"]["loss"].copy()
    for s in (150, 330, 470):
        spikes[s:s + 6] += 3.0
    curves["spiking"] = {"loss": spikes, "grad_norm": 1.0 + 0.1 * rng.standard_normal(n)}
    curves["oscillating"] = {"loss": 0.6 + 1.5 * np.exp(-0.01 * t) + 0.4 * np.sin(t / 3.0) ** 2
                             + 0.02 * rng.standard_normal(n)}
    warm = np.minimum(1.0, (t + 1) / 60) * 1e-3 * np.where(t < 60, 1.0, 0.5 * (1 + np.cos(np.pi * (t - 60) / (n - 60))))
    curves["warmup_cosine"] = {"loss": 0.2 + 2.5 * np.exp(-0.006 * t) + 0.03 * rng.standard_normal(n), "lr": warm,
                               "grad_norm": 2.0 * np.exp(-0.003 * t) + 0.05 * rng.standard_normal(n)}
    curves["plateau"] = {"loss": np.r_[2.0 * np.exp(-0.03 * t[:150]) + 1.0, np.full(n - 150, 1.0)]
                         + 0.005 * rng.standard_normal(n)}
    return curves


def dump_doctor() -> dict[str, Any]:
    from lrkit.curve import Curve
    from lrkit.doctor import Monitor, diagnose

    out: dict[str, Any] = {}
    for name, cols in _curves().items():
        steps = np.arange(len(cols["loss"]))
        extra = {"grad_norm": cols["grad_norm"]} if "grad_norm" in cols else {}
        d = diagnose(Curve(steps, cols["loss"], cols.get("lr"), extra=extra))
        m = Monitor()
        events = []
        for i, loss in enumerate(cols["loss"]):
            lr = None if "lr" not in cols else float(cols["lr"][i])
            gn = None if "grad_norm" not in cols else float(cols["grad_norm"][i])
            for ev in m.update(i, float(loss), lr=lr, grad_norm=gn):
                events.append(_plain({"step": ev.step, "kind": ev.kind, "action": ev.action, "factor": ev.factor,
                                      "message": ev.message}))
        out[name] = {"diagnosis": _plain(d.to_dict()), "monitor_events": events}
    return out


# ---- compare -------------------------------------------------------------------------------------------------------
def _diff(a: Any, b: Any, path: str, out: list[str]) -> int:
    """Count the leaves compared; append every difference to ``out``."""
    if isinstance(a, dict) and isinstance(b, dict):
        n = 0
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}/{k}: only in {'the second' if k not in a else 'the first'}")
                continue
            n += _diff(a[k], b[k], f"{path}/{k}", out)
        return n
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{path}: length {len(a)} vs {len(b)}")
            return 1
        return sum(_diff(x, y, f"{path}[{i}]", out) for i, (x, y) in enumerate(zip(a, b)))
    if a != b:
        out.append(f"{path}: {str(a)[:120]!r} vs {str(b)[:120]!r}")
    return 1


def compare(path_a: str, path_b: str) -> int:
    with open(path_a) as f:
        a = json.load(f)
    with open(path_b) as f:
        b = json.load(f)
    print(f"{path_a}: {a['meta']}\n{path_b}: {b['meta']}")
    status = 0
    for part in ("finder", "schedules", "doctor"):
        diffs: list[str] = []
        if part not in a or part not in b:
            print(f"{part}: not in both dumps")
            status = 1
            continue
        leaves = _diff(a[part], b[part], part, diffs)
        print(f"{part}: {len(a[part])} entries, {leaves} values compared: "
              + ("identical" if not diffs else f"{len(diffs)} differences"))
        for line in diffs[:40]:
            print("   ", line)
        status |= bool(diffs)
    return status


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump", help="record the finder's picks, schedule values and doctor outputs")
    d.add_argument("output")
    d.add_argument("--tasks", default=None, help="comma-separated regret task names (default: all)")
    d.add_argument("--seeds", default="0,1,2", help="regret seeds (default 0,1,2: the benchmark's)")
    d.add_argument("--skip-finder", action="store_true", help="schedules and doctor only")
    c = sub.add_parser("compare", help="compare two dumps; exit 1 when they differ")
    c.add_argument("a")
    c.add_argument("b")
    args = ap.parse_args()
    if args.cmd == "compare":
        return compare(args.a, args.b)
    import lrkit

    t0 = time.perf_counter()
    out: dict[str, Any] = {"meta": {"lrkit": os.path.dirname(lrkit.__file__), "tasks": args.tasks or "all",
                                    "seeds": args.seeds}}
    out["schedules"] = dump_schedules()
    out["doctor"] = dump_doctor()
    if not args.skip_finder:
        seeds = [int(s) for s in args.seeds.split(",")]
        out["finder"] = dump_finder(args.tasks.split(",") if args.tasks else None, seeds)
        out["meta"]["layout"] = _api()["layout"]
    with open(args.output, "w") as f:
        json.dump(out, f, indent=0, sort_keys=True)
    print(f"wrote {args.output} in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
