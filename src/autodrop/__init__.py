"""autodrop: automatic learning-rate drops for PyTorch.

``AutoDrop`` drops the learning rate when the angular velocity of the parameter
trajectory saturates (Teng, Wang, Choromanska, arXiv 2111.15317);
``AngularVelocity`` measures that angle alone, under any schedule.
"""

from .scheduler import AutoDrop
from .velocity import AngularVelocity
from .checkpoint import ShardedState

__all__ = ["AngularVelocity", "AutoDrop", "ShardedState"]
__version__ = "0.1.0"
