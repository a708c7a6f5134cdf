"""AutoDrop inside the Hugging Face Trainer: a tiny BERT built from a config (offline, no hub).

The task is synthetic: a sequence of 16 tokens is positive when token 1 occurs
more often than token 2. The Trainer keeps a constant LR (``lr_scheduler_type=
"constant"``, required); AutoDropCallback drops it at epoch ends, logs through
the Trainer and saves its state in every checkpoint. ``--resume`` continues the
last checkpoint in ``--out``.

    pip install 'autodrop[transformers]'
    python examples/hf_trainer_tiny.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from autodrop import TrendTest
from autodrop.integrations.transformers import AutoDropCallback

VOCAB, LENGTH = 12, 16


class CountTask(torch.utils.data.Dataset):
    def __init__(self, size: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.tokens = torch.randint(1, VOCAB, (size, LENGTH), generator=generator)
        self.labels = ((self.tokens == 1).sum(1) > (self.tokens == 2).sum(1)).long()

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokens[index], "labels": self.labels[index]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results/hf_trainer_tiny"))
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--max-wait",
        type=int,
        default=10,
        help="the trend test's maximum wait in epochs, sized for this short run (default 10)",
    )
    parser.add_argument("--delay", type=int, default=2)
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=LENGTH,
        num_labels=2,
    )
    training = TrainingArguments(
        output_dir=str(args.out),
        num_train_epochs=args.epochs,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        per_device_train_batch_size=64,
        per_device_eval_batch_size=256,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=2,
        logging_strategy="epoch",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=BertForSequenceClassification(config),
        args=training,
        train_dataset=CountTask(2048, seed=0),
        eval_dataset=CountTask(512, seed=1),
        compute_metrics=lambda p: {"error": float((p.predictions.argmax(-1) != p.label_ids).mean())},
    )
    callback = AutoDropCallback(trainer, detector=TrendTest(max_wait=args.max_wait), delay=args.delay, min_lr=1e-6)
    trainer.add_callback(callback)
    trainer.train(resume_from_checkpoint=True if args.resume else None)

    for record in callback.scheduler.history:
        if record["event"] is not None:
            print(
                f"epoch {record['interval']:3d}: {record['event']:7s} omega {record['omega']:6.2f} deg, "
                f"lr {record['lrs'][0]:.2e}"
            )
    errors = [entry["eval_error"] for entry in trainer.state.log_history if "eval_error" in entry]
    print(
        f"{callback.scheduler.num_drops} drops; final lr {callback.scheduler.get_last_lr()[0]:.2e}; "
        f"eval error {100 * errors[-1]:.2f}% (best {100 * min(errors):.2f}%)"
    )


if __name__ == "__main__":
    main()
