"""The live-guard benchmark: a bad ``--threshold`` is a usage error (exit 2) before anything is trained."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks", "doctor"))
import bench_live_act  # noqa: E402


@pytest.mark.parametrize("argv", [["final8", "--threshold", "foo=3"], ["--threshold", "early_blowup=x"],
                                  ["--threshold", "early_blowup"], ["final99"]])
def test_bad_arguments_are_a_usage_error(argv, monkeypatch, capsys):
    monkeypatch.setattr(bench_live_act, "train", lambda *a: pytest.fail("trained despite a bad argument"))
    monkeypatch.setattr(sys, "argv", ["bench_live_act.py", *argv])
    with pytest.raises(SystemExit) as e:
        bench_live_act.main()
    assert e.value.code == 2 and ("--threshold" if "--threshold" in argv else "final99") in capsys.readouterr().err


def test_threshold_parses_a_monitor_threshold_and_sets_default_to_the_held_out_set():
    assert bench_live_act._override("early_blowup=3") == ("early_blowup", 3.0)
    assert bench_live_act.parse([]).sets == ["final11"]
    assert bench_live_act.parse(["extra", "final7"]).sets == ["extra", "final7"]
