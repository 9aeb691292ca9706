"""The doctor's checks on synthetic curves with known, injected problems (exact steps), and the API shape."""

import json
import sys

import numpy as np
import pytest

import lrkit.doctor as doctor
from lrkit.curve import Curve
from lrkit.doctor import Monitor, Thresholds, diagnose
from lrkit.errors import LrkitError

N = 1000
T = np.arange(N)


def healthy(seed=0, noise=0.05):
    return 0.5 + 2.0 * np.exp(-T / 60) + noise * np.random.default_rng(seed).standard_normal(N)


def test_core_imports_no_framework():
    import subprocess

    code = "import lrkit.doctor, lrkit.curve, sys; assert not {'torch','lightning','transformers'} & set(sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_healthy_curve_keeps_lr():
    d = diagnose(Curve(T, healthy(), np.full(N, 1e-3)))
    assert d.verdict == "healthy" and d.recommendation.action == "keep" and d.recommendation.factor == 1.0
    assert any("decay" in a for a in d.recommendation.advice)  # constant lr: decay would help late


@pytest.mark.parametrize("starts", [[250], [300, 700], [150, 500, 820]])
def test_spikes_found_at_their_steps(starts):
    y = healthy(1)
    for s in starts:
        y[s:s + 6] += 1.5
    d = diagnose(Curve(T, y))
    sp = next(f for f in d.findings if f.kind == "spiking")
    assert sp.steps == pytest.approx(starts, abs=2)
    assert d.recommendation.action == "lower" and d.recommendation.factor < 1


def test_spike_at_warmup_peak_advises_warmup():
    y = healthy(2)
    y[300:306] += 1.5
    lrs = 1e-3 * np.minimum(1.0, T / 300)
    d = diagnose(Curve(T, y, lrs))
    sp = next(f for f in d.findings if f.kind == "spiking")
    assert sp.data["near_lr_peak"] is True
    assert any("warmup" in a for a in d.recommendation.advice)


def test_nan_is_divergence_at_its_step():
    y = healthy(3)
    y[640:] = np.nan
    d = diagnose(Curve(T, y))
    assert d.verdict == "diverging" and d.findings[0].steps == [640]
    assert d.recommendation.action == "lower" and d.recommendation.factor == pytest.approx(0.1)


def test_upward_trend_is_divergence():
    y = healthy(4)
    y[600:] += np.linspace(0, 4, N - 600)
    d = diagnose(Curve(T, y))
    assert d.verdict == "diverging" and d.recommendation.action == "lower"
    f = d.findings[0]
    assert 630 <= f.steps[0] <= 690  # 10% of the rise (step 640) plus at most the smoothing lag (33 steps)
    assert f.data["rise"] > 1


def test_early_blowup_is_divergence():
    y = healthy(5)
    y[5:80] = 20.0
    assert diagnose(Curve(T, y)).verdict == "diverging"


def _hard_stretch(n=300, seed=7):
    """A run at a far too low lr: flat batch noise with a stretch of hard batches early (steps 20-80, 3.5x)."""
    y = 1.0 + 0.1 * np.random.default_rng(seed).standard_normal(n)
    y[20:80] = 3.5 + 0.1 * np.random.default_rng(seed + 1).standard_normal(60)
    return y


def test_a_rise_while_the_weights_barely_moved_is_batch_noise_not_divergence():
    """An early "blow-up" while the update ratios summed to under still_weights (the weights moved < 5%) is batch
    noise; the same loss with weights that moved is divergence. A logged ratio stands for the steps since the last."""
    y = _hard_stretch()
    n = len(y)
    for ur, every, diverges in ((1e-5, 1, False), (5e-4, 1, False), (5e-4, 10, True), (5e-3, 1, True)):
        c = Curve(np.arange(n) * every, y, extra={"update_ratio": np.full(n, ur)})
        d = diagnose(c, use_shape=False)
        assert (d.verdict == "diverging") == diverges, (ur, every)
        # the movement by the end: every ratio times the steps it stands for (closed form for a constant ratio)
        assert d.stats["moved"] == pytest.approx(n * ur * every, rel=1e-9)
        assert any("batch noise, not the lr" in x for x in d.notes) != diverges
    assert diagnose(Curve(np.arange(n), y), use_shape=False).verdict == "diverging"  # no ratio logged: as before
    # a flat run that ended above its start (the weights barely moved): a plateau whose evidence says "higher"
    flat = 1.2 + 0.1 * np.random.default_rng(3).standard_normal(n)
    flat[:10] -= 0.15
    d = diagnose(Curve(np.arange(n), flat, extra={"update_ratio": np.full(n, 1e-6)}), use_shape=False)
    assert d.verdict == "plateau" and "% higher)" in d.findings[0].evidence and d.findings[0].data["drop"] < 0
    with pytest.raises(LrkitError, match="still_weights"):
        diagnose(Curve(np.arange(n), y), still_weights=-1.0)


