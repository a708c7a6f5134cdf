"""The LR schedules the benchmark compares, each at the paper's settings where it has them.

A schedule row builds the optimizer and whatever changes its LR, and is driven
once per epoch by ``end_epoch(val_loss)``. Rows:

- ``constant``: the initial LR throughout;
- ``step``: MultiStepLR at 30/60/80 % of the epochs, gamma 0.2 (the paper's
  60/120/160 of 200 epochs, gamma = AutoDrop's factor);
- ``cosine``: CosineAnnealingLR over all epochs down to 0;
- ``plateau``: ReduceLROnPlateau on the validation loss, torch defaults
  (patience 10, threshold 1e-4 relative) except factor 0.2;
- ``autodrop``: AutoDrop at the library's defaults (the trend-test detector,
  factor 0.2, min LR 1e-4, averaging on) and delay 20, scaled down only when the
  run is shorter than the paper's 200 epochs (see :func:`autodrop_delay`);
- ``autodrop-paper``: the same with the paper's detector (threshold 0.01 deg,
  max threshold 1 deg, window 1): the faithful reproduction;
- ``autodrop-smooth``: the paper's rule on omega averaged over 5 epochs with
  threshold 0.2 deg, an earlier non-paper option kept for comparison;
- ``autodrop-stop``: ``autodrop`` with ``max_drops=1``, and the run stops at
  ``AutoDrop.converged`` (the epochs are then only a cap);
- ``step-earlystop``: ``step``, and the run stops as Lightning's
  ``EarlyStopping(monitor="val_loss", patience=10)`` would: after 10 epochs in
  a row without a validation loss below the best so far;
- ``activesgd`` / ``activeadamw``: the ActiveLR optimizers at their faithful
  defaults (lr_high 2.0, lr_low 0.5) with no LR schedule, as their authors ran
  them; the row builds the optimizer and ends its epoch once per epoch.

Optimizers: SGD with Nesterov momentum 0.9 and weight decay 5e-4 (the paper's),
or AdamW (torch defaults, weight decay 1e-2).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from ...optim import ActiveAdamW, ActiveSGD
from ...scheduler import AutoDrop

__all__ = [
    "PAPER_DELAY",
    "PAPER_EPOCHS",
    "SCHEDULES",
    "Control",
    "EarlyStopping",
    "Schedule",
    "Setup",
    "autodrop_delay",
]

PAPER_EPOCHS = 200
PAPER_DELAY = 20
OPTIMIZERS: dict[str, dict[str, Any]] = {
    "sgd": {"momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
    "adamw": {"weight_decay": 1e-2},
}


def autodrop_delay(epochs: int) -> int:
    """The paper's delay n_d = 20 of 200 epochs; for shorter runs the same 1:10 ratio, at least 1."""
    if epochs >= PAPER_EPOCHS:
        return PAPER_DELAY
    return max(1, round(PAPER_DELAY * epochs / PAPER_EPOCHS))


@dataclass
class Setup:
    """What a schedule row needs to build its optimizer and LR control.

    Args:
        model: the model (its parameters are optimized).
        lr: initial LR.
        optimizer: ``"sgd"`` or ``"adamw"`` (the run's optimizer family).
        epochs: planned number of epochs.
        refresh_batchnorm: recomputes BatchNorm statistics on the training
            inputs (called after AutoDrop averages the parameters).
    """

    model: nn.Module
    lr: float
    optimizer: str
    epochs: int
    refresh_batchnorm: Callable[[], None]


@dataclass
class Control:
    """A built row: the optimizer, the per-epoch hook, the AutoDrop scheduler if there is one,
    and ``should_stop()``, asked after every epoch's ``end_epoch`` (True ends the run there)."""

    optimizer: Optimizer
    end_epoch: Callable[[float], None]
    autodrop: AutoDrop | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    should_stop: Callable[[], bool] = lambda: False


class EarlyStopping:
    """Lightning's ``EarlyStopping(monitor="val_loss", mode="min", patience, min_delta=0)``:
    stop once ``patience`` epochs in a row brought no validation loss below the best so far."""

    def __init__(self, patience: int = 10) -> None:
        self.patience = patience
        self.best = math.inf
        self.epochs_without_improvement = 0

    def update(self, val_loss: float) -> None:
        if val_loss < self.best:
            self.best, self.epochs_without_improvement = val_loss, 0
        else:
            self.epochs_without_improvement += 1

    @property
    def should_stop(self) -> bool:
        return self.epochs_without_improvement >= self.patience


