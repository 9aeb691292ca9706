"""Sweep throughput (1 vs 2 worker processes, and against a bare Optuna loop) and the cost of the all-reduce per
step of the distributed range test, in one run.

    python benchmarks/sweep.py [--repeats 3] [--trials 8] [--steps 3000]

Sweep: the same CPU-bound training (numpy least squares, one report per step) at --trials lrs, on a fresh SQLite
study each run: lrkit with 1 worker, lrkit with 2 worker processes, and the peer, plain Optuna
(``study.optimize`` with a GridSampler, one process, same storage and reports), and the same trainings in a
plain process pool without storage (what the machine itself gives). Wall seconds and the trial phase (first
trial start to last trial end, i.e. without worker start-up), medians of --repeats runs; throughput ratios. On this machine 2 cores are shared with other users, so 2 workers cannot
reach 2x. All-reduce: a DDP range test on 2 gloo ranks (CPU, 1 thread each), with each rank keeping its own curve (no
exchange) vs lrkit's shared curve (one all-reduce per step): time per step, and a bare ``dist.all_reduce``
of one scalar for reference.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

STEPS, ROWS = 3000, 8192  # defaults; main() passes its choice to worker processes through the environment


def _train(lr: float, report) -> float:
    """Least squares by gradient descent (about 4 ms per step on one core); report(loss, step) each step."""
    steps = int(os.environ.get("LRKIT_BENCH_STEPS", STEPS))
    rows = int(os.environ.get("LRKIT_BENCH_ROWS", ROWS))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, 64))
    y = x @ rng.standard_normal(64) + 0.1 * rng.standard_normal(rows)
    w = np.zeros(64)
    loss = float("nan")
    for step in range(steps):
        r = x @ w - y
        loss = float(r @ r / len(y))
        report(loss, step)
        w -= lr * 2.0 * (x.T @ r) / len(y)
    return loss


def train(lr, trial):  # the lrkit train_fn (module level: worker processes import it)
    return _train(lr, trial.report)


def _plain(lr: float) -> float:
    return _train(lr, lambda value, step: None)


def bare_processes(lrs, workers: int) -> tuple[float, float]:
    """The machine's own capacity: the same trainings in a plain process pool, no storage (wall, trial phase)."""
    import multiprocessing as mp

    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(workers) as pool:
        pool.map(_plain, lrs[:workers], chunksize=1)  # start-up (imports) done
        t1 = time.perf_counter()
        pool.map(_plain, lrs, chunksize=1)
        t2 = time.perf_counter()
    return t2 - t0, t2 - t1


def _trial_span(storage: str) -> float:
    """Seconds from the first trial's start to the last trial's end (worker start-up excluded)."""
    import optuna

    trials = optuna.load_study(study_name="bench", storage=storage).trials
    return (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()


def lrkit_sweep(lrs, workers: int, folder: str) -> tuple[float, float]:
    from lrkit.sweep import sweep

    db = os.path.join(folder, f"lrkit-{workers}.db")
    t0 = time.perf_counter()
    r = sweep(train, lrs, storage=db, study_name="bench", n_workers=workers, diagnose=False)
    dt = time.perf_counter() - t0
    assert all(t.state == "complete" for t in r.trials), r.table()
    return dt, _trial_span(f"sqlite:///{db}")


def optuna_loop(lrs, folder: str) -> float:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial):
        return _train(trial.suggest_float("lr", min(lrs), max(lrs), log=True), trial.report)

    url = f"sqlite:///{os.path.join(folder, 'optuna.db')}"
    t0 = time.perf_counter()
    study = optuna.create_study(storage=url, study_name="bench", sampler=optuna.samplers.GridSampler({"lr": list(lrs)}))
    study.optimize(objective, n_trials=len(lrs))
    return time.perf_counter() - t0, _trial_span(url)


# -- all-reduce ----------------------------------------------------------------------------------------------------

