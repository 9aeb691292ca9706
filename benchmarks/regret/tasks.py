"""The regret suite: every task in one file, so another suite can be swapped in (``--tasks path/to/file.py``).

A task builds, for a seed, a model, train/val tensors, a criterion and an optimiser factory. Data are bundled
with scikit-learn or generated (no download). Each task trains for a fixed budget of ``steps`` optimiser steps at
a constant lr; its score is the best validation loss seen (evaluated every ``eval_every`` steps; a non-finite loss counts as the untrained model's loss).
``holdout=True`` tasks were not looked at while the default rule was tuned.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import torch
from torch import nn

CACHE = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache")


@dataclass(frozen=True)
class Task:
    name: str
    family: str            # "adam" (Adam-like: Adam, AdamW, RMSprop) or "sgd"
    optimizer: str         # "adam" | "adamw" | "sgd" | "sgdm" | "rmsprop"
    batch_size: int
    steps: int
    build: Callable[[int], tuple]  # seed -> (model, (x_train, y_train), (x_val, y_val), criterion)
    grid: tuple[int, int] = (-15, 1)  # grid lrs are 10**(k/3) for k in [lo, hi]
    eval_every: int = 20
    holdout: bool = False
    notes: str = ""
    extra: dict = field(default_factory=dict)


def make_optimizer(task: Task, params, lr: float, kind: str | None = None) -> torch.optim.Optimizer:
    """The task's optimiser at ``lr``; ``kind`` overrides it ("schedulefree", "prodigy" for the lr-free peers)."""
    kind = kind or task.optimizer
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if kind == "sgdm":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if kind == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr)
    if kind == "schedulefree":
        import schedulefree
        return schedulefree.AdamWScheduleFree(params, lr=lr)
    if kind == "prodigy":
        import prodigyopt
        return prodigyopt.Prodigy(params, lr=lr)
    raise ValueError(kind)


# ---- data ----------------------------------------------------------------------------------------------------
def _split(x: np.ndarray, y: np.ndarray, n_val: int, seed: int = 1234):
    perm = np.random.default_rng(seed).permutation(len(x))
    va, tr = perm[:n_val], perm[n_val:]
    return x[tr], y[tr], x[va], y[va]


def _standardize(xtr, xva):
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-8
    return (xtr - mu) / sd, (xva - mu) / sd


def _t(a, dtype=torch.float32):
    return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype)


@cache
def _tabular(name: str):
    from sklearn import datasets
    if name == "digits":
        d = datasets.load_digits()
        x, y = d.data / 16.0, d.target
        xtr, ytr, xva, yva = _split(x, y, 400)
        return _t(xtr), _t(ytr, torch.long), _t(xva), _t(yva, torch.long)
    if name == "digits_noisy":
        d = datasets.load_digits()
        x, y = d.data / 16.0, d.target.copy()
        xtr, ytr, xva, yva = _split(x, y, 400)
        rng = np.random.default_rng(7)
        flip = rng.random(len(ytr)) < 0.4  # 40% of training labels replaced at random; validation stays clean
        ytr = ytr.copy()
        ytr[flip] = rng.integers(0, 10, flip.sum())
        return _t(xtr), _t(ytr, torch.long), _t(xva), _t(yva, torch.long)
    if name == "breast_cancer":
        x, y = datasets.load_breast_cancer(return_X_y=True)
        xtr, ytr, xva, yva = _split(x, y.astype(np.float32), 170)
        xtr, xva = _standardize(xtr, xva)
        return _t(xtr), _t(ytr[:, None]), _t(xva), _t(yva[:, None])
    if name == "wine":
        x, y = datasets.load_wine(return_X_y=True)
        xtr, ytr, xva, yva = _split(x, y, 60)
        xtr, xva = _standardize(xtr, xva)
        return _t(xtr), _t(ytr, torch.long), _t(xva), _t(yva, torch.long)
    if name == "diabetes":
        x, y = datasets.load_diabetes(return_X_y=True)
        xtr, ytr, xva, yva = _split(x, y, 140)
        xtr, xva = _standardize(xtr, xva)
        mu, sd = ytr.mean(), ytr.std()
        return _t(xtr), _t((ytr - mu)[:, None] / sd), _t(xva), _t((yva - mu)[:, None] / sd)
    if name == "noisy_blobs":
        x, y = datasets.make_classification(n_samples=3000, n_features=20, n_informative=8, n_classes=4,
                                            n_clusters_per_class=2, flip_y=0.3, random_state=3)
        xtr, ytr, xva, yva = _split(x, y, 800)
        return _t(xtr), _t(ytr, torch.long), _t(xva), _t(yva, torch.long)
    if name == "regression":
        x, y = datasets.make_regression(n_samples=2000, n_features=50, n_informative=20, noise=20.0,
                                        random_state=5)
        y = y + 0.002 * y**2  # a mild non-linearity so the MLP has something to learn beyond a linear fit
        xtr, ytr, xva, yva = _split(x, y, 600)
        mu, sd = ytr.mean(), ytr.std()
        return _t(xtr), _t((ytr - mu)[:, None] / sd), _t(xva), _t((yva - mu)[:, None] / sd)
    raise KeyError(name)


