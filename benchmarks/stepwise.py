"""Stepwise lr search vs a full log-spaced grid vs the range test, on small real tasks: regret and cost side by side.

    python benchmarks/stepwise.py [--repeats 3] [--no-cache]

Tasks: an MLP (64 hidden units) on scikit-learn's bundled digits, wine and breast_cancer, each with Adam and with
plain SGD; one training = STEPS optimiser steps at a constant lr (batch 32), score = the best validation loss seen
(evaluated every EVAL_EVERY steps; NaN when the training loss became non-finite).

Quality of an lr = its score averaged over 3 held-out seeds (not used by any search). Regret of a method = quality
of the lr it chose / quality of the best lr of the fine grid (1 = as good as the best grid lr; < 1 is possible,
the stepwise search refines between grid points). Cost = training steps the method spent to choose (the final
training at the chosen lr, which every method needs, is not counted). Methods:
  grid (4/decade)    every lr 10**(k/4) from 1e-6 to 10 (29 lrs), one seed, the lowest score
  grid (1/decade)    every lr 10**k from 1e-6 to 10 (8 lrs), one seed
  stepwise           lrkit.stepwise: start 1e-6, factor 3, noise-aware (extra seeds), choose "best"
  stepwise naive     the same with noise=0 (never a second seed)
  stepwise edge      the same as stepwise, choose "below_edge"
  range test         lrkit.find_lr (100 steps, the default rule), then its suggestion
Each search runs --repeats times with different seeds (training seeds and shuffles); numbers are medians over
tasks x repeats. Training results are cached in benchmarks/.cache/stepwise.json (delete it or --no-cache to redo).
One torch thread; about 2 minutes of CPU on one core without the cache, seconds with it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import statistics
import sys
import time

import numpy as np
import torch
from torch import nn

from lrkit.integrations.torch import find_lr
from lrkit.search import stepwise

STEPS, BATCH, EVAL_EVERY, HIDDEN = 200, 32, 25, 64
QUALITY_SEEDS = (1000, 1001, 1002)
GRID = [float(f"{10 ** (k / 4):.6g}") for k in range(-24, 5)]
CACHE = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache", "stepwise.json")
TASKS = [(d, o) for d in ("digits", "wine", "breast_cancer") for o in ("adam", "sgd")]


# -- tasks -------------------------------------------------------------------------------------------------------

_DATA: dict[str, tuple] = {}


def data(name: str):
    """Standardised train/val tensors of a bundled scikit-learn data set (fixed 25% validation split)."""
    if name not in _DATA:
        from sklearn import datasets

        d = getattr(datasets, f"load_{name}")()
        x, y = d.data.astype(np.float64), d.target.astype(np.int64)
        perm = np.random.default_rng(1234).permutation(len(x))
        n_val = len(x) // 4
        va, tr = perm[:n_val], perm[n_val:]
        mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-8
        t = lambda a: torch.as_tensor((a - mu) / sd, dtype=torch.float32)  # noqa: E731
        _DATA[name] = (t(x[tr]), torch.as_tensor(y[tr]), t(x[va]), torch.as_tensor(y[va]), int(y.max()) + 1)
    return _DATA[name]


def build(task: tuple[str, str], lr: float, seed: int):
    xtr, ytr, xva, yva, classes = data(task[0])
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(xtr.shape[1], HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, classes))
    opt = torch.optim.Adam(model.parameters(), lr=lr) if task[1] == "adam" else torch.optim.SGD(model.parameters(),
                                                                                                   lr=lr)
    return model, opt, (xtr, ytr, xva, yva)


def batches(n: int, seed: int):
    g = torch.Generator().manual_seed(seed + 7)
    while True:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - BATCH + 1, BATCH):
            yield perm[i:i + BATCH]


def train(task: tuple[str, str], lr: float, seed: int) -> float:
    """Best validation loss over STEPS steps at a constant lr; NaN when the training loss became non-finite."""
    model, opt, (xtr, ytr, xva, yva) = build(task, lr, seed)
    crit = nn.CrossEntropyLoss()
    it = batches(len(xtr), seed)
    best = math.inf
    for step in range(1, STEPS + 1):
        idx = next(it)
        loss = crit(model(xtr[idx]), ytr[idx])
        if not torch.isfinite(loss):
            return float("nan")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % EVAL_EVERY == 0:
            with torch.no_grad():
                v = float(crit(model(xva), yva))
            if not math.isfinite(v):
                return float("nan")
            best = min(best, v)
    return best


class Cache:
    def __init__(self, path: str | None) -> None:
        self.path, self.data, self.new = path, {}, 0
        if path and os.path.exists(path):
            with open(path) as f:
                self.data = json.load(f)

    def score(self, task: tuple[str, str], lr: float, seed: int) -> float:
        key = f"{task[0]}|{task[1]}|{lr:.10g}|{seed}"
        if key not in self.data:
            v = train(task, lr, seed)
            self.data[key] = None if math.isnan(v) else v
            self.new += 1
            if self.new % 100 == 0:
                self.save()
        v = self.data[key]
        return float("nan") if v is None else v

    def save(self) -> None:
        if not self.path:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f)
        os.replace(tmp, self.path)


# -- methods -----------------------------------------------------------------------------------------------------

def quality(cache: Cache, task, lr: float | None, untrained: float) -> float:
    """Mean score over the held-out seeds; a failed run counts as the untrained model's loss."""
    if lr is None:
        return untrained
    vals = [cache.score(task, lr, s) for s in QUALITY_SEEDS]
    return float(np.mean([v if math.isfinite(v) else untrained for v in vals]))


