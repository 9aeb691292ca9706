"""``lrkit sweep`` and ``lrkit search`` as a user runs them: what they print and write by default, bad input as one
line and exit status 2 with nothing written, one spelling of each shared option, and the cases of issue 24 (a
sampler sweep after another sweep in the same storage, a search then a sweep, a file that is not a journal).

The training functions live in a module copied to the test's folder, as a user's would."""

from __future__ import annotations

import json
import math
import os
import pathlib
import re

import numpy as np
import pytest

from lrkit.cli import build_parser, main

# the search tests' toy training functions, copied into the test's folder as a user's module
TOY = pathlib.Path(__file__).resolve().parents[1] / "search" / "search_toys.py"


def closed_form(lr: float, k: int = 12) -> float:
    return 9.0 * (1.0 - 2.0 * lr) ** (2 * k)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    (tmp_path / "cli_sweep_toy.py").write_text(TOY.read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_sweep_prints_progress_and_the_table_and_writes_json_and_figure_by_default(folder, capsys):
    assert main(["sweep", "cli_sweep_toy:train_quad", "--lrs", "1e-3:0.3:4"]) == 0
    captured = capsys.readouterr()
    progress = captured.err.strip().splitlines()
    assert len(progress) == 4 and all(line.startswith("lrkit sweep [") and "best so far" in line
                                      for line in progress)
    assert "best lr: 0.3" in captured.out and "wrote sweep.json and sweep.png" in captured.out
    d = json.loads((folder / "sweep.json").read_text())
    assert d["best_lr"] == 0.3 and d["study_name"] == "sweep:cli_sweep_toy.train_quad"
    assert [t["score"] for t in d["trials"]] == pytest.approx([closed_form(t["lr"]) for t in d["trials"]],
                                                              rel=1e-12)
    assert (folder / "sweep.png").stat().st_size > 1000 and (folder / "lrkit-sweep.db").exists()
    assert main(["sweep", "cli_sweep_toy:train_quad", "--lrs", "1e-3:0.3:4", "--quiet", "--no-plot", "-o",
                 "again.json"]) == 0  # resumed: nothing runs, nothing is printed per trial
    assert capsys.readouterr().err == ""
    assert json.loads((folder / "again.json").read_text())["trials"] == d["trials"]


def test_search_writes_json_and_figure_by_default(folder, capsys):
    assert main(["search", "cli_sweep_toy:u_shape", "--start", "1e-5", "--factor", "10", "--resolution",
                 "4"]) == 0
    d = json.loads((folder / "stepwise.json").read_text())
    assert d["lr"] == pytest.approx(10 ** -2.5) and d["cost_steps"] == 4 * d["cost_trials"]
    assert d["study_name"] == "search:cli_sweep_toy.u_shape"
    assert (folder / "stepwise.png").exists()
    captured = capsys.readouterr()
    assert "chosen lr" in captured.out and captured.err.count("lrkit search trial") == d["cost_trials"]


@pytest.mark.parametrize("command", ["sweep", "search"])
def test_shared_options_have_one_spelling(command):
    parser = build_parser()
    argv = [command, "m:f", "--storage", "x.db", "--study-name", "s", "--workers", "2", "--timeout", "30",
            "--maximize", "--retry-failed", "-o", "r.json", "--plot", "r.png", "--no-plot", "--no-doctor", "--quiet"]
    args = parser.parse_args(argv)
    assert (args.storage, args.study_name, args.workers, args.timeout, args.maximize, args.retry_failed,
            args.output, args.plot, args.no_plot, args.no_doctor, args.quiet) == (
        "x.db", "s", 2, 30.0, True, True, "r.json", "r.png", True, True, True)


@pytest.mark.parametrize("argv, fragment", [
    (["sweep", "cli_sweep_toy:train_quad", "--lrs", "1e-1:1e-4:7"], "bad lr range"),
    (["sweep", "no_such_module_xyz:train", "--lrs", "1e-4:1e-1:3"], "cannot import module 'no_such_module_xyz'"),
    (["sweep", "cli_sweep_toy:no_such_fn", "--lrs", "1e-4:1e-1:3"], "has no attribute 'no_such_fn'"),
    (["sweep", "cli_sweep_toy", "--lrs", "1e-4:1e-1:3"], "MODULE:FUNCTION"),
    (["sweep", "cli_sweep_toy:train_quad", "--around-suggestion", "missing.json"], "cannot read range-test result"),
    (["sweep", "cli_sweep_toy:train_quad", "--sampler", "annealing"], "unknown sampler"),
    (["sweep", "cli_sweep_toy:train_quad", "--timeout", "0"], "timeout must be a positive"),
    (["sweep", "cli_sweep_toy:train_quad", "-o", "nowhere/x.json"], "does not exist"),
    (["search", "cli_sweep_toy:u_shape", "--factor", "1"], "factor must be > 1"),
    (["search", "cli_sweep_toy:u_shape", "--start", "0"], "start must be a positive"),
    (["search", "cli_sweep_toy:u_shape", "--start=-1e-3"], "start must be a positive"),
    (["search", "cli_sweep_toy:u_shape", "--workers", "0"], "workers must be >= 1"),
    (["search", "cli_sweep_toy:u_shape", "--plot", "nowhere/x.png"], "does not exist"),
    (["search", "no_such_module_xyz:train"], "cannot import module"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(folder, capsys, argv, fragment):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err
    assert set(os.listdir(folder)) - {"__pycache__"} == {"cli_sweep_toy.py"}  # not even the study


@pytest.mark.parametrize("name, content", [("x.jsonl", "lr,loss\n0.1,2.0\n"), ("x.db", "not a database")])
def test_a_storage_file_of_the_wrong_kind_is_one_line_and_untouched(folder, capsys, name, content):
    (folder / name).write_text(content)
    assert main(["sweep", "cli_sweep_toy:train_quad", "--lrs", "0.01,0.1", "--storage", name]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{name} is not an" in err and "Traceback" not in err
    assert (folder / name).read_text() == content and not (folder / "sweep.json").exists()


def test_a_sampler_sweep_after_a_grid_sweep_in_the_same_storage(folder, capsys):
    # issue 24: the sampler sweep used to run nothing and report best lr 1e-4, outside the range it was asked for
    assert main(["sweep", "cli_sweep_toy:train_quad", "--lrs", "1e-4:1e-3:5", "--storage", "c.db", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["sweep", "cli_sweep_toy:train_quad", "--lrs", "1e-2:1e-1:3", "--sampler", "random", "--storage",
                 "c.db"]) == 2
    err = capsys.readouterr().err
    assert "holds a sweep of cli_sweep_toy.train_quad (minimize) over 5 lrs 0.0001..0.001" in err and "--study-name" in err
    assert main(["sweep", "cli_sweep_toy:train_quad", "--lrs", "1e-2:1e-1:3", "--sampler", "random", "--storage",
                 "c.db", "--study-name", "drawn", "--quiet"]) == 0
    d = json.loads((folder / "sweep.json").read_text())
    assert len(d["trials"]) == 3 and all(1e-2 <= t["lr"] <= 1e-1 for t in d["trials"])
    assert 1e-2 <= d["best_lr"] <= 1e-1


def test_a_search_then_a_sampler_sweep_do_not_share_a_study(folder, capsys):
    assert main(["search", "cli_sweep_toy:train_quad", "--start", "1e-4", "--factor", "10", "--resolution", "10",
                 "--noise", "0", "--quiet", "--no-plot"]) == 0
    searched = json.loads((folder / "stepwise.json").read_text())
    assert main(["sweep", "cli_sweep_toy:train_quad", "--lrs", "1e-3:1e-2:3", "--sampler", "tpe", "--quiet",
                 "--no-plot"]) == 0
    d = json.loads((folder / "sweep.json").read_text())
    assert d["study_name"] != searched["study_name"]
    assert len(d["trials"]) == 3 and all(1e-3 <= t["lr"] <= 1e-2 for t in d["trials"])


def test_around_suggestion_from_a_saved_result_and_from_a_range_test(folder, capsys):
    from cli_sweep_toy import QuadTrainer

    from lrkit import range_test
    from lrkit.search import lrs_around

    finder = range_test(QuadTrainer(), start_lr=1e-4, end_lr=2.0, num_iter=40, progress=False)
    finder.save(folder / "find.json")
    fresh = range_test(QuadTrainer(), progress=False)  # what the command runs on a Trainer: the defaults
    for source, pick in (("find.json", finder.suggestion.lr), ("cli_sweep_toy:make_trainer", fresh.suggestion.lr)):
        expected = lrs_around(pick, 1.0, 3)
        assert main(["sweep", "cli_sweep_toy:train_quad", "--around-suggestion", source, "--num", "3", "--storage",
                     "memory", "--quiet", "--no-plot", "-o", "r.json"]) == 0
        assert abs(np.log10(pick / finder.suggestion.lr)) < 2  # both picks are plausible for this toy
        got = [t["lr"] for t in json.loads((folder / "r.json").read_text())["trials"]]
        assert got == pytest.approx(expected, rel=1e-11)
    assert re.search(r"range test: \S+ \(", capsys.readouterr().out)
    assert math.isfinite(fresh.suggestion.lr)
