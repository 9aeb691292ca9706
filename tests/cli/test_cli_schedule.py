"""``lrkit schedule``: key points and a plot of any length in a few thousand points; bad input is one line, exit 2."""

from __future__ import annotations

import json

import pytest

from lrkit.cli import main


def test_cli_schedule_plots_and_prints_key_points(tmp_path, capsys):
    out = tmp_path / "schedule.png"
    assert main(["schedule", "warmup(50) >> cosine(3e-4, 200, final=3e-5)", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.stat().st_size > 1000 and "peak:     0.0003 at step 50" in text
    assert "final:    3e-05 at step 250" in text and "step 50: warmup end" in text and "read at" not in text
    assert main(["schedule", "onecycle(0.01, 100)", "--json"]) == 0
    kp = json.loads(capsys.readouterr().out)
    assert kp["peak_step"] == 29 and kp["steps"] == 101 and kp["spec"] == "onecycle(0.01, 100)"


def test_a_hundred_million_steps_are_read_and_drawn_at_a_few_thousand(tmp_path, capsys, monkeypatch):
    from lrkit import plot

    drawn = []
    real = plot.plot_schedule

    def spy(*args, **kwargs):
        ax = real(*args, **kwargs)
        drawn.append(len(ax.lines[0].get_xdata()))
        return ax

    monkeypatch.setattr(plot, "plot_schedule", spy)
    out = tmp_path / "s.png"
    assert main(["schedule", "warmup(500) >> cosine(3e-4, 1e8, final=3e-5)", "-o", str(out), "--json"]) == 0
    kp = json.loads(capsys.readouterr().out)
    assert (kp["steps"], kp["peak"], kp["peak_step"], kp["final"], kp["first"]) == (100_000_501, 3e-4, 500, 3e-5, 0.0)
    assert kp["sampled"] <= 1_000_002 and out.stat().st_size > 1000
    assert drawn and drawn[0] <= plot.PLOT_POINTS + 4  # the points, plus each phase start and the step before it
    assert main(["schedule", "cosine(3e-4, 1000)", "--steps", "1e11", "--json"]) == 0  # e-notation accepted
    kp = json.loads(capsys.readouterr().out)
    assert (kp["steps"], kp["peak"], kp["final"], kp["min"]) == (10**11, 3e-4, 0.0, 0.0)


@pytest.mark.parametrize("argv, words", [
    (["schedule", "warmup(50) >> cosin(3e-4, 200)"], ["unknown schedule 'cosin'", "column 15", "<here>cosin"]),
    (["schedule", "exponential(1e-3, 0.9)"], ["never ends", "--steps"]),
    (["schedule", "cosine(1e-3, 0)"], ["steps must be an int >= 1"]),
    (["schedule", "cosine(3e-4, 1e30)"], ["1e+30 steps", "look at fewer steps"]),
    (["schedule", "cosine(3e-4, 1000, final=1e-3)"], ["final must be", "at most peak (0.0003)"]),
    (["schedule", "cosine(3e-4, 1000)", "--steps", "1e20"], ["1e+20 steps", "look at fewer steps"]),
])
def test_cli_schedule_bad_input_exits_2_with_one_line_and_no_file(tmp_path, capsys, argv, words):
    out = tmp_path / "schedule.png"
    assert main([*argv, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(w in err for w in words), err
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("steps, words", [("1.5", "must be a whole number of steps"), ("many", "not a number")])
def test_a_step_count_that_is_no_whole_number_is_an_argument_error(capsys, steps, words):
    with pytest.raises(SystemExit) as e:
        main(["schedule", "cosine(3e-4, 1000)", "--steps", steps])
    assert e.value.code == 2 and f"--steps: {words}" in capsys.readouterr().err
