"""lrkit.plot: figures keep the user's matplotlib backend, are written atomically in the format their name says."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")


def test_plotting_never_switches_the_backend_even_without_a_display(tmp_path):
    """A notebook's inline backend must survive a plot (lrkit used to switch it to Agg when DISPLAY was unset)."""
    code = f"""
import matplotlib
matplotlib.use("template")  # any backend that is not Agg, PDF or SVG
import lrkit.schedules as S
from lrkit.finder import Replay, range_test
from lrkit.plot import plot_schedule
plot_schedule(S.cosine(1e-3, 100), 101, {str(tmp_path / "s.png")!r})
losses = [2.0 - 0.01 * i for i in range(60)] + [2.0 * 1.2 ** i for i in range(20)]
range_test(Replay(losses), confirm=False, progress=False, num_iter=80).plot({str(tmp_path / "f.png")!r})
print(matplotlib.get_backend())
"""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "template"
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_the_cli_chooses_agg_for_itself(tmp_path, monkeypatch):
    code = ("import sys, matplotlib; from lrkit.cli import main; "
            f"main(['schedule', 'cosine(1e-3, 100)', '-o', {str(tmp_path / 's.png')!r}]); print(matplotlib.get_backend())")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1].lower() == "agg"


def test_a_figure_is_saved_in_its_extensions_format_and_never_half_written(tmp_path):
    import matplotlib.pyplot as plt

    from lrkit.plot import save_figure

    fig, ax = plt.subplots()
    ax.plot(np.arange(5))
    save_figure(fig, tmp_path / "a.pdf")
    save_figure(fig, tmp_path / "b.svg")
    save_figure(fig, tmp_path / "c")
    assert (tmp_path / "a.pdf").read_bytes()[:4] == b"%PDF" and b"<svg" in (tmp_path / "b.svg").read_bytes()
    assert (tmp_path / "c").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "d.png").write_bytes(b"old")
    with pytest.raises(ValueError):
        save_figure(fig, tmp_path / "d.notaformat")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pdf", "b.svg", "c", "d.png"]
    plt.close(fig)


@pytest.mark.parametrize("skip_start, skip_end", [(0, 0), (5, 0), (0, 10), (10, 5)])
def test_skip_start_and_skip_end_leave_points_out_of_the_drawn_curves(skip_start, skip_end):
    """torch-lr-finder's plot(skip_start, skip_end): the drawn loss is the recorded one without those points."""
    import matplotlib.pyplot as plt

    from lrkit.finder import Replay, range_test

    losses = [2.0 - 0.01 * i for i in range(60)] + [2.0 * 1.2**i for i in range(20)]
    res = range_test(Replay(losses), confirm=False, progress=False, num_iter=80, diverge_factor=1e9)
    fig, ax = plt.subplots()
    res.plot(ax=ax, rules=["minimum"], skip_start=skip_start, skip_end=skip_end)
    raw = next(line for line in ax.lines if line.get_label() == "loss")
    x, y = raw.get_data()
    keep = slice(skip_start, len(res.lrs) - skip_end)
    np.testing.assert_array_equal(x, res.lrs[keep])
    np.testing.assert_array_equal(y, res.losses[keep])
    marked = next(line for line in ax.lines if line.get_label().startswith("minimum:"))
    assert marked.get_xdata()[0] == res.suggest("minimum", skip_start=skip_start, skip_end=skip_end).lr
    plt.close(fig)
    from lrkit.errors import LrkitError

    with pytest.raises(LrkitError, match="skip_end must be a count"):
        res.plot(skip_end=-1)