def _markov_text(n_seq: int, seq_len: int, vocab: int, chain_seed: int, data_seed: int, alpha: float = 0.15,
                 mix: float = 0.0, mix_seed: int = 0) -> torch.Tensor:
    """Sequences from a random order-2 Markov chain (sparse Dirichlet rows); ``mix`` blends in a second chain."""
    rng = np.random.default_rng(chain_seed)
    probs = rng.dirichlet(np.full(vocab, alpha), size=(vocab, vocab))
    if mix:
        other = np.random.default_rng(mix_seed).dirichlet(np.full(vocab, alpha), size=(vocab, vocab))
        probs = (1 - mix) * probs + mix * other
    cum = probs.cumsum(-1)
    r = np.random.default_rng(data_seed)
    out = np.empty((n_seq, seq_len), dtype=np.int64)
    out[:, :2] = r.integers(0, vocab, (n_seq, 2))
    u = r.random((n_seq, seq_len))
    for t in range(2, seq_len):
        c = cum[out[:, t - 2], out[:, t - 1]]
        out[:, t] = np.minimum((u[:, t : t + 1] > c).sum(-1), vocab - 1)
    return torch.as_tensor(out)


def _dyck_text(n_seq: int, seq_len: int, data_seed: int) -> torch.Tensor:
    """Well-nested bracket strings over 3 bracket kinds (tokens 0..5) with filler tokens 6..9."""
    r = np.random.default_rng(data_seed)
    out = np.empty((n_seq, seq_len), dtype=np.int64)
    for i in range(n_seq):
        stack: list[int] = []
        for t in range(seq_len):
            u = r.random()
            if stack and (u < 0.4 or len(stack) > 6):
                out[i, t] = stack.pop() + 3
            elif u < 0.8:
                k = int(r.integers(0, 3))
                stack.append(k)
                out[i, t] = k
            else:
                out[i, t] = 6 + int(r.integers(0, 4))
    return torch.as_tensor(out)


# ---- models --------------------------------------------------------------------------------------------------
def mlp(*sizes: int) -> nn.Module:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class LM(nn.Module):
    """Embedding -> GRU/LSTM -> linear; input a (B, T) token tensor, output (B, T-1, V) next-token logits."""

    def __init__(self, vocab: int, cell: str, hidden: int = 64, emb: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.rnn = (nn.GRU if cell == "gru" else nn.LSTM)(emb, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.emb(x[:, :-1]))
        return self.head(out)


def lm_loss(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))


class GPT(nn.Module):
    """A tiny GPT-2 (transformers' GPT2LMHeadModel) returning next-token logits, like :class:`LM`."""

    def __init__(self, vocab: int, seq_len: int) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel
        from transformers.utils import logging
        logging.set_verbosity_error()
        cfg = GPT2Config(vocab_size=vocab, n_positions=seq_len, n_embd=32, n_layer=2, n_head=2,
                         bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        self.gpt = GPT2LMHeadModel(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gpt(input_ids=x[:, :-1]).logits


_GPT_VOCAB, _GPT_LEN = 20, 16


def _pretrained_gpt() -> dict:
    """Pretrain the tiny GPT-2 once (800 AdamW steps on Markov chain A) and cache its weights on disk."""
    path = os.path.join(CACHE, "gpt2_pretrained_v2.pt")
    if os.path.exists(path):
        return torch.load(path, weights_only=True)
    torch.manual_seed(0)
    model = GPT(_GPT_VOCAB, _GPT_LEN)
    data = _markov_text(8192, _GPT_LEN, _GPT_VOCAB, chain_seed=11, data_seed=12)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    for _ in range(800):
        idx = torch.randint(0, len(data), (64,), generator=g)
        opt.zero_grad()
        lm_loss(model(data[idx]), data[idx]).backward()
        opt.step()
    os.makedirs(CACHE, exist_ok=True)
    state = model.state_dict()
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)
    return state


# ---- builders ------------------------------------------------------------------------------------------------
def _build_tab(name: str, model_fn: Callable[[], nn.Module], criterion: nn.Module):
    def build(seed: int):
        xtr, ytr, xva, yva = _tabular(name)
        torch.manual_seed(seed)
        return model_fn(), (xtr, ytr), (xva, yva), criterion
    return build


def _build_cnn(seed: int):
    xtr, ytr, xva, yva = _tabular("digits")
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Linear(64, 10))
    return model, (xtr, ytr), (xva, yva), nn.CrossEntropyLoss()


