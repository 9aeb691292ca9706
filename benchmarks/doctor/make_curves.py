"""Train small real models over an lr grid and cache their per-step training curves (the doctor's labelled set).

Run: ``python benchmarks/doctor/make_curves.py`` (about 2-4 minutes on one CPU thread; cached in
``benchmarks/doctor/.cache/curves.npz``; rerun with ``--force`` to regenerate).
Each task is (data, architecture, optimiser); each run records the raw minibatch loss, the gradient norm and
the lr at every optimiser step.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

CACHE = os.path.join(os.path.dirname(__file__), ".cache", "curves.npz")
STEPS = 300
BATCH = 32
GRID = 2.0 ** np.arange(-17, 5)  # 7.6e-6 .. 16, factor 2 apart
SEEDS = (0, 1)


def _data(name: str):
    x, y, kind = _clean_data(name)
    if kind == "clf":  # 15% of labels shuffled: the training loss has a floor, so "best lr" is well defined
        rng = np.random.default_rng(0)
        flip = rng.random(len(y)) < 0.15
        y = y.copy()
        y[flip] = rng.integers(0, int(y.max()) + 1, int(flip.sum()))
    return x, y, kind


def _clean_data(name: str):
    from sklearn import datasets
    from sklearn.preprocessing import StandardScaler

    if name == "digits":
        d = datasets.load_digits()
        return d.data / 16.0, d.target, "clf"
    if name == "cancer":
        d = datasets.load_breast_cancer()
        return StandardScaler().fit_transform(d.data), d.target, "clf"
    if name == "wine":
        d = datasets.load_wine()
        return StandardScaler().fit_transform(d.data), d.target, "clf"
    if name == "blobs":
        x, y = datasets.make_classification(n_samples=3000, n_features=20, n_informative=10, n_classes=4,
                                            flip_y=0.05, random_state=0)
        return x, y, "clf"
    if name == "diabetes":
        d = datasets.load_diabetes()
        y = (d.target - d.target.mean()) / d.target.std()
        return StandardScaler().fit_transform(d.data), y, "reg"
    if name == "friedman":
        x, y = datasets.make_friedman1(n_samples=2000, noise=0.5, random_state=0)
        return x, (y - y.mean()) / y.std(), "reg"
    raise ValueError(name)


def _model(arch: str, n_in: int, n_out: int, torch):
    nn = torch.nn
    if arch == "linear":
        return nn.Linear(n_in, n_out)
    if arch == "mlp":
        return nn.Sequential(nn.Linear(n_in, 64), nn.ReLU(), nn.Linear(64, n_out))
    if arch == "deep_tanh":
        return nn.Sequential(nn.Linear(n_in, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(),
                             nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, n_out))
    if arch == "resmlp_ln":
        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.ln, self.fc = nn.LayerNorm(64), nn.Linear(64, 64)

            def forward(self, x):
                return x + self.fc(torch.relu(self.ln(x)))
        return nn.Sequential(nn.Linear(n_in, 64), Block(), Block(), nn.LayerNorm(64), nn.Linear(64, n_out))
    if arch == "cnn":
        return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                             nn.Linear(64, n_out))
    raise ValueError(arch)


def _optim(name: str, params, lr: float, torch):
    o = torch.optim
    return {"sgd": lambda: o.SGD(params, lr=lr), "momentum": lambda: o.SGD(params, lr=lr, momentum=0.9),
            "adam": lambda: o.Adam(params, lr=lr), "adamw": lambda: o.AdamW(params, lr=lr, weight_decay=0.01),
            "rmsprop": lambda: o.RMSprop(params, lr=lr), "adagrad": lambda: o.Adagrad(params, lr=lr)}[name]()


# (data, architecture, optimiser); the last third (HELD_OUT) is never used to tune the doctor's thresholds
TASKS = [
    ("digits", "mlp", "adam"), ("digits", "cnn", "momentum"), ("cancer", "linear", "sgd"),
    ("blobs", "deep_tanh", "rmsprop"), ("diabetes", "mlp", "momentum"), ("wine", "mlp", "adamw"),
    ("friedman", "resmlp_ln", "adam"), ("digits", "linear", "adagrad"),
    # held out
    ("blobs", "mlp", "sgd"), ("digits", "resmlp_ln", "adamw"), ("friedman", "deep_tanh", "momentum"),
    ("cancer", "mlp", "rmsprop"),
]
HELD_OUT = {"|".join(t) for t in TASKS[8:]}


def run(data: str, arch: str, opt: str, lr: float, seed: int):
    import torch

    x, y, kind = _data(data)
    x = torch.tensor(x, dtype=torch.float32)
    n_out = int(y.max()) + 1 if kind == "clf" else 1
    y = torch.tensor(y, dtype=torch.long if kind == "clf" else torch.float32)
    torch.manual_seed(seed)
    model = _model(arch, x.shape[1], n_out, torch)
    optim = _optim(opt, model.parameters(), lr, torch)
    crit = torch.nn.CrossEntropyLoss() if kind == "clf" else torch.nn.MSELoss()
    g = torch.Generator().manual_seed(seed)
    losses, gnorms = np.full(STEPS, np.nan), np.full(STEPS, np.nan)
    perm, pos = torch.randperm(len(x), generator=g), 0
    for t in range(STEPS):
        if pos + BATCH > len(x):
            perm, pos = torch.randperm(len(x), generator=g), 0
        idx = perm[pos:pos + BATCH]
        pos += BATCH
        out = model(x[idx])
        loss = crit(out.squeeze(-1) if kind == "reg" else out, y[idx])
        optim.zero_grad()
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
        losses[t], gnorms[t] = loss.item(), gn.item()
        if not np.isfinite(losses[t]):
            break  # diverged: the rest stays NaN, as a real log would end
        optim.step()
    return losses, gnorms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    if os.path.exists(CACHE) and not args.force:
        print(f"cached: {CACHE}")
        return
    import torch

    torch.set_num_threads(1)
    t0 = time.time()
    keys, lrs, seeds, L, G = [], [], [], [], []
    for task in TASKS:
        for seed in SEEDS:
            for lr in GRID:
                loss, gn = run(*task, float(lr), seed)
                keys.append("|".join(task))
                lrs.append(lr)
                seeds.append(seed)
                L.append(loss)
                G.append(gn)
        print(f"{'|'.join(task):28s} done, {time.time() - t0:.0f}s", flush=True)
    os.makedirs(os.path.dirname(CACHE), exist_ok=True)
    tmp = CACHE + ".tmp.npz"
    np.savez_compressed(tmp, task=np.array(keys), lr=np.array(lrs), seed=np.array(seeds),
                        loss=np.array(L, dtype=np.float32), grad_norm=np.array(G, dtype=np.float32), steps=STEPS)
    os.replace(tmp, CACHE)
    print(f"wrote {len(keys)} curves to {CACHE} in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