@dataclass(frozen=True)
class Schedule:
    """A registry row: a name, a line for the report, its builder, and its optimizer family
    (``None``: the run's ``--optimizer``; a row that builds its own optimizer names one)."""

    name: str
    description: str
    build: Callable[[Setup], Control]
    optimizer: str | None = None


def make_optimizer(setup: Setup) -> Optimizer:
    """SGD (Nesterov 0.9, weight decay 5e-4) or AdamW (weight decay 1e-2) at ``setup.lr``."""
    cls = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}[setup.optimizer]
    return cls(setup.model.parameters(), lr=setup.lr, **OPTIMIZERS[setup.optimizer])


def _constant(setup: Setup) -> Control:
    return Control(make_optimizer(setup), lambda val_loss: None)


def _step(setup: Setup) -> Control:
    optimizer = make_optimizer(setup)
    milestones = sorted({max(1, round(f * setup.epochs)) for f in (0.3, 0.6, 0.8)})
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.2)
    return Control(optimizer, lambda val_loss: scheduler.step(), settings={"milestones": milestones})


def _step_early_stopping(setup: Setup) -> Control:
    control = _step(setup)
    stopping = EarlyStopping(patience=10)

    def end_epoch(val_loss: float) -> None:
        control.end_epoch(val_loss)
        stopping.update(val_loss)

    return Control(
        control.optimizer,
        end_epoch,
        settings={**control.settings, "patience": stopping.patience},
        should_stop=lambda: stopping.should_stop,
    )


def _cosine(setup: Setup) -> Control:
    optimizer = make_optimizer(setup)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=setup.epochs)
    return Control(optimizer, lambda val_loss: scheduler.step())


def _plateau(setup: Setup) -> Control:
    optimizer = make_optimizer(setup)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.2)
    return Control(optimizer, scheduler.step)


def _autodrop(stop_when_converged: bool = False, **options: Any) -> Callable[[Setup], Control]:
    def build(setup: Setup) -> Control:
        optimizer = make_optimizer(setup)
        settings = {"delay": autodrop_delay(setup.epochs), **options}
        scheduler = AutoDrop(optimizer, after_average=setup.refresh_batchnorm, **settings)
        should_stop = (lambda: scheduler.converged) if stop_when_converged else (lambda: False)
        return Control(
            optimizer, lambda val_loss: scheduler.step(), autodrop=scheduler, settings=settings, should_stop=should_stop
        )

    return build


def _active(cls: type[Optimizer]) -> Callable[[Setup], Control]:
    """ActiveLR with no LR schedule, as its authors ran it; its epoch ends at each ``end_epoch``."""

    def build(setup: Setup) -> Control:
        optimizer = cls(setup.model.parameters(), lr=setup.lr, **OPTIMIZERS[setup.optimizer])
        return Control(optimizer, lambda val_loss: optimizer.end_epoch())

    return build


SCHEDULES: dict[str, Schedule] = {
    row.name: row
    for row in (
        Schedule("constant", "constant LR", _constant),
        Schedule("step", "MultiStepLR at 30/60/80% of the epochs, gamma 0.2", _step),
        Schedule(
            "step-earlystop", "step, stopped by early stopping on validation loss (patience 10)", _step_early_stopping
        ),
        Schedule("cosine", "cosine annealing to 0 over the run", _cosine),
        Schedule("plateau", "ReduceLROnPlateau on validation loss, factor 0.2, patience 10", _plateau),
        Schedule("autodrop", "AutoDrop, library defaults (trend-test detector)", _autodrop()),
        Schedule(
            "autodrop-stop",
            "AutoDrop, library defaults, max_drops=1, stops when converged",
            _autodrop(stop_when_converged=True, max_drops=1),
        ),
        Schedule(
            "autodrop-paper",
            "AutoDrop, the paper's detector (threshold 0.01 deg, window 1)",
            _autodrop(detector="paper"),
        ),
        Schedule(
            "autodrop-smooth",
            "AutoDrop, paper's rule on omega averaged over 5 epochs, threshold 0.2 deg",
            _autodrop(detector="paper", window=5, threshold=0.2),
        ),
        Schedule(
            "activesgd",
            "ActiveSGD (ActiveLR, lr_high 2, lr_low 0.5), no LR schedule",
            _active(ActiveSGD),
            optimizer="sgd",
        ),
        Schedule(
            "activeadamw",
            "ActiveAdamW (ActiveLR, lr_high 2, lr_low 0.5), no LR schedule",
            _active(ActiveAdamW),
            optimizer="adamw",
        ),
    )
}
