"""What only a CUDA machine can show about lrkit's range test, in one command of a few minutes (issue 23).

    python benchmarks/gpu_check.py              # every check on cuda:0; NCCL DDP too when two GPUs exist
    python benchmarks/gpu_check.py --device cpu # the same checks on CPU (what the tests run), memory and NCCL skipped

One line per check, ``ok`` / ``FAIL`` / ``skip`` with the numbers; exit status 1 when a check failed, 0 otherwise.
Without a CUDA device it says so and exits 0. The checks:

- ``fp16_gradscaler``: autocast float16 with a GradScaler and 2 accumulation steps (torch-lr-finder's
  ``test_gradient_accumulation_with_torch_amp`` and ``test_mixed_precision_torch``): the test runs, skipped steps are
  no points, a pick, and everything (weights, optimiser, scaler, RNGs) comes back bit for bit;
- ``bf16``: autocast bfloat16: a pick, exact restore;
- ``exact_restore``: a BatchNorm + dropout model on the device, Adam with state, the CUDA RNG: bit for bit after the
  adaptive test, and after an error in the middle of it;
- ``host_snapshot``: the snapshot lives in host memory: the device's peak memory during the range test against a bare
  training loop of the same steps (a second copy on the device would add the model and the optimiser state: 3x the
  weights for Adam);
- ``nccl_ddp``: two processes, NCCL, a DDP model: every rank records the same curve and pick, and is restored.
"""

from __future__ import annotations

import argparse
import copy
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lrkit.integrations.torch import find_lr

#: the size of the checks' model and data (the tests shrink it: the code is the same)
SIZE = {"width": 256, "batches": 16}


