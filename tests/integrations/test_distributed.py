"""The range test under torch.distributed: 2 processes, gloo backend on CPU (torch.multiprocessing).

Each rank trains a DDP model on its half of a batch; the reference is one process training the same model on the
whole batch (DDP averages the gradients of two equal halves, which is the gradient of the whole batch's mean loss).
"""

from __future__ import annotations

import datetime
import os
import socket
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from lrkit.finder import range_test  # noqa: E402
from lrkit.integrations.torch import TorchStepper  # noqa: E402

WORLD, N, D = 2, 16, 4
KW = dict(start_lr=1e-4, end_lr=30.0, num_iter=40, progress=False)
ONE_RAMP = dict(KW, confirm=False)


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, D, generator=g)
    y = x @ torch.randn(D, 1, generator=g) + 0.1 * torch.randn(N, 1, generator=g)
    return x, y


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(D, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


class _FailsAt:
    """A stepper that raises on one rank at a given step (to check that no rank hangs)."""

    def __init__(self, inner, fail_step):
        self.inner, self.fail_step, self.n = inner, fail_step, 0

    def step(self, lr):
        # after the inner step: DDP's own gradient all-reduce inside a step cannot survive a rank that skips it
        loss = self.inner.step(lr)
        self.n += 1
        if self.n == self.fail_step:
            raise RuntimeError("simulated failure on this rank")
        return loss

    def snapshot(self):
        return self.inner.snapshot()

    def restore(self, snap):
        self.inner.restore(snap)


def _rank_main(rank, port, out):
    from lrkit.integrations.distributed import DistributedStepper, maybe_distributed
    from lrkit.integrations.torch import find_lr

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))  # a hang becomes an error
    try:
        x, y = _data()
        shard = [(x[rank::WORLD], y[rank::WORLD])]
        model = torch.nn.parallel.DistributedDataParallel(_model())
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        rng_before = torch.get_rng_state().clone()
        result = find_lr(model, opt, torch.nn.MSELoss(), shard, **ONE_RAMP)
        after = {k: v.clone() for k, v in model.state_dict().items()}
        rng_after = torch.get_rng_state().clone()
        # a failure on rank 1 at its 5th step: both ranks raise, both restore
        trainer = DistributedStepper(_FailsAt(TorchStepper(model, opt, torch.nn.MSELoss(), shard),
                                              5 if rank == 1 else 10**9))
        try:
            range_test(trainer, **KW)
            error = None
        except Exception as e:  # noqa: BLE001 - recorded for the parent to check
            error = f"{type(e).__name__}: {e}"
        after_error = {k: v.clone() for k, v in model.state_dict().items()}
        # any stepper: wrapped by maybe_distributed, it runs the same engine on every rank
        plain = range_test(maybe_distributed(TorchStepper(model, opt, torch.nn.MSELoss(), shard)), **ONE_RAMP)
        # the everyday entry point detects the process group by itself, confirmation runs included
        generic = find_lr(model, opt, torch.nn.MSELoss(), shard, **KW).to_dict()
        after_generic = {k: v.clone() for k, v in model.state_dict().items()}
        torch.save({"result": result.to_dict(), "generic": generic, "after_generic": after_generic, "before": before, "after": after, "rng_before": rng_before,
                    "rng_after": rng_after, "error": error, "after_error": after_error,
                    "world_size": result.config["world_size"], "plain": plain.to_dict()},
                   os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ddp"))
    ctx = mp.start_processes(_rank_main, args=(_free_port(), out), nprocs=WORLD, join=False,
                             start_method="spawn")
    deadline = time.time() + 120
    while not ctx.join(timeout=1):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the distributed range test did not finish within 120 s")
    return [torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=False) for r in range(WORLD)]


def test_every_rank_records_the_same_curve_stop_and_suggestion(ranks):
    a, b = ranks[0]["result"], ranks[1]["result"]
    a.pop("elapsed_s"), b.pop("elapsed_s")
    assert a == b  # lrs, raw and smoothed losses, stop reason and step, suggestion: bit for bit
    assert a["suggestion"]["lr"] is not None and a["stopped_at"] is not None  # it ran to divergence
    assert ranks[0]["world_size"] == 2
    plain = dict(ranks[0]["plain"], elapsed_s=None, config=None)
    assert plain == dict(a, elapsed_s=None, config=None)  # maybe_distributed + range_test: the same test


def test_every_rank_is_restored_exactly(ranks):
    for r in ranks:
        for k, v in r["before"].items():
            assert torch.equal(v, r["after"][k]), k
            assert torch.equal(v, r["after_error"][k]), k
        assert torch.equal(r["rng_before"], r["rng_after"])


def test_a_failure_on_one_rank_stops_every_rank(ranks):
    assert ranks[1]["error"] == "RuntimeError: simulated failure on this rank"
    assert ranks[0]["error"].startswith("LrkitError: rank(s) [1] raised an error during step(")


def test_curve_matches_a_single_process_run_on_the_combined_batch(ranks):
    x, y = _data()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    single = range_test(TorchStepper(model, opt, torch.nn.MSELoss(), [(x, y)]), **ONE_RAMP)
    ddp = ranks[0]["result"]
    assert len(ddp["losses"]) == len(single.losses)
    assert ddp["stopped_at"] == single.stopped_at
    finite = np.isfinite(single.losses)
    np.testing.assert_allclose(np.array(ddp["losses"], dtype=float)[finite], single.losses[finite], rtol=1e-4)
    # the suggestion rule compares neighbouring losses, so float-level differences may move the pick along the
    # same descent: it must stay inside the single-process run's interval of good lrs
    lo, hi = single.suggestion.interval
    assert lo <= ddp["suggestion"]["lr"] <= hi


def test_the_generic_find_lr_detects_the_process_group(ranks):
    a, b = ranks[0]["generic"], ranks[1]["generic"]
    a.pop("elapsed_s"), b.pop("elapsed_s")
    assert a == b  # same ramp, same confirmation runs, same pick on every rank
    assert a["config"]["confirm"] and len(a["confirmations"]) == 3
    for r in ranks:
        for k, v in r["before"].items():
            assert torch.equal(v, r["after_generic"][k]), k