def test_oscillation():
    rng = np.random.default_rng(6)
    # bouncing across the valley: swings (period 7 steps) larger than the progress made
    y = 2.0 - 0.3 * (1 - np.exp(-T / 30)) + 0.6 * np.sin(2 * np.pi * T / 7) + 0.05 * rng.standard_normal(N)
    # the oscillation rule itself (the fitted shape model may overrule it: on real runs, noise large against the
    # progress is more often a crawl than a too-high lr; see benchmarks/doctor)
    d = diagnose(Curve(T, y), use_shape=False)
    assert d.verdict == "oscillating" and d.recommendation.action == "lower"
    assert d.findings[0].data["noise_ratio"] > Thresholds().noise


def test_too_slow_and_plateau():
    rng = np.random.default_rng(7)
    slow = 2.3 - 0.0003 * T + 0.02 * rng.standard_normal(N)  # still falling steadily, 13% done
    d = diagnose(Curve(T, slow))
    assert d.verdict == "too_slow" and d.recommendation.action == "raise" and d.recommendation.factor > 1
    flat = 2.3 + 0.02 * rng.standard_normal(N)
    d = diagnose(Curve(T, flat), use_shape=False)  # the rule alone: a fixed 10x
    assert d.verdict == "plateau" and d.recommendation == doctor.Recommendation("raise", 10.0,
                                                                                 d.recommendation.reason, [])
    # with the shape model: its estimate of lr / best lr sets the factor (clipped to at most 30x)
    d = diagnose(Curve(T, flat))
    assert d.verdict == "plateau" and d.recommendation.action == "raise"
    assert d.recommendation.factor == pytest.approx(min(30.0, max(1.5, 1 / d.stats["lr_over_best"])))
    assert "their best lr" in d.recommendation.reason


def test_to_dict_shape_is_the_documented_one():
    y = healthy(8)
    y[400:406] += 1.5
    d = diagnose(Curve(T, y, name="train/loss"))
    out = json.loads(json.dumps(d.to_dict(), allow_nan=False))
    assert set(out) >= {"recommendation", "findings", "metric"}
    assert set(out["recommendation"]) >= {"action", "factor", "reason"}
    assert out["recommendation"]["action"] in ("raise", "lower", "keep")
    assert isinstance(out["recommendation"]["factor"], float) and isinstance(out["recommendation"]["reason"], str)
    assert out["metric"] == "train/loss"
    for f in out["findings"]:
        assert set(f) >= {"kind", "steps", "evidence"} and all(isinstance(s, int) for s in f["steps"])
    assert out["findings"][0]["kind"] == "spiking" and out["findings"][0]["steps"] == [400]


def test_non_monotone_and_duplicate_steps_are_cleaned():
    y = healthy(9)
    steps = T.copy()
    # a resumed run: steps 500..599 logged twice, the second time with the values that count
    steps2 = np.r_[steps[:600], steps[500:]]
    y2 = np.r_[y[:600] + 5.0 * (np.arange(600) >= 500), y[500:]]
    d = diagnose(Curve(steps2, y2))
    assert d.verdict == "healthy"
    assert any("not strictly increasing" in n for n in d.notes)
    assert len(d.curve) == N and np.array_equal(d.curve.steps, T)


