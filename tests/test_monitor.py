"""The online Monitor (events, exact resume, bounded memory) and the PyTorch helper acting on real training."""

import json
import math
import re
import warnings

import numpy as np
import pytest

from lrkit.curve import Curve
from lrkit.doctor import Monitor, diagnose
from lrkit.doctor.checks import MAX_POINTS
from lrkit.doctor.monitor import SnapshotKeeper, start_level
from lrkit.errors import LrkitError

N = 1500
T = np.arange(N)


def curve(seed=0):
    return 0.5 + 2.0 * np.exp(-T / 60) + 0.05 * np.random.default_rng(seed).standard_normal(N)


def test_event_api_and_kinds():
    y = curve()
    y[400:406] += 1.5
    y[900] = np.nan
    m = Monitor()
    events = [e for i in range(N) for e in m.update(i, y[i], lr=1e-3, grad_norm=1.0)]
    kinds = [(e.kind, e.step, e.action) for e in events]
    assert ("spike", 400, "skip_batches") in kinds and ("nan", 900, "rollback") in kinds
    assert all(e.action in ("warn", "rollback", "lower_lr", "raise_lr", "skip_batches") for e in events)
    nan = next(e for e in events if e.kind == "nan")
    assert nan.factor == 0.1 and "nan" in nan.message  # a NaN cuts hard (hard_cut)
    assert m.events == events


def test_divergence_and_rearm():
    y = curve(1)
    y[700:] += np.linspace(0, 5, N - 700)
    m = Monitor()
    ev = [e for i in range(N) for e in m.update(i, y[i]) if e.kind == "divergence"]
    # 20% of the progress (0.4) is lost at step 764; the smoothed loss (beta 0.98) lags up to ~50 steps
    assert len(ev) == 1 and 764 <= ev[0].step < 830 and ev[0].action == "rollback" and ev[0].factor < 1
    m.acted(N, restored=700)  # a helper restored a state it held (no level known: the start's)
    ev2 = [e for i in range(N, N + 300) for e in m.update(i, y[-1] + 5.0 + i) if e.kind == "divergence"]
    assert ev2  # re-armed after the rollback


def test_crawl_and_plateau():
    rng = np.random.default_rng(2)
    slow = 2.3 - 0.0002 * T + 0.02 * rng.standard_normal(N)
    m = Monitor(check_after=100)
    ev = [e for i in range(N) for e in m.update(i, slow[i])]
    first = ev[0]
    # a crawl seen live is no direct evidence for more than 3x (the offline doctor's rule too)
    assert first.kind == "too_slow" and first.step == 99 and first.action == "raise_lr" and first.factor == 3.0
    assert "raise the lr about 3x (at most 3x from a crawl" in first.message
    # a long crawl: an event every cooldown, the same ones after a resume
    long = 2.3 - 2e-5 * np.arange(3000) + 0.02 * rng.standard_normal(3000)
    a = Monitor()
    full = [e for i in range(3000) for e in a.update(i, long[i], lr=1e-3)]
    assert len(full) == 30 and all(e.kind == "too_slow" for e in full)  # one per cooldown (100 steps)
    b = Monitor()
    head = [e for i in range(1000) for e in b.update(i, long[i], lr=1e-3)]
    c = Monitor()
    c.load_state_dict(json.loads(json.dumps(b.state_dict())))
    assert head + [e for i in range(1000, 3000) for e in c.update(i, long[i], lr=1e-3)] == full
    plateau = np.r_[2.0 * np.exp(-T[:300] / 30) + 0.5, np.full(N - 300, 0.5)] + 0.01 * rng.standard_normal(N)
    m = Monitor(patience=300)
    ev = [e for i in range(N) for e in m.update(i, plateau[i]) if e.kind == "plateau"]
    assert ev and ev[0].action == "lower_lr" and ev[0].factor == 0.5 and 500 < ev[0].step < 1000


