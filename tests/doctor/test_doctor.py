"""The doctor's checks on synthetic curves with known, injected problems (exact steps), and the API shape."""

import json
import sys

import numpy as np
import pytest

import lrkit.doctor as doctor
from lrkit.curve import Curve
from lrkit.doctor import Monitor, diagnose
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
    # a jump of 1.5 on a descent of about 2.0 undid three quarters of the progress: said, with what to do if it
    # recurs, but the run came back, so it is no evidence that the lr is too high
    assert d.recommendation.action == "keep" and sp.data["severe"] and 0.6 < sp.data["lost"] < 0.9
    assert f"undoing {sp.data['lost']:.0%}" in sp.evidence
    assert any("lower the lr about 0.7x" in a for a in d.recommendation.advice)


def test_small_recovered_spikes_keep_the_lr_with_advice():
    y = healthy(1)
    y[300:306] += 0.45  # 9x the batch noise: a spike, but it undid 22% of the progress (2.0) and under 10 noise scales
    d = diagnose(Curve(T, y), use_shape=False)
    sp = next(f for f in d.findings if f.kind == "spiking")
    assert sp.steps == pytest.approx([300], abs=2)
    assert d.recommendation.action == "keep" and any("clip gradients" in a for a in d.recommendation.advice)


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


def test_nan_during_warmup_sets_the_peak_below_the_lr_it_blew_up_at():
    y = healthy(3)
    y[150:] = np.nan
    lrs = 1e-2 * np.minimum(1.0, (T + 1) / 300)  # warmup to 1e-2 over 300 steps; NaN at step 150 (lr ~5e-3)
    d = diagnose(Curve(T, y, lrs))
    assert d.verdict == "diverging" and d.recommendation.action == "lower"
    assert d.recommendation.factor == pytest.approx(0.5 * lrs[150] / 1e-2)  # half the lr it blew up at
    assert "the peak lr 0.01 -> about 0.00252" in d.recommendation.reason


def test_nan_from_the_first_step_or_at_a_tiny_lr_is_numerics_not_the_lr():
    y = healthy(3)
    y[:] = np.nan
    d = diagnose(Curve(T, y))
    assert d.verdict == "numerics" and d.recommendation.action == "keep"
    assert d.recommendation.certainty == "cannot tell" and "before any update" in d.findings[0].evidence
    y = healthy(3)
    y[5:] = np.nan
    lrs = 1e-3 * np.minimum(1.0, (T + 1) / 1000)  # NaN at step 5 while the lr is 6e-6, 0.6% of its peak
    d = diagnose(Curve(T, y, lrs))
    assert d.verdict == "numerics" and "0.6% of its peak" in d.findings[0].evidence


def test_isolated_nan_rows_the_run_recovered_from_are_no_divergence():
    y = healthy(3)
    y[[300, 301, 650]] = [np.nan, np.inf, np.nan]
    d = diagnose(Curve(T, y))
    assert d.verdict == "spiking" and d.recommendation.action == "keep"
    assert "3 non-finite loss value(s) (at step 300, 301, 650)" in d.findings[0].evidence


def test_upward_trend_is_divergence():
    y = healthy(4)
    y[600:] += np.linspace(0, 4, N - 600)
    d = diagnose(Curve(T, y))
    assert d.verdict == "diverging" and d.recommendation.action == "lower"
    f = d.findings[0]
    assert 600 <= f.steps[0] <= 690  # where it left its best level, up to the smoothing window
    assert "above where it started" in f.evidence


def test_early_blowup_that_does_not_recover_is_divergence_and_one_that_does_is_a_spike():
    y = healthy(5)
    y[5:] = 20.0 + 0.1 * np.random.default_rng(0).standard_normal(N - 5)
    assert diagnose(Curve(T, y)).verdict in ("diverging", "stuck")
    y = healthy(5)
    y[5:80] = 20.0
    d = diagnose(Curve(T, y))
    assert d.verdict != "diverging" and d.recommendation.action != "raise"


def test_untrained_first_loss_of_a_long_run_is_no_reference_for_divergence():
    # a GPT-2 style run: 11 at step 0, down to 3.3 over 19,560 steps with warmup; nothing is wrong
    t = np.arange(19_560)
    y = 3.3 + 7.7 * np.exp(-t / 150) + 0.3 * np.exp(-t / 3000) + 0.05 * np.random.default_rng(1).standard_normal(t.size)
    lrs = 6e-4 * np.minimum(1.0, (t + 1) / 700) * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * t / t[-1])))
    d = diagnose(Curve(t, y, lrs))
    assert d.verdict == "healthy" and d.recommendation.action == "keep"


def test_a_noise_floor_is_no_evidence_for_the_rules():
    rng = np.random.default_rng(6)
    # bouncing across the valley: swings (period 7 steps) larger than the progress made; the rules see no divergence,
    # no collapse and no spike, and a noise floor alone cannot tell the lr is too high (it may be the data's noise)
    y = 2.0 - 0.3 * (1 - np.exp(-T / 30)) + 0.6 * np.sin(2 * np.pi * T / 7) + 0.05 * rng.standard_normal(N)
    d = diagnose(Curve(T, y), use_shape=False)
    assert d.recommendation.action == "keep" and d.recommendation.certainty == "cannot tell"
    assert "lrkit search" in d.recommendation.check


