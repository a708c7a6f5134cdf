"""AutoDrop inside PyTorch Lightning: an MLP on MNIST-1D (generated locally, no download).

AutoDrop is returned from ``configure_optimizers`` like any LR scheduler; the
callback logs omega, the detector's statistics, LR and drops to the Trainer's logger (a CSV
logger here) and would refresh BatchNorm statistics after an averaging drop.

    pip install 'autodrop[lightning,bench]'
    python examples/lightning_mnist1d.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from autodrop import AutoDrop, write_history_csv
from autodrop.apps.bench.tasks import mnist1d_tensors
from autodrop.integrations.lightning import AutoDropCallback


class MLP(L.LightningModule):
    def __init__(self, lr: float, delay: int):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(40, 100),
            torch.nn.ReLU(),
            torch.nn.Linear(100, 100),
            torch.nn.ReLU(),
            torch.nn.Linear(100, 10),
        )

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_error", (self(x).argmax(1) != y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        h = self.hparams
        optimizer = torch.optim.SGD(self.parameters(), lr=h.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
        scheduler = AutoDrop(optimizer, delay=h.delay)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results/lightning_mnist1d"))
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--samples", type=int, default=8000)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--delay", type=int, default=5)
    args = parser.parse_args()

    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    x, y, x_test, y_test = mnist1d_tensors(args.samples)
    train = DataLoader(TensorDataset(x, y), batch_size=128, shuffle=True)
    test = DataLoader(TensorDataset(x_test, y_test), batch_size=1000)
    model = MLP(args.lr, args.delay)
    callback = AutoDropCallback()
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        default_root_dir=args.out,
        logger=CSVLogger(args.out, name="logs"),
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=10,
    )
    trainer.fit(model, train, test)

    scheduler = callback.scheduler
    for record in scheduler.history:
        if record["event"] is not None:
            print(
                f"epoch {record['interval']:3d}: {record['event']:7s} omega {record['omega']:6.2f} deg, "
                f"lr {record['lrs'][0]:.2e}"
            )
    table = write_history_csv(scheduler.history, args.out / "history.csv")
    print(
        f"{scheduler.num_drops} drops; final lr {scheduler.get_last_lr()[0]:.2e}; "
        f"val error {100 * trainer.callback_metrics['val_error'].item():.2f}%; "
        f"logger metrics: {trainer.logger.experiment.metrics_file_path}; history: {table}"
    )


if __name__ == "__main__":
    main()
