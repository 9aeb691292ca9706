"""``lrkit find`` end to end: the built-in example, a user's module, and bad input (exit 2, nothing written)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

from lrkit.cli import main  # noqa: E402
from lrkit.finder import FinderResult  # noqa: E402


def test_example_digits_end_to_end(tmp_path):
    """The README's first command, as a user runs it (the installed console script)."""
    out = subprocess.run(["lrkit", "find", "--example", "digits", "--no-progress"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "suggested lr" in out.stdout and "interval" in out.stdout and "why:" in out.stdout
    res = FinderResult.load(tmp_path / "lr_find.json")
    assert res.suggestion.lr is not None
    lo, hi = res.suggestion.interval
    assert lo <= res.suggestion.lr <= hi
    assert f"{res.suggestion.lr:.3g}" in out.stdout
    assert (tmp_path / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr_find.json", "lr_find.png"]


def write_module(tmp_path, body: str) -> None:
    (tmp_path / "usermod.py").write_text(textwrap.dedent(body))


USER_TUPLE = """
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    def make():
        torch.manual_seed(0)
        x = torch.randn(128, 4); y = x.sum(1, keepdim=True)
        model = nn.Linear(4, 1)
        return model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(), DataLoader(TensorDataset(x, y), batch_size=16)
"""

USER_TRAINER = """
    class Quadratic:
        def __init__(self):
            self.w = 5.0
        def step(self, lr):
            loss = 0.5 * self.w ** 2
            self.w -= lr * self.w
            return loss
        def snapshot(self):
            return self.w
        def restore(self, snap):
            self.w = snap

    def make():
        return Quadratic()
"""


@pytest.mark.parametrize("body", [USER_TUPLE, USER_TRAINER], ids=["tuple", "trainer"])
def test_user_module_target(tmp_path, monkeypatch, capsys, body):
    write_module(tmp_path, body)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "usermod", raising=False)
    code = main(["find", "usermod:make", "--num-iter", "40", "--end-lr", "100", "--no-progress",
                 "-o", "out.json", "--plot", "out.png", "--rule", "minimum"])
    assert code == 0, capsys.readouterr().err
    d = json.loads((tmp_path / "out.json").read_text())
    assert d["suggestion"]["rule"].startswith("minimum") and d["config"]["num_iter"] == 40
    assert (tmp_path / "out.png").exists()


@pytest.mark.parametrize("argv, match", [
    (["find", "--example", "nope"], "unknown example 'nope'"),
    (["find", "missing_mod_xyz:make"], "cannot import module 'missing_mod_xyz'"),
    (["find", "usermod:nothere"], "has no attribute 'nothere'"),
    (["find", "usermod"], "MODULE:FUNCTION"),
    (["find", "--example", "digits", "--start-lr", "1", "--end-lr", "0.1"], "smaller than end_lr"),
    (["find", "--example", "digits", "--num-iter", "3"], "num_iter"),
    (["find", "--example", "digits", "-o", "no/such/dir/x.json"], "does not exist"),
    (["find", "--example", "digits", "--schedule", "cosine", "--total-steps", "5"], "--total-steps"),
    (["find", "--example", "digits", "--max-seconds", "-1"], "max_seconds"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, argv, match):
    write_module(tmp_path, USER_TUPLE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "usermod", raising=False)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(argv + ["--no-progress"]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1 and err.startswith("lrkit find: error:")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == before


def test_recipe_and_single_ramp_options(tmp_path, monkeypatch, capsys):
    from lrkit.schedules import parse

    monkeypatch.chdir(tmp_path)
    assert main(["find", "--example", "digits", "--no-progress", "--no-plot", "--schedule", "wsd",
                 "--total-steps", "3000"]) == 0
    out = capsys.readouterr().out
    spec = out.split("recipe (wsd, 3000 steps): ")[1].splitlines()[0]
    res = FinderResult.load(tmp_path / "lr_find.json")
    sched = parse(spec)
    assert max(sched(range(3000))) == pytest.approx(float(f"{res.suggestion.lr:.3g}"), rel=1e-9)
    assert res.config["confirm"] and sum(res.config["steps"].values()) <= 200 and len(res.confirmations) == 3
    assert main(["find", "--example", "digits", "--no-progress", "--no-plot", "--no-confirm"]) == 0
    single = FinderResult.load(tmp_path / "lr_find.json")
    assert single.confirmations == [] and len(single.lrs) <= 100 and single.suggestion.rule == "robust"


USER_RAISES = """
    class DataMissing(Exception):
        pass

    def make():
        raise DataMissing("no such file: train.csv")
"""


def test_a_target_that_raises_is_one_line_naming_its_error_and_exit_2(tmp_path, monkeypatch, capsys):
    """Before: a traceback and exit status 1."""
    write_module(tmp_path, USER_RAISES)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "usermod", raising=False)
    assert main(["find", "usermod:make", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == "lrkit find: error: usermod:make() raised DataMissing: no such file: train.csv\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == ["usermod.py"]


@pytest.mark.parametrize("steps", ["0", "-3"])
def test_max_steps_below_one_is_refused(tmp_path, monkeypatch, capsys, steps):
    monkeypatch.chdir(tmp_path)
    assert main(["find", "--example", "digits", "--max-steps", steps, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "max_steps must be a positive integer" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
