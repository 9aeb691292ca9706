"""Ctrl-C twice during the range test: the second cannot stop the restore half-way (issue 23, scenario 10). Real
SIGINTs, sent by this process to a child that runs the test on a torch model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytest.importorskip("torch")

CHILD = textwrap.dedent("""
    import sys, time
    import torch
    from lrkit.finder import range_test
    from lrkit.integrations.torch import TorchStepper

    torch.set_num_threads(1)

    class SlowRestore(TorchStepper):
        '''A stepper whose restore takes a while (as copying a large model back does), and which says when it is
        in the middle of the ramp, so the parent can press Ctrl-C there.'''

        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.calls = 0

        def step(self, lr):
            self.calls += 1
            if self.calls == 20:
                print("ready", flush=True)
                time.sleep(10)  # the first Ctrl-C lands here
            return super().step(lr)

        def restore(self, snap):
            time.sleep(0.1)  # the second Ctrl-C, 5 ms after the first, lands here
            super().restore(snap)

    for trial in range(int(sys.argv[1])):
        torch.manual_seed(trial + int(sys.argv[2]))
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        x, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
        before = {k: v.clone() for k, v in model.state_dict().items()}
        try:
            range_test(SlowRestore(model, opt, torch.nn.CrossEntropyLoss(), [(x[:32], y[:32]), (x[32:], y[32:])]),
                       progress=False)
            print("finished", flush=True)
        except KeyboardInterrupt:
            pass
        same = all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
        print("restored" if same else "modified", flush=True)
""")


def default_sigint() -> None:
    """In the child before it starts: Ctrl-C at its default, even where this process ignores it (a shell starts
    background jobs with SIGINT ignored, and children inherit that; Python then never raises KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_a_second_ctrl_c_5ms_after_the_first_cannot_leave_the_model_modified(tmp_path):
    """Before: the second SIGINT raised inside the restore and left the model unrestored (every trial here, where
    the restore takes 0.1 s; issue 23 measured 2 of 6 runs with an ordinary one). Now a restore holds Ctrl-C until
    it is done."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    outcomes = []
    for trial in range(4):  # one child per trial: what a trial prints cannot be confused with the next one's
        child = subprocess.Popen([sys.executable, str(script), "1", str(trial)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env, preexec_fn=default_sigint)
        try:
            line = child.stdout.readline().strip()
            assert line == "ready", (line, child.stderr.read() if child.poll() is not None else "")
            time.sleep(0.05)  # the child is asleep inside step()
            os.kill(child.pid, signal.SIGINT)
            time.sleep(0.005)
            os.kill(child.pid, signal.SIGINT)
            outcomes.append(child.stdout.readline().strip())
            child.wait(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
    assert outcomes == ["restored"] * 4, child.stderr.read()
