"""lrkit.sweep in one process, on real Optuna storages (memory, SQLite, journal file): scores and curves against the
toy's closed form, failures, resume, what defines a study, samplers and pruners, time limits, progress lines."""

from __future__ import annotations

import json
import os
import re
import time
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
import search_toys as toys
from search_toys import STEPS, closed_form, starts

import lrkit
from lrkit.errors import LrkitError
from lrkit.search import SweepStudy, lrs_around, parse_lrs, run_points, sweep


def load(db, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}")


# -- candidates ----------------------------------------------------------------------------------------------------

def test_parse_lrs_is_log_spaced_with_ends_included():
    got = parse_lrs("1e-4:1e-1:7")
    np.testing.assert_allclose(got, 10.0 ** np.linspace(-4, -1, 7), rtol=1e-11)
    assert got[0] == 1e-4 and got[-1] == 1e-1
    assert parse_lrs("3e-3, 1e-3,3e-3") == [1e-3, 3e-3]
    assert parse_lrs([0.1, 0.01]) == [0.01, 0.1]


@pytest.mark.parametrize("spec", ["1e-1:1e-4:7", "0:1:3", "1e-4:1e-1:1", "a:b:c", "1e-4:1e-1", "1:2:3:4", "-1,2",
                                  "", "inf,1"])
def test_parse_lrs_rejects_bad_input(spec):
    with pytest.raises(LrkitError):
        parse_lrs(spec)


def test_lrs_around_spans_one_decade_centred_on_the_pick():
    got = lrs_around(SimpleNamespace(lr=2e-3), decades=1.0, num=5)
    np.testing.assert_allclose(got, 2e-3 * 10.0 ** np.linspace(-0.5, 0.5, 5), rtol=1e-11)
    assert lrs_around(2e-3, 1.0, 5) == got
    with pytest.raises(LrkitError, match="no suggestion"):
        lrs_around(SimpleNamespace(lr=None, reason="too few points"))


# -- one process -------------------------------------------------------------------------------------------------

def test_scores_and_curves_match_the_closed_form():
    lrs = parse_lrs("1e-3:0.45:6")
    result = sweep(toys.train_quad, lrs, storage="memory", progress=False)
    assert [t.lr for t in result.trials] == lrs
    for t in result.trials:
        assert t.state == "complete" and t.seed == 0 and t.duration_s >= 0
        assert t.score == pytest.approx(closed_form(t.lr, STEPS), rel=1e-12)
        np.testing.assert_array_equal(t.steps, np.arange(STEPS))
        np.testing.assert_allclose(t.values, [closed_form(t.lr, k) for k in range(STEPS)], rtol=1e-12)
    assert result.best_lr == min(lrs, key=lambda lr: closed_form(lr, STEPS))
    assert f"best lr: {result.best_lr:.4g}" in result.table()
    assert result.study_name == "sweep:search_toys.train_quad"


def test_seeds_and_maximize():
    result = sweep(toys.train_maximize, [0.01, 0.1], seeds=(3, 5), storage="memory", direction="maximize",
                   progress=False)
    assert sorted((t.lr, t.seed) for t in result.trials) == [(0.01, 3), (0.01, 5), (0.1, 3), (0.1, 5)]
    assert result.best_lr == 0.1  # -f is higher at 0.1
    rows = {r["lr"]: r for r in result.by_lr()}
    assert rows[0.1]["complete"] == 2 and rows[0.1]["mean_score"] == pytest.approx(-closed_form(0.1, STEPS))


def test_failures_are_recorded_with_their_error_and_the_sweep_goes_on(tmp_path):
    db = str(tmp_path / "s.db")
    result = sweep(toys.train_flaky, [0.01, 0.05, 0.2, 0.5], storage=db, study_name="flaky", progress=False)
    states = {t.lr: t.state for t in result.trials}
    assert states == {0.01: "complete", 0.05: "complete", 0.2: "failed", 0.5: "failed"}
    assert result.best_lr == 0.05
    # read back with Optuna itself: the failure and its message are in the study
    by_lr = {t.params["lr"]: t for t in load(db, "flaky").trials}
    assert by_lr[0.5].state == optuna.trial.TrialState.FAIL
    assert "ValueError: lr too high for this toy" in by_lr[0.5].user_attrs["lrkit_error"]
    assert by_lr[0.2].state == optuna.trial.TrialState.FAIL and "nan" in by_lr[0.2].user_attrs["lrkit_error"]
    assert by_lr[0.05].value == pytest.approx(closed_form(0.05, STEPS), rel=1e-12)
    assert by_lr[0.05].params == {"lr": 0.05, "seed": 0}
    assert "lr too high" in result.table()


