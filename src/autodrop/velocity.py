"""Angular velocity of the parameter trajectory (AutoDrop's signal, paper Sec. 3): the angle between
successive steps ``s_i = x_i - x_{i-1}``, first defined at the third measurement (x_0, x_1, x_2 give
s_1, s_2 and omega_2)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from .checks import check_keys, check_optional_real, check_real
from .interrupts import deferred_signals
from .trajectory import ParameterTrajectory, StepStatistics

__all__ = ["AngularVelocity", "angle_degrees", "omega_of"]


def angle_degrees(dot: float, norm_sq_u: float, norm_sq_v: float, eps: float) -> float:
    """Omega's formula (:class:`AngularVelocity`) from the three reductions ``<u,v>``, ``|u|^2``, ``|v|^2``."""
    cosine = dot / (math.sqrt(norm_sq_u) * math.sqrt(norm_sq_v) + eps)
    return math.degrees(math.acos(min(1.0, max(-1.0, cosine))))


def omega_of(stats: StepStatistics, eps: float) -> float | None:
    """Omega in degrees from a step's sums; None for the first step and for a faulty one."""
    if stats.fault is not None or stats.dot is None or stats.previous_norm_sq is None:
        return None
    return angle_degrees(stats.dot, stats.norm_sq, stats.previous_norm_sq, eps=eps)


class AngularVelocity:
    r"""Measures the angle between successive steps of a set of parameters.

    Each :meth:`update` closes a measurement interval: it takes the parameters
    now as :math:`x_i`, forms :math:`s_i = x_i - x_{i-1}` and returns

    .. math::
        \omega_i = \frac{180}{\pi}\arccos\operatorname{clamp}
        \Big(\frac{\langle s_i, s_{i-1}\rangle}{\lVert s_i\rVert\,\lVert s_{i-1}\rVert + \epsilon}, -1, 1\Big)

    in degrees, or ``None`` while it is undefined (the first two intervals) and
    for a zero or non-finite step, which is not taken (``last_statistics.fault``
    names it; the next step is measured from the same snapshot against the last
    nonzero step). The sums run over all tensors at once with float64 products
    (:mod:`autodrop.trajectory`), never per tensor. Use it to log omega under any
    schedule; :class:`AutoDrop` uses it inside.

    Args:
        params: the tensors to measure (e.g. ``model.parameters()``). The first
            snapshot :math:`x_0` is taken here, so build it before training.
        eps: added to the norm product, as in the paper (default ``1e-8``).
        snapshot_device: device of the two parameter-sized buffers; ``None`` keeps
            them beside the parameters, ``"cpu"`` keeps them off the accelerator.
        process_group: torch.distributed group the sums are reduced over; ``None``
            (default) = the default group when torch.distributed is initialized,
            so DDP and FSDP2/DTensor parameters need nothing. Every rank must call
            :meth:`update` at the same interval (it runs one ``all_reduce``).

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> velocity = AngularVelocity(model.parameters())
        >>> for _ in range(3):
        ...     with torch.no_grad():
        ...         model.weight.add_(torch.randn_like(model.weight))
        ...     omega = velocity.update()
        >>> 0.0 <= omega <= 180.0
        True
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        eps: float = 1e-8,
        snapshot_device: torch.device | str | None = None,
        process_group: Any = None,
    ) -> None:
        self.eps = check_real("eps", eps, "(0, inf)")
        self.trajectory = ParameterTrajectory(params, snapshot_device, process_group)
        self.omega: float | None = None
        self.last_statistics: StepStatistics | None = None

    def update(self) -> float | None:
        """Close the interval: measure the new step and return omega in degrees (or None).

        All or nothing: an interrupt (Ctrl-C) during the call arrives after it.
        """
        with deferred_signals():
            measurement = self.trajectory.measure()
            omega = omega_of(measurement.statistics, self.eps)
            self.trajectory.commit(measurement)
            self.last_statistics, self.omega = measurement.statistics, omega
        return omega

    def state_dict(self) -> dict:
        return {"eps": self.eps, "omega": self.omega, "trajectory": self.trajectory.state_dict()}

    def check_state(self, state: Any, name: str = "velocity state") -> None:
        """Raise if ``state`` does not fit these parameters; changes nothing."""
        check_keys(name, state, ("eps", "omega", "trajectory"))
        check_real(f"{name}['eps']", state["eps"], "(0, inf)")
        check_optional_real(f"{name}['omega']", state["omega"], "[0, 180]")
        self.trajectory.check_state(state["trajectory"], f"{name}['trajectory']")

    def load_state_dict(self, state: dict) -> None:
        """Check ``state`` completely (:meth:`check_state`), then apply it."""
        self.check_state(state)
        with deferred_signals():
            self.trajectory.load_state_dict(state["trajectory"])
            self.eps = float(state["eps"])
            self.omega = None if state["omega"] is None else float(state["omega"])
