"""Training functions for the search tests, at module level so worker processes can import them.

The toy is gradient descent on f(w) = w**2 from w0 = 3: after k steps at lr, w = w0 * (1 - 2 lr)**k, so every
reported value and final score has a closed form. Functions log ``start LR SEED PID`` to the file named by
$LRKIT_TEST_LOG when they begin a trial.
"""

from __future__ import annotations

import math
import os
import signal
import time

W0, STEPS = 3.0, 12


def closed_form(lr: float, k: int) -> float:
    """f(w_k) after k gradient steps on w**2 at this lr."""
    return W0**2 * (1.0 - 2.0 * lr) ** (2 * k)


def log(line: str) -> None:
    path = os.environ.get("LRKIT_TEST_LOG")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def starts(path: str) -> list[list[str]]:
    """The ``start`` lines of a log: [lr, seed, pid] each."""
    with open(path) as f:
        return [line.split()[1:] for line in f if line.startswith("start")]


def descend(lr, trial, steps=STEPS):
    w = W0
    for step in range(steps):
        trial.report(w * w, step)
        w -= lr * 2 * w
    return w * w


def train_quad(lr, trial):
    log(f"start {lr!r} {trial.seed} {os.getpid()}")
    return descend(lr, trial)


def train_slow(lr, trial):
    """The toy, taking 0.1 s: long enough that concurrent workers overlap."""
    log(f"start {lr!r} {trial.seed} {os.getpid()}")
    time.sleep(0.1)
    return descend(lr, trial)


def train_flaky(lr, trial):
    """Raises above lr 0.3, reports NaN between 0.1 and 0.3, trains normally below."""
    if lr > 0.3:
        raise ValueError("lr too high for this toy")
    if lr > 0.1:
        trial.report(1.0, 0)
        trial.report(float("nan"), 1)
    return train_quad(lr, trial)


def train_rendezvous(lr, trial):
    """On a process's first trial, wait until two worker processes have each started one (proves concurrency)."""
    log(f"start {lr!r} {trial.seed} {os.getpid()}")
    deadline = time.time() + 60
    while len({s[2] for s in starts(os.environ["LRKIT_TEST_LOG"])}) < 2:
        if time.time() > deadline:
            raise RuntimeError("the second worker never started a trial")
        time.sleep(0.05)
    return descend(lr, trial)


def train_dies_once(lr, trial):
    """The worker process running lr 0.02 is killed (SIGKILL) mid-trial, the first time only."""
    log(f"start {lr!r} {trial.seed} {os.getpid()}")
    marker = os.environ["LRKIT_TEST_LOG"] + ".killed"
    if abs(lr - 0.02) < 1e-12 and not os.path.exists(marker):
        trial.report(W0**2, 0)
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return descend(lr, trial)


def train_blocks(lr, trial):
    """Hangs (in Python, 0.05 s sleeps) at lr 0.02, or at every lr, while $LRKIT_TEST_BLOCK is 0.02 or 'all'."""
    log(f"start {lr!r} {trial.seed} {os.getpid()}")
    block = os.environ.get("LRKIT_TEST_BLOCK", "")
    if block == "all" or (block and abs(lr - float(block)) < 1e-12):
        trial.report(W0**2, 0)
        for _ in range(2400):
            time.sleep(0.05)
    return descend(lr, trial)


def train_hangs_above(lr, trial):
    """Hangs for 60 s above lr 0.1 (for the per-trial timeout), trains normally below."""
    log(f"start {lr!r} {trial.seed} {os.getpid()}")
    if lr > 0.1:
        trial.report(W0**2, 0)
        time.sleep(60)
    return descend(lr, trial)


def u_shape(lr, trial):
    """A U in log-lr with its minimum 1.0 at lr 3.7e-3, over 4 reported steps."""
    final = 0.1 * math.log(lr / 3.7e-3) ** 2 + 1.0
    for s in range(4):
        trial.report(final + (3 - s) * 0.1, s)
    return final


def train_maximize(lr, trial):
    """An accuracy-like score: -f, so higher is better."""
    return -descend(lr, trial)


class QuadTrainer:
    """A range-test Trainer on the same toy (numpy only)."""

    def __init__(self):
        self.w = W0

    def step(self, lr):
        loss = self.w**2
        self.w -= lr * 2 * self.w
        return loss

    def snapshot(self):
        return self.w

    def restore(self, snap):
        self.w = snap


def make_trainer():
    return QuadTrainer()


def train_interrupts(lr, trial):
    """Raises KeyboardInterrupt (as Ctrl-C would) mid-trial at the lr in $LRKIT_TEST_INTERRUPT, if set."""
    log(f"start {lr!r} {trial.seed} {os.getpid()}")
    stop = os.environ.get("LRKIT_TEST_INTERRUPT")
    if stop and abs(lr - float(stop)) < 1e-12:
        trial.report(W0**2, 0)
        raise KeyboardInterrupt
    return descend(lr, trial)
