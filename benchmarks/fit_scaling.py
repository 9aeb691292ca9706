"""The robust fit's cost against the curve's length: time and peak memory of ``lrkit.finder.fit_curve``.

    python benchmarks/fit_scaling.py [--repeats 5]

For curves of 100 to 10,000 points (a noisy range-test shape over 8 decades): the fit as lrkit runs it (every point
when the curve is short; on a grid of 8 points per bandwidth, interpolated, when it is long) against the same fit
evaluated at every point (the exact path, forced), medians of ``--repeats`` runs (one for the exact path past 4,000
points), their ratio, the peak memory (tracemalloc) and whether both find the same divergence point. Before issue 23
the fit built the full points x points kernel at once: 4,000 points took 489 MB.
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc

import numpy as np

from lrkit.finder import _rules, fit_curve


def curve(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A range-test shape: flat, a fall, a floor, a steep rise, with noise; ``n`` points over 1e-7 .. 10."""
    rng = np.random.default_rng(seed)
    x = np.linspace(-7.0, 1.0, n)
    y = np.where(x < -2, 2.0 - 0.3 * np.clip(x + 5, 0, 3), 1.1 + 3 * (x + 2) ** 2) + 0.05 * rng.standard_normal(n)
    return 10**x, y


def measure(lrs: np.ndarray, y: np.ndarray, repeats: int) -> tuple[float, float, object]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fit = fit_curve(lrs, y)
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    fit_curve(lrs, y)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return statistics.median(times), peak, fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(f"{'points':>7} {'lrkit s':>8} {'MiB':>6} {'every point s':>14} {'MiB':>6} {'ratio':>6}  same divergence point")
    grid = _rules._GRID_PER_BANDWIDTH
    for n in (100, 1000, 4000, 10_000):
        lrs, y = curve(n)
        t, mem, fit = measure(lrs, y, args.repeats)
        _rules._GRID_PER_BANDWIDTH = 10**9  # every point
        try:
            t_exact, mem_exact, exact = measure(lrs, y, 1 if n > 4000 else args.repeats)
        finally:
            _rules._GRID_PER_BANDWIDTH = grid
        print(f"{n:>7} {t:>8.3f} {mem / 2**20:>6.1f} {t_exact:>14.3f} {mem_exact / 2**20:>6.1f} "
              f"{t_exact / t:>6.1f}  {fit.lr_diverge == exact.lr_diverge}")


if __name__ == "__main__":
    main()
