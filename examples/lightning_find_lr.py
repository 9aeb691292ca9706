"""Find an lr for a LightningModule with lrkit, then train with it and an lrkit schedule (CPU, a few seconds)."""

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lrkit.lightning


class Classifier(pl.LightningModule):
    def __init__(self, lr: float = 1e-3) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 2))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(1024, 20)
    y = (x[:, 0] + x[:, 1] ** 2 > 1).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    model = Classifier()
    trainer = pl.Trainer(max_steps=100, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_model_summary=False, enable_progress_bar=False,
                         callbacks=[lrkit.lightning.ScheduleCallback("warmup(10) >> cosine(3e-3, 90)")])
    result = lrkit.lightning.find_lr(trainer, model, train_dataloaders=loader, num_iter=100, apply=True,
                                     progress=False)
    print(result)
    print("model.lr is now", model.lr)
    trainer.fit(model, train_dataloaders=loader)  # starts from step 0, weights as before the test
    print("trained", trainer.global_step, "steps; last loss", float(trainer.callback_metrics["train_loss"]))


if __name__ == "__main__":
    main()
