"""Range-test overhead: lrkit vs a bare training loop of the same steps vs torch-lr-finder, in one run.

    python benchmarks/overhead.py [--repeats 7] [--num-iter 100]

Each method runs the same number of optimiser steps on the same model, data and lr ramp (the ramp ends low
enough that nothing diverges, so all run every step). Times are CPU seconds of this process (one torch thread), medians of --repeats runs, reported as ratios to
the bare loop. Memory: the bytes lrkit's snapshot holds, as a multiple of model + optimiser state.
Needs: pip install -e '.[torch,bench]'.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lrkit.integrations.torch import TorchStepper, find_lr
from lrkit.schedules import ramp

START, END = 1e-7, 1e-1


def task(width: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4096, 64, generator=g)
    y = torch.randint(0, 10, (4096,), generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(1))
    return model, opt, nn.CrossEntropyLoss(), loader


def bare_loop(model, opt, crit, loader, num_iter):
    """What a user would write by hand: set the lr, step, read the loss."""
    lrs = ramp(START, END, num_iter)(np.arange(num_iter))
    it = iter(loader)
    losses = []
    for lr in lrs:
        try:
            xb, yb = next(it)
        except StopIteration:
            it = iter(loader)
            xb, yb = next(it)
        for g in opt.param_groups:
            g["lr"] = float(lr)
        opt.zero_grad(set_to_none=True)
        loss = crit(model(xb), yb)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def run_lrkit(model, opt, crit, loader, num_iter, progress):
    return find_lr(model, opt, crit, loader, start_lr=START, end_lr=END, num_iter=num_iter, diverge_factor=1e9,
                   progress=progress, confirm=False)


def run_torch_lr_finder(model, opt, crit, loader, num_iter):
    from torch_lr_finder import LRFinder

    for g in opt.param_groups:
        g["lr"] = START
    finder = LRFinder(model, opt, crit, device="cpu")
    with contextlib.redirect_stdout(io.StringIO()):  # it prints a line per run
        finder.range_test(loader, end_lr=END, num_iter=num_iter, step_mode="exp", diverge_th=1e9)
    finder.reset()
    return finder.history


def timed(fn, *args) -> float:
    """CPU seconds of this process (one torch thread): less disturbed than wall time by other work on the machine."""
    t0 = time.process_time()
    fn(*args)
    return time.process_time() - t0


def nbytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v) for v in obj)
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--num-iter", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import torch_lr_finder  # noqa: F401
        have_tlf = True
    except ImportError:
        have_tlf = False
        print("torch-lr-finder is not installed (pip install -e '.[bench]'): its column is skipped")
    print(f"{args.num_iter} optimiser steps, batch 64, Adam; medians of {args.repeats} runs; "
          f"torch {torch.__version__}, {args.threads} thread(s)\n")
    print(f"{'model':>22} {'bare s':>8} {'lrkit/bare':>11} {'lrkit+bar/bare':>15} {'tlf/bare':>9} "
          f"{'lrkit/tlf':>10} {'snapshot/state':>15}")
    for width in (128, 512, 1024):
        methods = {
            "bare": lambda m, o, c, ld: bare_loop(m, o, c, ld, args.num_iter),
            "lrkit": lambda m, o, c, ld: run_lrkit(m, o, c, ld, args.num_iter, False),
            "lrkit+bar": lambda m, o, c, ld: run_lrkit(m, o, c, ld, args.num_iter, True),
        }
        if have_tlf:
            methods["tlf"] = lambda m, o, c, ld: run_torch_lr_finder(m, o, c, ld, args.num_iter)
        times: dict[str, list[float]] = {k: [] for k in methods}
        for _ in range(args.repeats):  # interleaved, so drifts of a noisy machine hit every method alike
            for name, fn in methods.items():
                m, o, c, ld = task(width)
                bare_loop(m, o, c, ld, 3)  # warm up the allocator and Adam state
                times[name].append(timed(fn, m, o, c, ld))
        med = {k: statistics.median(v) for k, v in times.items()}
        m, o, c, ld = task(width)
        bare_loop(m, o, c, ld, 3)
        snap = TorchStepper(m, o, c, ld).snapshot()
        state = nbytes(m.state_dict()) + nbytes(o.state_dict())
        ratio_snap = (nbytes(snap["model"]) + nbytes(snap["optimizer"])) / state
        tlf = med.get("tlf", float("nan"))
        print(f"{f'MLP 64-{width}-{width}-10':>22} {med['bare']:8.3f} {med['lrkit'] / med['bare']:11.3f} "
              f"{med['lrkit+bar'] / med['bare']:15.3f} {tlf / med['bare']:9.3f} {med['lrkit'] / tlf:10.3f} "
              f"{ratio_snap:15.3f}")


if __name__ == "__main__":
    main()
