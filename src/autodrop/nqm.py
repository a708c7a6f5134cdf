r"""The noisy quadratic model (NQM) of the AutoDrop paper: Theorem 1, Figures 1 and 3.

The model (paper, Sec. 3) is a quadratic whose optimum is redrawn at every step:

.. math::
    L_t(x) = \tfrac12 (x - c_t)^\top A (x - c_t), \qquad c_t \sim N(0, \Sigma),
    \qquad A = \operatorname{diag}(a_i),\ \Sigma = \operatorname{diag}(\sigma_i^2),

optimised by heavy-ball SGD (``momentum = 0`` is plain GD, the paper's case):

.. math::
    s_{t+1} = \beta s_t - \alpha A (x_t - c_t), \qquad x_{t+1} = x_t + s_{t+1},

which is ``torch.optim.SGD(lr=alpha, momentum=beta)`` step for step. The loss
reported is that of the mean objective, :math:`L(x) = \tfrac12 x^\top A x`
(:math:`E_c L_t(x)` minus its irreducible part :math:`\tfrac12 \operatorname{tr} A\Sigma`).

**Theorem 1.** Per coordinate the stationary GD iterate has variance
:math:`\alpha a \sigma^2 / (2 - \alpha a)`, so the steps satisfy

.. math::
    I^* = \lim_t E\langle s_t, s_{t+1}\rangle
        = -\alpha^3 \sum_i \frac{a_i^3 \sigma_i^2}{2 - \alpha a_i}, \qquad
    E\lVert s_t\rVert^2 \to 2\alpha^2 \sum_i \frac{a_i^2 \sigma_i^2}{2 - \alpha a_i},

and the saturation angle is :math:`\arccos C^*` with :math:`C^* = I^* / E\lVert s\rVert^2
\ge -\alpha \max_i a_i / 2`, between 90 and 120 degrees. (The paper's printed
numerator exponent is garbled; :math:`a^3` is right, see the SPEC.) For heavy ball
see :meth:`NoisyQuadratic.stationary_moments`.

**Paper setting** (:meth:`NoisyQuadratic.paper`): n = 200, :math:`A = \operatorname{diag}
(1/10, \dots, 200/10)`, learning rates 0.06, 0.03, 0.01, 0.001, omega averaged
over 20 iterations. The paper does not state :math:`\Sigma` or the start; here
:math:`\Sigma = A` (noise proportional to curvature) and :math:`x_0 = 100 \cdot \mathbf 1`, far
enough from the optimum that the loss falls by three to five decades before it
saturates and, at the smaller LRs, the first steps are aligned (omega near 0)
so that omega visibly rises before it saturates (the paper's property P1).

:func:`simulate_fixed_lr` gives Figure 1 (fixed LRs, vectorised), :func:`run_autodrop`
Figure 3: the real :class:`autodrop.AutoDrop`, so the library's own state machine,
detector and LR handling run rather than a re-creation of them (a 20 000-iteration
run takes seconds). The paper's NQM rule, drop the LR by a factor 2 when the
20-iteration-averaged omega changes by less than 0.01 degree between iterations,
from 0.06 down to 0.001, states no delay, averaging or growth of the threshold:
hence ``delay=0`` and ``max_threshold=threshold`` by default.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .checks import check_int
from .scheduler import AutoDrop
from .velocity import angle_degrees

__all__ = [
    "NoisyQuadratic",
    "FixedRateRun",
    "AutoDropRun",
    "PAPER_LEARNING_RATES",
    "PAPER_WINDOW",
    "simulate_fixed_lr",
    "run_autodrop",
    "window_mean",
]

PAPER_LEARNING_RATES = (0.06, 0.03, 0.01, 0.001)
PAPER_WINDOW = 20
_EPS = 1e-8  # the paper's eps in the angle, as in AngularVelocity


def _vector(name: str, values: Tensor | Sequence[float]) -> Tensor:
    vector = torch.as_tensor(values, dtype=torch.float64).clone()
    if vector.dim() != 1 or vector.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape {tuple(vector.shape)}")
    if not torch.isfinite(vector).all():
        raise ValueError(f"{name} must be finite, got {vector.tolist()}")
    return vector


@dataclass(frozen=True, eq=False)
class NoisyQuadratic:
    r"""A noisy quadratic :math:`\tfrac12 (x - c)^\top A (x - c)`, :math:`c \sim N(0, \Sigma)`, diagonal A and Sigma.

    Args:
        curvature: the diagonal :math:`a_i` of A, each ``> 0``.
        noise: the diagonal :math:`\sigma_i^2` of Sigma (variances of c), each ``>= 0``.
        start: :math:`x_0`, one value per coordinate.

    Example:
        >>> problem = NoisyQuadratic.paper()
        >>> round(problem.predicted_angle(0.06), 2)
        119.82
    """

    curvature: Tensor
    noise: Tensor
    start: Tensor

    def __post_init__(self) -> None:
        for field in ("curvature", "noise", "start"):
            object.__setattr__(self, field, _vector(field, getattr(self, field)))
        curvature, noise, start = self.curvature, self.noise, self.start
        if not (curvature > 0).all():
            raise ValueError(f"curvature must be > 0 everywhere, got min {curvature.min().item()}")
        if not (noise >= 0).all():
            raise ValueError(f"noise (variances) must be >= 0 everywhere, got min {noise.min().item()}")
        if not len(curvature) == len(noise) == len(start):
            raise ValueError(
                f"curvature, noise and start must have one value per coordinate, "
                f"got lengths {len(curvature)}, {len(noise)}, {len(start)}"
            )

    @classmethod
    def paper(cls, dimension: int = 200, start: float = 100.0) -> NoisyQuadratic:
        """The paper's setting: ``A = diag(1/10, ..., dimension/10)``, ``Sigma = A``, ``x_0 = start * 1``."""
        check_int("dimension", dimension, 1)
        curvature = torch.arange(1, dimension + 1, dtype=torch.float64) / 10
        return cls(curvature, curvature.clone(), torch.full((dimension,), float(start), dtype=torch.float64))

    @property
    def dimension(self) -> int:
        return len(self.curvature)

    def loss(self, x: Tensor) -> Tensor:
        r""":math:`\tfrac12 \sum_i a_i x_i^2` over the last dimension (the mean objective minus its floor)."""
        return 0.5 * (x * x) @ self.curvature

    def check_stable(self, lr: float, momentum: float = 0.0) -> None:
        """Raise ValueError unless ``0 <= momentum < 1`` and ``0 < lr * max(a) < 2 (1 + momentum)``."""
        if not (math.isfinite(momentum) and 0 <= momentum < 1):
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        bound = 2 * (1 + momentum) / self.curvature.max().item()
        if not (math.isfinite(lr) and 0 < lr < bound):
            raise ValueError(
                f"lr must be in (0, {bound:.6g}) for stability (lr * max curvature < 2 (1 + momentum)), got {lr!r}"
            )

    def theorem1_inner_product(self, lr: float) -> float:
        r"""Theorem 1's :math:`I^* = -\alpha^3 \sum_i a_i^3 \sigma_i^2 / (2 - \alpha a_i)` (plain GD)."""
        self.check_stable(lr)
        a, var = self.curvature, self.noise
        return -(lr**3) * (a**3 * var / (2 - lr * a)).sum().item()

    def theorem1_cosine(self, lr: float) -> float:
        """Theorem 1's cosine ``C*`` (module docstring), ``I* / E|s|^2`` (plain GD)."""
        self.check_stable(lr)
        a, var = self.curvature, self.noise
        weights = a**2 * var / (2 - lr * a)
        return -(lr / 2) * (a * weights).sum().item() / weights.sum().item()

    def stationary_moments(self, lr: float, momentum: float = 0.0) -> dict[str, float]:
        r"""Limits of :math:`E\lVert s_t\rVert^2`, :math:`E\langle s_t, s_{t+1}\rangle` and :math:`E L(x_t)`.

        Exact for any ``momentum`` in [0, 1): per coordinate the state :math:`z = (x, s)`
        follows :math:`z_{t+1} = M z_t + h (1, 1) c_t` with :math:`h = \alpha a`,
        :math:`M = [[1 - h, \beta], [-h, \beta]]`, so its stationary covariance
        :math:`P` solves :math:`P = M P M^\top + h^2 \sigma^2 (1,1)(1,1)^\top`, and
        :math:`E[s_t s_{t+1}] = -h P_{xs} + \beta P_{ss}`. At ``momentum = 0`` this is
        Theorem 1 (the tests check it).
        """
        self.check_stable(lr, momentum)
        h = lr * self.curvature
        beta = torch.full_like(h, momentum)
        m11, m12, m21, m22 = 1 - h, beta, -h, beta
        # vec(P) = (P_xx, P_xs, P_ss); rows are the entries of M P M^T.
        kron = torch.stack(
            [
                torch.stack([m11**2, 2 * m11 * m12, m12**2], -1),
                torch.stack([m11 * m21, m11 * m22 + m12 * m21, m12 * m22], -1),
                torch.stack([m21**2, 2 * m21 * m22, m22**2], -1),
            ],
            -2,
        )
        forcing = (h**2 * self.noise).unsqueeze(-1).expand(-1, 3)
        identity = torch.eye(3, dtype=torch.float64)
        p_xx, p_xs, p_ss = torch.linalg.solve(identity - kron, forcing).unbind(-1)
        return {
            "step_norm_sq": p_ss.sum().item(),
            "inner_product": (-h * p_xs + beta * p_ss).sum().item(),
            "loss": 0.5 * (self.curvature * p_xx).sum().item(),
        }

    def predicted_angle(self, lr: float, momentum: float = 0.0) -> float:
        """Saturation angle in degrees, ``arccos(E<s_t, s_t+1> / E|s|^2)`` (Theorem 1 at ``momentum=0``)."""
        moments = self.stationary_moments(lr, momentum)
        return angle_degrees(moments["inner_product"], moments["step_norm_sq"], moments["step_norm_sq"], eps=0.0)


