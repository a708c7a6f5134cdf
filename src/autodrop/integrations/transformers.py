"""Hugging Face ``transformers.Trainer``: AutoDrop as a ``TrainerCallback``.

The Trainer owns its optimizer and steps its own LR scheduler after every
optimizer step, so AutoDrop runs beside it as a callback:

    args = TrainingArguments(..., lr_scheduler_type="constant")
    trainer = Trainer(model=model, args=args, train_dataset=train)
    trainer.add_callback(AutoDropCallback(trainer, delay=5))
    trainer.train()                      # or trainer.train(resume_from_checkpoint=True)

Why ``lr_scheduler_type="constant"``: any other schedule moves the LR itself and
fights AutoDrop. Even the constant one is a ``LambdaLR`` that sets every group's
LR to ``base_lr * 1`` at each step, which would undo a drop at the next step; the
callback therefore writes the LRs AutoDrop leaves into that scheduler's
``base_lrs`` (and its last LR, which the Trainer logs as ``learning_rate``),
so the drop sticks and is saved in the Trainer's ``scheduler.pt``.

Needs ``pip install 'autodrop[transformers]'``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from typing import Any

import torch

from .._optional import import_optional
from ..checks import check_int
from ..history import history_scalars
from ..scheduler import AutoDrop
from ..torch_private import set_last_lr

hf = import_optional("transformers", "transformers", __name__)

__all__ = ["STATE_FILE", "AutoDropCallback"]

STATE_FILE = "autodrop_scheduler.pt"
"""Name of AutoDrop's state inside each Trainer checkpoint folder."""

logger = logging.getLogger(__name__)


