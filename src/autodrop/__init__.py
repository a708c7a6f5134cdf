"""autodrop: automatic learning-rate drops for PyTorch.

``AutoDrop`` drops the learning rate when the angular velocity of the parameter
trajectory saturates (Teng, Wang, Choromanska, arXiv 2111.15317);
``AngularVelocity`` measures that angle alone, under any schedule;
``NoisyQuadratic`` is the paper's noisy quadratic model with Theorem 1.
"""

from .nqm import NoisyQuadratic
from .scheduler import AutoDrop
from .velocity import AngularVelocity

__all__ = ["AngularVelocity", "AutoDrop", "NoisyQuadratic"]
__version__ = "0.1.0"
