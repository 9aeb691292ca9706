"""lrkit.sweep on real Optuna storages: in-memory, SQLite shared by worker processes, and a real PostgreSQL server.

The toy training is gradient descent on f(w) = w**2 from w0 = 3: after k steps at lr, w = w0 * (1 - 2 lr)**k, so
every reported value and final score has a closed form.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import optuna
import pytest

from lrkit.errors import LrkitError
from lrkit.sweep import SweepStudy, lrs_around, parse_lrs, run_points, sweep

HERE = os.path.dirname(os.path.abspath(__file__))
W0, STEPS = 3.0, 12


def closed_form(lr: float, k: int) -> float:
    """f(w_k) after k gradient steps on w**2 at this lr."""
    return W0**2 * (1.0 - 2.0 * lr) ** (2 * k)


# -- training functions (module level, so worker processes can import them) --------------------------------------

def _log(line: str) -> None:
    path = os.environ.get("LRKIT_TEST_LOG")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def _descend(lr, trial):
    w = W0
    for step in range(STEPS):
        trial.report(w * w, step)
        w -= lr * 2 * w
    return w * w


def train_quad(lr, trial):
    _log(f"start {lr!r} {trial.seed} {os.getpid()}")
    return _descend(lr, trial)


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
    _log(f"start {lr!r} {trial.seed} {os.getpid()}")
    path = os.environ["LRKIT_TEST_LOG"]
    deadline = time.time() + 60
    while time.time() < deadline:
        with open(path) as f:
            pids = {line.split()[3] for line in f if line.startswith("start")}
        if len(pids) >= 2:
            break
        time.sleep(0.05)
    else:
        raise RuntimeError("the second worker never started a trial")
    return _descend(lr, trial)


def train_dies_once(lr, trial):
    """The worker process running lr 0.02 is killed (SIGKILL) mid-trial, the first time only."""
    marker = os.environ["LRKIT_TEST_LOG"] + ".killed"
    if abs(lr - 0.02) < 1e-12 and not os.path.exists(marker):
        trial.report(W0**2, 0)
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return train_quad(lr, trial)


def train_blocks(lr, trial):
    """Hangs at lr 0.02 when LRKIT_TEST_BLOCK is set (the sweep process is then killed from outside)."""
    _log(f"start {lr!r} {trial.seed} {os.getpid()}")
    if abs(lr - 0.02) < 1e-12 and os.environ.get("LRKIT_TEST_BLOCK"):
        trial.report(W0**2, 0)
        time.sleep(120)
    return _descend(lr, trial)


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


def _starts(path):
    with open(path) as f:
        return [line.split() for line in f if line.startswith("start")]


@pytest.fixture
def log(tmp_path, monkeypatch):
    path = str(tmp_path / "calls.log")
    open(path, "w").close()
    monkeypatch.setenv("LRKIT_TEST_LOG", path)
    return path


# -- candidates ----------------------------------------------------------------------------------------------------

def test_parse_lrs_is_log_spaced_with_ends_included():
    got = parse_lrs("1e-4:1e-1:7")
    np.testing.assert_allclose(got, 10.0 ** np.linspace(-4, -1, 7), rtol=1e-11)
    assert got[0] == 1e-4 and got[-1] == 1e-1
    assert parse_lrs("3e-3, 1e-3,3e-3") == [1e-3, 3e-3]
    assert parse_lrs([0.1, 0.01]) == [0.01, 0.1]


@pytest.mark.parametrize("spec", ["1e-1:1e-4:7", "0:1:3", "1e-4:1e-1:1", "a:b:c", "1e-4:1e-1", "-1,2", "", "inf,1"])
def test_parse_lrs_rejects_bad_input(spec):
    with pytest.raises(LrkitError):
        parse_lrs(spec)


def test_lrs_around_spans_one_decade_centred_on_the_pick():
    from lrkit.suggest import Suggestion

    got = lrs_around(Suggestion(2e-3, None, "valley", "why"), decades=1.0, num=5)
    np.testing.assert_allclose(got, 2e-3 * 10.0 ** np.linspace(-0.5, 0.5, 5), rtol=1e-11)
    with pytest.raises(LrkitError, match="no suggestion"):
        lrs_around(Suggestion(None, None, "valley", "too few points"))


# -- one process -------------------------------------------------------------------------------------------------

def test_scores_and_curves_match_the_closed_form():
    lrs = parse_lrs("1e-3:0.45:6")
    result = sweep(train_quad, lrs, storage="memory", study_name="cf")
    assert [t.lr for t in result.trials] == lrs
    for t in result.trials:
        assert t.state == "complete"
        assert t.score == pytest.approx(closed_form(t.lr, STEPS), rel=1e-12)
        np.testing.assert_array_equal(t.steps, np.arange(STEPS))
        np.testing.assert_allclose(t.values, [closed_form(t.lr, k) for k in range(STEPS)], rtol=1e-12)
    assert result.best_lr == min(lrs, key=lambda lr: closed_form(lr, STEPS))
    assert f"best lr: {result.best_lr:.4g}" in result.table()


def test_failures_are_recorded_with_their_error_and_the_sweep_goes_on(tmp_path):
    db = str(tmp_path / "s.db")
    result = sweep(train_flaky, [0.01, 0.05, 0.2, 0.5], storage=db, study_name="flaky")
    states = {t.lr: t.state for t in result.trials}
    assert states == {0.01: "complete", 0.05: "complete", 0.2: "failed", 0.5: "failed"}
    assert result.best_lr == 0.05
    # read back with Optuna itself: the failure and its message are in the study
    study = optuna.load_study(study_name="flaky", storage=f"sqlite:///{db}")
    by_lr = {t.params["lr"]: t for t in study.trials}
    assert by_lr[0.5].state == optuna.trial.TrialState.FAIL
    assert "ValueError: lr too high for this toy" in by_lr[0.5].user_attrs["lrkit_error"]
    assert by_lr[0.2].state == optuna.trial.TrialState.FAIL
    assert "nan" in by_lr[0.2].user_attrs["lrkit_error"]
    assert by_lr[0.05].value == pytest.approx(closed_form(0.05, STEPS), rel=1e-12)
    assert "lr too high" in result.table()


def test_rerun_resumes_without_redoing_finished_trials(tmp_path, log):
    db = str(tmp_path / "s.db")
    sweep(train_flaky, [0.01, 0.05, 0.5], storage=db, study_name="r")
    assert len(_starts(log)) == 2  # 0.5 raises before logging
    again = sweep(train_flaky, [0.01, 0.05, 0.5], storage=db, study_name="r")
    assert len(_starts(log)) == 2 and [t.state for t in again.trials] == ["complete", "complete", "failed"]
    more = sweep(train_flaky, [0.01, 0.03, 0.05, 0.5], storage=db, study_name="r")
    assert [s[1] for s in _starts(log)] == ["0.01", "0.05", "0.03"]  # only the new lr ran
    assert len(more.trials) == 4


def test_run_points_reuses_the_same_lr_and_seed_only(tmp_path, log):
    study = SweepStudy(storage=str(tmp_path / "s.db"), study_name="pts")
    first = run_points(study, train_quad, [(0.1, 0), (0.1, 1)])
    second = run_points(study, train_quad, [(0.1, 1), (0.2, 0), (0.1, 0)])
    assert [(s[1], s[2]) for s in _starts(log)] == [("0.1", "0"), ("0.1", "1"), ("0.2", "0")]
    assert [(r.lr, r.seed) for r in second] == [(0.1, 1), (0.2, 0), (0.1, 0)]
    assert second[0].number == first[1].number and second[2].number == first[0].number
    assert second[1].score == pytest.approx(closed_form(0.2, STEPS), rel=1e-12)


def test_sampler_draws_within_the_range_and_median_pruner_stops_worse_trials():
    result = sweep(train_quad, "1e-3:1e-1:3", storage="memory", study_name="tpe", sampler="tpe", n_trials=6)
    assert len(result.trials) == 6
    assert all(1e-3 <= t.lr <= 1e-1 and t.state == "complete" for t in result.trials)
    # lr in (0.5, 1): |1 - 2 lr| grows with lr, so in increasing order each trial is worse than all before it
    lrs = parse_lrs("0.55:0.95:7")
    pruned = sweep(train_quad, lrs, storage="memory", study_name="median", pruner="median")
    done = [t for t in pruned.trials if t.state == "complete"]
    assert len(done) == 5  # MedianPruner's default n_startup_trials
    for t in pruned.trials[5:]:
        assert t.state == "pruned" and list(t.steps) == [0, 1]  # step 0 ties the median, step 1 is worse
        assert t.values[1] > np.median([d.values[1] for d in done])
    assert pruned.best_lr == lrs[0]


def test_result_saves_and_plots(tmp_path):
    result = sweep(train_flaky, [0.01, 0.05, 0.2], storage="memory", study_name="p")
    result.save(tmp_path / "r.json")
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["best_lr"] == 0.05 and [t["state"] for t in d["trials"]] == ["complete", "complete", "failed"]
    ax = result.plot(tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000
    assert len(ax.lines) == 3 + 1  # one curve per trial, and the x where the failed one stopped


def test_doctor_verdict_is_attached_when_the_doctor_exists():
    doctor = pytest.importorskip("lrkit.doctor")
    if not hasattr(doctor, "diagnose"):
        pytest.skip("lrkit.doctor has no diagnose yet")
    result = sweep(train_quad, [0.01, 0.3], storage="memory", study_name="doc")
    for t in result.trials:
        assert t.verdict is not None
        assert t.verdict == doctor.diagnose(t.curve).to_dict()


# -- several processes -------------------------------------------------------------------------------------------

def test_two_worker_processes_share_an_sqlite_study(tmp_path, log):
    lrs = parse_lrs("1e-3:0.3:6")
    result = sweep(train_rendezvous, lrs, storage=str(tmp_path / "s.db"), study_name="two", n_workers=2)
    starts = _starts(log)
    assert sorted(float(s[1]) for s in starts) == lrs  # every lr exactly once
    pids = {s[3] for s in starts}
    assert len(pids) == 2 and str(os.getpid()) not in pids
    assert all(t.state == "complete" for t in result.trials)
    assert [t.score for t in result.trials] == pytest.approx([closed_form(lr, STEPS) for lr in lrs], rel=1e-12)


def test_a_killed_worker_trial_is_redone_by_the_other_worker(tmp_path, log, capfd):
    lrs = [0.01, 0.02, 0.04, 0.08]
    db = str(tmp_path / "s.db")
    result = sweep(train_dies_once, lrs, storage=db, study_name="kill", n_workers=2)
    assert [t.state for t in result.trials] == ["complete"] * 4
    assert result.trials[1].score == pytest.approx(closed_form(0.02, STEPS), rel=1e-12)
    study = optuna.load_study(study_name="kill", storage=f"sqlite:///{db}")
    at_002 = [t.state for t in study.trials if t.params["lr"] == 0.02]
    assert sorted(s.name for s in at_002) == ["COMPLETE", "FAIL"]  # the lost attempt, then the redo
    assert "exited with status [-9]" in capfd.readouterr().err


def test_a_killed_sweep_resumes_where_it_stopped(tmp_path, log):
    db = str(tmp_path / "s.db")
    lrs = [0.01, 0.015, 0.02, 0.04]
    code = (f"import sys; sys.path.insert(0, {HERE!r}); import test_sweep; from lrkit.sweep import sweep; "
            f"sweep(test_sweep.train_blocks, {lrs!r}, storage={db!r}, study_name='k')")
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "LRKIT_TEST_BLOCK": "1"})
    try:
        deadline = time.time() + 60
        while not any(s[1] == "0.02" for s in _starts(log)):
            assert time.time() < deadline and proc.poll() is None, "the sweep never reached lr 0.02"
            time.sleep(0.05)
        time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
    result = sweep(train_blocks, lrs, storage=db, study_name="k")
    assert [s[1] for s in _starts(log)] == ["0.01", "0.015", "0.02", "0.02", "0.04"]  # only 0.02 ran twice
    assert [t.state for t in result.trials] == ["complete"] * 4
    assert result.trials[2].score == pytest.approx(closed_form(0.02, STEPS), rel=1e-12)


def test_postgresql_server_with_two_workers(log):
    from _pg import find_bin, postgres_server

    if not (find_bin("initdb") and find_bin("pg_ctl")):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql")
    pytest.importorskip("psycopg2")
    lrs = parse_lrs("1e-3:0.3:4")
    with postgres_server() as url:
        result = sweep(train_rendezvous, lrs, storage=url, study_name="pg", n_workers=2)
        again = sweep(train_rendezvous, lrs, storage=url, study_name="pg")  # resumes: nothing left to run
        trials = optuna.load_study(study_name="pg", storage=url.replace("postgresql:", "postgresql+psycopg2:")).trials
    starts = _starts(log)
    assert sorted(float(s[1]) for s in starts) == lrs and len({s[3] for s in starts}) == 2
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    assert [t.score for t in again.trials] == [t.score for t in result.trials]
    assert [t.score for t in result.trials] == pytest.approx([closed_form(lr, STEPS) for lr in lrs], rel=1e-12)


# -- the command ---------------------------------------------------------------------------------------------------

def test_cli_sweeps_and_writes_outputs(tmp_path, capsys, monkeypatch):
    from lrkit.cli import main

    monkeypatch.chdir(tmp_path)
    rc = main(["sweep", "test_sweep:train_quad", "--lrs", "1e-3:0.3:4", "-o", "r.json", "--plot", "r.png"])
    out = capsys.readouterr().out
    assert rc == 0 and "best lr: 0.3" in out
    assert json.loads((tmp_path / "r.json").read_text())["best_lr"] == 0.3
    assert (tmp_path / "r.png").exists() and (tmp_path / "lrkit-sweep.db").exists()  # the default storage


@pytest.mark.parametrize("argv, fragment", [
    (["test_sweep:train_quad", "--lrs", "1e-1:1e-4:7"], "bad lr range"),
    (["no_such_module_xyz:train", "--lrs", "1e-4:1e-1:3"], "cannot import module 'no_such_module_xyz'"),
    (["test_sweep:no_such_fn", "--lrs", "1e-4:1e-1:3"], "has no attribute 'no_such_fn'"),
    (["test_sweep", "--lrs", "1e-4:1e-1:3"], "MODULE:FUNCTION"),
    (["test_sweep:train_quad", "--around-suggestion", "missing.json"], "cannot read range-test result"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, argv, fragment):
    from lrkit.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["sweep", *argv]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1
    assert not (tmp_path / "lrkit-sweep.db").exists()


def test_cli_around_suggestion_from_a_saved_result_and_from_a_range_test(tmp_path, capsys, monkeypatch):
    from lrkit.cli import main
    from lrkit.finder import range_test

    monkeypatch.chdir(tmp_path)
    finder = range_test(QuadTrainer(), start_lr=1e-4, end_lr=2.0, num_iter=40, progress=False)
    finder.save(tmp_path / "find.json")
    fresh = range_test(QuadTrainer(), progress=False)  # what the command runs on a Trainer: the defaults
    for source, pick in (("find.json", finder.suggestion.lr), ("test_sweep:make_trainer", fresh.suggestion.lr)):
        expected = lrs_around(pick, 1.0, 3)
        assert main(["sweep", "test_sweep:train_quad", "--around-suggestion", source, "--num", "3",
                     "--storage", "memory", "-o", "r.json"]) == 0
        assert abs(np.log10(pick / finder.suggestion.lr)) < 2  # both picks are plausible for this toy
        got = [t["lr"] for t in json.loads((tmp_path / "r.json").read_text())["trials"]]
        assert got == pytest.approx(expected, rel=1e-11)
    capsys.readouterr()


def test_a_trial_whose_remote_worker_stopped_beating_is_requeued_and_run(tmp_path, log):
    db = str(tmp_path / "s.db")
    study = SweepStudy(storage=db, study_name="hb", heartbeat_interval=1, grace_period=2)
    # a worker on another machine takes lr 0.05, beats once, and vanishes
    storage = study.open_storage()
    st = study.load(storage)
    st.enqueue_trial({"lr": 0.05}, user_attrs={"seed": 0})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Heartbeat ... supposed to be used with Study.optimize"
        remote = st.ask()
    remote.suggest_float("lr", 0.05, 0.1, log=True)
    remote.set_user_attr("lrkit_worker", {"host": "another-machine", "pid": 1})
    storage.record_heartbeat(remote._trial_id)
    records = run_points(study, train_quad, [(0.05, 0), (0.1, 0)])
    assert [r.state for r in records] == ["complete", "complete"]
    assert records[0].score == pytest.approx(closed_form(0.05, STEPS), rel=1e-12)
    trials = optuna.load_study(study_name="hb", storage=f"sqlite:///{db}").trials
    stale = [t for t in trials if t.number == remote.number][0]
    assert stale.state == optuna.trial.TrialState.FAIL  # failed by Optuna's heartbeat check, then retried
    assert [t.system_attrs.get("failed_trial") for t in trials if t.number == records[0].number] == [remote.number]