def grid_method(cache: Cache, task, lrs: list[float], seed: int) -> tuple[float, int]:
    scores = [cache.score(task, lr, seed) for lr in lrs]
    ok = [(s, lr) for s, lr in zip(scores, lrs) if math.isfinite(s)]
    return min(ok)[1], len(lrs) * STEPS


def stepwise_method(cache: Cache, task, seed: int, **kw) -> tuple[float, int]:
    r = stepwise(lambda lrs, s: [cache.score(task, lr, s) for lr in lrs], 1e-6, 3.0, seed=seed,
                 steps_per_trial=STEPS, **kw)
    return r.lr, r.cost_steps


def range_test_method(task, seed: int) -> tuple[float | None, int]:
    model, opt, (xtr, ytr, _, _) = build(task, 1e-7, seed)
    g = torch.Generator().manual_seed(seed + 7)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xtr, ytr), batch_size=BATCH, shuffle=True,
                                         generator=g)
    with contextlib.redirect_stderr(io.StringIO()):
        res = find_lr(model, opt, nn.CrossEntropyLoss(), loader, progress=False)
    lr = res.suggestion.lr
    return (None if lr is None else float(f"{lr:.10g}")), len(res.lrs)


METHODS = ["grid (4/decade)", "grid (1/decade)", "stepwise", "stepwise naive", "stepwise edge", "range test"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="searches per task, with different seeds (default 3)")
    ap.add_argument("--no-cache", action="store_true", help="ignore and do not write the training cache")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cache = Cache(None if args.no_cache else CACHE)
    t0 = time.process_time()
    rows: dict[str, list[tuple[float, int]]] = {m: [] for m in METHODS}
    per_task = []
    try:
        for task in TASKS:
            untrained = math.log(data(task[0])[4])
            q_grid = {lr: quality(cache, task, lr, untrained) for lr in GRID}
            best_q = min(q_grid.values())
            best_lr = min(q_grid, key=q_grid.get)
            line = {m: [] for m in METHODS}
            for rep in range(args.repeats):
                seed = 10 * rep
                picks = {
                    "grid (4/decade)": grid_method(cache, task, GRID, seed),
                    "grid (1/decade)": grid_method(cache, task, GRID[::4], seed),
                    "stepwise": stepwise_method(cache, task, seed),
                    "stepwise naive": stepwise_method(cache, task, seed, noise=0.0),
                    "stepwise edge": stepwise_method(cache, task, seed, choose="below_edge"),
                    "range test": range_test_method(task, seed),
                }
                for m, (lr, cost) in picks.items():
                    regret = quality(cache, task, lr, untrained) / best_q
                    rows[m].append((regret, cost))
                    line[m].append((regret, cost, lr))
            per_task.append((task, best_lr, best_q, line))
            print(f"{task[0]}/{task[1]}: best grid lr {best_lr:.3g} (val loss {best_q:.4f}); " + ", ".join(
                f"{m} {statistics.median(r for r, _, _ in v):.3f}" for m, v in line.items()), flush=True)
    finally:
        cache.save()
    grid_cost = statistics.median(c for _, c in rows["grid (4/decade)"])
    print(f"\nmedians over {len(TASKS)} tasks x {args.repeats} repeats (regret: 1 = the best lr of the fine grid)")
    print(f"{'method':<18} {'median regret':>13} {'90% regret':>10} {'worst':>7} {'median cost (steps)':>20} "
          f"{'cost / grid':>11}")
    for m in METHODS:
        regrets = [r for r, _ in rows[m]]
        costs = [c for _, c in rows[m]]
        print(f"{m:<18} {statistics.median(regrets):>13.3f} {float(np.quantile(regrets, 0.9)):>10.3f} "
              f"{max(regrets):>7.3f} {statistics.median(costs):>20.0f} {statistics.median(costs) / grid_cost:>11.2f}")
    print(f"\ntrainings run now: {cache.new}; CPU time {time.process_time() - t0:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
