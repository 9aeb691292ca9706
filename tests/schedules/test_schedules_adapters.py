"""lrkit schedules as each framework's scheduler: lrkit.torch.scheduler (an LRScheduler: groups, momentum, exact
resume), lrkit.lightning.scheduler, lrkit.keras.scheduler (a LearningRateSchedule: config round trip, inside fit),
lrkit.jax.scheduler (optax: jit, inject_hyperparams)."""

import io
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import lrkit.schedules as S  # noqa: E402
from lrkit import LrkitError  # noqa: E402

torch = pytest.importorskip("torch")
import lrkit.torch  # noqa: E402


def two_groups(lr_a=0.1, lr_b=0.01, opt="sgd"):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    groups = [{"params": model[0].parameters(), "lr": lr_a}, {"params": model[1].parameters(), "lr": lr_b}]
    o = torch.optim.SGD(groups, momentum=0.9) if opt == "sgd" else torch.optim.AdamW(groups)
    return model, o


def train_step(model, opt, i):
    x = torch.linspace(-1, 1, 12).reshape(4, 3) * (1 + i % 3)
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_groups_keep_their_ratio_and_lr_is_never_read_back():
    model, opt = two_groups()
    s = S.warmup(5) >> S.cosine(0.1, 20)
    sched = lrkit.torch.scheduler(opt, s)
    assert isinstance(sched, torch.optim.lr_scheduler.LRScheduler)
    for i in range(30):
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([s(i), 0.1 * s(i)], rel=1e-12, abs=0)
        assert sched.get_last_lr() == [g["lr"] for g in opt.param_groups]
        opt.param_groups[0]["lr"] = 123.0  # someone tampers with the lr: the next step ignores it
        train_step(model, opt, i)
        sched.step()


def test_one_schedule_per_group_and_spec_strings():
    _, opt = two_groups()
    sched = lrkit.torch.scheduler(opt, ["cosine(0.1, 10)", "constant(0.5)"])
    for _ in range(10):
        sched.step()
    assert sched.get_last_lr() == pytest.approx([0.0, 0.5])
    with pytest.raises(LrkitError, match="3 schedules for 2 param groups"):
        lrkit.torch.scheduler(opt, ["constant(1)"] * 3)


def test_momentum_cycling_sgd_and_adam_betas():
    s = S.onecycle(0.1, 40)
    _, sgd = two_groups()
    _, adam = two_groups(opt="adam")
    a = lrkit.torch.scheduler(sgd, s, momentum=s.momentum())
    b = lrkit.torch.scheduler(adam, s, momentum=s.momentum(0.8, 0.9))
    for i in range(40):
        assert sgd.param_groups[1]["momentum"] == pytest.approx(s.momentum()(i))
        assert adam.param_groups[0]["betas"] == pytest.approx((s.momentum(0.8, 0.9)(i), 0.999))
        a.step()
        b.step()
    with pytest.raises(LrkitError, match="neither"):
        lrkit.torch.scheduler(torch.optim.Adagrad([torch.nn.Parameter(torch.zeros(1))]), s, momentum=s.momentum())


SPECS = ["warmup(7) >> cosine(0.1, 40, final=0.001)", "onecycle(0.1, 50, three_phase=True)",
         "cosine_restarts(0.1, 6, period_mult=2.0, decay=0.7)", "warmup(5) >> plateau(0.1, factor=0.5, patience=1)",
         "cyclical(0.001, 0.1, up=4, mode='triangular2')"]


def run(spec, n, stop=None, order="opt-first"):
    """Train n steps, observing a metric every 4 steps; with ``stop`` save at that step and resume into fresh
    objects (built with a different lr, to show it is not read)."""
    model, opt = two_groups()
    sched = lrkit.torch.scheduler(opt, spec)
    lrs, moms = [], []
    for i in range(n):
        if i == stop:
            buf = io.BytesIO()
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
            buf.seek(0)
            ck = torch.load(buf, weights_only=False)
            model, opt = two_groups(lr_a=7.0, lr_b=7.0)
            sched = lrkit.torch.scheduler(opt, spec)
            model.load_state_dict(ck["model"])
            if order == "opt-first":
                opt.load_state_dict(ck["opt"])
                sched.load_state_dict(ck["sched"])
            else:
                sched.load_state_dict(ck["sched"])
                opt.load_state_dict(ck["opt"])
        lrs.append([g["lr"] for g in opt.param_groups])
        moms.append(opt.param_groups[0]["momentum"])
        train_step(model, opt, i)
        sched.step()
        if i % 4 == 3:
            sched.observe(1.0)  # a flat metric: plateau cuts after patience
    return np.array(lrs), [p.detach().clone() for p in model.parameters()]


@settings(max_examples=15, deadline=None)
@given(spec=st.sampled_from(SPECS), stop=st.integers(1, 59), order=st.sampled_from(["opt-first", "sched-first"]))
def test_resume_is_exact(spec, stop, order):
    ref, ref_params = run(spec, 60)
    got, params = run(spec, 60, stop, order)
    np.testing.assert_array_equal(got, ref)
    for a, b in zip(params, ref_params):
        assert torch.equal(a, b)