def test_a_long_plateau_lowers_the_lr_once_per_patience_not_once_per_cooldown():
    """After a plateau event the clock starts again, as torch's ReduceLROnPlateau's does after a cut: on a converged
    run the lr is halved at most once per `patience` steps (it was halved every cooldown, 100 steps, to ~1e-10)."""
    rng = np.random.default_rng(5)
    n = 6000
    flat = np.r_[2.0 * np.exp(-np.arange(300) / 30) + 0.5, np.full(n - 300, 0.5)] + 0.01 * rng.standard_normal(n)
    m = Monitor(patience=500)
    steps = [e.step for i in range(n) for e in m.update(i, flat[i]) if e.kind == "plateau"]
    assert len(steps) >= 2
    assert all(b - a >= 500 for a, b in zip(steps, steps[1:]))
    assert len(steps) <= (n - 300) // 500


def test_no_divergence_event_on_batch_noise():
    """A flat run of pure batch noise (sd 0.2 around 1.0): its smoothed loss dips a little below the start and comes
    back, which is no climb back; progress counts only when it stood 3 noise sds out (the noise from first differences:
    before this rule, 5 of these 6 runs raised a divergence at steps 19-22)."""
    for seed in range(6):
        y = 1.0 + 0.2 * np.random.default_rng(seed).standard_normal(600)
        m = Monitor()
        assert not [e for i in range(600) for e in m.update(i, y[i]) if e.kind == "divergence"], seed


def test_no_divergence_event_while_the_weights_barely_moved():
    """Live, as offline: a rise of the loss while the summed update ratio is under still_weights is batch noise."""
    rng = np.random.default_rng(7)
    y = 1.0 + 0.1 * rng.standard_normal(300)
    y[20:80] = 3.5

    def divergences(**kw):
        m = Monitor()
        return [e.step for i in range(300) for e in m.update(i, y[i], **{k: v for k, v in kw.items()})
                if e.kind == "divergence"]

    # within the stretch (the bias-corrected smoothed loss passes 1.5x its start a few steps in), with or without a
    # ratio that moved the weights (0.005 a step: 12% by step 24); none while they moved 0.03% in all
    fired = divergences()
    assert 20 < fired[0] < 40 and divergences(update_ratio=5e-3) == fired
    assert divergences(update_ratio=1e-5) == []


def test_early_blow_up_is_judged_against_the_start_level_not_one_lucky_or_bad_batch():
    """The initial level is the median of the first 5 losses (a lucky low first batch, half the level, used to make
    a flat run read as a 1.9x blow-up), and a blow-up must lift the median of the last 5 losses too (one bad batch
    lifts the smoothed loss, not the median); a sustained rise fires as soon as 3 of the last 5 losses are up."""
    rng = np.random.default_rng(11)
    flat = 1.0 + 0.03 * rng.standard_normal(300)

    def divergences(y):
        m = Monitor()
        return [e.step for i in range(len(y)) for e in m.update(i, y[i]) if e.kind == "divergence"]

    lucky = flat.copy()
    lucky[0] = 0.5  # min(first, median of 3) = 0.5: the smoothed loss (~0.9) passed 1.5x it at step 4
    assert divergences(lucky) == []
    bad = flat.copy()
    bad[6] = 10.0  # one bad batch: the smoothed loss is ~2.3x the start at step 6, the median of 5 about 1x
    assert divergences(bad) == []
    up = flat.copy()
    up[6:] = 3.0  # the loss triples from step 6 on: at step 8, 3 of the last 5 losses are up
    assert divergences(up)[0] == 8