@cache
def _gru_data():
    return (_markov_text(2000, 24, 16, chain_seed=1, data_seed=2), _markov_text(300, 24, 16, chain_seed=1,
                                                                                   data_seed=3))


def _build_gru(seed: int):
    tr, va = _gru_data()
    torch.manual_seed(seed)
    return LM(16, "gru"), (tr, tr), (va, va), lm_loss


@cache
def _dyck_data():
    return _dyck_text(2000, 24, 4), _dyck_text(300, 24, 5)


def _build_lstm(seed: int):
    tr, va = _dyck_data()
    torch.manual_seed(seed)
    return LM(10, "lstm", hidden=48), (tr, tr), (va, va), lm_loss


@cache
def _ft_data():
    kw = dict(seq_len=_GPT_LEN, vocab=_GPT_VOCAB, chain_seed=11, mix=0.2, mix_seed=21)
    return _markov_text(64, data_seed=31, **kw), _markov_text(512, data_seed=32, **kw)


def _build_gpt(seed: int):
    state = _pretrained_gpt()
    tr, va = _ft_data()
    torch.manual_seed(seed)
    model = GPT(_GPT_VOCAB, _GPT_LEN)
    model.load_state_dict(state)
    return model, (tr, tr), (va, va), lm_loss


TASKS: list[Task] = [
    Task("digits_mlp_adam", "adam", "adam", 32, 200, _build_tab("digits", lambda: mlp(64, 64, 10),
                                                                  nn.CrossEntropyLoss())),
    Task("digits_cnn_bn_sgdm", "sgd", "sgdm", 64, 150, _build_cnn, notes="CNN with BatchNorm"),
    Task("diabetes_mlp_adamw_mse", "adam", "adamw", 32, 200,
         _build_tab("diabetes", lambda: mlp(10, 64, 1), nn.MSELoss()), notes="regression"),
    Task("noisy_labels_mlp_adam", "adam", "adam", 128, 200,
         _build_tab("noisy_blobs", lambda: mlp(20, 128, 128, 4), nn.CrossEntropyLoss()),
         notes="make_classification, 30% flipped labels"),
    Task("regression_huber_sgd", "sgd", "sgd", 64, 200,
         _build_tab("regression", lambda: mlp(50, 64, 1), nn.SmoothL1Loss()), notes="make_regression, Huber"),
    Task("gru_lm_adam", "adam", "adam", 32, 150, _build_gru, notes="order-2 Markov text"),
    Task("gpt2_finetune_adamw", "adam", "adamw", 16, 100, _build_gpt, grid=(-18, -3), eval_every=10,
         notes="tiny GPT-2 pretrained on chain A, fine-tuned on 64 sequences of a shifted chain"),
    # held out while tuning
    Task("breast_cancer_mlp_rmsprop", "adam", "rmsprop", 16, 150,
         _build_tab("breast_cancer", lambda: mlp(30, 32, 1), nn.BCEWithLogitsLoss()), holdout=True),
    Task("wine_mlp_sgdm", "sgd", "sgdm", 16, 150,
         _build_tab("wine", lambda: mlp(13, 32, 3), nn.CrossEntropyLoss()), holdout=True),
    Task("dyck_lstm_sgdm", "sgd", "sgdm", 32, 150, _build_lstm, grid=(-15, 3), holdout=True, notes="nested brackets"),
    Task("digits_noisy_mlp_adamw_bs8", "adam", "adamw", 8, 200,
         _build_tab("digits_noisy", lambda: mlp(64, 128, 10), nn.CrossEntropyLoss()), holdout=True,
         notes="40% noisy labels, batch 8"),
]
