"""benchmarks/gpu_check.py without a GPU: it skips cleanly, and every check that can run on CPU does (the same code
the CUDA machine runs), as do the verdicts of those that cannot."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
HERE = os.path.join(os.path.dirname(__file__), "..", "benchmarks")
sys.path.insert(0, HERE)
import gpu_check  # noqa: E402


@pytest.fixture(autouse=True)
def small(monkeypatch):
    """A smaller model and fewer batches than on the GPU: the same code, in seconds on one CPU core."""
    monkeypatch.setattr(gpu_check, "SIZE", {"width": 32, "batches": 8})
    torch.set_num_threads(1)


def test_without_cuda_it_says_so_and_exits_0():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, os.path.join(HERE, "gpu_check.py")], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "gpu_check: no CUDA device here; nothing to check (skipped)\n"


def test_the_checks_run_on_cpu_one_line_each(capsys):
    assert gpu_check.main(["--device", "cpu", "--only", "fp16_gradscaler,bf16,host_snapshot,nccl_ddp"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines[:4]] == [["ok", "fp16_gradscaler:"], ["ok", "bf16:"],
                                                        ["skip", "host_snapshot:"], ["skip", "nccl_ddp:"]]
    assert "restored bit for bit (scaler included)" in lines[0] and lines[-1].startswith("gpu_check on cpu")


def test_exact_restore_check_on_cpu_and_a_failing_check_is_one_fail_line_and_exit_1(capsys, monkeypatch):
    assert "after an error at step 150" in gpu_check.check_exact_restore(torch.device("cpu"))

    def broken(device):
        raise AssertionError("not restored: ['model']")

    monkeypatch.setitem(gpu_check.CHECKS, "exact_restore", broken)
    assert gpu_check.main(["--device", "cpu", "--only", "exact_restore"]) == 1
    assert capsys.readouterr().out.splitlines()[0].startswith("FAIL  exact_restore: AssertionError: not restored")


def test_differences_names_what_changed():
    model, opt, crit, data = gpu_check._task(torch.device("cpu"), width=8, batches=2)
    scaler = torch.amp.GradScaler("cpu")
    before = gpu_check.state_of(model, opt, scaler)
    assert gpu_check.differences(before, gpu_check.state_of(model, opt, scaler)) == []
    with torch.no_grad():
        model[0].weight[0, 0] += 1e-7
    torch.rand(1)  # the CPU RNG moves
    scaler.set_growth_factor(3.0)
    assert gpu_check.differences(before, gpu_check.state_of(model, opt, scaler)) == ["model", "cpu_rng", "scaler"]


def test_host_snapshot_verdict_tells_a_device_copy_from_allocator_slack():
    mib = 2**20
    state = 300 * mib  # weights + Adam moments
    assert gpu_check.host_snapshot_verdict(1000 * mib + 20 * mib, 1000 * mib, state)[0]  # slack
    ok, line = gpu_check.host_snapshot_verdict(1000 * mib + state, 1000 * mib, state)  # a copy on the device
    assert not ok and "+300 MiB" in line and "would add 300 MiB" in line


def test_the_ddp_check_runs_on_two_cpu_processes_with_gloo():
    """The NCCL check's code, on gloo: every rank the same curve and pick, every rank restored."""
    line = gpu_check.ddp_verdict(gpu_check.run_ddp("gloo"))
    assert line.startswith("2 ranks: the same") and line.endswith("all restored")
    with pytest.raises(AssertionError, match="disagree"):
        gpu_check.ddp_verdict([(0, [1.0, 2.0], 1e-3, []), (1, [1.0, 2.5], 1e-3, [])])