def test_no_good_state_while_a_divergence_shows_or_on_probation():
    """While a divergence check holds the Monitor is not healthy, and after a rollback it stays so for the probation,
    so a guard takes no snapshot of a run that may blow up again; a restored run that blows up again is cut again
    as soon as 5 fresh losses show it (no cooldown: before, a restored run 3x its start went on for 100 steps)."""
    m = Monitor()
    first = []
    for i in range(10):
        first += [e.step for e in m.update(i, 1.0 if i < 6 else 3.0) if e.kind == "divergence"]
        if i == 4:
            m.took_snapshot(4)  # a helper kept the state of step 4 (its smoothed loss 1.0)
    assert first == [8] and not m.healthy
    m.acted(8, restored=4, lr=0.3)
    assert not m.healthy  # on probation
    again = [(e.step, e.factor) for i in range(9, 30) for e in m.update(i, 3.0) if e.kind == "divergence"]
    assert again == [(13, 0.3)]  # 5 fresh losses at 3x the start; (1 + 2)^-1/2 = 0.58 is milder than cut (0.3)
    assert not m.healthy
    m.acted(13, restored=4, lr=0.09)
    healthy = []
    for i in range(14, 120):  # the run now descends: probation (50 steps) passes, then it is a good state again
        assert not m.update(i, 1.0 - 0.002 * (i - 14))
        healthy.append((i, m.healthy))
    assert [i for i, ok in healthy if ok] == list(range(13 + 50, 120))  # judged at step 63, 50 steps after the cut


def test_state_dict_resume_is_exact():
    y = curve(3)
    y[500:505] += 1.5
    y[1100:1106] += 1.5
    def feed(m, steps):
        return [e for i in steps for e in m.update(i, y[i], lr=1e-3, grad_norm=1.0 + (i % 7),
                                                   update_ratio=1e-3 * (1 + i % 5), grad_alignment=0.1 * np.sin(i))]

    a = Monitor(patience=200)
    full = feed(a, range(N))
    b = Monitor(patience=200)
    first = feed(b, range(800))
    state = json.loads(json.dumps(b.state_dict()))  # JSON-safe
    c = Monitor()
    c.load_state_dict(state)
    rest = feed(c, range(800, N))
    assert first + rest == full
    assert json.dumps(c.state_dict()) == json.dumps(a.state_dict())
    assert np.isfinite(a.curve().extra["update_ratio"]).all() and a.diagnosis().to_dict() == c.diagnosis().to_dict()
    assert np.isfinite(a.curve().extra["grad_alignment"]).all()
    # a state saved before the update ratio and the alignment were recorded (4 history channels) still loads
    old = json.loads(json.dumps(b.state_dict()))
    old["hist"], old["pending"] = old["hist"][:4], [p[:4] for p in old["pending"]]
    for k in ("moved", "noise", "recent", "alarming"):
        del old[k]
    d = Monitor()
    d.load_state_dict(old)
    assert "grad_alignment" not in d.curve().extra and "update_ratio" not in d.curve().extra
    d.update(800, y[800], lr=1e-3, grad_alignment=0.5)
    assert d.curve().extra["grad_alignment"][-1] == 0.5 and len(d.curve()) == len(b.curve()) + 1


def test_diagnosis_matches_offline_and_memory_is_bounded():
    y = curve(4)
    m = Monitor()
    for i in range(N):
        m.update(i, y[i], lr=1e-3)
    assert m.diagnosis().to_dict() == diagnose(Curve(T, y, np.full(N, 1e-3))).to_dict()
    big = Monitor()
    for i in range(5 * MAX_POINTS):
        big.update(i, 1.0 + 1.0 / (1 + i))
    c = big.curve()
    assert len(c) <= 2 * MAX_POINTS and c.steps[0] == 0 and np.all(np.diff(c.steps) > 0)
    assert np.isclose(c.values[0], np.mean([1.0 + 1.0 / (1 + i) for i in range(4)]))  # pairs averaged twice


def test_monitor_bad_arguments():
    with pytest.raises(LrkitError, match="unknown Monitor threshold"):
        Monitor(spike_zz=1)
    with pytest.raises(LrkitError, match="spike_action"):
        Monitor(spike_action="explode")
    with pytest.raises(LrkitError, match="at least 8"):
        Monitor().diagnosis()