def test_plateau_after_warmup_cuts_and_resume_keeps_the_cut():
    lrs, _ = run(SPECS[3], 60)
    assert lrs[5, 0] == pytest.approx(0.1) and lrs[-1, 0] < 0.01  # warmed up, then cut several times
    assert np.all(np.diff(lrs[5:, 0]) <= 0)


def test_loading_a_checkpoint_of_another_schedule_is_refused():
    _, opt = two_groups()
    sd = lrkit.torch.scheduler(opt, "cosine(0.1, 10)").state_dict()
    with pytest.raises(LrkitError, match="same spec"):
        lrkit.torch.scheduler(opt, "cosine(0.1, 20)").load_state_dict(sd)


def test_lightning_steps_the_scheduler_every_update(tmp_path):
    L = pytest.importorskip("lightning")
    import lrkit.lightning
    spec = "warmup(3) >> linear(0.1, 0.01, 10)"
    seen = []

    class M(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(3, 1)

        def training_step(self, batch, i):
            seen.append(self.optimizers().param_groups[0]["lr"])
            return self.layer(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return {"optimizer": opt, "lr_scheduler": lrkit.lightning.scheduler(opt, spec)}

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(16, 3)), batch_size=2)
    L.Trainer(max_steps=12, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu").fit(M(), data)
    np.testing.assert_allclose(seen, S.parse(spec)(np.arange(12)), rtol=1e-12)


# ---- keras ------------------------------------------------------------------------------------------------------

def test_keras_schedule_config_round_trip_and_training():
    keras = pytest.importorskip("keras")
    import lrkit.keras
    spec = "warmup(3) >> cosine(0.01, 20, final=0.001)"
    ks = lrkit.keras.scheduler(spec)
    assert isinstance(ks, keras.optimizers.schedules.LearningRateSchedule)
    assert ks.get_config() == {"spec": str(S.parse(spec))}
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(ks))
    assert again.schedule == ks.schedule
    vals = [float(keras.ops.convert_to_numpy(ks(i))) for i in range(25)]
    np.testing.assert_allclose(vals, S.parse(spec)(np.arange(25)), rtol=1e-6)  # float32 in Keras
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=ks), loss="mse")
    model.fit(np.ones((10, 3)), np.ones((10, 1)), batch_size=2, epochs=1, verbose=0)
    lr_now = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    assert lr_now == pytest.approx(S.parse(spec)(5), rel=1e-6)  # 5 updates done
    with pytest.raises(LrkitError, match="plateau"):
        lrkit.keras.scheduler("plateau(0.1)")


def test_every_kind_runs_in_keras_ops():
    keras = pytest.importorskip("keras")
    from test_schedules import EXAMPLES

    import lrkit.keras

    t = np.arange(0, 400, 3)
    for spec in EXAMPLES:
        s = S.parse(spec)
        if s._stateful():
            continue
        ks = lrkit.keras.scheduler(s)
        got = np.array([float(keras.ops.convert_to_numpy(ks(int(i)))) for i in t[::9]])
        np.testing.assert_allclose(got, s(t[::9]), rtol=2e-5, atol=1e-9, err_msg=spec)


def test_every_kind_is_jit_traceable():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp
    from test_schedules import EXAMPLES

    import lrkit.jax

    t = np.arange(0, 400)
    for spec in EXAMPLES:
        s = S.parse(spec)
        if s._stateful():
            continue
        got = np.asarray(jax.jit(lrkit.jax.scheduler(s))(jnp.asarray(t)))
        np.testing.assert_allclose(got, s(t), rtol=2e-5, atol=1e-9, err_msg=spec)


# ---- optax ------------------------------------------------------------------------------------------------------

def test_optax_schedule_under_jit_and_inject_hyperparams():
    jax = pytest.importorskip("jax")
    import lrkit.jax
    optax = pytest.importorskip("optax")
    import jax.numpy as jnp

    s = S.parse("warmup(4) >> cosine_restarts(0.01, 5, period_mult=2.0) * 0.5")
    f = lrkit.jax.scheduler(s)
    got = np.asarray(jax.jit(jax.vmap(f))(jnp.arange(40)))
    np.testing.assert_allclose(got, s(np.arange(40)), rtol=1e-5)  # float32 without x64
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=lrkit.jax.scheduler(s))
    params = {"w": jnp.ones(3)}
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        updates, state = tx.update({"w": jnp.ones(3)}, state, params)
        return optax.apply_updates(params, updates), state

    seen = []
    for _ in range(12):
        params, state = step(params, state)
        seen.append(float(state.hyperparams["learning_rate"]))  # the lr that update used
    np.testing.assert_allclose(seen, s(np.arange(12)), rtol=1e-5)
    with pytest.raises(LrkitError, match="plateau"):
        lrkit.jax.scheduler("warmup(3) >> plateau(0.1)")
