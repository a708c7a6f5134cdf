"""autodrop: automatic learning-rate drops for PyTorch.

``AutoDrop`` drops the learning rate when the angular velocity of the parameter
trajectory saturates (Teng, Wang, Choromanska, arXiv 2111.15317), as judged by
a pluggable detector: ``TrendTest`` (the default) or the paper's ``PaperRule``;
``AngularVelocity`` measures that angle alone, under any schedule;
``NoisyQuadratic`` is the paper's noisy quadratic model with Theorem 1;
``ShardedState`` checkpoints AutoDrop's sharded state with torch.distributed.checkpoint.
``ActiveSGD``, ``ActiveAdamW``, ``ActiveRAdam`` and ``ActiveAdaBelief`` adapt a
per-element LR multiplier from the sign of the epoch-summed gradient (ActiveLR,
Wadi, Fredette, Senecal, arXiv 2301.10133), and ``ActiveLR(optimizer)`` puts the
same rule in front of any torch optimizer; ``AdaBelief`` is their AdaBelief base.
``write_history_csv`` and ``write_history_tensorboard`` record ``AutoDrop.history``;
framework integrations live in ``autodrop.integrations`` and import lazily.
"""

from .detectors import Detector, PaperRule, TrendTest
from .history import write_history_csv, write_history_tensorboard
from .nqm import NoisyQuadratic
from .optim import ACTIVE_PRESETS, ActiveAdaBelief, ActiveAdamW, ActiveLR, ActiveRAdam, ActiveSGD, AdaBelief
from .scheduler import AutoDrop
from .sharded_state import ShardedState
from .velocity import AngularVelocity

__all__ = [
    "ACTIVE_PRESETS",
    "ActiveAdaBelief",
    "ActiveAdamW",
    "ActiveLR",
    "ActiveRAdam",
    "ActiveSGD",
    "AdaBelief",
    "AngularVelocity",
    "AutoDrop",
    "Detector",
    "NoisyQuadratic",
    "PaperRule",
    "ShardedState",
    "TrendTest",
    "write_history_csv",
    "write_history_tensorboard",
]
__version__ = "0.1.0"