# ------------------------------------------------------------------------------------------- PyTorch helper
torch = pytest.importorskip("torch")


def _setup(seed=0):
    from sklearn.datasets import load_digits

    torch.manual_seed(seed)
    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return x, y, model, opt


def test_guard_restores_last_good_state_and_lowers_lr_on_nan():
    from lrkit.integrations.torch_monitor import LrMonitor

    x, y, model, opt = _setup()
    guard = LrMonitor(model, opt, act=True, snapshot_every=10)
    snap_weights = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(60):
            idx = torch.arange(step * 16, step * 16 + 32) % len(x)
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            if step == 45:
                loss = loss * float("nan")  # a poisoned batch: NaN gradients reach every weight
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step == 39:
                snap_weights = {k: v.clone() for k, v in model.state_dict().items()}
            events = guard.update(step, loss.item())
            if step == 45:
                assert [e.kind for e in events] == ["nan"]
                # snapshots at least 10 steps apart from the one before the first update (-1): 9, 19, 29, 39, each
                # good once 5 healthy updates followed it
                assert guard.snapshots.step == 39
                for k, v in model.state_dict().items():  # bit for bit the snapshot of step 39
                    assert torch.equal(v, snap_weights[k])
                assert opt.param_groups[0]["lr"] == pytest.approx(0.01)  # a NaN cuts the lr 10x
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any("restored the snapshot of step 39, lr x0.1 -> 0.01" in str(w.message) for w in caught)


def test_guard_warns_only_by_default_and_skips_after_spike_on_request():
    from lrkit.integrations.torch_monitor import LrMonitor

    x, y, model, opt = _setup(1)
    guard = LrMonitor(model, opt)  # warn only
    with pytest.warns(RuntimeWarning, match="nan"):
        guard.update(0, float("nan"))
    assert opt.param_groups[0]["lr"] == 0.1 and not guard.should_skip()

    x, y, model, opt = _setup(2)
    guard = LrMonitor(model, opt, act={"skip_batches"}, snapshot_every=5, skip_batches=7)
    losses = 1.0 + 0.01 * np.random.default_rng(0).standard_normal(200)
    losses[100:110] += 3.0  # the batches went bad
    skipped = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for step, v in enumerate(losses):
            if guard.should_skip():
                skipped.append(step)
                continue
            guard.update(step, float(v))
    spikes = [e for e in guard.events if e.kind == "spike"]
    assert [e.step for e in spikes] == [100]
    assert {e.kind for e in guard.events} == {"spike", "too_slow"}  # a flat loss also crawls: warned, not acted on
    assert skipped == list(range(103, 110))  # the rule needs 3 outliers in a row: it fires at step 102
    assert opt.param_groups[0]["lr"] == 0.1  # a skip does not change the lr