def test_too_slow_at_a_constant_lr_and_a_plateau():
    rng = np.random.default_rng(7)
    slow = 2.3 - 0.0003 * T + 0.02 * rng.standard_normal(N)  # still falling steadily, 13% done
    d = diagnose(Curve(T, slow, np.full(N, 1e-4)), use_shape=False)
    assert d.verdict == "too_slow" and d.recommendation.action == "raise"
    assert d.recommendation.factor == 2.0 and d.recommendation.certainty == "likely"  # a likelihood: at most 3x
    # the same curve with no lr logged: a steady descent may be a schedule's doing, the rules do not raise
    assert diagnose(Curve(T, slow), use_shape=False).recommendation.action == "keep"
    # under a decaying lr the slowing descent is the schedule
    decay = 1e-4 * 0.5 * (1 + np.cos(np.pi * T / N))
    assert diagnose(Curve(T, slow, decay), use_shape=False).recommendation.action == "keep"
    flat = 2.0 + 0.02 * rng.standard_normal(N)  # (2.3 would be ln 10: chance level for 10 classes)
    d = diagnose(Curve(T, flat), use_shape=False)
    assert d.verdict == "plateau" and d.recommendation.action == "keep"
    assert d.recommendation.certainty == "cannot tell" and "far too low" in d.recommendation.reason


def test_flat_at_chance_level_is_a_collapse():
    rng = np.random.default_rng(8)
    for k in (4, 10):
        y = np.log(k) + 0.002 * rng.standard_normal(N)
        d = diagnose(Curve(T, y), use_shape=False)
        assert d.verdict == "stuck" and d.findings[0].data["classes"] == k
        assert d.recommendation.action == "lower" and d.recommendation.factor == 0.1
    assert diagnose(Curve(T, 2.5 + 0.002 * rng.standard_normal(N)), use_shape=False).verdict == "plateau"


def test_sitting_above_the_start_is_a_too_high_lr():
    rng = np.random.default_rng(9)
    y = 6.9 + 0.3 * (1 - np.exp(-T / 20)) - 0.4 * np.clip((T - 850) / 150, 0, 1) + 0.02 * rng.standard_normal(N)
    d = diagnose(Curve(T, y))
    assert d.verdict == "stuck" and d.recommendation.action == "lower" and "above its starting level" in \
        d.findings[0].evidence


def test_eval_loss_is_read_for_overfitting_and_divergence():
    rng = np.random.default_rng(10)
    y = healthy(10)
    es = np.arange(0, N, 50)
    overfit = 0.9 + 1.6 * np.exp(-es / 80) + 0.0008 * np.maximum(es - 300, 0) + 0.005 * rng.standard_normal(es.size)
    d = diagnose(Curve(T, y, extra={"eval:val_loss": np.stack([es, overfit])}))
    f = next(x for x in d.findings if x.kind == "overfitting")
    assert d.recommendation.action == "keep" and "not the lr" in f.evidence
    assert 250 <= f.data["eval_best_step"] <= 400
    blown = overfit.copy()
    blown[10:] = 3.5 * overfit[0]
    d = diagnose(Curve(T, y, extra={"eval:val_loss": np.stack([es, blown])}))
    assert d.verdict == "diverging" and d.recommendation.action == "lower" and "eval loss" in d.findings[0].evidence


def test_reward_and_surrogate_metrics_are_not_judged():
    rng = np.random.default_rng(11)
    reward = np.cumsum(rng.standard_normal(N))
    d = diagnose(Curve(T, reward, name="ep_rew_mean"))
    assert d.verdict == "not_a_loss" and d.recommendation.action == "keep"
    surrogate = 0.05 * rng.standard_normal(N)
    d = diagnose(Curve(T, surrogate, name="loss", meta={"columns": ["loss", "rollout/ep_rew_mean", "train/approx_kl"]}))
    assert d.verdict == "not_a_loss" and "reinforcement learning" in d.findings[0].evidence


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


def test_a_fast_fall_to_a_noise_floor_is_no_evidence_and_a_noisy_crawl_at_a_constant_lr_is_raised():
    t = np.arange(300)
    rng = np.random.default_rng(22)
    # fell from 1.4 to a floor within 3 steps, then batch noise: the lr may be too high, or the task easy; the rules
    # alone cannot tell (the shape model may, for runs like those it was fitted on)
    instant = np.r_[1.4, 1.0, 0.8, np.full(297, 0.75)] + np.r_[0, 0, 0, 0.15 * rng.standard_normal(297)]
    d = diagnose(Curve(t, instant), use_shape=False)
    assert d.recommendation.action == "keep" and d.recommendation.certainty == "cannot tell"
    # a noisy crawl going steadily down all the way at a constant lr: raise (a likelihood: at most 3x)
    crawl = 1.4 - 0.0008 * t + 0.05 * rng.standard_normal(300)
    d = diagnose(Curve(t, crawl, np.full(300, 1e-3)), use_shape=False)
    assert d.verdict == "too_slow" and d.recommendation.action == "raise" and d.recommendation.factor <= 3