@dataclass(frozen=True)
class FixedRateRun:
    """Fixed-LR runs, one column per learning rate.

    ``loss[t, k]`` is :math:`L(x_t)` for t = 0..T; ``omega[t, k]`` the angle
    between steps t and t+1 in degrees (t = 0..T-2, i.e. omega exists from the
    second step on); ``inner_product`` and ``step_norm_sq`` the matching
    reductions :math:`\\langle s_t, s_{t+1}\\rangle` and :math:`\\lVert s_{t+1}\\rVert^2`.
    """

    learning_rates: tuple[float, ...]
    momentum: float
    loss: Tensor
    omega: Tensor
    inner_product: Tensor
    step_norm_sq: Tensor

    def saturation_angle(self) -> list[float]:
        """Measured saturation angle per LR: mean omega over the second half of the run."""
        return self.omega[len(self.omega) // 2 :].mean(0).tolist()

    def stationary_loss(self) -> list[float]:
        """Measured stationary loss per LR: mean loss over the second half of the run.

        The smallest LRs may still be relaxing there (the slowest coordinate needs
        about ``1 / (lr min a)`` iterations); the angle saturates much earlier,
        because it is dominated by the stiff coordinates.
        """
        return self.loss[len(self.loss) // 2 :].mean(0).tolist()


def simulate_fixed_lr(
    problem: NoisyQuadratic,
    learning_rates: Sequence[float] = PAPER_LEARNING_RATES,
    iterations: int = 20_000,
    momentum: float = 0.0,
    seed: int = 0,
) -> FixedRateRun:
    """Heavy-ball SGD (GD at ``momentum=0``) on the NQM at fixed LRs, vectorised over LRs and coordinates.

    Args:
        problem: the quadratic.
        learning_rates: the fixed LRs, each stable for ``problem`` (default: the paper's four).
        iterations: number of steps T, ``>= 2`` (default 20 000).
        momentum: heavy-ball beta in [0, 1) (default 0, plain GD).
        seed: seed of the noise generator; all LRs see the same noise draws.

    Example:
        >>> run = simulate_fixed_lr(NoisyQuadratic.paper(), [0.06], iterations=2000)
        >>> abs(run.saturation_angle()[0] - NoisyQuadratic.paper().predicted_angle(0.06)) < 1
        True
    """
    check_int("iterations", iterations, 2)
    for lr in learning_rates:
        problem.check_stable(lr, momentum)
    generator = torch.Generator().manual_seed(seed)
    lrs = torch.tensor(learning_rates, dtype=torch.float64).unsqueeze(-1)
    shape = (len(learning_rates), problem.dimension)
    noise_std = problem.noise.sqrt()
    x = problem.start.expand(shape).clone()
    step = torch.zeros(shape, dtype=torch.float64)
    loss = torch.empty(iterations + 1, len(learning_rates), dtype=torch.float64)
    inner = torch.empty(iterations - 1, len(learning_rates), dtype=torch.float64)
    norm_sq = torch.empty(iterations, len(learning_rates), dtype=torch.float64)
    loss[0] = problem.loss(x)
    for t in range(iterations):
        previous = step.clone()
        gradient = torch.randn(shape, generator=generator, dtype=torch.float64)
        gradient.mul_(noise_std).sub_(x).mul_(problem.curvature)  # -A (x - c)
        step.mul_(momentum).addcmul_(lrs, gradient)
        x.add_(step)
        loss[t + 1] = problem.loss(x)
        norm_sq[t] = (step * step).sum(-1)
        if t > 0:
            inner[t - 1] = (step * previous).sum(-1)
    omega = torch.tensor(
        [
            [angle_degrees(d, u, v, _EPS) for d, u, v in zip(row_d, row_u, row_v)]
            for row_d, row_u, row_v in zip(inner.tolist(), norm_sq[1:].tolist(), norm_sq[:-1].tolist())
        ],
        dtype=torch.float64,
    )
    return FixedRateRun(tuple(learning_rates), momentum, loss, omega, inner, norm_sq[1:])


def window_mean(values: Tensor, window: int) -> Tensor:
    """Trailing mean over ``window`` entries along dim 0; NaN where fewer than ``window`` exist."""
    check_int("window", window, 1)
    sums = torch.cat([torch.zeros_like(values[:1]), values.cumsum(0)])
    means = (sums[window:] - sums[:-window]) / window
    head = torch.full((min(window - 1, len(values)),) + tuple(values.shape[1:]), math.nan, dtype=values.dtype)
    return torch.cat([head, means])


@dataclass(frozen=True)
class AutoDropRun:
    """An AutoDrop run on the NQM: ``loss[t]`` is L(x_t) for t = 0..T, ``history`` is ``AutoDrop.history``."""

    initial_lr: float
    loss: Tensor
    history: list[dict[str, Any]]

    @property
    def drops(self) -> list[tuple[int, float]]:
        """(iteration, LR after it) for every drop that lowered the LR.

        Once the LR sits at its floor the scheduler still records a ``"drop"``
        event at each trigger; those change nothing and are not listed.
        """
        drops, lr = [], self.initial_lr
        for record in self.history:
            if record["event"] == "drop" and record["lrs"][0] < lr:
                drops.append((record["interval"], record["lrs"][0]))
            lr = record["lrs"][0]
        return drops

    def final_loss(self, fraction: float = 0.05) -> float:
        """Mean loss over the last ``fraction`` of the iterations (one iterate's loss is noisy)."""
        return self.loss[-max(1, int(fraction * (len(self.loss) - 1))) :].mean().item()


def run_autodrop(
    problem: NoisyQuadratic,
    lr: float = 0.06,
    iterations: int = 20_000,
    factor: float = 0.5,
    min_lr: float = 0.001,
    threshold: float = 0.01,
    max_threshold: float | None = None,
    window: int = PAPER_WINDOW,
    delay: int = 0,
    momentum: float = 0.0,
    seed: int = 0,
) -> AutoDropRun:
    """``torch.optim.SGD`` on the NQM under the real :class:`AutoDrop`, stepped once per iteration.

    Args:
        problem: the quadratic.
        lr: alpha_0 (default 0.06, the paper's).
        iterations: number of SGD steps, ``>= 1`` (default 20 000).
        factor: rho, LR multiplier at a drop (default 0.5: "drop by a factor 2").
        min_lr: alpha_min, the LR floor (default 0.001).
        threshold: theta_0 in degrees on the change of the window-averaged omega (default 0.01).
        max_threshold: theta_max; ``None`` keeps theta fixed at ``threshold`` (default).
        window: omega averaging window of the trigger (default 20).
        delay: n_d, iterations from trigger to drop; ``0`` drops at the trigger with no
            parameter averaging (default 0), ``> 0`` averages over the delay window.
        momentum: heavy-ball beta of the optimizer (default 0).
        seed: seed of the noise generator.

    Example:
        >>> run = run_autodrop(NoisyQuadratic.paper(), iterations=1000)
        >>> [lr for _, lr in run.drops][:2]
        [0.03, 0.015]
    """
    check_int("iterations", iterations, 1)
    problem.check_stable(lr, momentum)
    generator = torch.Generator().manual_seed(seed)
    x = torch.nn.Parameter(problem.start.clone())
    optimizer = torch.optim.SGD([x], lr=lr, momentum=momentum)
    scheduler = AutoDrop(
        optimizer,
        interval="steps",  # stepped after every SGD step on purpose: the NQM's intervals are iterations
        factor=factor,
        min_lr=min_lr,
        detector="paper",
        threshold=threshold,
        max_threshold=threshold if max_threshold is None else max_threshold,
        delay=delay,
        average=delay > 0,
        window=window,
    )
    noise_std = problem.noise.sqrt()
    loss = torch.empty(iterations + 1, dtype=torch.float64)
    with torch.no_grad():
        loss[0] = problem.loss(x)
        for t in range(iterations):
            optimum = torch.randn(problem.dimension, generator=generator, dtype=torch.float64).mul_(noise_std)
            x.grad = problem.curvature * (x - optimum)
            optimizer.step()
            scheduler.step()
            loss[t + 1] = problem.loss(x)
    return AutoDropRun(lr, loss, scheduler.history)