def test_update_ratio_measures_the_gradient_alignment():
    from lrkit.integrations.torch_monitor import UpdateRatio

    x, y, model, _ = _setup(5)
    params = list(model.parameters())
    for make in (lambda: torch.optim.SGD(params, lr=0.1), lambda: torch.optim.Adam(params, lr=1e-2)):
        opt = make()
        probe = UpdateRatio(params, alignment=True)
        prev_w, prev_dw = None, None
        for step in range(12):
            idx = torch.arange(step * 32, step * 32 + 32) % len(x)
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            (1024.0 * loss).backward()  # a loss scale (as GradScaler's) leaves the cosine alone
            g = np.concatenate([p.grad.double().numpy().ravel() for p in params])
            probe.before()
            w0 = np.concatenate([p.detach().double().numpy().ravel() for p in params])
            opt.step()
            probe.after()
            w1 = np.concatenate([p.detach().double().numpy().ravel() for p in params])
            if prev_dw is None:
                assert probe.alignment is None  # no previous update yet
            else:  # cos(-g_t, w_t - w_t-1), in numpy from the weights before and after each step
                want = -g @ prev_dw / (np.linalg.norm(g) * np.linalg.norm(prev_dw))
                assert probe.alignment == pytest.approx(want, rel=1e-4, abs=1e-6)
            prev_dw, prev_w = w1 - w0, w1
        assert prev_w is not None
        probe.forget()  # after a rollback the previous update no longer applies
        probe.before()
        probe.after()
        assert probe.alignment is None
        opt.zero_grad(set_to_none=True)  # no gradient left in .grad: no alignment either
        probe.before()
        probe.after()
        assert probe.alignment is None
        # a step a GradScaler skipped (an inf gradient, the weights left alone): no alignment, a ratio of 0, and the
        # step after it has no previous update to compare with
        for p in params:
            p.grad = torch.zeros_like(p)
        params[0].grad[0, 0] = float("inf")
        probe.before()
        assert probe.after() == 0.0 and probe.alignment is None
        for p in params:
            p.grad = torch.ones_like(p)
        probe.before()
        probe.after()
        assert probe.alignment is None
    assert not UpdateRatio(params).track_alignment  # off by default (it keeps a second copy of the weights)


@pytest.mark.parametrize("act", [True, False])
def test_guard_forgets_the_previous_update_only_when_it_restores(act):
    from lrkit.integrations.torch_monitor import LrMonitor

    x, y, model, _ = _setup(6)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = LrMonitor(model, opt, act=act, snapshot_every=1, update_ratio=True)
    for step in range(8):
        idx = torch.arange(step * 32, step * 32 + 32) % len(x)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            guard.update(step, float("nan") if step == 5 else loss.item())
    al = guard.monitor.curve().extra["grad_alignment"]
    assert np.isfinite(al[1:6]).all()
    # a restore at step 5 (act=True): the update before it no longer led to the weights, so step 6 has no alignment
    assert np.isnan(al[6]) == act and np.isfinite(al[7])


def test_guard_measures_each_steps_update_to_weight_ratio():
    from lrkit.integrations.torch_monitor import LrMonitor

    x, y, model, _ = _setup(3)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)  # plain SGD: the update is -lr * gradient
    guard = LrMonitor(model, opt, update_ratio=True)
    want, grads = [], []
    for step in range(30):
        idx = torch.arange(step * 32, step * 32 + 32) % len(x)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        grads.append(np.concatenate([p.grad.double().numpy().ravel() for p in model.parameters()]))
        with torch.no_grad():
            g = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters()))
            w = torch.sqrt(sum((p.double() ** 2).sum() for p in model.parameters()))
        want.append(float(0.2 * g / w))
        opt.step()
        guard.update(step, loss.item())
    got = guard.monitor.curve().extra["update_ratio"]
    np.testing.assert_allclose(got, want, rtol=1e-4)
    # plain SGD: the alignment is the cosine of consecutive gradients (none at the first step)
    al = guard.monitor.curve().extra["grad_alignment"]
    cos = [float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) for a, b in zip(grads[1:], grads[:-1])]
    assert np.isnan(al[0])
    np.testing.assert_allclose(al[1:], cos, rtol=1e-4, atol=1e-6)
    assert "update_ratio" not in LrMonitor(model, opt).monitor.curve().extra  # off by default


# ------------------------------------------------------------------------------------------ the guard's policy
class _Weights(SnapshotKeeper):
    """A guard's snapshots of a numpy weight vector (the executor's side, as a framework helper does it)."""

    def __init__(self, w, every=50):
        super().__init__(every)
        self.w = w

    def copy(self):
        return self.w.copy() if np.isfinite(self.w).all() else None

    def put_back(self, state):
        self.w[:] = state


H = np.array([1.0, 4.0, 10.0])  # the curvatures of 0.5 * sum(H w^2): gradient descent is stable iff lr < 2 / 10