def test_rerun_resumes_without_redoing_finished_trials_and_retry_failed_redoes_them(tmp_path, log):
    db = str(tmp_path / "s.db")
    sweep(toys.train_flaky, [0.01, 0.05, 0.5], storage=db, study_name="r", progress=False)
    assert len(starts(log)) == 2  # 0.5 raises before logging
    again = sweep(toys.train_flaky, [0.01, 0.05, 0.5], storage=db, study_name="r", progress=False)
    assert len(starts(log)) == 2 and [t.state for t in again.trials] == ["complete", "complete", "failed"]
    assert len(load(db, "r").trials) == 3
    retried = sweep(toys.train_flaky, [0.01, 0.05, 0.5], storage=db, study_name="r", retry_failed=True,
                    progress=False)
    assert [t.state for t in retried.trials] == ["complete", "complete", "failed"]
    trials = load(db, "r").trials
    assert len(trials) == 4 and sorted(t.params["lr"] for t in trials if t.state.name == "FAIL") == [0.5, 0.5]


def test_run_points_reuses_the_same_lr_and_seed_only(tmp_path, log):
    study = SweepStudy(storage=str(tmp_path / "s.db"), study_name="pts")
    first = run_points(study, toys.train_quad, [(0.1, 0), (0.1, 1)])
    second = run_points(study, toys.train_quad, [(0.1, 1), (0.2, 0), (0.1, 0)])
    assert [(s[0], s[1]) for s in starts(log)] == [("0.1", "0"), ("0.1", "1"), ("0.2", "0")]
    assert [(r.lr, r.seed) for r in second] == [(0.1, 1), (0.2, 0), (0.1, 0)]
    assert second[0].number == first[1].number and second[2].number == first[0].number
    assert second[1].score == pytest.approx(closed_form(0.2, STEPS), rel=1e-12)


# -- what defines a study ----------------------------------------------------------------------------------------

def test_a_different_sweep_under_the_same_name_is_an_error_not_a_merge(tmp_path, log):
    db = str(tmp_path / "c.db")
    sweep(toys.train_quad, "1e-4:1e-3:5", storage=db, study_name="m.f", progress=False)
    for kwargs, words in [
        (dict(lrs="1e-2:1e-1:3", sampler="random"), "random sampler between 0.01 and 0.1"),
        (dict(lrs="1e-4:1e-3:6"), "over 6 lrs"),
        (dict(lrs="1e-4:1e-3:5", seeds=(0, 1)), r"seeds \[0, 1\]"),
        (dict(lrs="1e-4:1e-3:5", direction="maximize"), "maximize"),
    ]:
        with pytest.raises(LrkitError, match=f"holds a sweep of search_toys.train_quad.*asks for .*{words}"):
            sweep(toys.train_quad, storage=db, study_name="m.f", progress=False, **kwargs)
    with pytest.raises(LrkitError, match="train_slow"):
        sweep(toys.train_slow, "1e-4:1e-3:5", storage=db, study_name="m.f", progress=False)
    assert len(starts(log)) == 5 and len(load(db, "m.f").trials) == 5  # nothing ran, nothing was added
    # the default names of sweep and search differ, and a sampler sweep reports only its own draws, in its range
    lrkit.stepwise_search(toys.train_quad, 1e-4, 10.0, storage=db, resolution=10.0, noise=0.0, progress=False,
                          diagnose=False)
    drawn = sweep(toys.train_quad, "1e-2:1e-1:3", storage=db, sampler="tpe", progress=False, diagnose=False)
    assert drawn.study_name == "sweep:search_toys.train_quad"
    assert len(drawn.trials) == 3 and all(1e-2 <= t.lr <= 1e-1 for t in drawn.trials)
    assert 1e-2 <= drawn.best_lr <= 1e-1


def test_a_study_not_made_by_lrkit_is_refused(tmp_path):
    db = str(tmp_path / "o.db")
    optuna.create_study(study_name="theirs", storage=f"sqlite:///{db}").optimize(lambda t: 1.0, n_trials=1)
    with pytest.raises(LrkitError, match="was not made by lrkit"):
        sweep(toys.train_quad, [0.1], storage=db, study_name="theirs", progress=False)