# ---- the shape model's "too low" under a decaying lr -------------------------------------------------------------
def test_descent_at_peak_is_the_share_of_the_descent_made_at_half_the_peak_or_more():
    from lrkit.doctor.checks import _descent_at_peak

    lrs = np.r_[np.full(60, 1.0), np.full(40, 0.1)]
    # piecewise constant: start 3, level 2 at the end of the peak phase, 1.5 at the end -> (3 - 2) / (3 - 1.5)
    ys = np.r_[np.full(5, 3.0), np.full(55, 2.0), np.full(40, 1.5)]
    assert _descent_at_peak(ys, lrs, 1.0) == pytest.approx(2 / 3)
    ys = np.r_[np.full(60, 3.0), np.full(40, 1.0)]  # all of it after the decay
    assert _descent_at_peak(ys, lrs, 1.0) == 0.0
    assert np.isnan(_descent_at_peak(ys, None, 1.0))
    assert np.isnan(_descent_at_peak(np.full(100, 2.0), lrs, 1.0))  # no descent: no share


@pytest.mark.parametrize("descends_at_peak", [True, False])
def test_a_too_low_shape_vote_is_not_taken_when_the_descent_came_only_as_the_lr_decayed(monkeypatch,
                                                                                          descends_at_peak):
    import lrkit.doctor.direction as direction

    # the model's vote is fixed to "too low" so that the test reads the gate alone
    monkeypatch.setattr(direction, "predict", lambda f, prof=None: ({"too_high": 0.02, "good": 0.03,
                                                                     "too_low": 0.95}, "loss_only"))
    n = 600
    steps = np.arange(n)
    lrs = np.where(steps < 30, (steps + 1) / 30, 0.5 * (1 + np.cos(np.pi * (steps - 30) / (n - 30))))
    rng = np.random.default_rng(0)
    if descends_at_peak:  # a steady fall while the lr is high, slower later: what a too-low peak looks like
        ys = 3.0 - 1.5 * (1 - np.exp(-steps / 250))
    else:  # stuck near its start while the lr is high, falling only as it decays (a far too high peak)
        ys = np.where((lrs >= 0.5) | (steps < 30), 3.0, 3.0 - 1.5 * (0.5 - lrs) / 0.5)
    ys = ys + 0.01 * rng.standard_normal(n)
    d = diagnose(Curve(steps, ys, lrs=lrs * 1e-3))
    if descends_at_peak:
        assert d.recommendation.action == "raise"
    else:
        assert d.recommendation.action != "raise"
        assert any("'too low' is not taken" in note for note in d.notes)


def test_nan_at_every_row_of_a_log_written_every_n_steps_is_a_likely_blow_up_not_numerics():
    """NaN from the first logged row is numerics only when that row is the first step (before any update); a log
    written every 200 steps that is NaN from its first row may have blown up within those steps."""
    steps = np.arange(200, 6200, 200)
    d = diagnose(Curve(steps, np.full(steps.size, np.nan), lrs=np.full(steps.size, 20.0)))
    assert d.verdict == "diverging" and d.recommendation.action == "lower"
    assert d.recommendation.certainty == "likely" and d.recommendation.factor == 0.3
    assert "step 200" in d.findings[0].evidence and "unless the data or the loss code" in d.findings[0].evidence


def test_a_sweep_tie_keeps_a_runs_own_advice_when_it_points_toward_the_best_lr():
    """Within the noise of the comparison (an erratic eval loss is a noisy score), a run whose own finding says
    lower, toward the sweep's best (lower) lr, keeps that advice instead of a 'keep'."""
    from lrkit import diagnose_runs

    steps, es = np.arange(1, 101), np.arange(10, 101, 10)
    rng = np.random.default_rng(0)
    train = 2.3 * np.exp(-steps / 30) + 0.1 + 0.01 * rng.standard_normal(steps.size)
    smooth = 2.0 * np.exp(-es / 30) + 0.15
    erratic = np.array([1.9, 1.2, 0.9, 0.8, 0.75, 1.6, 0.7, 1.9, 0.8, 4.4])  # 3 late rises of >= 25%
    best = Curve(steps, train, lrs=np.full(steps.size, 1e-3), extra={"eval:val_loss": np.stack([es, smooth])})
    high = Curve(steps, train, lrs=np.full(steps.size, 1e-2), extra={"eval:val_loss": np.stack([es, erratic])})
    s = diagnose_runs([best, high])
    assert s.ranking == [0, 1]
    rec = s.runs[1].recommendation
    assert rec.action == "lower" and rec.factor == 0.5 and "jumps between evaluations" in rec.reason
    assert any("within the noise of the comparison" in n for n in s.runs[1].notes)
