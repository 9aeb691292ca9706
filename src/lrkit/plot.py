"""Every matplotlib figure of lrkit. matplotlib is imported when a plot is made, with the Agg backend if no
display is set, so plotting works on headless machines."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    if not os.environ.get("DISPLAY") and matplotlib.get_backend().lower() not in ("agg", "pdf", "svg"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike) -> None:
    """Save a figure atomically: to a temporary file in the same folder, renamed into place."""
    path = os.fspath(path)
    root, ext = os.path.splitext(path)
    tmp = f"{root}.lrkit-tmp{ext or '.png'}"
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def plot_finder(result: Any, path: str | os.PathLike | None = None, ax: Any = None,
                rules: Sequence[str] = ()) -> Any:
    """Loss against lr (log x axis): raw points, smoothed curve, the suggestion and its interval; extra ``rules``
    marked too. Saves to ``path`` when given; returns the Axes."""
    plt = _pyplot()
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(7, 4.5))
    lrs = np.asarray(result.lrs)
    if result.val_losses is not None:
        idx = np.asarray(result.val_steps, dtype=np.int64)
        ax.plot(lrs, result.losses, ".", color="0.75", ms=3, label="training loss")
        ax.plot(lrs[idx], result.val_losses, "-o", ms=3, color="C0", label="validation loss")
        y = np.asarray(result.val_losses)
    else:
        ax.plot(lrs, result.losses, ".", color="0.7", ms=3, label="loss")
        ax.plot(lrs, result.smoothed_losses, "-", color="C0", lw=2, label="smoothed loss")
        y = np.asarray(result.smoothed_losses)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    finite = y[np.isfinite(y)]
    if finite.size:  # keep the divergence tail from squashing the informative part of the curve
        lo, hi = float(finite.min()), float(finite[: max(int(np.argmin(finite)) + 1, 1)].max())
        top = max(hi, lo + 1e-12)
        pad = 0.08 * (top - lo)
        ax.set_ylim(lo - pad, top + 3 * pad)
    s = result.suggestion
    if s.lr is not None:
        if s.interval:
            ax.axvspan(s.interval[0], s.interval[1], color="C2", alpha=0.15, label="good interval")
        ax.axvline(s.lr, color="C2", lw=2, label=f"suggested lr {s.lr:.3g} ({s.rule})")
    for k, rule in enumerate(rules):
        other = result.suggest(rule)
        if other.lr is not None:
            ax.axvline(other.lr, color=f"C{3 + k}", ls="--", lw=1, label=f"{rule}: {other.lr:.3g}")
    ax.set_title(f"LR range test — {result.stop_reason.split(':')[0]}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(True, which="both", alpha=0.25)
    if own and path is not None:
        save_figure(fig, path)
        plt.close(fig)
    return ax