def _task(device: torch.device, width: int | None = None, batches: int | None = None, batch_size: int = 64,
          seed: int = 0):
    """An MLP with BatchNorm and dropout on ``device``, Adam with a few steps of state, batches on the device."""
    width, batches = width or SIZE["width"], batches or SIZE["batches"]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batches * batch_size, 32, generator=g)
    y = torch.randint(0, 10, (batches * batch_size,), generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(32, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Dropout(0.1),
                          nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = [(x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)) for i in range(0, len(x), batch_size)]
    crit = nn.CrossEntropyLoss()
    warm = torch.randn(3, batch_size, 32, generator=g).to(device)  # a few steps on other data: optimiser state
    for xb in warm:
        opt.zero_grad()
        crit(model(xb), torch.randint(0, 10, (batch_size,), generator=g).to(device)).backward()
        opt.step()
    return model, opt, crit, data


def state_of(model: nn.Module, opt: torch.optim.Optimizer, scaler: Any = None) -> dict[str, Any]:
    """Everything a range test may change, copied: weights and buffers, optimiser state and lrs, train flags, the
    RNG states (CPU, and CUDA where initialised), a GradScaler's state."""
    out = {"model": {k: v.detach().clone() for k, v in model.state_dict().items()},
           "opt": copy.deepcopy(opt.state_dict()), "training": [m.training for m in model.modules()],
           "cpu_rng": torch.get_rng_state().clone()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda_rng"] = [s.clone() for s in torch.cuda.get_rng_state_all()]
    if scaler is not None:
        out["scaler"] = scaler.state_dict()
    return out


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The names of what differs between two :func:`state_of` copies (empty: bit for bit the same)."""

    def same(x: Any, y: Any) -> bool:
        if isinstance(x, torch.Tensor):
            return isinstance(y, torch.Tensor) and x.shape == y.shape and torch.equal(x.cpu(), y.cpu())
        if isinstance(x, dict):
            return isinstance(y, dict) and x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
        if isinstance(x, (list, tuple)):
            return isinstance(y, (list, tuple)) and len(x) == len(y) and all(same(u, v) for u, v in zip(x, y))
        return x == y

    return [k for k in a if k not in b or not same(a[k], b[k])]


def check_fp16_gradscaler(device: torch.device) -> str:
    model, opt, crit, data = _task(device)
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0**24)  # a large scale: the first steps overflow
    before = state_of(model, opt, scaler)
    res = find_lr(model, opt, crit, data, amp=torch.float16, scaler=scaler, accumulation_steps=2, progress=False)
    diff = differences(before, state_of(model, opt, scaler))
    assert not diff, f"not restored: {diff}"
    assert res.suggestion.lr is not None, res.suggestion.reason
    assert all(torch.isfinite(torch.tensor(res.losses[:-1]))), "a skipped (overflowed) step became a point"
    return f"pick {res.suggestion.lr:.3g} after {res.total_steps} steps, restored bit for bit (scaler included)"


def check_bf16(device: torch.device) -> str:
    model, opt, crit, data = _task(device)
    before = state_of(model, opt)
    res = find_lr(model, opt, crit, data, amp=torch.bfloat16, progress=False)
    diff = differences(before, state_of(model, opt))
    assert not diff, f"not restored: {diff}"
    assert res.suggestion.lr is not None, res.suggestion.reason
    return f"pick {res.suggestion.lr:.3g}, restored bit for bit"


def check_exact_restore(device: torch.device) -> str:
    model, opt, crit, data = _task(device)
    before = state_of(model, opt)
    res = find_lr(model, opt, crit, data, progress=False)
    diff = differences(before, state_of(model, opt))
    assert not diff, f"not restored after the test: {diff}"
    calls = []

    def failing(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 150:  # inside the confirmation runs
            raise RuntimeError("an error in the middle of the test")
        return crit(out, target)

    try:
        find_lr(model, opt, failing, data, progress=False)
    except RuntimeError:
        pass
    diff = differences(before, state_of(model, opt))
    assert not diff, f"not restored after an error: {diff}"
    return f"restored bit for bit after {res.total_steps} steps and after an error at step 150"


def host_snapshot_verdict(peak_test: int, peak_bare: int, state_bytes: int) -> tuple[bool, str]:
    """Whether the range test's peak device memory shows no second copy of the model and optimiser state on the
    device: it may exceed the bare loop's peak by at most a quarter of that state (allocator slack), where a device
    copy would add all of it."""
    extra = peak_test - peak_bare
    ok = extra <= 0.25 * state_bytes
    return ok, (f"peak {peak_test / 2**20:.0f} MiB vs a bare loop's {peak_bare / 2**20:.0f} MiB (+{extra / 2**20:.0f} "
                f"MiB; a device-side snapshot would add {state_bytes / 2**20:.0f} MiB)")


def check_host_snapshot(device: torch.device) -> str:
    if device.type != "cuda":
        raise _Skip("device memory statistics need CUDA")
    model, opt, crit, data = _task(device, width=2048, batches=8)
    state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    state_bytes += sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                       if isinstance(t, torch.Tensor))
    steps = 100
    bare_model, bare_opt = copy.deepcopy(model), None
    bare_opt = torch.optim.Adam(bare_model.parameters(), lr=1e-3)
    bare_opt.load_state_dict(opt.state_dict())
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.max_memory_allocated(device)
    for i in range(steps):
        xb, yb = data[i % len(data)]
        bare_opt.zero_grad(set_to_none=True)
        crit(bare_model(xb), yb).backward()
        bare_opt.step()
    torch.cuda.synchronize(device)
    peak_bare = torch.cuda.max_memory_allocated(device) - base
    del bare_model, bare_opt
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.max_memory_allocated(device)
    find_lr(model, opt, crit, data, num_iter=steps, confirm=False, end_lr=1e-2, progress=False)
    torch.cuda.synchronize(device)
    peak_test = torch.cuda.max_memory_allocated(device) - base
    ok, line = host_snapshot_verdict(peak_test, peak_bare, state_bytes)
    assert ok, line
    return line


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_rank(rank: int, world: int, port: int, backend: str, size: dict[str, int], out: Any) -> None:
    import torch.distributed as dist

    SIZE.update(size)
    if backend == "gloo":
        torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        model, opt, crit, data = _task(device, seed=0)
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[rank] if device.type == "cuda" else None)
        opt = torch.optim.Adam(ddp.parameters(), lr=1e-3)
        shard = data[rank::world]
        before = state_of(model, opt)
        res = find_lr(ddp, opt, crit, shard, progress=False)
        out.put((rank, [float(v) for v in res.losses], res.suggestion.lr, differences(before, state_of(model, opt))))
    finally:
        dist.destroy_process_group()


def run_ddp(backend: str, world: int = 2, timeout: float = 120.0) -> list[tuple[int, list[float], Any, list[str]]]:
    """Run the range test on a DDP model in ``world`` processes; each rank's (rank, losses, pick, what was not
    restored)."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_ddp_rank, args=(r, world, port, backend, dict(SIZE), out)) for r in range(world)]
    for p in procs:
        p.start()
    results = []
    deadline = time.monotonic() + timeout
    for _ in range(world):
        results.append(out.get(timeout=max(deadline - time.monotonic(), 1.0)))
    for p in procs:
        p.join(timeout=30)
    return sorted(results)


def check_nccl_ddp(device: torch.device) -> str:
    if device.type != "cuda" or torch.cuda.device_count() < 2:
        raise _Skip(f"NCCL DDP needs two GPUs (found {torch.cuda.device_count() if device.type == 'cuda' else 0})")
    return ddp_verdict(run_ddp("nccl"))


def ddp_verdict(results: list[tuple[int, list[float], Any, list[str]]]) -> str:
    """Every rank the same curve and pick, every rank restored."""
    (_, losses0, pick0, _), *rest = results
    assert all(diff == [] for *_, diff in results), f"not restored: {[r[3] for r in results]}"
    assert all(losses == losses0 and pick == pick0 for _, losses, pick, _ in rest), "the ranks disagree"
    assert pick0 is not None, "no pick"
    return f"{len(results)} ranks: the same {len(losses0)}-point curve and pick {pick0:.3g}, all restored"


class _Skip(Exception):
    """A check that cannot run here (says why)."""


CHECKS: dict[str, Callable[[torch.device], str]] = {
    "fp16_gradscaler": check_fp16_gradscaler, "bf16": check_bf16, "exact_restore": check_exact_restore,
    "host_snapshot": check_host_snapshot, "nccl_ddp": check_nccl_ddp,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default; skips all without one) or cpu")
    ap.add_argument("--only", default=None, help="comma-separated check names (default: all)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing to check (skipped)")
        return 0
    names = args.only.split(",") if args.only else list(CHECKS)
    failed = 0
    t_all = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        try:
            line = f"ok    {name}: {CHECKS[name](device)}"
        except _Skip as e:
            line = f"skip  {name}: {e}"
        except Exception as e:  # noqa: BLE001 - every failure is one line, and the next check runs
            failed += 1
            line = f"FAIL  {name}: {type(e).__name__}: {e}"
        print(f"{line} ({time.perf_counter() - t0:.1f}s)", flush=True)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"gpu_check on {where}, torch {torch.__version__}: {len(names) - failed} of {len(names)} passed or skipped "
          f"in {time.perf_counter() - t_all:.0f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
