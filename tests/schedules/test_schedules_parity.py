"""Parity with the peers over whole runs (rtol 1e-6): torch.optim.lr_scheduler, transformers, optax, Keras 3.

Where conventions differ the difference is asserted too (documented in lrkit.schedules.conventions)."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import lrkit.schedules as S  # noqa: E402

RTOL = 1e-6
LR = 0.1


# ---- torch ---------------------------------------------------------------------------------------------------

def torch_lrs(make, n, lr=LR, momentum=0.9, metrics=None):
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr, momentum=momentum)
    sched = make(opt)
    out = []
    for i in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step(metrics[i]) if metrics is not None else sched.step()
    return np.array(out)


def L():
    return pytest.importorskip("torch").optim.lr_scheduler


@pytest.mark.parametrize("make_torch, ours, n", [
    (lambda o: L().StepLR(o, 7, gamma=0.5), S.step(LR, 7, 0.5), 60),
    (lambda o: L().MultiStepLR(o, [10, 25, 26], gamma=0.3), S.multistep(LR, [10, 25, 26], 0.3), 40),
    (lambda o: L().ExponentialLR(o, 0.97), S.exponential(LR, 0.97), 100),
    (lambda o: L().PolynomialLR(o, total_iters=40, power=2.0), S.polynomial(LR, 40, power=2.0), 60),
    (lambda o: L().LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=20), S.linear(0.1 * LR, LR, 20), 40),
    (lambda o: L().ConstantLR(o, factor=0.5, total_iters=10),
     S.constant(0.5 * LR, steps=10) >> S.constant(LR), 20),
    (lambda o: L().CosineAnnealingLR(o, T_max=50, eta_min=1e-4), S.cosine(LR, 50, final=1e-4), 51),
    (lambda o: L().CosineAnnealingWarmRestarts(o, T_0=10, T_mult=2, eta_min=1e-5),
     S.cosine_restarts(LR, 10, final=1e-5, period_mult=2.0), 300),
    (lambda o: L().CosineAnnealingWarmRestarts(o, T_0=7), S.cosine_restarts(LR, 7), 100),
    (lambda o: L().OneCycleLR(o, max_lr=LR, total_steps=100), S.onecycle(LR, 100), 100),
    (lambda o: L().OneCycleLR(o, max_lr=LR, total_steps=97, pct_start=0.25, anneal_strategy="linear",
                              div_factor=10, final_div_factor=100, three_phase=True),
     S.onecycle(LR, 97, 0.25, "linear", 10.0, 100.0, three_phase=True), 97),
    (lambda o: L().CyclicLR(o, 1e-3, LR, step_size_up=5, step_size_down=8, cycle_momentum=False),
     S.cyclical(1e-3, LR, 5, 8), 60),
    (lambda o: L().CyclicLR(o, 1e-3, LR, step_size_up=4, mode="triangular2", cycle_momentum=False),
     S.cyclical(1e-3, LR, 4, mode="triangular2"), 60),
    (lambda o: L().CyclicLR(o, 1e-3, LR, step_size_up=6, mode="exp_range", gamma=0.98, cycle_momentum=False),
     S.cyclical(1e-3, LR, 6, mode="exp_range", gamma=0.98), 80),
    (lambda o: L().SequentialLR(o, [L().LinearLR(o, 1e-3, 1.0, total_iters=10), L().ExponentialLR(o, 0.9)], [10]),
     S.linear(1e-3 * LR, LR, 10) >> S.exponential(LR, 0.9), 40),
])
def test_torch_parity(make_torch, ours, n):
    np.testing.assert_allclose(ours(np.arange(n)), torch_lrs(make_torch, n), rtol=RTOL, atol=0)


def test_torch_onecycle_momentum_parity():
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=LR, momentum=0.9)
    sched = L().OneCycleLR(opt, max_lr=LR, total_steps=50, three_phase=True)
    mom = []
    for _ in range(50):
        mom.append(opt.param_groups[0]["momentum"])
        opt.step()
        sched.step()
    ours = S.onecycle(LR, 50, three_phase=True).momentum()(np.arange(50))
    np.testing.assert_allclose(ours, mom, rtol=RTOL)


def test_torch_cosine_past_t_max_is_a_documented_difference():
    theirs = torch_lrs(lambda o: L().CosineAnnealingLR(o, T_max=10), 21)
    ours = S.cosine(LR, 10)(np.arange(21))
    np.testing.assert_allclose(ours[:11], theirs[:11], rtol=RTOL, atol=1e-15)
    assert theirs[20] == pytest.approx(LR) and ours[20] == 0.0  # torch oscillates back up, lrkit holds


def test_torch_reduce_on_plateau_parity():
    rng = np.random.default_rng(0)
    metrics = np.concatenate([np.linspace(1, 0.5, 10), 0.5 + 0.01 * rng.random(60), np.linspace(0.49, 0.3, 10)])
    kw = dict(factor=0.5, patience=3, threshold=1e-3, cooldown=2, min_lr=0.01)
    theirs = torch_lrs(lambda o: L().ReduceLROnPlateau(o, **kw), len(metrics), metrics=metrics)
    s = S.plateau(LR, **kw)
    ours = []
    for m in metrics:
        ours.append(s(0))
        s.observe(m)
    assert theirs.min() == pytest.approx(0.01)  # the metrics do trigger several cuts
    np.testing.assert_allclose(ours, theirs, rtol=RTOL)


# ---- transformers ---------------------------------------------------------------------------------------------

W, N = 30, 150


def hf_lrs(name, n=N + 20, **kw):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=LR)
    sched = transformers.get_scheduler(name, opt, num_warmup_steps=W, num_training_steps=N,
                                       scheduler_specific_kwargs=kw or None)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return np.array(out)


@pytest.mark.parametrize("name, kw, ours, n", [
    ("linear", {}, S.warmup(W) >> S.linear(LR, 0.0, N - W), N + 20),
    ("cosine", {}, S.warmup(W) >> S.cosine(LR, N - W), N + 1),  # transformers' cosine rises again after N
    ("cosine_with_restarts", {"num_cycles": 3},
     S.warmup(W) >> S.join([S.cosine_restarts(LR, (N - W) / 3), S.constant(0.0)], [N - W]), N + 20),
    ("polynomial", {"lr_end": 1e-3, "power": 2.0}, S.warmup(W) >> S.polynomial(LR, N - W, 1e-3, 2.0), N + 20),
    ("constant", {}, S.constant(LR), N),
    ("constant_with_warmup", {}, S.warmup(W) >> S.constant(LR), N),
    ("inverse_sqrt", {}, S.warmup(W) >> S.inverse_sqrt(LR, timescale=W), N + 20),
    ("inverse_sqrt", {"timescale": 500}, S.warmup(W) >> S.inverse_sqrt(LR, timescale=500), N),
    ("cosine_with_min_lr", {"min_lr_rate": 0.1}, S.warmup(W) >> S.cosine(LR, N - W, final=0.1 * LR), N + 1),
    ("warmup_stable_decay", {"num_decay_steps": 40, "min_lr_ratio": 0.05},
     S.wsd(LR, N, warmup=W, decay=40, cooldown="cosine", final=0.05 * LR), N + 20),
    ("warmup_stable_decay", {"num_decay_steps": 40, "decay_type": "1-sqrt", "warmup_type": "1-sqrt"},
     S.wsd(LR, N, warmup=W, decay=40, cooldown="1-sqrt", warmup_mode="1-sqrt"), N + 20),
    ("warmup_stable_decay", {"num_decay_steps": 40, "decay_type": "linear", "warmup_type": "cosine"},
     S.wsd(LR, N, warmup=W, decay=40, cooldown="linear", warmup_mode="cos"), N + 20),
])
def test_transformers_parity(name, kw, ours, n):
    np.testing.assert_allclose(ours(np.arange(n)), hf_lrs(name, n, **kw), rtol=RTOL, atol=1e-15)


@pytest.mark.parametrize("name, kw", [
    ("linear", {}), ("cosine", {}), ("cosine_with_restarts", {"num_cycles": 2}), ("polynomial", {"power": 3.0}),
    ("constant", {}), ("constant_with_warmup", {}), ("inverse_sqrt", {}), ("cosine_with_min_lr", {"min_lr": 1e-3}),
    ("cosine_warmup_with_min_lr", {"min_lr_rate": 0.1}),
    ("warmup_stable_decay", {"num_decay_steps": 50, "min_lr_ratio": 0.1}),
])
def test_transformers_presets_match_get_scheduler(name, kw):
    ours = S.presets.transformers(name, LR, W, N, **kw)
    n = N if "cosine" in name else N + 20  # past N transformers' cosines swing back up; lrkit holds
    np.testing.assert_allclose(ours(np.arange(n)), hf_lrs(name, n, **kw), rtol=RTOL, atol=1e-15, err_msg=str(ours))


def test_transformers_cosine_warmup_with_min_lr_is_one_step_ahead():
    theirs = hf_lrs("cosine_warmup_with_min_lr", 3, min_lr_rate=0.1)
    assert theirs[0] == pytest.approx(LR / W)  # not 0: its warmup is (t + 1) / W
    assert (S.warmup(W) >> S.cosine(LR, N - W, final=0.1 * LR))(0) == 0.0


def test_transformers_warmup_starts_at_zero_like_lrkit():
    assert hf_lrs("linear", 1)[0] == 0.0 == (S.warmup(W) >> S.linear(LR, 0.0, N - W))(0)


# ---- optax (float64 so that 1e-6 is meaningful) ---------------------------------------------------------------

@pytest.fixture
def x64():
    jax = pytest.importorskip("jax")
    pytest.importorskip("optax")
    with jax.enable_x64(True):
        yield


def optax_cases():
    import optax

    return [
        (optax.constant_schedule(LR), S.constant(LR)),
        (optax.linear_schedule(LR, 1e-3, 50), S.linear(LR, 1e-3, 50)),
        (optax.polynomial_schedule(LR, 1e-3, 3.0, 60), S.polynomial(LR, 60, 1e-3, 3.0)),
        (optax.cosine_decay_schedule(LR, 80, alpha=0.1, exponent=2.0), S.cosine(LR, 80, 0.1 * LR, exponent=2.0)),
        (optax.exponential_decay(LR, 7, 0.5, staircase=True, end_value=0.01),
         S.exponential(LR, 0.5, 7, staircase=True, final=0.01)),
        (optax.exponential_decay(LR, 10, 0.8, transition_begin=20),
         S.constant(LR, steps=20) >> S.exponential(LR, 0.8, 10)),
        (optax.warmup_cosine_decay_schedule(1e-3, LR, 20, 100, end_value=1e-4),
         S.warmup(20, start=1e-3 / LR) >> S.cosine(LR, 80, final=1e-4)),
        (optax.warmup_cosine_decay_schedule(0.0, LR, 15, 120, end_value=1e-3, exponent=2.0),
         S.presets.optax_warmup_cosine_decay(0.0, LR, 15, 120, 1e-3, 2.0)),
        (optax.warmup_exponential_decay_schedule(0.0, LR, 15, 10, 0.7),
         S.warmup(15) >> S.exponential(LR, 0.7, 10)),
        (optax.piecewise_constant_schedule(LR, {30: 0.1, 70: 0.1}), S.multistep(LR, [30, 70], 0.1)),
        (optax.join_schedules([optax.constant_schedule(LR), optax.linear_schedule(LR, 0.0, 40)], [25]),
         S.join([S.constant(LR), S.linear(LR, 0.0, 40)], [25])),
        (optax.cosine_onecycle_schedule(120, LR), S.onecycle(LR, 120, convention="optax")),
        (optax.linear_onecycle_schedule(120, LR, pct_start=0.2),
         S.onecycle(LR, 120, 0.2, "linear", three_phase=True, convention="optax", pct_end=0.85)),
    ]


def test_optax_parity(x64):
    import jax
    import jax.numpy as jnp

    import lrkit.jax

    t = np.arange(200)
    for theirs, ours in optax_cases():
        ref = np.asarray(jax.vmap(theirs)(jnp.asarray(t)), dtype=np.float64)
        np.testing.assert_allclose(ours(t), ref, rtol=RTOL, atol=1e-15, err_msg=str(ours))
        np.testing.assert_allclose(np.asarray(lrkit.jax.scheduler(ours)(jnp.asarray(t))), ref, rtol=RTOL, atol=1e-15)


# ---- keras (floatx float64 during the test) --------------------------------------------------------------------

@pytest.fixture
def keras64():
    keras = pytest.importorskip("keras")
    old = keras.config.floatx()
    keras.config.set_floatx("float64")
    yield keras
    keras.config.set_floatx(old)


def test_keras_parity(keras64):
    ks = keras64.optimizers.schedules
    cases = [
        (ks.ExponentialDecay(LR, 10, 0.5), S.exponential(LR, 0.5, 10)),
        (ks.ExponentialDecay(LR, 10, 0.5, staircase=True), S.exponential(LR, 0.5, 10, staircase=True)),
        (ks.InverseTimeDecay(LR, 10, 0.5), S.inverse_time(LR, 0.5, 10)),
        (ks.PolynomialDecay(LR, 80, end_learning_rate=1e-3, power=2.0), S.polynomial(LR, 80, 1e-3, 2.0)),
        (ks.CosineDecay(LR, 90, alpha=0.1), S.cosine(LR, 90, final=0.1 * LR)),
        (ks.CosineDecay(1e-3, 90, alpha=0.1, warmup_target=LR, warmup_steps=25),
         S.warmup(25, start=1e-3 / LR) >> S.cosine(LR, 90, final=0.1 * LR)),
        (ks.CosineDecay(1e-3, 90, alpha=0.1, warmup_target=LR, warmup_steps=25),
         S.presets.keras_cosine_decay(1e-3, 90, alpha=0.1, warmup_target=LR, warmup_steps=25)),
        (ks.CosineDecayRestarts(LR, 10, t_mul=2.0, m_mul=0.5, alpha=0.1),
         S.cosine_restarts(LR, 10, 0.1 * LR, 2.0, 0.5, decay_span=True)),
        # Keras switches at step > boundary, lrkit at step >= boundary: add 1
        (ks.PiecewiseConstantDecay([20, 50], [LR, 0.05, 0.01]),
         S.join([S.constant(LR), S.constant(0.05), S.constant(0.01)], [21, 51])),
    ]
    for theirs, ours in cases:
        ref = np.array([float(keras64.ops.convert_to_numpy(theirs(i))) for i in range(160)])
        np.testing.assert_allclose(ours(np.arange(160)), ref, rtol=RTOL, atol=1e-15, err_msg=str(ours))