# -- samplers, pruners ---------------------------------------------------------------------------------------------

def test_sampler_draws_within_the_range_exactly_its_budget_and_resumes(tmp_path, log):
    db = str(tmp_path / "t.db")
    result = sweep(toys.train_quad, "1e-3:1e-1:3", storage=db, study_name="tpe", sampler="tpe", n_trials=6,
                   progress=False)
    assert len(result.trials) == 6 and len(starts(log)) == 6
    assert all(1e-3 <= t.lr <= 1e-1 and t.state == "complete" for t in result.trials)
    again = sweep(toys.train_quad, "1e-3:1e-1:3", storage=db, study_name="tpe", sampler="tpe", n_trials=6,
                  progress=False)
    assert len(starts(log)) == 6 and [t.number for t in again.trials] == [t.number for t in result.trials]
    more = sweep(toys.train_quad, "1e-3:1e-1:3", storage=db, study_name="tpe", sampler="tpe", n_trials=8,
                 progress=False)
    assert len(starts(log)) == 8 and len(more.trials) == 8 and len(load(db, "tpe").trials) == 8
    with pytest.raises(LrkitError, match="one seed"):
        sweep(toys.train_quad, "1e-3:1e-1:3", seeds=(0, 1), storage="memory", sampler="random")
    with pytest.raises(LrkitError, match="unknown sampler"):
        sweep(toys.train_quad, storage="memory", sampler="annealing")
    with pytest.raises(LrkitError, match="n_trials=4 is the number of lrs a sampler draws"):
        sweep(toys.train_quad, storage="memory", n_trials=4)


def test_median_pruner_stops_worse_trials():
    # lr in (0.5, 1): |1 - 2 lr| grows with lr, so in increasing order each trial is worse than all before it
    lrs = parse_lrs("0.55:0.95:7")
    pruned = sweep(toys.train_quad, lrs, storage="memory", pruner="median", progress=False)
    done = [t for t in pruned.trials if t.state == "complete"]
    assert len(done) == 5  # MedianPruner's default n_startup_trials
    for t in pruned.trials[5:]:
        assert t.state == "pruned" and list(t.steps) == [0, 1]  # step 0 ties the median, step 1 is worse
        assert t.values[1] > np.median([d.values[1] for d in done])
    assert pruned.best_lr == lrs[0]


# -- outputs -------------------------------------------------------------------------------------------------------

