"""Find an lr for a Hugging Face Trainer (a tiny GPT-2 built from a config, counting tokens; no download),
then train with it under an lrkit schedule (CPU, a few seconds)."""

import tempfile

import torch
import transformers

import lrkit.transformers


class CountingTokens(torch.utils.data.Dataset):
    """Random start tokens, then counting up modulo 64: learnable, so the loss falls well below log(64)."""

    def __init__(self, n: int = 256, length: int = 16) -> None:
        start = torch.randint(0, 64, (n, 1), generator=torch.Generator().manual_seed(0))
        self.ids = (start + torch.arange(length)) % 64

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def main() -> None:
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=64, n_positions=32)
    model = transformers.GPT2LMHeadModel(config)
    with tempfile.TemporaryDirectory() as out:
        args = transformers.TrainingArguments(out, per_device_train_batch_size=16, max_steps=40, learning_rate=1e-3,
                                              report_to=[], use_cpu=True, save_strategy="no", logging_steps=10,
                                              disable_tqdm=True)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=CountingTokens())
        result = lrkit.transformers.find_lr(trainer, num_iter=50, end_lr=1.0, apply=True, progress=False)
        print(result)
        lr = trainer.args.learning_rate
        lrkit.transformers.use_schedule(trainer, f"warmup(4) >> cosine({lr:.3g}, 36)")
        trainer.train()
        print("log:", [round(r["loss"], 3) for r in trainer.state.log_history if "loss" in r])


if __name__ == "__main__":
    main()
