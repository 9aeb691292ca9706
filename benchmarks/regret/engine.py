"""Training at an lr (with the task's schedule), the lr grid, the range tests of lrkit and the peers, and the
on-disk cache of every result (``.cache/``, git-ignored).

lrkit is called through its public API only: ``lrkit.find_lr`` (defaults), ``FinderResult.suggest(rule)``,
``FinderResult.to_dict()`` and ``lrkit.finder.suggest(lrs, losses, rule)``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import logging
import math
import os
import sys
import tempfile
import warnings

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import tasks as default_tasks  # noqa: E402

CACHE = default_tasks.CACHE
VERSION = "v3"
SEEDS = (0, 1, 2, 3, 4, 5)
torch.set_num_threads(1)


def load_tasks(path: str | None = None):
    """The task list of the default suite, or of another file defining ``TASKS`` (and ``make_optimizer``,
    ``lr_factor``)."""
    if path is None:
        return default_tasks.TASKS, default_tasks
    spec = importlib.util.spec_from_file_location("regret_tasks_alt", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.TASKS, mod


# ---- cache ---------------------------------------------------------------------------------------------------
def task_key(task) -> str:
    """What identifies a task's results: its name and every setting but the builder (bump VERSION for those)."""
    fields = (task.name, VERSION, task.optimizer, task.batch_size, task.steps, task.schedule, task.weight_decay)
    return "|".join(str(v) for v in fields)


def cached(kind: str, task, parts: tuple, fn):
    """The JSON result of ``fn()`` under ``.cache/kind/``, computed once (written atomically)."""
    key = task_key(task) + "|" + "|".join(str(p) for p in parts)
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    path = os.path.join(CACHE, kind, f"{task.name}-{digest}.json")
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


def _finite(values) -> list[float | None]:
    return [float(v) if v is not None and np.isfinite(v) else None for v in values]


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


def _val_loss(model, crit, xva, yva) -> float:
    model.eval()
    with torch.no_grad():
        v = float(crit(model(xva), yva))
    model.train()
    return v if math.isfinite(v) else math.inf


# ---- training ------------------------------------------------------------------------------------------------
def untrained_loss(task, seed: int, mod=default_tasks) -> float:
    """The validation loss of an untrained model (for fine-tuning: a fresh, not pre-trained one): the cap."""
    def run():
        model, _, (xva, yva), crit = task.build(seed, fresh=True)
        return {"loss": _val_loss(model, crit, xva, yva)}
    return cached("untrained", task, (seed,), run)["loss"]


