"""Schedule speed, lrkit next to its peers, in one run: ``python benchmarks/schedules.py``.

1. Evaluating 1,000,000 steps vectorised (numpy) -- target < 50 ms -- next to optax's jitted equivalent.
2. Per-step cost of ``scheduler.step()`` for lrkit's torch adapter vs torch's own scheduler for the same schedule
   (and transformers' LambdaLR for warmup+cosine). Medians of >= 5 runs; ratios lrkit / peer (< 1: lrkit faster).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np

import lrkit.schedules as S


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(a, b, repeats: int) -> tuple[float, float]:
    """Median seconds of ``a`` and of ``b``, run alternately so that both see the same machine load."""
    a(), b()
    ta, tb = [], []
    for _ in range(repeats):
        for fn, out in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def vectorised(n: int, repeats: int) -> None:
    t = np.arange(n)
    cases = {
        "warmup+cosine": (S.parse(f"warmup(500) >> cosine(3e-4, {n - 500}, final=3e-5)"),
                          ("warmup_cosine_decay_schedule", dict(init_value=0.0, peak_value=3e-4, warmup_steps=500,
                                                                decay_steps=n, end_value=3e-5))),
        "onecycle": (S.onecycle(1e-2, n, convention="optax"),
                     ("cosine_onecycle_schedule", dict(transition_steps=n, peak_value=1e-2))),
        "wsd(1-sqrt)": (S.wsd(1e-3, n, warmup=n // 100, cooldown="1-sqrt"), None),
        "sgdr x2": (S.cosine_restarts(1e-3, 1000, period_mult=2.0, decay=0.9), None),
        "step/multistep": (S.multistep(0.1, [n // 3, 2 * n // 3]),
                           ("piecewise_constant_schedule", dict(init_value=0.1,
                                                                boundaries_and_scales={n // 3: 0.1, 2 * n // 3: 0.1}))),
    }
    try:
        import jax
        import jax.numpy as jnp
        import optax
    except ImportError:
        jax = None
    print(f"\n1) {n:,} steps vectorised, median of {repeats} runs (target: lrkit < 50 ms)")
    print(f"   {'schedule':<16}{'lrkit numpy':>14}{'optax jit (CPU)':>18}{'ratio':>8}")
    for name, (ours, peer) in cases.items():
        ms = median_time(lambda: ours(t), repeats) * 1e3  # noqa: B023
        their = ""
        ratio = ""
        if jax is not None and peer is not None:
            fn = getattr(optax, peer[0])(**peer[1])
            jt = jnp.arange(n)
            f = jax.jit(jax.vmap(fn))
            tm = median_time(lambda: f(jt).block_until_ready(), repeats) * 1e3  # noqa: B023
            their, ratio = f"{tm:.1f} ms", f"{ms / tm:.2f}"
        print(f"   {name:<16}{ms:>11.1f} ms{their:>18}{ratio:>8}")


def per_step(steps: int, repeats: int) -> None:
    import torch

    import lrkit.torch

    torch.set_num_threads(1)
    L = torch.optim.lr_scheduler
    try:
        import transformers
    except ImportError:
        transformers = None

    def opt():
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)

    cases = [
        ("cosine", lambda o: L.CosineAnnealingLR(o, T_max=steps, eta_min=1e-4), S.cosine(0.1, steps, final=1e-4)),
        ("onecycle", lambda o: L.OneCycleLR(o, max_lr=0.1, total_steps=steps + 1), S.onecycle(0.1, steps + 1)),
        ("multistep", lambda o: L.MultiStepLR(o, [steps // 3, 2 * steps // 3]),
         S.multistep(0.1, [steps // 3, 2 * steps // 3])),
        ("sgdr", lambda o: L.CosineAnnealingWarmRestarts(o, T_0=100, T_mult=2), S.cosine_restarts(0.1, 100, 0.0, 2.0)),
    ]
    if transformers is not None:
        cases.append(("warmup+cosine (transformers)",
                      lambda o: transformers.get_cosine_schedule_with_warmup(o, 100, steps),
                      S.warmup(100) >> S.cosine(0.1, steps - 100)))

    def run(make):
        def go():
            o = opt()
            sched = make(o)
            for _ in range(steps):
                sched.step()
        return go

    print(f"\n2) scheduler.step() cost over {steps:,} steps, median of {repeats} runs (lrkit adapter vs the peer)")
    print(f"   {'schedule':<30}{'peer us/step':>14}{'lrkit us/step':>15}{'ratio':>8}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, make_peer, ours in cases:
            tp, tl = interleaved(run(make_peer), run(lambda o: lrkit.torch.scheduler(o, ours)), repeats)  # noqa: B023
            print(f"   {name:<30}{tp / steps * 1e6:>14.2f}{tl / steps * 1e6:>15.2f}{tl / tp:>8.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="steps for the vectorised part (default 1e6)")
    ap.add_argument("--steps", type=int, default=5_000, help="scheduler.step() calls per run (default 5000)")
    ap.add_argument("--repeats", type=int, default=9, help="runs per measurement (median; default 9)")
    args = ap.parse_args()
    vectorised(args.n, args.repeats)
    per_step(args.steps, args.repeats)


if __name__ == "__main__":
    main()
