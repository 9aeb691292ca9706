"""Training at a fixed lr, the range tests of lrkit and the peers, and the on-disk cache of every result."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import tasks as default_tasks  # noqa: E402

CACHE = default_tasks.CACHE
VERSION = "v2"
torch.set_num_threads(1)


def load_tasks(path: str | None = None):
    """The task list of the default suite, or of another file defining ``TASKS`` (a hidden suite)."""
    if path is None:
        return default_tasks.TASKS, default_tasks
    spec = importlib.util.spec_from_file_location("regret_tasks_alt", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.TASKS, mod


# ---- cache ---------------------------------------------------------------------------------------------------
def _cache_path(kind: str, *parts) -> str:
    key = "|".join(str(p) for p in parts)
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return os.path.join(CACHE, kind, f"{parts[0]}-{digest}.json")


def cached(kind: str, parts: tuple, fn):
    path = _cache_path(kind, *parts)
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    out = fn()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + f".{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(out, f)
    os.replace(tmp, path)
    return out


def lr_key(lr: float) -> str:
    return f"{lr:.4g}"


# ---- batches -------------------------------------------------------------------------------------------------
class Batches:
    """Shuffled mini-batches of (x, y) tensors, one epoch per ``iter()``, drawn from ``self.generator``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        perm = torch.randperm(len(self.x), generator=self.generator)
        for b in range(len(self.x) // self.batch_size):
            idx = perm[b * self.batch_size:(b + 1) * self.batch_size]
            yield self.x[idx], self.y[idx]

    def __len__(self) -> int:
        return len(self.x) // self.batch_size


# ---- training ------------------------------------------------------------------------------------------------
def _train(task, lr: float, seed: int, kind: str | None, mod) -> dict:
    model, (xtr, ytr), (xva, yva), crit = task.build(seed)
    opt = mod.make_optimizer(task, model.parameters(), lr, kind)
    sf = kind == "schedulefree"
    if sf:
        opt.train()

    def evaluate() -> float:
        model.eval()
        if sf:
            opt.eval()
        with torch.no_grad():
            v = float(crit(model(xva), yva))
        model.train()
        if sf:
            opt.train()
        return v if math.isfinite(v) else math.inf

    vals = [evaluate()]
    step, diverged = 0, False
    batches = Batches(xtr, ytr, task.batch_size, seed)
    while step < task.steps and not diverged:
        for xb, yb in batches:
            opt.zero_grad(set_to_none=True)
            loss = crit(model(xb), yb)
            if not torch.isfinite(loss):
                diverged = True
                break
            loss.backward()
            opt.step()
            step += 1
            if step % task.eval_every == 0 or step == task.steps:
                vals.append(evaluate())
                if vals[-1] > 1e3 * vals[0]:
                    diverged = True
                    break
            if step >= task.steps:
                break
    # the score: the best validation loss after training started; a non-finite one counts as the untrained loss
    after = [v if math.isfinite(v) else vals[0] for v in vals[1:]] or [vals[0]]
    return {"best_val": float(min(after)), "vals": vals, "steps": step, "diverged": diverged}


def train(task, lr: float, seed: int, kind: str | None = None, mod=default_tasks) -> dict:
    """Train ``task`` at constant ``lr`` for its budget (cached); ``best_val`` is the score."""
    return cached("train", (task.name, VERSION, kind or task.optimizer, lr_key(lr), seed),
                  lambda: _train(task, float(lr_key(lr)), seed, kind, mod))


def grid_lrs(task) -> list[float]:
    lo, hi = task.grid
    return [float(lr_key(10 ** (k / 3))) for k in range(lo, hi + 1)]


# ---- range tests ---------------------------------------------------------------------------------------------
def _lrkit_curve(task, seed: int, start_lr: float, end_lr: float, num_iter: int, mod) -> dict:
    from lrkit.integrations.torch import find_lr
    model, (xtr, ytr), _, crit = task.build(seed)
    opt = mod.make_optimizer(task, model.parameters(), 1e-3)
    res = find_lr(model, opt, crit, Batches(xtr, ytr, task.batch_size, seed), start_lr=start_lr, end_lr=end_lr,
                  num_iter=num_iter, progress=False)
    f = lambda a: [float(v) if np.isfinite(v) else None for v in a]  # noqa: E731
    return {"lrs": f(res.lrs), "losses": f(res.losses), "smoothed": f(res.smoothed_losses),
            "stop_reason": res.stop_reason, "steps": len(res.lrs)}


def lrkit_curve(task, seed: int, start_lr: float = 1e-7, end_lr: float = 10.0, num_iter: int = 100,
                mod=default_tasks) -> dict:
    """lrkit's range test (defaults of ``find_lr``) on a fresh model of this seed; cached."""
    return cached("curve", (task.name, VERSION, "lrkit", start_lr, end_lr, num_iter, seed),
                  lambda: _lrkit_curve(task, seed, start_lr, end_lr, num_iter, mod))


def _torch_lr_finder(task, seed: int, mod) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torch_lr_finder import LRFinder
    model, (xtr, ytr), _, crit = task.build(seed)
    opt = mod.make_optimizer(task, model.parameters(), 1e-7)  # its README: optimizer lr=1e-7, end_lr=100
    g = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xtr, ytr), batch_size=task.batch_size,
                                         shuffle=True, generator=g, drop_last=True)
    finder = LRFinder(model, opt, crit, device="cpu")
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        finder.range_test(loader, end_lr=100, num_iter=100)
        fig, ax = plt.subplots()
        try:
            _, lr = finder.plot(ax=ax, suggest_lr=True)  # its default suggestion: steepest gradient
        except RuntimeError:  # too few points before it diverged
            lr = None
        plt.close(fig)
    return {"lrs": [float(v) for v in finder.history["lr"]],
            "losses": [float(v) if np.isfinite(v) else None for v in finder.history["loss"]],
            "suggestion": None if lr is None else float(lr), "steps": len(finder.history["lr"])}


def torch_lr_finder(task, seed: int, mod=default_tasks) -> dict:
    return cached("curve", (task.name, VERSION, "torch-lr-finder", seed), lambda: _torch_lr_finder(task, seed, mod))


def lightning_suggestion(curve: dict) -> float | None:
    """Lightning's ``_LRFinder.suggestion()`` (steepest gradient w.r.t. lr, skip 10 first / 1 last points),
    applied to a curve recorded with Lightning's tuner defaults (1e-8 .. 1, 100 steps, EMA 0.98, stop at 4x)."""
    import logging

    from lightning.pytorch.tuner.lr_finder import _LRFinder
    logging.getLogger("lightning.pytorch.tuner.lr_finder").setLevel(logging.CRITICAL)
    f = _LRFinder("exponential", 1e-8, 1.0, 100)
    f.results = {"lr": curve["lrs"], "loss": [math.nan if v is None else v for v in curve["smoothed"]]}
    return f.suggestion()