def _descend(lr, steps=400, act=True, seed=0, **kw):
    """Gradient descent on the quadratic at ``lr``, each loss measured with 1% noise before its step, guarded by a
    Monitor whose events a minimal executor carries out (restore, scale the lr, tell the Monitor): the lrs each
    event fired at, the final lr and loss, and the events."""
    rng = np.random.default_rng(seed)
    w = np.ones(3)
    m = Monitor(**kw)
    snaps = _Weights(w)
    if act:
        snaps.take(-1, m)
    fired_at, loss = [], float("nan")
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(steps):
            loss = float(0.5 * np.sum(H * w**2) * (1 + 0.01 * rng.standard_normal()))
            w -= lr * H * w
            events = m.update(t, loss, lr=lr)
            for ev in events:
                fired_at.append((ev.kind, lr))
                if act and ev.action == "rollback":
                    restored = snaps.restore()
                    lr *= ev.factor
                    m.acted(t, restored=restored, lr=lr)
            if act and not events:
                snaps.keep(t, m)
    return fired_at, lr, loss, m.events


def test_guard_cuts_a_far_too_high_lr_until_the_descent_is_stable():
    """Started at 50x a good lr (0.1 here; stable iff lr < 0.2, in closed form), the guard rolls back and cuts until the
    run is stable, then leaves it alone: every cut was of an unstable lr, so it ends within one cut (hard_cut, 0.1)
    of the bound; the loss ends near 0. Unguarded, the same run overflows; at the good lr the guard never fires."""
    fired, lr, loss, events = _descend(5.0)
    assert fired and all(at >= 0.2 for _, at in fired)  # no cut of a stable lr
    assert 0.2 * 0.1 <= lr < 0.2
    assert loss < 1e-3 * 7.5  # the start is 0.5 * (1 + 4 + 10)
    assert not [e for e in events if e.action == "raise_lr"]
    assert not np.isfinite(_descend(5.0, act=False)[2])
    assert _descend(0.1)[0] == [] and _descend(0.1)[1] == 0.1


def test_guard_cuts_again_when_the_restored_run_does_not_come_back():
    """After a rollback the run is on probation: its smoothed loss must come back below the restored snapshot's level
    within ``probation`` steps, else it is rolled back and cut again (a relapse); no snapshot is good meanwhile."""
    m = Monitor(probation=30)
    for i in range(60):
        assert not m.update(i, 2.0 - i / 60)
        if i == 49:
            m.took_snapshot(49)  # its level: the smoothed loss of then, the bias-corrected EMA (beta 0.98)
            level = sum(0.98 ** (49 - k) * 0.02 * (2.0 - k / 60) for k in range(50)) / (1 - 0.98**50)
    assert [e.kind for i in range(60, 70) for e in m.update(i, 4.0) if e.kind != "spike"] == ["divergence"]
    m.acted(69, restored=49, lr=0.3)
    seen = [(i, m.healthy, m.update(i, level + 0.05)) for i in range(70, 110)]
    relapses = [(i, ev) for i, _, evs in seen for ev in evs]
    assert [(i, ev.kind, ev.action, ev.factor) for i, ev in relapses] == [(99, "relapse", "rollback", 0.3)]
    assert f"did not come back below {level:.4g} in 30 steps at lr 0.3" in relapses[0][1].message
    assert not any(ok for _, ok, _ in seen)


