"""The LR range test on a plain PyTorch model: find an lr, print why, save the curve and the figure.

    python examples/torch_find.py
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lrkit


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(2048, 20)
    y = (x[:, :5].sum(1) > 0).long()
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)

    result = lrkit.find_lr(model, optimizer, nn.CrossEntropyLoss(), loader)
    print(result)
    result.save("torch_find.json")
    result.plot("torch_find.png", rules=["steepest", "minimum"])


if __name__ == "__main__":
    main()