class AutoDropCallback(hf.TrainerCallback):
    """Steps AutoDrop on the Trainer's epoch ends (or every N optimizer steps).

    At ``on_train_begin`` the callback builds ``AutoDrop(optimizer, **autodrop_kwargs)``
    on the Trainer's optimizer (available as :attr:`scheduler`). Each AutoDrop step
    is logged with ``trainer.log`` (so it reaches ``trainer.state.log_history`` and
    every ``report_to`` integration) under ``prefix + name`` for the scalars of
    :func:`autodrop.history.history_scalars`; drops are also logged at INFO.
    At every checkpoint the state is written to ``<checkpoint>/autodrop_scheduler.pt``;
    ``trainer.train(resume_from_checkpoint=...)`` loads it from the checkpoint the
    Trainer resumes from (a path, or with ``True`` the last one in ``args.output_dir``),
    and refuses a state that does not fit the optimizer's parameters or whose count of
    AutoDrop steps differs from the steps the Trainer has taken (a converged state may
    have fewer: no interval is measured after it).

    Args:
        trainer: the ``transformers.Trainer`` to log through; its
            ``args.lr_scheduler_type`` must be ``"constant"`` (checked here and
            again when training starts, with a ValueError).
        every_n_steps: ``None`` (default) steps AutoDrop at every epoch end; an
            int ``>= 1`` steps it every that many optimizer steps instead
            (for step-based training, e.g. ``max_steps``).
        prefix: prefix of the logged names (default ``"autodrop/"``).
        stop_when_converged: set ``control.should_training_stop`` once AutoDrop has
            converged (default False), e.g. with ``max_drops=2``; ``num_train_epochs`` is
            then a cap. Resumed from a converged checkpoint, the run stops after the one
            optimizer step the Trainer takes before it looks, and measures no interval.
        **autodrop_kwargs: passed to :class:`autodrop.AutoDrop` (``factor``,
            ``delay``, ``detector``, ...); names are checked here.

    Example:
        >>> trainer.add_callback(AutoDropCallback(trainer, delay=5))  # doctest: +SKIP
    """

    def __init__(
        self,
        trainer: Any,
        every_n_steps: int | None = None,
        prefix: str = "autodrop/",
        stop_when_converged: bool = False,
        **autodrop_kwargs: Any,
    ) -> None:
        if not isinstance(trainer, hf.Trainer):
            raise TypeError(f"trainer must be a transformers.Trainer, got {type(trainer).__name__}")
        if every_n_steps is not None:
            check_int("every_n_steps", every_n_steps, 1)
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {prefix!r}")
        if not isinstance(stop_when_converged, bool):
            raise TypeError(f"stop_when_converged must be a bool, got {stop_when_converged!r}")
        if "optimizer" in autodrop_kwargs:
            raise TypeError("AutoDropCallback takes the Trainer's optimizer; do not pass optimizer")
        inspect.signature(AutoDrop).bind_partial(**autodrop_kwargs)
        _check_constant_schedule(trainer.args)
        self.trainer = trainer
        self.every_n_steps = every_n_steps
        self.prefix = prefix
        self.stop_when_converged = stop_when_converged
        self.autodrop_kwargs = autodrop_kwargs
        self.scheduler: AutoDrop | None = None
        self._trainer_schedule: torch.optim.lr_scheduler.LambdaLR | None = None
        self._resume_from: str | None = None
        # trainer.train is the only place the Trainer is told the checkpoint it resumes from: note it there
        train = trainer.train

        @functools.wraps(train)
        def train_noting_the_checkpoint(resume_from_checkpoint=None, *args, **kwargs):
            if resume_from_checkpoint is True and os.path.isdir(trainer.args.output_dir):
                # resolved here, once, and passed on: the Trainer and the callback read the same folder
                # (none found: True goes on, and the Trainer raises its own error)
                resume_from_checkpoint = hf.trainer_utils.get_last_checkpoint(trainer.args.output_dir) or True
            found = isinstance(resume_from_checkpoint, (str, os.PathLike))
            self._resume_from = os.fspath(resume_from_checkpoint) if found else None
            return train(resume_from_checkpoint, *args, **kwargs)

        trainer.train = train_noting_the_checkpoint

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        _check_constant_schedule(args)
        constant = isinstance(lr_scheduler, torch.optim.lr_scheduler.LambdaLR) and all(
            lr_lambda(lr_scheduler.last_epoch) == 1 for lr_lambda in lr_scheduler.lr_lambdas
        )
        if not constant:
            raise ValueError(
                "AutoDropCallback needs the Trainer's own scheduler to be the constant LambdaLR that "
                f"lr_scheduler_type='constant' creates, got {type(lr_scheduler).__name__}; "
                "a custom scheduler passed in Trainer(optimizers=...) would fight AutoDrop's drops"
            )
        self._trainer_schedule = lr_scheduler
        interval = {} if self.every_n_steps is None else {"interval": "steps"}  # per-N-steps on purpose
        scheduler = AutoDrop(optimizer, **{**interval, **self.autodrop_kwargs})
        if state.global_step > 0:  # resume_from_checkpoint restored the Trainer's state
            self._load(scheduler, state)
        self.scheduler = scheduler
        control.should_training_stop |= self._stopping()

    def _load(self, scheduler: AutoDrop, state: Any) -> None:
        """Load AutoDrop's state from the checkpoint the Trainer resumes from; refuse another run's."""
        checkpoint = self._resume_from
        if checkpoint is None:
            raise RuntimeError(
                f"the Trainer resumes at global step {state.global_step}, but AutoDropCallback did not see the "
                "checkpoint: it reads the one passed to trainer.train(resume_from_checkpoint=...) of the Trainer "
                "it was built with (AutoDropCallback(trainer, ...))"
            )
        path = os.path.join(checkpoint, STATE_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"resuming at global step {state.global_step} but AutoDrop's state {path} does not exist: "
                "resume from a checkpoint that AutoDropCallback saved"
            )
        try:
            saved = torch.load(path, weights_only=True)
        except Exception as error:
            raise RuntimeError(
                f"AutoDrop's state {path} cannot be read ({error}); resume from another checkpoint"
            ) from error
        try:
            scheduler.load_state_dict(saved)
        except (ValueError, TypeError, KeyError) as error:
            raise ValueError(
                f"AutoDrop's state {path} does not fit this run's optimizer and settings: {error}"
            ) from error
        if self.every_n_steps is None:
            expected = int(state.epoch)
            taken = f"{expected} epoch ends (epoch {state.epoch:g}, global step {state.global_step})"
        else:
            expected = state.global_step // self.every_n_steps
            taken = f"global step {state.global_step}: {expected} intervals of every_n_steps={self.every_n_steps}"
        if scheduler.intervals != expected and not (scheduler.converged and scheduler.intervals < expected):
            raise ValueError(
                f"AutoDrop's state {path} has {scheduler.intervals} intervals, but the Trainer resumes from "
                f"{checkpoint} after {taken}: the state belongs to another run, or was saved where the two counts "
                "part (save_strategy='steps' at an epoch's last step, or a run stopped inside an epoch); "
                "resume from another checkpoint"
            )

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.every_n_steps is None and not self._stopping():
            self._step(control)
        control.should_training_stop |= self._stopping()

    def on_step_end(self, args, state, control, **kwargs):
        if self.every_n_steps is not None and state.global_step % self.every_n_steps == 0 and not self._stopping():
            self._step(control)
        control.should_training_stop |= self._stopping()

    def _stopping(self) -> bool:
        """Converged, and asked to stop then: no more intervals are measured."""
        return self.stop_when_converged and self.scheduler.converged

    def on_save(self, args, state, control, **kwargs):
        if args.should_save and self.scheduler is not None:
            # written whole or not at all: a kill mid-write leaves no file that looks complete
            folder = f"{hf.trainer_utils.PREFIX_CHECKPOINT_DIR}-{state.global_step}"  # the Trainer's at this step
            path = os.path.join(args.output_dir, folder, STATE_FILE)
            torch.save(self.scheduler.state_dict(), path + ".tmp")
            os.replace(path + ".tmp", path)

    def _step(self, control: Any) -> None:
        scheduler = self.scheduler
        scheduler.step()
        lrs = scheduler.get_last_lr()
        # The constant LambdaLR sets lr = base_lr * 1 at every step: keep it at AutoDrop's LR, and
        # its last LR too, which the Trainer logs as "learning_rate" for the next step.
        self._trainer_schedule.base_lrs = list(lrs)
        set_last_lr(self._trainer_schedule, list(lrs))
        record = scheduler.history[-1]
        # trainer.log() clears control.should_log, which the Trainer's own epoch or step logging has set:
        # without putting it back, its loss, learning_rate and grad_norm would never be logged
        should_log = control.should_log
        self.trainer.log({self.prefix + name: value for name, value in history_scalars(record).items()})
        control.should_log = should_log
        if record["event"] in ("drop", "converged"):
            logger.info(
                "AutoDrop: %s at interval %d (global step %d): lr %.4g",
                "LR drop" if record["event"] == "drop" else "converged",
                record["interval"],
                self.trainer.state.global_step,
                lrs[0],
            )


def _check_constant_schedule(args: Any) -> None:
    if args.lr_scheduler_type != hf.SchedulerType.CONSTANT:
        raise ValueError(
            "AutoDropCallback needs TrainingArguments(lr_scheduler_type='constant'), got "
            f"lr_scheduler_type={getattr(args.lr_scheduler_type, 'value', args.lr_scheduler_type)!r}: "
            "the Trainer's own schedule would fight AutoDrop's drops"
        )