def test_no_raise_soon_after_a_cut_nor_above_half_the_lr_that_diverged():
    """A crawl after a divergence: no raise within ``calm`` steps of the cut, and then at most up to half the lr that
    diverged (1.0 here; the lr is 0.3 after the cut, so a raise of 0.5 / 0.3 = 1.67x, not the crawl's 3x)."""
    m = Monitor(calm=300)
    for i in range(30):
        m.update(i, 1.0 + 0.001 * i, lr=1.0)
    div = [e for i in range(30, 40) for e in m.update(i, 3.0, lr=1.0) if e.kind != "spike"]
    assert [e.kind for e in div] == ["divergence"]
    m.acted(39, restored=-1, lr=0.3)
    crawl = 1.0 - 0.0001 * np.arange(600)  # falls 6% in 600 steps: a crawl
    raises = [(i, e) for i in range(40, 640) for e in m.update(i, crawl[i - 40], lr=0.3) if e.kind == "too_slow"]
    assert raises and raises[0][0] == div[0].step + 300
    assert raises[0][1].factor == pytest.approx(0.5 / 0.3) and "half the lr 1 that diverged" in raises[0][1].message


def test_a_loss_that_rose_is_no_crawl():
    """A loss that crept up from its start (1.3x, under the blow-up line) is no "flat" run to raise the lr of (the
    Monitor used to say "the loss is flat (2.225 -> 6.492): raise the lr about 10x"): it is stuck above its start, the
    offline doctor's rule (more than 3 batch-noise sds above it for half the steps), a sign of a too high lr."""
    rng = np.random.default_rng(3)
    y = 1.0 + np.minimum(np.arange(300) / 100, 0.3) + 0.01 * rng.standard_normal(300)
    m = Monitor()
    events = [e for i in range(300) for e in m.update(i, y[i])]
    assert not [e for e in events if e.action == "raise_lr"]
    stuck = [e for e in events if e.kind == "stuck"]
    assert stuck and stuck[0].step == 99 and stuck[0].action == "rollback" and stuck[0].factor == 0.3
    assert "sat above its start 1" in stuck[0].message


def test_chance_level_collapse_is_lowered_not_raised():
    """A loss flat at ln 10 with almost no batch noise from its first steps: a model collapsed to a constant
    prediction (the offline doctor's chance rule), lowered hard; before, "flat: raise the lr about 10x"."""
    rng = np.random.default_rng(4)
    y = math.log(10) * (1 + 0.001 * rng.standard_normal(200))
    y[:3] = [2.6, 2.5, 2.4]
    m = Monitor()
    events = [e for i in range(200) for e in m.update(i, y[i])]
    assert [(e.kind, e.step, e.factor) for e in events] == [("stuck", 99, 0.1)]
    assert "ln 10" in events[0].message


def test_losses_of_any_sign():
    """No ratio against a negative or near-zero start or baseline: differences instead, and the blow-up line is half
    the loss's scale (|start|, or the descent so far when larger) above the start."""
    rng = np.random.default_rng(5)
    y = -1.0 + 0.01 * rng.standard_normal(40)
    y[20:] += 6.0  # from -1 to +5: a blow-up of 6 against a scale of 1
    m = Monitor()
    ev = [e for i in range(40) for e in m.update(i, y[i]) if e.kind != "spike"]
    assert [e.kind for e in ev] == ["divergence"] and "above its start -1" in ev[0].message
    assert not re.search(r"\dx its start", ev[0].message)
    # a log-likelihood-like loss that starts near 0 and descends below it: no false alarm on its noise
    z = -2.0 * (1 - np.exp(-np.arange(300) / 50)) + 0.02 * rng.standard_normal(300)
    m = Monitor()
    assert not [e for i in range(300) for e in m.update(i, z[i]) if e.kind in ("divergence", "stuck", "too_slow")]
    # a spike on a negative level: its size over the recent median, no ratio
    s = -3.0 + 0.01 * rng.standard_normal(200)
    s[150:154] = 2.0
    m = Monitor()
    spike = [e for i in range(200) for e in m.update(i, s[i]) if e.kind == "spike"]
    assert spike and re.search(r"step 150: 2, \+4\.99\d over the median -2\.99\d of the last 64", spike[0].message)