def test_long_curve_is_binned_and_spike_still_found():
    n = 200_000
    t = np.arange(n)
    y = 0.5 + 2 * np.exp(-t / 20_000) + 0.02 * np.random.default_rng(10).standard_normal(n)
    y[120_000:120_400] += 1.0
    d = diagnose(Curve(t, y))
    assert len(d.curve) <= doctor.checks.MAX_POINTS + 1
    sp = next(f for f in d.findings if f.kind == "spiking")
    assert sp.steps[0] == pytest.approx(120_000, abs=2 * (n // doctor.checks.MAX_POINTS))


def test_bad_input():
    with pytest.raises(LrkitError, match="at least 8"):
        diagnose(Curve(np.arange(5), np.ones(5)))
    with pytest.raises(LrkitError, match="unknown threshold"):
        diagnose(Curve(T, healthy()), spike_zz=3)
    with pytest.raises(LrkitError, match="Curve or a log path"):
        doctor.checks.diagnose([1, 2, 3])


def test_monitor_sees_the_same_spikes_as_the_offline_doctor():
    y = healthy(11)
    for s in (220, 610):
        y[s:s + 5] += 1.5
    offline = next(f for f in diagnose(Curve(T, y)).findings if f.kind == "spiking").steps
    m = Monitor()
    online = [e.step for i in range(N) for e in m.update(i, y[i]) if e.kind == "spike"]
    assert online == offline == pytest.approx([220, 610], abs=2)
    assert m.diagnosis().to_dict() == diagnose(Curve(T, y)).to_dict()


def test_update_ratio_and_grad_norm_evidence():
    y = healthy(12)
    # the rules alone judge the update/weight ratio by fixed bounds (0.5 and 1e-4)
    d = diagnose(Curve(T, y, extra={"update_ratio": np.full(N, 0.8)}), use_shape=False)
    f = next(f for f in d.findings if "update-to-weight" in f.evidence)
    assert f.kind == "oscillating" and d.recommendation.action == "lower"
    assert diagnose(Curve(T, y, extra={"update_ratio": np.full(N, 0.05)}), use_shape=False).verdict == "healthy"
    d = diagnose(Curve(T, healthy(13), extra={"update_ratio": np.full(N, 1e-6)}), use_shape=False)
    assert d.verdict == "too_slow" and d.recommendation.action == "raise"
    y = healthy(14)
    y[500:506] += 1.5
    g = np.exp(np.random.default_rng(0).normal(0, 0.05, N))
    g[500:506] *= 30
    sp = next(f for f in diagnose(Curve(T, y, extra={"grad_norm": g})).findings if f.kind == "spiking")
    assert "gradient norm spiked with 1 of them" in sp.evidence


def test_steep_start_is_no_spike_but_a_jump_is():
    # a loss that falls steadily for 10 steps and then flattens: the trend forecast learnt on the first steps keeps
    # going down for a while and every later value sits above it, which is no spike
    t = np.arange(400)
    rng = np.random.default_rng(21)
    y = 1.4 - 0.04 * np.minimum(t, 10) + np.where(t < 10, 0.01, 0.08) * rng.standard_normal(400)
    assert diagnose(Curve(t, y), use_shape=False).verdict != "spiking"
    y[200:204] += 1.0  # a real jump, 12 noise scales, 4 steps long
    sp = next(f for f in diagnose(Curve(t, y)).findings if f.kind == "spiking")
    assert abs(sp.steps[0] - 200) <= 2


def test_stalled_noisy_run_is_lowered_and_a_noisy_crawl_raised():
    t = np.arange(300)
    rng = np.random.default_rng(22)
    # fell from 1.4 to a floor within 3 steps, then nothing but batch noise: lr too high, not "too slow"
    instant = np.r_[1.4, 1.0, 0.8, np.full(297, 0.75)] + np.r_[0, 0, 0, 0.15 * rng.standard_normal(297)]
    d = diagnose(Curve(t, instant), use_shape=False)
    assert d.recommendation.action == "lower" and "instant" in d.findings[0].data
    # the fall spread a little past the first points (too little left after them for "instant"): the stall shows it
    stalled = 0.9 + 0.65 * np.exp(-t / 2.5) + 0.15 * rng.standard_normal(300)
    d = diagnose(Curve(t, stalled), use_shape=False)
    assert d.recommendation.action == "lower" and d.findings[0].data.get("stalled"), d
    # a crawl as noisy, but going steadily down all the way: raise
    crawl = 1.4 - 0.0008 * t + 0.15 * rng.standard_normal(300)
    d = diagnose(Curve(t, crawl), use_shape=False)
    assert d.verdict == "too_slow" and d.recommendation.action == "raise"
