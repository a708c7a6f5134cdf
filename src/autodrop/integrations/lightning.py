"""PyTorch Lightning (``lightning`` 2.x): AutoDrop as an ordinary LR scheduler, plus a callback.

AutoDrop is a ``torch.optim.lr_scheduler.LRScheduler``, so Lightning drives it
with its own machinery: return it from ``configure_optimizers`` with
``"interval": "epoch"``; Lightning calls ``step()`` after each training epoch
(before validation, so validation sees the averaged parameters) and saves and
restores ``state_dict()`` in its checkpoints, so ``Trainer.fit(ckpt_path=...)``
continues the same schedule::

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        scheduler = AutoDrop(optimizer, delay=5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

:class:`AutoDropCallback` adds logging, an optional BatchNorm refresh, and can
stop the fit when AutoDrop has converged (``stop_when_converged=True``).
Needs ``pip install 'autodrop[lightning]'``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .._optional import import_optional
from ..history import history_scalars
from ..scheduler import AutoDrop
from ..torch_private import inner_schedulers

pl = import_optional("lightning.pytorch", "lightning", __name__)

__all__ = ["AutoDropCallback", "find_autodrops"]


def find_autodrops(trainer: pl.Trainer) -> list[AutoDrop]:
    """The AutoDrops among the schedulers ``configure_optimizers`` returned, also inside
    ``SequentialLR`` / ``ChainedScheduler``; a ValueError when there is none."""

    def inside(scheduler: Any) -> list[AutoDrop]:
        if isinstance(scheduler, AutoDrop):
            return [scheduler]
        return [found for child in inner_schedulers(scheduler) for found in inside(child)]

    found = [autodrop for config in trainer.lr_scheduler_configs for autodrop in inside(config.scheduler)]
    if not found:
        raise ValueError(
            "AutoDropCallback needs an AutoDrop scheduler returned by configure_optimizers (alone, or inside "
            f"SequentialLR or ChainedScheduler), found none among "
            f"{[type(c.scheduler).__name__ for c in trainer.lr_scheduler_configs]}"
        )
    return found


class AutoDropCallback(pl.Callback):
    """Logs AutoDrop's state to the Trainer's loggers and can refresh BatchNorm after averaging.

    After every ``AutoDrop.step()`` the record's scalars (see
    :mod:`autodrop.history`: omega, delta, threshold, lr, trigger, drop, converged) go to
    every logger of the Trainer as ``prefix + name`` at the current
    ``trainer.global_step``, and each drop and the convergence are announced on
    rank zero. Records already in the history when training starts (a resumed
    run) are not logged again. The AutoDrops are found among the schedulers
    ``configure_optimizers`` returned, also inside ``SequentialLR`` and
    ``ChainedScheduler``; with several (e.g. one per optimizer of a GAN) each
    is logged as ``prefix + index + "/" + name`` and ``stop_when_converged``
    waits for all of them. A step taken by hand in ``on_train_epoch_end`` is logged
    at the next epoch's start, or at the end of training.

    Args:
        refresh_batchnorm: recompute BatchNorm running statistics right after
            AutoDrop replaced the parameters by their average (running statistics
            are buffers and are not averaged), with one pass of
            ``torch.optim.swa_utils.update_bn`` over ``trainer.train_dataloader``
            (default False). AutoDrop's own ``after_average`` must then be None.
        batch_input: maps a training batch to the module's ``forward`` input for
            that pass; ``None`` (default) passes a tensor batch as is and the
            first element of a tuple or list batch.
        prefix: prefix of the logged names (default ``"autodrop/"``).
        stop_when_converged: set ``trainer.should_stop`` once ``AutoDrop.converged``
            is True (default False), e.g. with ``AutoDrop(..., max_drops=2)``;
            ``max_epochs`` is then only a cap. Lightning honours it at the end of
            the epoch, once ``min_epochs`` are done; a fit resumed from a
            checkpoint of a converged run stops before training.

    Example:
        >>> trainer = lightning.Trainer(max_epochs=200, callbacks=[AutoDropCallback(stop_when_converged=True)])
        ... # doctest: +SKIP
    """

    def __init__(
        self,
        refresh_batchnorm: bool = False,
        batch_input: Callable[[Any], Any] | None = None,
        prefix: str = "autodrop/",
        stop_when_converged: bool = False,
    ) -> None:
        if not isinstance(refresh_batchnorm, bool):
            raise TypeError(f"refresh_batchnorm must be a bool, got {refresh_batchnorm!r}")
        if batch_input is not None and not callable(batch_input):
            raise TypeError(f"batch_input must be callable or None, got {batch_input!r}")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {prefix!r}")
        if not isinstance(stop_when_converged, bool):
            raise TypeError(f"stop_when_converged must be a bool, got {stop_when_converged!r}")
        self.stop_when_converged = stop_when_converged
        self.refresh_batchnorm = refresh_batchnorm
        self.batch_input = batch_input
        self.prefix = prefix
        self.schedulers: list[AutoDrop] = []
        self._logged: list[int] = []

    @property
    def scheduler(self) -> AutoDrop | None:
        """The AutoDrop, when the module has exactly one (else see :attr:`schedulers`)."""
        return self.schedulers[0] if len(self.schedulers) == 1 else None

    def _stop_if_converged(self, trainer: pl.Trainer) -> None:
        if self.stop_when_converged and all(scheduler.converged for scheduler in self.schedulers):
            trainer.should_stop = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.schedulers = find_autodrops(trainer)
        # a resumed fit has restored the histories by now; their records were logged by the first run
        self._logged = [scheduler.intervals for scheduler in self.schedulers]
        self._stop_if_converged(trainer)
        if self.refresh_batchnorm:
            for scheduler in self.schedulers:
                if scheduler.after_average is not None:
                    raise ValueError(
                        "refresh_batchnorm=True but the AutoDrop scheduler already has an after_average "
                        f"callback ({scheduler.after_average!r}); use one of the two"
                    )
            for scheduler in self.schedulers:
                scheduler.after_average = lambda: self._update_batchnorm(trainer, pl_module)

    def _update_batchnorm(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = trainer.train_dataloader
        inputs = loader if self.batch_input is None else map(self.batch_input, loader)
        torch.optim.swa_utils.update_bn(inputs, pl_module, device=pl_module.device)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_new(trainer, trainer.current_epoch - 1)  # steps taken after the last batch
        if self.refresh_batchnorm:
            for scheduler in self.schedulers:
                scheduler.after_average = None  # the hook holds the trainer

    # Lightning steps an epoch-interval scheduler right after the epoch's last training step, before that
    # batch's on_train_batch_end: logging here covers "epoch" and "step" intervals alike.
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._log_new(trainer, trainer.current_epoch)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_new(trainer, trainer.current_epoch - 1)

    def _log_new(self, trainer: pl.Trainer, epoch: int) -> None:
        # _logged holds the last logged interval, not a position: max_history may drop old records
        for index, scheduler in enumerate(self.schedulers):
            one = len(self.schedulers) == 1
            prefix, who = (self.prefix, "AutoDrop") if one else (f"{self.prefix}{index}/", f"AutoDrop {index}")
            history = scheduler.history
            for record in history[max(0, len(history) - (scheduler.intervals - self._logged[index])) :]:
                metrics = {prefix + name: value for name, value in history_scalars(record).items()}
                metrics["epoch"] = epoch  # as Lightning's own logging adds it: CSV rows get their epoch
                for logger in trainer.loggers:
                    logger.log_metrics(metrics, step=trainer.global_step)
                if record["event"] in ("drop", "converged"):
                    what = "LR drop" if record["event"] == "drop" else "converged"
                    pl.utilities.rank_zero_info(
                        f"{who}: {what} at interval {record['interval']} (epoch {epoch}): lr {record['lrs'][0]:.4g}"
                    )
            self._logged[index] = scheduler.intervals
        self._stop_if_converged(trainer)