def test_start_level_is_the_untouched_first_loss_unless_a_lucky_batch():
    assert start_level([1.4, 2.55, 2.47, 3.16, 1.94]) == 1.4  # blown up within the first steps: the first loss
    assert start_level([0.72, 2000.0, 1900.0, 1950.0, 2100.0]) == 0.72  # far beyond a lucky batch
    assert start_level([0.5, 1.0, 1.01, 0.99, 1.0]) == 1.0  # a lucky low first batch: the median of the five
    assert start_level([2.0, 1.9]) == 2.0


def test_a_snapshot_counts_only_once_healthy_updates_followed_it():
    """The weights after an update have no loss yet: a snapshot is pending until 5 healthy updates followed it; a
    rollback meanwhile goes back to the last good one; none is taken while the Monitor is not healthy."""
    m = Monitor()
    w = np.zeros(1)
    snaps = _Weights(w, every=10)
    snaps.take(-1, m)
    for i in range(30):
        w[0] = i
        m.update(i, 1.0 - 0.01 * i)
        snaps.keep(i, m)
    assert snaps.step == 19 and snaps._pending[0] == 29  # 9 (good at 14), 19 (good at 24), 29 pending
    w[0] = 99.0
    assert snaps.restore() == 19 and w[0] == 19 and snaps._pending is None
    m.acted(30, restored=19)
    for i in range(31, 60):  # on probation: no snapshot taken
        m.update(i, 0.5)
        snaps.keep(i, m)
        assert snaps._pending is None or m.healthy
    w[:] = np.nan
    assert _Weights(w).take(0) is False  # a NaN state is never kept


def test_guard_state_resumes_exactly_mid_probation():
    """The Monitor's state in the middle of a guarded run (after a cut, on probation) resumes exactly: the same events
    as the run without a break, the same state at the end."""
    full = _descend(5.0, steps=120)[3]
    m = Monitor()
    w = np.ones(3)
    snaps = _Weights(w)
    snaps.take(-1, m)
    rng = np.random.default_rng(0)
    lr, out = 5.0, []
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(120):
            loss = float(0.5 * np.sum(H * w**2) * (1 + 0.01 * rng.standard_normal()))
            w -= lr * H * w
            events = m.update(t, loss, lr=lr)
            out += events
            for ev in events:
                if ev.action == "rollback":
                    restored = snaps.restore()
                    lr *= ev.factor
                    m.acted(t, restored=restored, lr=lr)
            if not events:
                snaps.keep(t, m)
            if t == 20:
                assert m._probation is not None  # noqa: SLF001 - the break falls inside a probation
                state = json.loads(json.dumps(m.state_dict()))
                m = Monitor()
                m.load_state_dict(state)
    assert out == full


def test_guard_rescues_a_run_started_at_50x_a_good_lr():
    """A plain PyTorch loop at 50x a good lr: unguarded it goes NaN; guarded it is rolled back and cut until stable,
    below the closed-form stability bound, and learns (``_guard_task``)."""
    from _guard_task import BATCH, LR_HIGH, D, N, check_rescue, regression

    from lrkit.integrations.torch_monitor import LrMonitor

    x, y = (torch.tensor(a) for a in regression())

    def train(act):
        torch.manual_seed(0)
        model = torch.nn.Linear(D, 1)
        opt = torch.optim.SGD(model.parameters(), lr=LR_HIGH)
        guard = LrMonitor(model, opt, act=act)
        start = float(torch.nn.functional.mse_loss(model(x), y))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for t in range(300):
                i = (t * BATCH) % N
                loss = torch.nn.functional.mse_loss(model(x[i:i + BATCH]), y[i:i + BATCH])
                opt.zero_grad()
                loss.backward()
                opt.step()
                guard.update(t, loss.item())
        with torch.no_grad():
            return guard, opt.param_groups[0]["lr"], start, float(torch.nn.functional.mse_loss(model(x), y))

    assert not np.isfinite(train(False)[3])
    guard, lr, start, final = train(True)
    check_rescue(guard.events, lr, start, final, x.numpy())
