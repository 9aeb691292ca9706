"""Curve math: robust slope, online robust z-score, the spike rule with persistence, trend."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lrkit.curve import EMA, RobustZ, SpikeDetector, ema, robust_slope, rolling_robust_z, spikes, trend


def test_ema_unchanged_closed_form():
    x = np.array([3.0, 1.0, 4.0, 1.0, 5.0])
    beta = 0.9
    expect = [sum((1 - beta) * beta ** (t - i) * x[i] for i in range(t + 1)) / (1 - beta ** (t + 1))
              for t in range(len(x))]
    np.testing.assert_allclose(ema(x, beta), expect, rtol=1e-12)
    e = EMA(beta)
    np.testing.assert_allclose([e.update(v) for v in x], expect, rtol=1e-12)


def test_robust_slope_exact_line_with_outliers():
    rng = np.random.default_rng(1)
    x = np.arange(200.0)
    y = 3.0 - 0.25 * x
    bad = rng.choice(200, 20, replace=False)  # 10% wild outliers
    y[bad] += rng.normal(0, 1e3, 20)
    assert robust_slope(x, y) == pytest.approx(-0.25, abs=1e-12)
    assert np.polyfit(x, y, 1)[0] != pytest.approx(-0.25, abs=1e-2)  # least squares is thrown off


def test_robust_slope_degenerate():
    assert math.isnan(robust_slope([1.0], [2.0]))
    assert math.isnan(robust_slope([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]))


def test_robust_z_is_standard_on_gaussian_noise():
    rng = np.random.default_rng(0)
    z = rolling_robust_z(5.0 + 0.1 * rng.standard_normal(20000), beta=0.99)
    assert np.all(z[:10] == 0)
    assert np.std(z[200:]) == pytest.approx(1.0, abs=0.1)
    assert np.mean(z[200:]) == pytest.approx(0.0, abs=0.05)


def test_robust_z_outlier_barely_moves_baseline():
    rz = RobustZ(beta=0.95)
    rng = np.random.default_rng(0)
    for v in 1.0 + 0.01 * rng.standard_normal(100):
        rz.update(v)
    loc, scale = rz.loc, rz.scale
    assert scale == pytest.approx(0.01, rel=0.25)
    z = rz.update(1.0 + 0.5)  # a 50-sigma outlier
    assert z > 40
    assert rz.loc - loc == pytest.approx(3 * scale * 0.05, rel=0.2)  # Huber: clipped at 3 scales, weight 1-beta
    assert rz.update(float("nan")) == math.inf


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(60, 1900), min_size=1, max_size=4, unique=True), st.integers(3, 12),
       st.floats(0.3, 3.0), st.integers(0, 10_000))
def test_spikes_found_within_two_steps(starts, length, height, seed):
    starts = sorted(starts)
    if any(b - a < 60 for a, b in zip(starts, starts[1:])):
        return  # spikes need a baseline between them
    rng = np.random.default_rng(seed)
    n = 2000
    t = np.arange(n)
    y = 0.5 + 2.0 * np.exp(-t / 200) + 0.02 * rng.standard_normal(n)
    for s in starts:
        y[s:s + length] += height
    found = spikes(y, t)
    assert [f.start for f in found] == pytest.approx(starts, abs=2)
    assert all(f.recovered for f in found)


def test_single_outliers_are_not_spikes_persistence():
    rng = np.random.default_rng(3)
    y = 1.0 + 0.02 * rng.standard_normal(3000)
    y[rng.choice(np.arange(100, 3000, 5), 40, replace=False)] += 5.0  # isolated bad batches, 250 sigma
    assert spikes(y) == []
    assert len(spikes(y, persistence=1)) >= 30  # without persistence every bad batch would be a "spike"


def test_spike_that_never_recovers():
    y = np.r_[np.full(200, 1.0), np.full(200, 3.0)] + 0.01 * np.random.default_rng(0).standard_normal(400)
    (sp,) = spikes(y)
    assert sp.start == 200 and not sp.recovered and sp.ratio == pytest.approx(3.0, rel=0.02)


def test_gradient_norm_spikes_in_log_space():
    rng = np.random.default_rng(4)
    g = np.exp(rng.normal(0, 0.05, 1000))
    g[500:505] *= 50
    det = SpikeDetector(log=True)
    started = [s for i, v in enumerate(g) if (s := det.update(i, v)[0]) is not None]
    assert [s.start for s in started] == [500]


def test_detector_state_roundtrip():
    rng = np.random.default_rng(5)
    y = 1.0 + 0.02 * rng.standard_normal(600)
    y[400:410] += 1.0
    a, b = SpikeDetector(), SpikeDetector()
    out_a = [a.update(i, v) for i, v in enumerate(y)]
    out_b = [b.update(i, v) for i, v in enumerate(y[:402])]
    c = SpikeDetector()
    c.load_state_dict(b.state_dict())
    out_b += [c.update(i, v) for i, v in enumerate(y[402:], start=402)]
    assert out_a == out_b


def test_trend_linear_vs_levelled():
    t = np.arange(300.0)
    lin = trend(2.0 - 0.001 * t)
    assert lin.start_slope == pytest.approx(-0.001) and lin.deceleration == pytest.approx(1.0)
    exp = trend(0.5 + 2.0 * np.exp(-t / 20))
    assert exp.deceleration < 0.01
    assert exp.relative_drop == pytest.approx((np.median(0.5 + 2 * np.exp(-t[:100] / 20)) - np.median(
        0.5 + 2 * np.exp(-t[-100:] / 20))) / np.median(0.5 + 2 * np.exp(-t[:100] / 20)))