def _ddp_rank(rank: int, port: int, num_iter: int, repeats: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    from lrkit.finder import range_test
    from lrkit.integrations.distributed import DistributedTrainer
    from lrkit.integrations.torch import TorchTrainer

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    g = torch.Generator().manual_seed(rank)
    data = [(torch.randn(64, 64, generator=g), torch.randint(0, 10, (64,), generator=g)) for _ in range(8)]
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Sequential(
        torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    kw = dict(start_lr=1e-5, end_lr=1e-2, num_iter=num_iter, progress=False)
    local, shared, in_reduce = [], [], []
    for _ in range(repeats):  # alternate: each rank's own curve (no loss exchange) vs lrkit's shared curve
        dist.barrier()
        t0 = time.perf_counter()
        range_test(TorchTrainer(model, opt, torch.nn.CrossEntropyLoss(), data), **kw)
        local.append((time.perf_counter() - t0) / num_iter)
        dist.barrier()
        trainer = DistributedTrainer(TorchTrainer(model, opt, torch.nn.CrossEntropyLoss(), data))
        t0 = time.perf_counter()
        range_test(trainer, **kw)
        shared.append((time.perf_counter() - t0) / num_iter)
        in_reduce.append(trainer.reduce_s / trainer.reduce_calls)
    x = torch.zeros(1, dtype=torch.float64)
    dist.barrier()
    t1 = time.perf_counter()
    for _ in range(num_iter):
        dist.all_reduce(x)
    bare = (time.perf_counter() - t1) / num_iter
    if rank == 0:
        med = statistics.median
        with open(out, "w") as f:
            f.write(f"{med(local)} {med(shared)} {med(in_reduce)} {bare}")
    dist.destroy_process_group()


def allreduce_cost(num_iter: int, repeats: int) -> tuple[float, ...]:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "r.txt")
        mp.spawn(_ddp_rank, args=(port, num_iter, repeats, out), nprocs=2, join=True)
        with open(out) as f:
            return tuple(map(float, f.read().split()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--rows", type=int, default=ROWS, help="rows of the least-squares data (trial length)")
    ap.add_argument("--ddp-steps", type=int, default=200)
    args = ap.parse_args()
    os.environ["LRKIT_BENCH_STEPS"], os.environ["LRKIT_BENCH_ROWS"] = str(args.steps), str(args.rows)
    lrs = list(np.geomspace(1e-3, 3e-1, args.trials))
    names = ("optuna optimize, 1 process", "lrkit, 1 worker", "lrkit, 2 workers", "bare pool, 1 process",
             "bare pool, 2 processes")
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in names}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as folder:
            times[names[0]].append(optuna_loop(lrs, folder))
            times[names[1]].append(lrkit_sweep(lrs, 1, folder))
            times[names[2]].append(lrkit_sweep(lrs, 2, folder))
        times[names[3]].append(bare_processes(lrs, 1))
        times[names[4]].append(bare_processes(lrs, 2))
    wall = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
    span = {k: statistics.median(sp for _, sp in v) for k, v in times.items()}
    print(f"sweep: {args.trials} trials x {args.steps} steps (one report per step), SQLite, "
          f"median of {args.repeats} runs, {os.cpu_count()} CPUs")
    print(f"  {'':<28} {'wall':>8} {'trials/s':>9}   {'trial phase':>11} {'trials/s':>9}")
    for k in names:
        print(f"  {k:<28} {wall[k]:7.2f}s {args.trials / wall[k]:9.2f}   {span[k]:10.2f}s {args.trials / span[k]:9.2f}")
    one, two, peer = names[1], names[2], names[0]
    print(f"  throughput 2 workers / 1 worker: {wall[one] / wall[two]:.2f}x wall (worker start-up included), "
          f"{span[one] / span[two]:.2f}x in the trial phase")
    print(f"  the machine itself (bare pool, no storage), 2 / 1 processes: "
          f"{span[names[3]] / span[names[4]]:.2f}x in the trial phase (other users share these cores)")
    print(f"  lrkit 1 worker / optuna optimize time: {wall[one] / wall[peer]:.2f}x wall "
          "(lrkit writes a curve once per trial, in WAL mode; optuna one fsynced commit per report)")
    local, shared, in_reduce, bare = allreduce_cost(args.ddp_steps, args.repeats)
    print(f"distributed range test, DDP on 2 gloo ranks (CPU, 1 thread each), {args.ddp_steps} steps, "
          f"median of {args.repeats} runs:")
    print(f"  step, each rank its own curve   {local * 1e3:7.3f} ms")
    print(f"  step, lrkit shared curve        {shared * 1e3:7.3f} ms  (ratio {shared / local:.3f}x, "
          f"+{(shared - local) * 1e6:.0f} us per step)")
    print(f"  of which in lrkit's all-reduce  {in_reduce * 1e6:7.1f} us  (includes waiting for the slower rank)")
    print(f"  bare dist.all_reduce of 1 value {bare * 1e6:7.1f} us  (back to back, ranks in lockstep)")

if __name__ == "__main__":
    main()
