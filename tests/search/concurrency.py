"""Run several ``lrkit`` commands at the same instant and check what they did to one study (used by the SQLite,
journal and PostgreSQL tests).

Each of N Python processes imports everything first, then, round after round, waits at a barrier: when all are
ready, the test writes a start time 0.3 s ahead, and each process sleeps until it and runs its command of the
round (``lrkit.cli.main(argv)``, its output kept per round). So the commands of a round reach the storage together
(within a few ms) instead of staggered by their start-up times, and later rounds do not pay the start-up again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))

RUNNER = """
import contextlib, json, os, sys, time
import optuna, sqlalchemy, numpy
import search_toys
from lrkit.cli import main
try:
    import psycopg2
except ImportError:
    pass
base, rounds = sys.argv[1], json.loads(sys.argv[2])
for r, argv in enumerate(rounds):
    barrier, me = f"{base}-{r}", f"{base}-{r}.{os.getpid()}"
    open(f"{barrier}.ready.{os.getpid()}", "w").close()
    while not os.path.exists(barrier):
        time.sleep(0.005)
    with open(barrier) as f:
        start = float(f.read())
    time.sleep(max(0.0, start - time.time()))
    with open(me + ".out", "w") as out, open(me + ".err", "w") as err:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as e:
                code = e.code
            except BaseException as e:
                import traceback
                traceback.print_exc()
                code = repr(e)
    with open(me + ".rc.tmp", "w") as f:
        f.write(json.dumps(code))
    os.replace(me + ".rc.tmp", me + ".rc")
"""


@dataclass
class Outcome:
    """What one command of a round did."""

    returncode: object
    stdout: str
    stderr: str


def env_for(log: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (HERE, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "LRKIT_TEST_LOG": log, "MPLBACKEND": "Agg"}


def run_rounds(commands: list[list[list[str]]], folder: str, log: str,
               before_round: Callable[[int], None] = lambda r: None,
               after_round: Callable[[int, list[Outcome]], None] = lambda r, out: None,
               timeout: float = 240) -> list[list[Outcome]]:
    """``commands[i][r]``: the argv process i runs in round r (in ``folder``). Before each round,
    ``before_round(r)``; then every process starts its command at the same instant; when all are done,
    ``after_round(r, outcomes)``. The outcomes, per round."""
    base = os.path.join(folder, f"go{time.monotonic_ns()}")
    procs = [subprocess.Popen([sys.executable, "-c", RUNNER, base, json.dumps(rounds)], cwd=folder,
                              env=env_for(log), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rounds in commands]
    out = []
    try:
        for r in range(len(commands[0])):
            barrier = f"{base}-{r}"
            _wait([f"{barrier}.ready.{p.pid}" for p in procs], procs, timeout)
            before_round(r)
            with open(barrier + ".tmp", "w") as f:
                f.write(repr(time.time() + 0.3))
            os.replace(barrier + ".tmp", barrier)
            _wait([f"{barrier}.{p.pid}.rc" for p in procs], procs, timeout)
            out.append([Outcome(json.loads(_read(f"{barrier}.{p.pid}.rc")), _read(f"{barrier}.{p.pid}.out"),
                                _read(f"{barrier}.{p.pid}.err")) for p in procs])
            after_round(r, out[-1])
    finally:
        for p in procs:
            if len(out) < len(commands[0]) and p.poll() is None:
                p.kill()
            p.wait(timeout=60)
    return out


def _wait(files: list[str], procs: list[subprocess.Popen], timeout: float) -> None:
    """Until every process has written its file; an error if one ended or all take longer than ``timeout``."""
    deadline = time.time() + timeout
    while True:
        missing = [(f, p) for f, p in zip(files, procs) if not os.path.exists(f)]
        if not missing:
            return
        dead = [p for _, p in missing if p.poll() is not None]
        if dead or time.time() > deadline:
            detail = dead[0].stdout.read()[-3000:] if dead else "timed out"
            raise AssertionError(f"a command process ended early or hung: {detail}")
        time.sleep(0.01)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def check_round(study, results, points, log_starts, outputs, waited: bool = True) -> dict[str, int]:
    """Assert: every command exited 0 and reports every point, complete (or, ``waited=False``, where commands do
    not wait for each other's trials, complete or running); the study holds exactly one trial per point, complete,
    and nothing else but spares (closed at once, untrained); every point was trained exactly once. Returns counts
    for the report."""
    for r in results:
        assert r.returncode == 0, f"a command failed ({r.returncode}):\n{r.stderr[-3000:]}"
    for path in outputs:
        with open(path) as f:
            trials = json.load(f)["trials"]
        assert sorted((t["lr"], t["seed"]) for t in trials) == sorted(points)
        ok = ("complete",) if waited else ("complete", "running")
        assert all(t["state"] in ok for t in trials), path
    per_point = Counter()
    spares = 0
    for t in study.trials:
        if t.user_attrs.get("lrkit_spare"):
            assert t.state.name == "PRUNED" and "lr" not in t.params and "lrkit_curve" not in t.user_attrs
            spares += 1
            continue
        assert t.state.name == "COMPLETE", (t.number, t.state, t.params)
        per_point[(t.params["lr"], t.params["seed"])] += 1
    assert dict(per_point) == {p: 1 for p in points}, "a point has no trial or more than one"
    trained = Counter((float(lr), int(seed)) for lr, seed, _ in log_starts)
    assert dict(trained) == {p: 1 for p in points}, f"a point was trained twice or never: {trained}"
    return {"trials": sum(per_point.values()), "spares": spares,
            "processes": len({pid for _, _, pid in log_starts})}
