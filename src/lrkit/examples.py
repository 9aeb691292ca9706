"""Built-in example tasks on data bundled with scikit-learn (no download), for ``lrkit find --example NAME``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lrkit.errors import LrkitError, missing_extra


def _digits(batch_size: int = 64, seed: int = 0) -> tuple[Any, ...]:
    try:
        import torch
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise missing_extra(e.name or "torch", "torch") from e
    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    train, val = perm[:1400], perm[1400:]
    return x, y, train, val, g, torch


def digits(batch_size: int = 64, seed: int = 0) -> tuple[Any, ...]:
    """8x8 handwritten digits (1,797 images, 10 classes), an MLP 64-128-10 with Adam.

    Returns (model, optimizer, criterion, train_loader, val_loader)."""
    x, y, train, val, g, torch = _digits(batch_size, seed)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    ds = torch.utils.data.TensorDataset
    train_loader = torch.utils.data.DataLoader(ds(x[train], y[train]), batch_size=batch_size, shuffle=True,
                                               generator=g)
    val_loader = torch.utils.data.DataLoader(ds(x[val], y[val]), batch_size=256)
    return model, optimizer, torch.nn.CrossEntropyLoss(), train_loader, val_loader


def digits_cnn(batch_size: int = 64, seed: int = 0) -> tuple[Any, ...]:
    """The digits as 1x8x8 images, a small CNN with BatchNorm and SGD with momentum 0.9.

    Returns (model, optimizer, criterion, train_loader, val_loader)."""
    x, y, train, val, g, torch = _digits(batch_size, seed)
    x = x.reshape(-1, 1, 8, 8)
    torch.manual_seed(seed)
    nn = torch.nn
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Linear(128, 10),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ds = torch.utils.data.TensorDataset
    train_loader = torch.utils.data.DataLoader(ds(x[train], y[train]), batch_size=batch_size, shuffle=True,
                                               generator=g)
    val_loader = torch.utils.data.DataLoader(ds(x[val], y[val]), batch_size=256)
    return model, optimizer, nn.CrossEntropyLoss(), train_loader, val_loader


EXAMPLES: dict[str, Callable[..., tuple[Any, ...]]] = {"digits": digits, "digits-cnn": digits_cnn}


def load_example(name: str, **kwargs: Any) -> tuple[Any, ...]:
    """Build the example task ``name``: (model, optimizer, criterion, train_loader, val_loader)."""
    if name not in EXAMPLES:
        raise LrkitError(f"unknown example {name!r}; choose one of: {', '.join(sorted(EXAMPLES))}")
    return EXAMPLES[name](**kwargs)
