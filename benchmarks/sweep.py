"""Sweep throughput: lrkit with 1, 2 and 4 worker processes against Optuna's own ``study.optimize`` on the same
trials with the same numbers of processes, and a plain process pool (what the machine gives without a storage);
then the cost of the all-reduce per step of the distributed range test. One run, medians of --repeats.

    python benchmarks/sweep.py [--repeats 3] [--trials 16] [--steps 300] [--workers 1,2,4] [--no-allreduce]

Sweep: the same CPU-bound training (numpy least squares, 64 features, --rows rows; about 4 ms per step on one
core at the default size) at --trials log-spaced lrs, each keeping its loss curve (one value per step) with the
trial. Every run starts from a fresh SQLite file:

  lrkit        ``lrkit.sweep(train, lrs, storage=..., n_workers=W)``: the trials queued once, W worker processes
               (one: in the calling process), the curve written with the trial when it ends.
  optuna       what Optuna's documentation does for a grid: ``GridSampler({"lr": lrs})``, and W processes that
               each run ``study.optimize(objective)`` until the sampler stops them (one: in the calling process),
               on ``sqlite:///file`` as Optuna opens it; the objective keeps the curve as one user attribute, like
               lrkit. With W > 1 Optuna's grid may run a point twice (its documentation says so); the table
               counts the trainings each ran.
  bare pool    the same trainings in a ``multiprocessing`` pool of W processes, no storage.

Times are wall seconds from the call to the last result, worker process start-up included (the calling process
has run each method once, untimed, before); "trials/s" is --trials over
the median time; "x optuna" is optuna's median time over lrkit's (above 1: lrkit is faster). On a machine whose
cores other jobs share, W processes cannot reach W times one.

All-reduce: a DDP range test on 2 gloo ranks (CPU, 1 thread each), with each rank keeping its own curve (no
exchange) vs lrkit's shared curve (one all-reduce per step): time per step, and a bare ``dist.all_reduce`` of one
scalar for reference.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import multiprocessing as mp  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

STEPS, ROWS = 300, 8192  # defaults; main() passes its choice to worker processes through the environment


def _train(lr: float, report) -> float:
    """Least squares by gradient descent; report(loss, step) each step. Returns the final loss."""
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


def train(lr, trial):  # lrkit's train_fn (module level: worker processes import it)
    return _train(lr, trial.report)


def objective(trial):  # Optuna's objective: the same training, the curve kept as one user attribute
    curve: list[float] = []
    lrs = [float(v) for v in os.environ["LRKIT_BENCH_LRS"].split(",")]
    loss = _train(trial.suggest_float("lr", min(lrs), max(lrs), log=True), lambda v, s: curve.append(v))
    trial.set_user_attr("curve", curve)
    return loss


def _plain(lr: float) -> float:
    return _train(lr, lambda value, step: None)


def bare_pool(lrs: list[float], workers: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    if workers == 1:
        for lr in lrs:
            _plain(lr)
    else:
        with mp.get_context("spawn").Pool(workers) as pool:
            pool.map(_plain, lrs, chunksize=1)
    return time.perf_counter() - t0, len(lrs)


def lrkit_sweep(lrs: list[float], workers: int, folder: str) -> tuple[float, int]:
    from lrkit.search import sweep

    t0 = time.perf_counter()
    result = sweep(train, lrs, storage=os.path.join(folder, f"lrkit-{workers}.db"), study_name="bench",
                   n_workers=workers, progress=False, diagnose=False)
    took = time.perf_counter() - t0
    assert all(t.state == "complete" for t in result.trials), result.table()
    return took, len(result.trials)


def _optuna_worker(url: str, lrs: list[float]) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="bench", storage=url, sampler=optuna.samplers.GridSampler({"lr": lrs}))
    study.optimize(objective)


def optuna_optimize(lrs: list[float], workers: int, folder: str) -> tuple[float, int]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{os.path.join(folder, f'optuna-{workers}.db')}"
    t0 = time.perf_counter()
    optuna.create_study(storage=url, study_name="bench")
    if workers == 1:
        _optuna_worker(url, lrs)
    else:
        procs = [mp.get_context("spawn").Process(target=_optuna_worker, args=(url, lrs)) for _ in range(workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    took = time.perf_counter() - t0
    trials = optuna.load_study(study_name="bench", storage=url).trials
    assert sorted({t.params["lr"] for t in trials if t.state.name == "COMPLETE"}) == sorted(lrs)
    return took, len(trials)


# -- all-reduce ----------------------------------------------------------------------------------------------------

def _ddp_rank(rank: int, port: int, num_iter: int, repeats: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    from lrkit.finder import range_test
    from lrkit.integrations.distributed import DistributedStepper
    from lrkit.integrations.torch import TorchStepper

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    g = torch.Generator().manual_seed(rank)
    data = [(torch.randn(64, 64, generator=g), torch.randint(0, 10, (64,), generator=g)) for _ in range(8)]
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Sequential(
        torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    kw = dict(start_lr=1e-5, end_lr=1e-2, num_iter=num_iter, progress=False, confirm=False)  # one ramp: the timing
    local, shared, in_reduce = [], [], []
    for _ in range(repeats):  # alternate: each rank's own curve (no loss exchange) vs lrkit's shared curve
        dist.barrier()
        t0 = time.perf_counter()
        range_test(TorchStepper(model, opt, torch.nn.CrossEntropyLoss(), data), **kw)
        local.append((time.perf_counter() - t0) / num_iter)
        dist.barrier()
        trainer = DistributedStepper(TorchStepper(model, opt, torch.nn.CrossEntropyLoss(), data))
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
    import torch.multiprocessing as tmp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "r.txt")
        tmp.spawn(_ddp_rank, args=(port, num_iter, repeats, out), nprocs=2, join=True)
        with open(out) as f:
            return tuple(map(float, f.read().split()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--rows", type=int, default=ROWS, help="rows of the least-squares data (trial length)")
    ap.add_argument("--workers", default="1,2,4", help="comma-separated worker counts (default 1,2,4)")
    ap.add_argument("--ddp-steps", type=int, default=200)
    ap.add_argument("--no-allreduce", action="store_true", help="skip the all-reduce measurement")
    args = ap.parse_args()
    lrs = [float(f"{v:.12g}") for v in np.geomspace(1e-3, 3e-1, args.trials)]
    os.environ.update(LRKIT_BENCH_STEPS=str(args.steps), LRKIT_BENCH_ROWS=str(args.rows),
                      LRKIT_BENCH_LRS=",".join(map(repr, lrs)))
    counts = [int(w) for w in args.workers.split(",")]
    methods = {"lrkit": lrkit_sweep, "optuna": optuna_optimize, "bare pool": lambda lrs, w, folder: bare_pool(lrs, w)}
    times: dict[tuple[str, int], list[float]] = {}
    ran: dict[tuple[str, int], list[int]] = {}
    for fn in methods.values():  # untimed: imports and first-use costs of this process, for every method alike
        with tempfile.TemporaryDirectory() as folder:
            fn(lrs[:2], 1, folder)
    for _ in range(args.repeats):
        for w in counts:
            for name, fn in methods.items():  # interleaved, so a slow spell of the machine hits all alike
                with tempfile.TemporaryDirectory() as folder:
                    took, n = fn(lrs, w, folder)
                times.setdefault((name, w), []).append(took)
                ran.setdefault((name, w), []).append(n)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"sweep: {args.trials} trials x {args.steps} steps ({args.rows} rows), a fresh SQLite file per run, "
          f"median of {args.repeats} runs, {os.cpu_count()} CPUs")
    print(f"  {'':<10} {'workers':>7} {'time':>8} {'trials/s':>9} {'x 1 worker':>10} {'x optuna':>9} "
          f"{'trainings run':>14}")
    for name in methods:
        for w in counts:
            k = (name, w)
            vs_optuna = f"{med[('optuna', w)] / med[k]:9.2f}" if name == "lrkit" else f"{'':>9}"
            print(f"  {name:<10} {w:>7} {med[k]:7.2f}s {args.trials / med[k]:9.2f} "
                  f"{med[(name, counts[0])] / med[k]:10.2f} {vs_optuna} {'/'.join(map(str, ran[k])):>14}")
    if args.no_allreduce:
        return
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
