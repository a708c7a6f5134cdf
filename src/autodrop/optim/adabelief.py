"""AdaBelief (Zhuang et al., NeurIPS 2020, arXiv 2010.07468), Algorithm 2 of the paper: one foreach pass
per step over a param group."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import ParamsT

from ..checks import check_bool, check_real

__all__ = ["AdaBelief"]


class AdaBelief(Optimizer):
    r"""AdaBelief: Adam with the second moment of the gradient's deviation from its running mean.

    With :math:`g_t` the gradient (plus :math:`\lambda\theta` for coupled weight
    decay), per element:

    .. math::
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        s_t &= \beta_2 s_{t-1} + (1 - \beta_2) (g_t - m_t)^2 + \epsilon \\
        \theta_t &= \theta_{t-1} - \gamma\,\frac{m_t / (1 - \beta_1^t)}
                    {\sqrt{s_t / (1 - \beta_2^t)} + \epsilon}

    With decoupled weight decay the parameters are first multiplied by
    :math:`1 - \gamma\lambda` (as AdamW). :math:`\epsilon` enters twice, inside the
    second moment and in the denominator, as in the paper's Algorithm 2. No
    rectification and no AMSGrad.

    Args:
        params: iterable of parameters or param-group dicts.
        lr: gamma, the learning rate, ``>= 0`` (default 1e-3).
        betas: (beta1, beta2), each in ``[0, 1)`` (default (0.9, 0.999)).
        eps: epsilon, ``>= 0`` (default 1e-16, the authors' value; with it inside
            the second moment a larger one is rarely needed).
        weight_decay: lambda, ``>= 0`` (default 0).
        decoupled_weight_decay: decay the weights directly (True, default, as the
            authors' release) or add ``lambda * theta`` to the gradient (False).
        maximize: maximize the objective instead of minimizing (default False).

    Example:
        >>> model = torch.nn.Linear(4, 1)
        >>> optimizer = AdaBelief(model.parameters(), lr=1e-2)
        >>> model(torch.randn(8, 4)).square().mean().backward()
        >>> optimizer.step()
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-16,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = True,
        *,
        maximize: bool = False,
    ) -> None:
        if not isinstance(lr, Tensor):
            lr = check_real("lr", lr, "[0, inf)")
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        betas = tuple(check_real(f"betas[{index}]", beta, "[0, 1)") for index, beta in enumerate(betas))
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": check_real("eps", eps, "[0, inf)"),
            "weight_decay": check_real("weight_decay", weight_decay, "[0, inf)"),
            "decoupled_weight_decay": check_bool("decoupled_weight_decay", decoupled_weight_decay),
            "maximize": check_bool("maximize", maximize),
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One optimization step; ``closure`` re-evaluates the loss and returns it."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_vars, steps = [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdaBelief does not support sparse gradients")
                if torch.is_complex(p):
                    raise RuntimeError("AdaBelief does not support complex parameters")
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_var"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                params.append(p)
                grads.append(p.grad)
                exp_avgs.append(state["exp_avg"])
                exp_avg_vars.append(state["exp_avg_var"])
                steps.append(state["step"])
            if not params:
                continue
            lr, (beta1, beta2), eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            if group["maximize"]:
                grads = torch._foreach_neg(grads)
            if weight_decay != 0:
                if group["decoupled_weight_decay"]:
                    torch._foreach_mul_(params, 1 - lr * weight_decay)
                else:
                    grads = torch._foreach_add(grads, params, alpha=weight_decay)
            torch._foreach_mul_(exp_avgs, beta1)
            torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
            residuals = torch._foreach_sub(grads, exp_avgs)
            torch._foreach_mul_(exp_avg_vars, beta2)
            torch._foreach_addcmul_(exp_avg_vars, residuals, residuals, value=1 - beta2)
            torch._foreach_add_(exp_avg_vars, eps)
            denominators = torch._foreach_sqrt(exp_avg_vars)
            torch._foreach_div_(denominators, [math.sqrt(1 - beta2**t) for t in steps])
            torch._foreach_add_(denominators, eps)
            torch._foreach_addcdiv_(params, exp_avgs, denominators, [-lr / (1 - beta1**t) for t in steps])
        return loss