def _train(task, lr: float, seed: int, kind: str | None, mod) -> dict:
    model, (xtr, ytr), (xva, yva), crit = task.build(seed)
    with contextlib.redirect_stdout(io.StringIO()):  # Prodigy prints its weight-decay mode
        opt = mod.make_optimizer(task, model.parameters(), lr, kind)
    schedule_free = kind == "schedulefree"
    sched = None if schedule_free else torch.optim.lr_scheduler.LambdaLR(opt, lambda s: mod.lr_factor(task, s))

    def evaluate() -> float:
        if schedule_free:
            opt.eval()
        v = _val_loss(model, crit, xva, yva)
        if schedule_free:
            opt.train()
        return v

    if schedule_free:
        opt.train()
    vals = [evaluate()]
    every = max(task.steps // 5, 1)
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
            if sched is not None:
                sched.step()
            step += 1
            if step % every == 0 and step < task.steps:
                vals.append(evaluate())
            if step >= task.steps:
                break
    final = math.inf if diverged else evaluate()
    vals.append(final)
    cap = untrained_loss(task, seed, mod)
    score = final if math.isfinite(final) and final < cap else cap
    return {"score": float(score), "final": final if math.isfinite(final) else None, "cap": cap,
            "vals": _finite(vals), "steps": step, "diverged": diverged}


def train(task, lr: float, seed: int, kind: str | None = None, mod=default_tasks) -> dict:
    """Train ``task`` at peak ``lr`` (the task's schedule) for its budget; cached. ``score`` is what counts: the
    final validation loss, or the untrained loss when the run diverged or ended above it."""
    lr = float(lr_key(lr))
    return cached("train", task, (kind or task.optimizer, lr_key(lr), seed),
                  lambda: _train(task, lr, seed, kind, mod))


# ---- the lr grid ---------------------------------------------------------------------------------------------
def grid(task, seeds=SEEDS, mod=default_tasks) -> dict:
    """The grid search that defines the best lr, the same for every method.

    Coarse: lrs 10**(k/3) (3 per decade) over the task's family range (Adam-like 1e-5..1, SGD 1e-4..10),
    extended 2 points at a time while the best (median over seeds) sits at either end (at most 1e-9..1e3).
    Fine: 10**((3k+j)/9) for j = -2, -1, 1, 2 around the coarse best k (9 per decade there).
    The reference of a task is the lowest median-over-seeds score among all of them.
    """
    def med(k3: int, per: int = 3) -> float:
        return float(np.median([train(task, 10 ** (k3 / per), s, mod=mod)["score"] for s in seeds]))

    lo, hi = task.grid_range
    coarse = {k: med(k) for k in range(lo, hi + 1)}
    while True:
        best_k = min(coarse, key=coarse.get)
        if best_k == min(coarse) and best_k > -27:
            new = range(best_k - 2, best_k)
        elif best_k == max(coarse) and best_k < 9:
            new = range(best_k + 1, best_k + 3)
        else:
            break
        coarse.update({k: med(k) for k in new})
    scores = {lr_key(10 ** (k / 3)): coarse[k] for k in coarse}
    for j in (-2, -1, 1, 2):
        scores[lr_key(10 ** ((3 * best_k + j) / 9))] = med(3 * best_k + j, 9)
    best_lr = min(scores, key=scores.get)
    return {"median_scores": scores, "best_lr": float(best_lr), "best": scores[best_lr],
            "untrained": float(np.median([untrained_loss(task, s, mod) for s in seeds]))}


# ---- range tests ---------------------------------------------------------------------------------------------
def lrkit_find(task, seed: int, mod=default_tasks) -> dict:
    """``lrkit.find_lr`` with its defaults on a fresh model of this seed (the optimiser built at lr 1e-3); the
    whole result (``FinderResult.to_dict()``: curve, confirmation runs, suggestion) and the classic rules applied
    to its curve with ``FinderResult.suggest(rule)``. Cached."""
    def run():
        import lrkit
        model, (xtr, ytr), _, crit = task.build(seed)
        opt = mod.make_optimizer(task, model.parameters(), 1e-3)
        res = lrkit.find_lr(model, opt, crit, Batches(xtr, ytr, task.batch_size, seed), progress=False)
        out = res.to_dict()
        out["rules"] = {rule: res.suggest(rule).lr for rule in ("robust", "steepest", "minimum", "valley")}
        out["lr"] = res.suggestion.lr
        out["steps_used"] = int(sum(res.config.get("steps", {"ramp": len(res.lrs)}).values()))
        return out
    return cached("lrkit", task, ("find_lr-defaults", seed), run)


def torch_lr_finder(task, seed: int, mod=default_tasks) -> dict:
    """torch-lr-finder's ``LRFinder.range_test`` as its README shows it (optimiser lr 1e-7, end_lr 100, 100 steps,
    its smoothing and its stop at 5x), the lr its ``plot(suggest_lr=True)`` returns (steepest gradient, skipping
    10 first and 5 last points) and its curve. Cached."""
    def run():
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from torch_lr_finder import LRFinder
        model, (xtr, ytr), _, crit = task.build(seed)
        opt = mod.make_optimizer(task, model.parameters(), 1e-7)
        g = torch.Generator().manual_seed(seed)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xtr, ytr), batch_size=task.batch_size,
                                             shuffle=True, generator=g, drop_last=True)
        finder = LRFinder(model, opt, crit, device="cpu")
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            finder.range_test(loader, end_lr=100, num_iter=100)
            fig, ax = plt.subplots()
            try:
                _, lr = finder.plot(ax=ax, suggest_lr=True)
            except (RuntimeError, ValueError):  # too few points before it diverged
                lr = None
            plt.close(fig)
        return {"lrs": [float(v) for v in finder.history["lr"]], "losses": _finite(finder.history["loss"]),
                "lr": None if lr is None else float(lr), "steps_used": len(finder.history["lr"])}
    return cached("torch-lr-finder", task, (seed,), run)


def lightning_tuner(task, seed: int, mod=default_tasks) -> dict:
    """Lightning's ``Tuner.lr_find`` with its defaults (1e-8 .. 1, 100 steps, exponential, stop at 4x) on the task
    wrapped in a LightningModule, and ``lr_finder.suggestion()``. Cached."""
    def run():
        import lightning.pytorch as pl
        from lightning.pytorch.tuner import Tuner

        class Wrapped(pl.LightningModule):
            def __init__(self, model, crit) -> None:
                super().__init__()
                self.model, self.crit, self.lr = model, crit, 1e-3

            def training_step(self, batch, batch_idx):
                x, y = batch
                return self.crit(self.model(x), y)

            def configure_optimizers(self):
                return mod.make_optimizer(task, self.parameters(), self.lr)

        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.ERROR)
        model, (xtr, ytr), _, crit = task.build(seed)
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xtr, ytr), batch_size=task.batch_size,
                                             shuffle=True, generator=g, drop_last=True)
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), \
                contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                                 enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp)
            finder = Tuner(trainer).lr_find(Wrapped(model, crit), train_dataloaders=loader, update_attr=False)
        lr = finder.suggestion() if finder is not None else None
        return {"lrs": [float(v) for v in finder.results["lr"]], "losses": _finite(finder.results["loss"]),
                "lr": None if lr is None else float(lr), "steps_used": len(finder.results["lr"])}
    return cached("lightning", task, (seed,), run)