def test_result_saves_and_plots(tmp_path):
    result = sweep(toys.train_flaky, [0.01, 0.05, 0.2], storage="memory", progress=False)
    result.save(tmp_path / "r.json")
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["best_lr"] == 0.05 and [t["state"] for t in d["trials"]] == ["complete", "complete", "failed"]
    assert d["trials"][0]["values"] == pytest.approx([closed_form(0.01, k) for k in range(STEPS)], rel=1e-12)
    ax = result.plot(tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000
    assert len(ax.lines) == 3 + 1  # one curve per trial, and the x where the failed one stopped


def test_doctor_verdict_is_the_public_diagnose_of_each_curve():
    result = sweep(toys.train_quad, [0.01, 0.3], storage="memory", progress=False)
    for t in result.trials:
        assert t.verdict == lrkit.diagnose(t.curve).to_dict()
    assert all(t.verdict is None for t in sweep(toys.train_quad, [0.01], storage="memory", progress=False,
                                                diagnose=False).trials)


def test_one_progress_line_per_trial_with_score_time_and_best_so_far(capsys):
    lrs = [0.01, 0.3, 0.1, 0.6]
    sweep(toys.train_quad, lrs, storage="memory", diagnose=False)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 4
    best = None
    for k, (line, lr) in enumerate(zip(lines, lrs), start=1):  # queued in increasing lr
        lr = sorted(lrs)[k - 1]
        score = closed_form(lr, STEPS)
        best = lr if best is None or score < closed_form(best, STEPS) else best
        m = re.fullmatch(r"lrkit sweep \[(\d)/4\] lr (\S+) seed 0: complete, score (\S+), (\S+) s; "
                         r"best so far lr (\S+) \((\S+), 1 seed\)", line)
        assert m, line
        assert int(m[1]) == k and float(m[2]) == pytest.approx(lr, rel=1e-3)
        assert float(m[3]) == pytest.approx(score, rel=1e-4) and float(m[4]) >= 0
        assert float(m[5]) == pytest.approx(best, rel=1e-3)


def test_a_trial_past_its_time_limit_fails_and_the_sweep_goes_on(tmp_path, log):
    t0 = time.monotonic()
    result = sweep(toys.train_hangs_above, [0.01, 0.2, 0.05], storage=str(tmp_path / "s.db"), timeout_s=0.5,
                   progress=False)
    assert time.monotonic() - t0 < 20  # the hung trial (60 s) was stopped
    states = {t.lr: t.state for t in result.trials}
    assert states == {0.01: "complete", 0.05: "complete", 0.2: "failed"}
    hung = next(t for t in result.trials if t.lr == 0.2)
    assert "timed out after 0.5 s" in hung.error and result.best_lr == 0.05
    with pytest.raises(LrkitError, match="timeout must be a positive"):
        sweep(toys.train_quad, storage="memory", timeout_s=0)


def test_an_interrupted_trial_is_left_for_the_next_run_which_redoes_it_at_once(tmp_path, log, monkeypatch):
    db = str(tmp_path / "s.db")
    monkeypatch.setenv("LRKIT_TEST_INTERRUPT", "0.02")
    with pytest.raises(KeyboardInterrupt):
        sweep(toys.train_interrupts, [0.01, 0.02, 0.04], storage=db, study_name="i", progress=False)
    running = [t for t in load(db, "i").trials if t.state.name == "RUNNING"]
    assert len(running) == 1 and running[0].user_attrs["lrkit_interrupted"] is True
    monkeypatch.delenv("LRKIT_TEST_INTERRUPT")
    t0 = time.monotonic()
    result = sweep(toys.train_interrupts, [0.01, 0.02, 0.04], storage=db, study_name="i", progress=False)
    assert time.monotonic() - t0 < 10  # no heartbeat grace to wait for: the mark says it is abandoned
    assert [t.state for t in result.trials] == ["complete"] * 3
    assert sorted(s[0] for s in starts(log)) == ["0.01", "0.02", "0.02", "0.04"]  # only 0.02 ran twice
    assert sorted(t.state.name for t in load(db, "i").trials if t.params["lr"] == 0.02) == ["COMPLETE", "FAIL"]


# -- storages ------------------------------------------------------------------------------------------------------

def test_a_journal_file_runs_and_resumes(tmp_path, log):
    path = str(tmp_path / "s.jsonl")
    first = sweep(toys.train_quad, [0.01, 0.1], storage=path, progress=False)
    again = sweep(toys.train_quad, [0.01, 0.1], storage=path, progress=False)
    assert len(starts(log)) == 2 and [t.score for t in again.trials] == [t.score for t in first.trials]
    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
    assert len(optuna.load_study(study_name=first.study_name, storage=journal).trials) == 2


@pytest.mark.parametrize("name, content, words", [
    ("x.jsonl", "lr,loss\n0.1,2.0\n", "is not an Optuna journal file .line 1"),
    ("x.jsonl", '{"op_code": 0, "worker_id": "w", "study_name": "s", "directions": [1]}\nnot json\n',
     "is not an Optuna journal file .line 2"),
    ("x.db", "hello", "is not an SQLite database"),
])
def test_a_storage_file_of_the_wrong_kind_is_a_clear_error(tmp_path, name, content, words):
    (tmp_path / name).write_text(content)
    with pytest.raises(LrkitError, match=words):
        sweep(toys.train_quad, [0.1], storage=str(tmp_path / name))
    assert (tmp_path / name).read_text() == content  # untouched


def test_memory_storage_and_unpicklable_functions_cannot_use_worker_processes(tmp_path):
    with pytest.raises(LrkitError, match="lives in one process"):
        sweep(toys.train_quad, [0.1, 0.2], storage="memory", n_workers=2)
    with pytest.raises(LrkitError, match="cannot be sent to worker processes"):
        sweep(lambda lr, trial: 0.0, [0.1, 0.2], storage=str(tmp_path / "s.db"), n_workers=2)
    with pytest.raises(LrkitError, match="n_workers must be an integer >= 1"):
        sweep(toys.train_quad, storage="memory", n_workers=0)
    assert os.listdir(tmp_path) == []  # checked before the storage is touched
