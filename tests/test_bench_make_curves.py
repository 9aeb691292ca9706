"""The benchmark's curve recorder: a bad ``--seeds`` is a usage error (exit 2) before anything is trained or written."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks", "doctor"))
import make_curves  # noqa: E402


@pytest.mark.parametrize("seeds", ["2,x", "-1", ""])
def test_bad_seeds_are_a_usage_error_and_write_nothing(seeds, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(make_curves, "_cache", lambda name: str(tmp_path / f"{name}.npz"))
    monkeypatch.setattr(sys, "argv", ["make_curves.py", "--final7", "--seeds", seeds])
    with pytest.raises(SystemExit) as e:
        make_curves.main()
    assert e.value.code == 2 and "--seeds" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_seed_list_parses_a_comma_list():
    assert make_curves._seed_list("2,3") == (2, 3) and make_curves._seed_list("5") == (5,)
