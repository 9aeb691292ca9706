"""Per-step overhead of the live doctor (``lrkit.Monitor.update``) and of the guard that acts on it
(``lrkit.torch.LrMonitor(model, optimizer, act=True).update``: the Monitor, the policy and the snapshots of the
model and optimiser in CPU memory about every 50 steps) on a training step of a small MLP, side by side with
PyTorch's own per-step lr watcher (``ReduceLROnPlateau.step(loss)``).

Run: ``python benchmarks/doctor/bench_monitor_overhead.py`` (about 30 s, one CPU thread; times are this thread's CPU
time, so other work on a busy machine does not count). Interleaved blocks of
steps, medians over repeats; target: the Monitor adds < 1% to a bare step. Also the opt-in update-to-weight ratio
(``LrMonitor(update_ratio=True)``: copies of the weights, norms and the gradient alignment's dot product per step)
beside the per-step diagnostic most loops already pay for, the total gradient norm (``clip_grad_norm_``).
"""

from __future__ import annotations

import logging
import statistics
import time
import warnings

import numpy as np
import torch

from lrkit.doctor import Monitor
from lrkit.integrations.torch_monitor import LrMonitor, UpdateRatio, total_norm

STEPS, REPEATS = 200, 15


def main() -> None:
    logging.getLogger("lrkit.monitor").setLevel(logging.ERROR)  # events are counted, not printed
    warnings.simplefilter("ignore", RuntimeWarning)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                                torch.nn.ReLU(), torch.nn.Linear(256, 10))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(4096, 64), torch.randint(0, 10, (4096,))
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(torch.optim.SGD([torch.zeros(1)], lr=0.1), patience=10**9)
    monitor = Monitor()
    guard = LrMonitor(model, opt, act=True)
    step_no = 0

    def block(kind: str) -> float:
        nonlocal step_no
        t0 = time.thread_time()
        for _ in range(STEPS):
            i = (step_no * 64) % 4032
            loss = torch.nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            v = loss.item()
            if kind == "monitor":
                monitor.update(step_no, v, lr=1e-3, grad_norm=1.0)
            elif kind == "guard":
                guard.update(step_no, v)
            elif kind == "plateau":
                plateau.step(v)
            step_no += 1
        return (time.thread_time() - t0) / STEPS

    for k in ("bare", "monitor", "guard", "plateau"):  # warm up
        block(k)
    times: dict[str, list[float]] = {"bare": [], "monitor": [], "guard": [], "plateau": []}
    for _ in range(REPEATS):
        for k in times:
            times[k].append(block(k))
    med = {k: statistics.median(v) for k, v in times.items()}
    m2 = Monitor()
    n = 100_000
    t0 = time.thread_time()
    for i in range(n):
        m2.update(i, 1.0 + 1.0 / (1 + i), lr=1e-3, grad_norm=1.0)
    per_update = (time.thread_time() - t0) / n
    m2u = Monitor()  # with the update ratio (it also sums the weights' movement) and the gradient alignment
    t0 = time.thread_time()
    for i in range(n):
        m2u.update(i, 1.0 + 1.0 / (1 + i), lr=1e-3, grad_norm=1.0, update_ratio=1e-3, grad_alignment=0.1)
    per_update_ur = (time.thread_time() - t0) / n
    s2 = torch.optim.lr_scheduler.ReduceLROnPlateau(torch.optim.SGD([torch.zeros(1)], lr=0.1), patience=10**9)
    t0 = time.thread_time()
    for i in range(n):
        s2.step(1.0 + 1.0 / (1 + i))
    per_plateau = (time.thread_time() - t0) / n
    # the guard's own cost per step, isolated: its update (the Monitor and the policy) on the run's losses, and the
    # snapshots (a copy of the model and the optimiser state to CPU memory) spread over the steps between them
    # (the fastest of 5 passes over 5000 steps, beside the fastest block of bare steps: both as little disturbed by
    # other work on the machine as it got)
    descent = 2.3 * np.exp(-np.arange(5000) / 1000) + 0.3 + 0.05 * np.random.default_rng(1).standard_normal(5000)
    passes = []
    for _ in range(5):
        g2 = LrMonitor(model, opt, act=True)
        t0 = time.thread_time()
        for i, v in enumerate(descent):  # a noisy descent: the guard watches and keeps snapshots, nothing goes wrong
            g2.update(i, float(v))
        passes.append((time.thread_time() - t0) / len(descent))
    per_guard, bare_min = min(passes), min(times["bare"])
    # inside the loop: the guard's update timed on its own, right after each training step (Python code there runs
    # slower than in a tight loop: the step has just filled the caches with other work)
    # (a fresh model on labels it can learn, so that the guard watches a healthy run and never acts)
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(),
                              torch.nn.Linear(256, 10))
    opt3 = torch.optim.AdamW(net.parameters(), lr=1e-3)
    y3 = (x @ torch.randn(64, 10)).argmax(1)
    g3 = LrMonitor(net, opt3, act=True)
    t_step = t_guard = 0
    for s in range(2000):
        i = (s * 64) % 4032
        t0 = time.thread_time_ns()
        loss = torch.nn.functional.cross_entropy(net(x[i:i + 64]), y3[i:i + 64])
        opt3.zero_grad()
        loss.backward()
        opt3.step()
        v = loss.item()
        t1 = time.thread_time_ns()
        g3.update(s, v)
        t2 = time.thread_time_ns()
        if s >= 200:
            t_step, t_guard = t_step + t1 - t0, t_guard + t2 - t1
    in_loop = t_guard / t_step
    t0 = time.thread_time()
    for _ in range(REPEATS):
        g2.snapshots.spare = g2.snapshots.copy()
    per_copy = (time.thread_time() - t0) / REPEATS
    # a run that crawls all along: a crawl event (with the shape model's "raise by about") every cooldown steps
    crawl = 2.3 - 2e-5 * np.arange(n // 5) + 0.02 * np.random.default_rng(0).standard_normal(n // 5)
    per_crawl = {}
    for use_shape in (True, False):
        m3, t0 = Monitor(use_shape=use_shape), time.thread_time()
        events = sum(len(m3.update(i, float(v), lr=1e-3, grad_norm=1.0)) for i, v in enumerate(crawl))
        per_crawl[use_shape] = ((time.thread_time() - t0) / len(crawl), events)
    params = list(model.parameters())
    ratio, ratio_al = UpdateRatio(params), UpdateRatio(params, alignment=True)
    loss = torch.nn.functional.cross_entropy(model(x[:64]), y[:64])
    loss.backward()
    costs: dict[str, list[float]] = {"ratio": [], "ratio_al": [], "gn": [], "ours": [], "torch": []}
    grads = [p.grad for p in params]
    for _ in range(REPEATS):
        t0 = time.thread_time()
        for _ in range(STEPS):
            ratio.before()
            ratio.after()
        costs["ratio"].append((time.thread_time() - t0) / STEPS)
        t0 = time.thread_time()
        for _ in range(STEPS):
            ratio_al.before()
            ratio_al.after()
        costs["ratio_al"].append((time.thread_time() - t0) / STEPS)
        t0 = time.thread_time()
        for _ in range(STEPS):
            torch.nn.utils.clip_grad_norm_(params, float("inf"))
        costs["gn"].append((time.thread_time() - t0) / STEPS)
        for key, norm in (("ours", total_norm), ("torch", torch.nn.utils.get_total_norm)):
            t0 = time.thread_time()
            for _ in range(STEPS):
                float(norm(grads))
            costs[key].append((time.thread_time() - t0) / STEPS)
    per_ratio, per_gn = statistics.median(costs["ratio"]), statistics.median(costs["gn"])
    per_al = statistics.median(costs["ratio_al"])
    print(f"MLP 64-256-256-10, batch 64, AdamW, 1 thread; medians of {REPEATS} interleaved blocks of {STEPS} steps")
    print(f"  bare step                      {med['bare'] * 1e6:8.1f} us")
    print(f"  + lrkit Monitor.update         {med['monitor'] * 1e6:8.1f} us  ({med['monitor'] / med['bare'] - 1:+.2%})")
    print(f"  + lrkit LrMonitor(act=True)    {med['guard'] * 1e6:8.1f} us  ({med['guard'] / med['bare'] - 1:+.2%}; "
          f"{len(guard.events)} events, the last good snapshot of step {guard.snapshots.step})")
    print(f"  + torch ReduceLROnPlateau.step {med['plateau'] * 1e6:8.1f} us  ({med['plateau'] / med['bare'] - 1:+.2%})")
    print(f"isolated cost per call: Monitor.update {per_update * 1e6:.2f} us "
          f"({per_update / med['bare']:.2%} of a bare step), ReduceLROnPlateau.step {per_plateau * 1e6:.2f} us "
          f"({per_plateau / med['bare']:.2%}); ratio {per_update / per_plateau:.1f}x; Monitor.update with the update "
          f"ratio and alignment {per_update_ur * 1e6:.2f} us ({per_update_ur / med['bare']:.2%})")
    print(f"the guard LrMonitor(act=True).update on its own: {per_guard * 1e6:.2f} us per step, its snapshots included "
          f"(one copy {per_copy * 1e6:.0f} us, about every {g2.snapshots.every + g2.snapshots.confirm_after} steps): "
          f"{per_guard / bare_min:.2%} of a bare step ({bare_min * 1e6:.0f} us; both the fastest of their repeats); "
          f"target < 1%")
    print(f"the guard's update timed inside the training loop (1,800 steps, each timed right after its step): "
          f"{t_guard / 1800 / 1e3:.1f} us per step, {in_loop:.2%} of the step ({len(g3.events)} events: a healthy run)")
    print(f"a {len(crawl)}-step crawl ({per_crawl[True][1]} crawl events): Monitor.update {per_crawl[True][0] * 1e6:.2f} us "
          f"per call with the shape model's factors ({per_crawl[True][0] / med['bare']:.2%} of a bare step), "
          f"{per_crawl[False][0] * 1e6:.2f} us with fixed factors")
    print(f"update-to-weight ratio (UpdateRatio before + after) {per_ratio * 1e6:.1f} us ({per_ratio / med['bare']:.2%} "
          f"of a bare step); total gradient norm (clip_grad_norm_) {per_gn * 1e6:.1f} us "
          f"({per_gn / med['bare']:.2%}); ratio {per_ratio / per_gn:.1f}x")
    print(f"update ratio + gradient alignment (UpdateRatio(alignment=True), LrMonitor(update_ratio=True)) "
          f"{per_al * 1e6:.1f} us ({per_al / med['bare']:.2%} of a bare step); {per_al / per_gn:.1f}x the gradient norm")
    ours, theirs = statistics.median(costs["ours"]), statistics.median(costs["torch"])
    print(f"total norm of the gradients: lrkit's total_norm {ours * 1e6:.1f} us, torch.nn.utils.get_total_norm "
          f"{theirs * 1e6:.1f} us; ratio {ours / theirs:.2f}")


if __name__ == "__main__":
    main()
