"""Several processes on one study (SQLite and journal files): worker processes share it, each trial is taken once,
a dead worker's trial is redone through Optuna's heartbeat, commands started together do not collide, and
workers end with their parent whatever stops it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import search_toys as toys
from concurrency import HERE, check_round, env_for, run_rounds
from search_toys import STEPS, closed_form, starts

from lrkit.search import parse_lrs, sweep


def sqlite_study(db, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}")


def journal_study(path, name):
    return optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(path)))


def test_two_worker_processes_share_an_sqlite_study(tmp_path, log):
    lrs = parse_lrs("1e-3:0.3:6")
    result = sweep(toys.train_rendezvous, lrs, storage=str(tmp_path / "s.db"), study_name="two", n_workers=2,
                   progress=False)
    begun = starts(log)
    assert sorted(float(s[0]) for s in begun) == lrs  # every lr exactly once
    pids = {s[2] for s in begun}
    assert len(pids) == 2 and str(os.getpid()) not in pids
    assert all(t.state == "complete" for t in result.trials)
    assert [t.score for t in result.trials] == pytest.approx([closed_form(lr, STEPS) for lr in lrs], rel=1e-12)


@pytest.mark.parametrize("kind", ["db", "jsonl"])
def test_four_workers_take_each_of_24_queued_trials_once(tmp_path, log, kind):
    # SQLite: without lrkit's BEGIN IMMEDIATE connections, 4 processes took some trials twice in a trial run
    path = str(tmp_path / f"s.{kind}")
    points = [(lr, s) for lr in parse_lrs("1e-3:0.4:12") for s in (0, 1)]
    # train_rendezvous: no trial ends before two workers have begun one, so the workers overlap on any machine
    sweep(toys.train_rendezvous, parse_lrs("1e-3:0.4:12"), seeds=(0, 1), storage=path, study_name="many",
          n_workers=4, progress=False, diagnose=False)
    study = sqlite_study(path, "many") if kind == "db" else journal_study(path, "many")
    counts = check_round(study, [], points, starts(log), [])
    assert counts["trials"] == 24 and counts["processes"] >= 2


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_killed_worker_trial_is_redone_by_another_worker(tmp_path, log, capfd):
    lrs = [0.01, 0.02, 0.04, 0.08]
    db = str(tmp_path / "s.db")
    result = sweep(toys.train_dies_once, lrs, storage=db, study_name="kill", n_workers=2, heartbeat_interval=1,
                   progress=False)
    assert [t.state for t in result.trials] == ["complete"] * 4
    assert result.trials[1].score == pytest.approx(closed_form(0.02, STEPS), rel=1e-12)
    at_002 = sorted((t for t in sqlite_study(db, "kill").trials if t.params.get("lr") == 0.02), key=lambda t: t.number)
    assert [t.state.name for t in at_002] == ["FAIL", "COMPLETE"]  # the lost attempt, then Optuna's retry
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback
    assert retry.retried_trial_number(at_002[1]) == at_002[0].number
    assert [s[0] for s in starts(log)].count("0.02") == 2
    assert "exited with status [-9]" in capfd.readouterr().err


def test_a_killed_sweep_resumes_when_optuna_finds_its_trial_stale(tmp_path, log):
    db = str(tmp_path / "s.db")
    lrs = [0.01, 0.015, 0.02, 0.04]
    code = (f"import search_toys; from lrkit.search import sweep; sweep(search_toys.train_blocks, {lrs!r}, "
            f"storage={db!r}, study_name='k', heartbeat_interval=1, progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code], env={**env_for(log), "LRKIT_TEST_BLOCK": "0.02"})
    try:
        deadline = time.time() + 60
        while not any(s[0] == "0.02" for s in starts(log)):
            assert time.time() < deadline and proc.poll() is None, "the sweep never reached lr 0.02"
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        proc.kill()  # SIGKILL: no chance to mark its trial; only the heartbeat tells
        proc.wait()
    result = sweep(toys.train_blocks, lrs, storage=db, study_name="k", heartbeat_interval=1, progress=False)
    assert sorted(s[0] for s in starts(log)) == ["0.01", "0.015", "0.02", "0.02", "0.04"]  # only 0.02 twice
    assert [t.state for t in result.trials] == ["complete"] * 4
    assert result.trials[2].score == pytest.approx(closed_form(0.02, STEPS), rel=1e-12)


@pytest.mark.parametrize("kind", ["db", "jsonl"])
def test_three_commands_started_together_on_one_file(tmp_path, log, kind):
    path = str(tmp_path / f"s.{kind}")
    points = [(lr, s) for lr in parse_lrs("1e-3:0.3:6") for s in (0, 1)]
    argvs = [["sweep", "search_toys:train_slow", "--lrs", "1e-3:0.3:6", "--seeds", "0,1", "--storage", path,
              "--quiet", "--no-plot", "--no-doctor", "-o", f"out{i}.json"] for i in range(3)]
    results = run_rounds([[argv] for argv in argvs], str(tmp_path), log)[0]
    name = "sweep:search_toys.train_slow"
    study = sqlite_study(path, name) if kind == "db" else journal_study(path, name)
    # a journal file keeps no heartbeat: a command does not wait for the others' trials (it reports them running)
    counts = check_round(study, results, points, starts(log), [str(tmp_path / f"out{i}.json") for i in range(3)],
                         waited=kind == "db")
    assert counts["trials"] == 12


# -- workers end with their parent ---------------------------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie (exited, not yet reaped by its dead parent) counts as gone
        return f.read().split()[2] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to tell a zombie from a live process")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_workers_end_with_their_parent(tmp_path, log, sig):
    db = str(tmp_path / "s.db")
    cmd = [sys.executable, "-c", "import sys; from lrkit.cli import main; sys.exit(main())", "sweep",
           "search_toys:train_blocks", "--lrs", "0.01,0.02,0.04", "--workers", "2", "--storage", db, "--quiet"]
    # Ctrl-C at its default in the command even where the tests run with it ignored (a shell's background job)
    parent = subprocess.Popen(cmd, cwd=HERE, env={**env_for(log), "LRKIT_TEST_BLOCK": "all"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 90
        while len({s[2] for s in starts(log)}) < 2:
            assert time.time() < deadline and parent.poll() is None, "the two workers never started"
            time.sleep(0.05)
        workers = {int(s[2]) for s in starts(log)}
        parent.send_signal(sig)
        # a worker gets SIGTERM (or sees its parent gone) and ends within its grace: the parent joins each for 15 s
        # then kills it; on a loaded machine the workers' last writes to the study may take that long
        deadline = time.time() + 45
        while any(_alive(p) for p in workers):
            assert time.time() < deadline, f"workers still running 45 s after {sig.name} to their parent"
            time.sleep(0.05)
        rc = parent.wait(timeout=30)
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.wait()
    assert rc == (-9 if sig == signal.SIGKILL else 130)
    study = sqlite_study(db, "sweep:search_toys.train_blocks")
    running = [t for t in study.trials if t.state.name == "RUNNING"]
    assert len(running) == 2 and all(t.user_attrs.get("lrkit_interrupted") for t in running)  # left for a rerun
    result = sweep(toys.train_blocks, [0.01, 0.02, 0.04], storage=db, progress=False, diagnose=False)
    assert [t.state for t in result.trials] == ["complete"] * 3
    assert [t.score for t in result.trials] == pytest.approx(
        [closed_form(lr, STEPS) for lr in (0.01, 0.02, 0.04)], rel=1e-12)
