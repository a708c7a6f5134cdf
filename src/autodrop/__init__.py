"""autodrop: automatic learning-rate drops for PyTorch.

``AutoDrop`` drops the learning rate when the angular velocity of the parameter
trajectory saturates (Teng, Wang, Choromanska, arXiv 2111.15317); ``ActiveLR`` and
the ``Active*`` optimizers adapt a per-element LR multiplier from the sign of the
epoch-summed gradient (Wadi, Fredette, Senecal, arXiv 2301.10133). Each exported
name documents itself; framework integrations live in ``autodrop.integrations``
and import lazily.
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
