"""ActiveLR (Wadi, Fredette, Senecal, arXiv 2301.10133): per-element LR multipliers from gradient signs.

Per parameter element keep a multiplier g (initially 1), the gradient summed over
the current epoch G_now, and the sign of the last epoch sum that was not zero,
s_prev (0 until there is one). Every step, the base optimizer's update is scaled
by g:

    theta_t = theta_{t-1} + g * (base_step(theta_{t-1}) - theta_{t-1}),   G_now += grad

At the end of every epoch, where both signs exist (so from the second epoch on):

    g := g + lr_high    if sign(G_now) == s_prev   (the direction held: additive increase)
    g := g * lr_low     if sign(G_now) == -s_prev  (it flipped: multiplicative decrease)

(g never falls below the smallest normal number of its dtype, so it never reaches 0)

then s_prev := sign(G_now) where G_now != 0, and G_now := 0. An element whose
epoch sum is exactly zero received no gradient (no ``.grad``, unused embedding
rows, dead units): it keeps its multiplier and its last sign, instead of being
halved every epoch as in the authors' code. Keeping sign(G_prev) rather than
G_prev is the same test, ``G_prev * G_now > 0``, in a quarter of the memory.

The rule is implemented once, in :class:`ActiveLR`, and put in front of a base
optimizer: torch's SGD, AdamW and RAdam steps run unchanged (their own math,
kernels and state), and the rule rescales what they did; AdaBelief is ours
(:mod:`autodrop.optim.adabelief`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.optim import SGD, AdamW, Optimizer, RAdam
from torch.optim.optimizer import ParamsT

from ..checks import check_bool, check_int, check_keys, check_list, check_real
from .adabelief import AdaBelief

__all__ = ["ACTIVE_PRESETS", "ActiveAdaBelief", "ActiveAdamW", "ActiveLR", "ActiveRAdam", "ActiveSGD"]

#: The (lr_high, lr_low) pairs of the authors' published files. ``"logs"`` is the
#: default: every experiment log the authors published used it. Use one with
#: ``ActiveAdamW(params, **ACTIVE_PRESETS["final"])``.
ACTIVE_PRESETS: dict[str, dict[str, float]] = {
    "logs": {"lr_high": 2.0, "lr_low": 0.5},  # the "Active" optimizer files
    "final": {"lr_high": 0.2, "lr_low": 0.5},  # the final published AdamW, RAdam, AdaBelief
    "final_sgd": {"lr_high": 0.1, "lr_low": 0.9},  # the final published SGD
    "first_adamw": {"lr_high": 0.05, "lr_low": 0.95},  # the earliest AdamW file
}

_RULE_STATE = ("multiplier", "grad_sum", "grad_sign")
STEPS_WITHOUT_EPOCH_END = 10_000
"""Steps after which an ActiveLR optimizer whose epochs never end warns (once per param group)."""
# Group keys a checkpoint may lack: set by schedulers or by torch for its own bookkeeping.
_BOOKKEEPING_KEYS = {"initial_lr", "param_names"}

_ARGS_DOC = """
    ActiveLR arguments (keyword-only; each is also a param-group key, so groups may differ):
        steps_per_epoch: ``step()`` calls per epoch, an int ``>= 1``; the epoch then
            ends by itself after that many steps. ``None`` (default): epochs end only
            when you call :meth:`end_epoch`. When both are used, whichever comes first
            ends the epoch and restarts the count; an epoch with no step since it
            began is never ended, so calling ``end_epoch()`` right after the count
            ended an epoch does nothing. Every ``step()`` counts once in every group.
        lr_high: added to g where the epoch-summed gradient kept its sign, ``>= 0``
            (default 2.0).
        lr_low: factor on g where it flipped, in ``(0, 1]`` (default 0.5).
            Other pairs of the authors' files: :data:`ACTIVE_PRESETS`.
        max_multiplier: upper bound on g, ``>= 1``, or ``None`` (default): unbounded,
            as the authors (g is 1 + 2k after k agreeing epochs).
        min_multiplier: lower bound on g, in ``(0, 1]``, or ``None`` (default).
"""

_DECAY_DOC = """        scale_weight_decay: scale the decoupled weight decay by ``lr * g`` like the
            rest of the step (True, default, as the authors' Active AdamW/RAdam), or
            by ``lr`` alone (False, as their final AdamW). Coupled (L2) decay is part
            of the gradient and always scaled, so False needs decoupled decay.
"""


def _check_active_args(suffix: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The ActiveLR keys of ``values``, checked, as plain Python numbers (a numpy scalar in a
    param group would make the optimizer's checkpoint unloadable with ``weights_only=True``)."""

    def name(key: str) -> str:
        return key + suffix

    steps = values["steps_per_epoch"]
    low, high = values["min_multiplier"], values["max_multiplier"]
    checked = {
        "steps_per_epoch": None if steps is None else check_int(name("steps_per_epoch"), steps, 1),
        "lr_high": check_real(name("lr_high"), values["lr_high"], "[0, inf)"),
        "lr_low": check_real(name("lr_low"), values["lr_low"], "(0, 1]"),
        "max_multiplier": None if high is None else check_real(name("max_multiplier"), high, "[1, inf)"),
        "min_multiplier": None if low is None else check_real(name("min_multiplier"), low, "(0, 1]"),
    }
    if "scale_weight_decay" in values:
        checked["scale_weight_decay"] = check_bool(name("scale_weight_decay"), values["scale_weight_decay"])
    return checked


def _check_like(name: str, value: Any, current: Any) -> None:
    """A saved hyper-parameter has the kind of the current one, and numbers are finite."""
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {value!r}")
    elif current is None:
        if not (value is None or isinstance(value, bool)):
            raise TypeError(f"{name} must be a bool or None, got {value!r}")
    elif isinstance(current, (int, float, Tensor)):
        number = value.item() if isinstance(value, Tensor) and value.numel() == 1 else value
        check_real(name, number, "(-inf, inf)")
    elif isinstance(current, (tuple, list)):
        for index, (item, reference) in enumerate(zip(check_list(name, value, len(current)), current)):
            _check_like(f"{name}[{index}]", item, reference)
    elif type(value) is not type(current):
        raise TypeError(f"{name} must be a {type(current).__name__}, got {value!r}")


def _check_param_state(where: str, state: Any, param: Tensor) -> None:
    if not isinstance(state, Mapping):
        raise TypeError(f"{where} must be a dict, got {type(state).__name__}")
    present = [key for key in _RULE_STATE if key in state]
    if present and len(present) != len(_RULE_STATE):
        absent = [key for key in _RULE_STATE if key not in state]
        raise KeyError(f"{where} has {present} but lacks {absent} (the rule's state is all or nothing)")
    for key, value in state.items():
        name = f"{where}[{key!r}]"
        if key == "step":
            count = value.item() if isinstance(value, Tensor) and value.numel() == 1 else value
            if isinstance(count, bool) or not isinstance(count, (int, float)):
                raise TypeError(f"{name} must be a step count (a number or a one-element tensor), got {value!r}")
            if not float(check_real(name, count, "[0, inf)")).is_integer():
                raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
            continue
        if value is None and key not in _RULE_STATE:
            continue
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a tensor or None, got {type(value).__name__}")
        if value.shape != param.shape:
            raise ValueError(f"{name} has shape {tuple(value.shape)}, the parameter has {tuple(param.shape)}")
        if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name} contains NaN or Inf")
        if key == "multiplier" and not bool((value > 0).all()):
            raise ValueError(f"{name} must be > 0 everywhere (g starts at 1 and is only raised or scaled)")
        if key == "grad_sign" and not bool(((value == -1) | (value == 0) | (value == 1)).all()):
            raise ValueError(f"{name} must hold signs in {{-1, 0, 1}}")


class ActiveLR(Optimizer):
    r"""The ActiveLR sign rule, placed in front of a ``torch.optim.Optimizer`` subclass.

    ``class ActiveX(ActiveLR, X)`` is optimizer ``X`` whose every update is scaled,
    per element, by a multiplier :math:`g` that the rule adapts once per epoch
    (module docstring). The rule runs in torch's public step pre- and post-hooks
    (``register_step_pre_hook`` / ``register_step_post_hook``) around ``X``'s own,
    unchanged ``step``, so ``X`` may be any optimizer with torch's hooks: torch's,
    this package's, or a third party's (e.g. ``class ActiveLion(ActiveLR, Lion)``).
    It owns the per-element state ``multiplier`` (g), ``grad_sum`` (G_now) and
    ``grad_sign`` (sign of the last non-zero epoch sum, int8) in
    ``optimizer.state[p]``, and the epoch position in each param group
    (``epoch_steps``: steps since the epoch began, ``epoch``: epochs ended), so
    ``state_dict()`` / ``load_state_dict()`` resume it exactly. The group LR stays
    the user's (and a scheduler's, e.g. :class:`autodrop.AutoDrop`): the step
    taken is ``lr * g`` times the base's direction.

    Per step the rule costs one copy of the trainable parameters, one ``foreach``
    add (the sums) and one ``foreach`` lerp; its memory is two parameter-sized
    buffers plus one byte per element, and the copy while ``step()`` runs; the
    epoch end is a few tensor ops per parameter. Sparse gradients and complex parameters
    are rejected. With ``fused=True`` torch's GradScaler unscales the gradients
    itself before ``step()`` (the sums must see true gradients).
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> ActiveLR:
        # ActiveLR(optimizer, ...): the rule joins an optimizer that exists already, whatever its class
        if args and isinstance(args[0], Optimizer):
            optimizer = args[0]
            if not isinstance(optimizer, ActiveLR):
                base = type(optimizer)
                optimizer.__class__ = type(f"Active{base.__name__}", (ActiveLR, base), {"__module__": base.__module__})
            return optimizer
        return super().__new__(cls)

    def __init__(
        self,
        *args: Any,
        steps_per_epoch: int | None = None,
        lr_high: float = 2.0,
        lr_low: float = 0.5,
        max_multiplier: float | None = None,
        min_multiplier: float | None = None,
        scale_weight_decay: bool | None = None,
        **kwargs: Any,
    ) -> None:
        active = {
            "steps_per_epoch": steps_per_epoch,
            "lr_high": lr_high,
            "lr_low": lr_low,
            "max_multiplier": max_multiplier,
            "min_multiplier": min_multiplier,
        }
        if scale_weight_decay is not None:  # None: the base has no decoupled decay (SGD)
            active["scale_weight_decay"] = scale_weight_decay
        active = _check_active_args("", active)
        self._active_defaults = active
        if args and args[0] is self:  # ActiveLR(optimizer, ...): its groups exist, give them the rule's keys
            if hasattr(self, "_rule_hooks"):
                raise ValueError(f"this {type(self).__name__} has the ActiveLR rule already")
            if kwargs:
                raise TypeError(f"ActiveLR(optimizer, ...) takes only the rule's arguments, got {sorted(kwargs)}")
            for index, group in enumerate(self.param_groups):
                for key, value in {**active, "epoch_steps": 0, "epoch": 0}.items():
                    group.setdefault(key, value)
                group.update(_check_active_args(f" of param group {index}", group))
        else:
            super().__init__(*args, **kwargs)
        self.defaults.update(active)
        self._step_supports_amp_scaling = False
        self._starts: list[tuple[list[Tensor], list[Tensor]]] = []
        self._register_rule_hooks()

    def _decoupled_decay(self, group: dict[str, Any]) -> bool:
        """Whether the base applies ``weight_decay`` to the weights (True) or the gradient."""
        return bool(group["decoupled_weight_decay"])

    def _base_state_keys(self, group: dict[str, Any]) -> set[str]:
        """The per-parameter state the base optimizer's step needs once it has stepped."""
        return set()  # a base this class does not know: not checked

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group; the ActiveLR keys not given take the constructor's values."""
        index = len(self.param_groups)
        for key, value in self._active_defaults.items():
            param_group.setdefault(key, value)
        param_group.setdefault("epoch_steps", 0)
        param_group.setdefault("epoch", 0)
        param_group.update(_check_active_args(f" of param group {index}", param_group))
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if not group.get("scale_weight_decay", True) and not self._decoupled_decay(group):
            self.param_groups.pop()
            raise ValueError(
                f"scale_weight_decay=False (param group {index}) needs decoupled weight decay: "
                "coupled (L2) decay is part of the gradient and always scaled by the multiplier"
            )

    def _params_with_grad(self, index: int, group: dict[str, Any], require_grad: bool = True) -> list[Tensor]:
        """The group's parameters with a gradient (``require_grad=False``: those that may get one);
        a ``RuntimeError`` for sparse gradients and complex parameters."""
        params = []
        for position, p in enumerate(group["params"]):
            if p.grad is None and (require_grad or not p.requires_grad):
                continue
            where = f"parameter {position} of param group {index}"
            if p.grad is not None and p.grad.is_sparse:
                raise RuntimeError(
                    f"{type(self).__name__} does not support sparse gradients ({where} has one): "
                    "the sign rule needs dense per-element sums; use a dense embedding"
                )
            if torch.is_complex(p):
                raise RuntimeError(f"{type(self).__name__} does not support complex parameters ({where})")
            params.append(p)
        return params

    def _active_state(self, params: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        sums, multipliers = [], []
        for p in params:
            state = self.state[p]
            if "multiplier" not in state:
                state["multiplier"] = torch.ones_like(p, memory_format=torch.preserve_format)
                state["grad_sum"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["grad_sign"] = torch.zeros_like(p, dtype=torch.int8, memory_format=torch.preserve_format)
            sums.append(state["grad_sum"])
            multipliers.append(state["multiplier"])
        return sums, multipliers

    def _register_rule_hooks(self) -> None:
        """The rule runs around the base's own step through torch's public step hooks, so the base's
        ``step`` (torch's, or any third party's) runs unchanged and unwrapped."""
        self._rule_hooks = (
            self.register_step_pre_hook(ActiveLR._before_base_step),
            self.register_step_post_hook(ActiveLR._after_base_step),
            self.register_load_state_dict_post_hook(ActiveLR._signs_as_int8),
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if not hasattr(self, "_rule_hooks"):  # a pickle or a deep copy, which keep no hooks (not load_state_dict)
            self._starts = []
            self._register_rule_hooks()

    @staticmethod
    @torch.no_grad()
    def _before_base_step(self: ActiveLR, args: Any, kwargs: Any) -> None:
        """Apply the decoupled decay of ``scale_weight_decay=False`` groups (hidden from the base, so it is
        scaled by ``lr`` alone, torch's ``p *= 1 - lr * wd``), then keep every trainable parameter as it is
        (a closure may give parameters their gradients inside the base's step)."""
        self._starts = []
        for index, group in enumerate(self.param_groups):
            if "hidden_weight_decay" in group:  # a base step that raised left it hidden
                group["weight_decay"] = group.pop("hidden_weight_decay")
            params = self._params_with_grad(index, group, require_grad=False)
            if not group.get("scale_weight_decay", True) and group["weight_decay"] != 0:
                with_grad = [p for p in params if p.grad is not None]
                if with_grad:
                    torch._foreach_mul_(with_grad, 1 - group["lr"] * group["weight_decay"])
                group["hidden_weight_decay"], group["weight_decay"] = group["weight_decay"], 0.0
            self._starts.append((params, [p.detach().clone() for p in params]))

    @staticmethod
    @torch.no_grad()
    def _after_base_step(self: ActiveLR, args: Any, kwargs: Any) -> None:
        """Scale what the base did by g, ``p := start + g (p - start)``, add the gradients to the epoch's
        sums, and end the epoch when ``steps_per_epoch`` steps are done."""
        starts, self._starts = self._starts, []
        for index, (group, (params, start)) in enumerate(zip(self.param_groups, starts, strict=True)):
            if "hidden_weight_decay" in group:
                group["weight_decay"] = group.pop("hidden_weight_decay")
            stepped = [(p, s) for p, s in zip(params, start) if p.grad is not None]
            self._params_with_grad(index, group)  # the gradients the step used: refused if sparse
            if stepped:
                params, start = [p for p, _ in stepped], [s for _, s in stepped]
                sums, multipliers = self._active_state(params)
                torch._foreach_add_(sums, [p.grad for p in params])
                # start + g (end - start); exactly the base's result where g == 1
                torch._foreach_lerp_(start, params, multipliers)
                torch._foreach_copy_(params, start)
            group["epoch_steps"] += 1
            if group["steps_per_epoch"] is not None and group["epoch_steps"] >= group["steps_per_epoch"]:
                self._end_group_epoch(group)
            elif group["epoch_steps"] == STEPS_WITHOUT_EPOCH_END and group["epoch"] == 0:
                warnings.warn(
                    f"{type(self).__name__}: {STEPS_WITHOUT_EPOCH_END} steps and no epoch has ended, so every "
                    "multiplier is still 1 and this runs as its base optimizer: call optimizer.end_epoch() at "
                    "each epoch's end, or pass steps_per_epoch",
                    RuntimeWarning,
                    stacklevel=3,
                )

    @staticmethod
    def _signs_as_int8(self: ActiveLR) -> None:
        # torch casts every floating state tensor to the parameter's dtype; the signs stay int8
        for state in self.state.values():
            if "grad_sign" in state:
                state["grad_sign"] = state["grad_sign"].to(torch.int8)

    def end_epoch(self) -> bool:
        """End the current epoch of every param group that has stepped since its epoch began.

        Returns whether any group ended one. See ``steps_per_epoch`` for how this
        combines with the automatic end.
        """
        ended = [self._end_group_epoch(group) for group in self.param_groups]
        return any(ended)

    @torch.no_grad()
    def _end_group_epoch(self, group: dict[str, Any]) -> bool:
        if group["epoch_steps"] == 0:
            return False
        lr_high, lr_low = group["lr_high"], group["lr_low"]
        low, high = group["min_multiplier"], group["max_multiplier"]
        for p in group["params"]:
            state = self.state.get(p)
            if state is None or "multiplier" not in state:
                continue
            multiplier, total, last_sign = state["multiplier"], state["grad_sum"], state["grad_sign"]
            sign = total.sign()
            agreement = sign * last_sign  # +1 kept its sign, -1 flipped, 0 nothing to compare
            updated = torch.where(agreement > 0, multiplier + lr_high, multiplier)
            updated = torch.where(agreement < 0, multiplier * lr_low, updated)
            # Never below the dtype's smallest normal number: halved on every flip, g would reach 0
            # (fp16 after ~25 flips, fp32 after ~150), a value the rule cannot produce otherwise.
            floor = torch.finfo(multiplier.dtype).tiny
            updated.clamp_(min=floor if low is None else max(low, floor), max=high)
            multiplier.copy_(updated)
            last_sign.copy_(torch.where(total != 0, sign.to(torch.int8), last_sign))
            total.zero_()
        group["epoch_steps"] = 0
        group["epoch"] += 1
        return True

    def check_state(self, state_dict: Any) -> None:
        """Raise ``ValueError``/``TypeError``/``KeyError`` naming what in ``state_dict`` does not fit; changes nothing.

        Checks the param groups (their number and sizes, that every hyper-parameter
        of the current groups is there, ``lr``, every ActiveLR key and the epoch
        position) and, per parameter, that the rule's three tensors
        are all there or all absent, shaped like the parameter and finite, with
        multipliers ``> 0`` and signs in {-1, 0, 1}, and that the base's state (its
        moments and step count) is finite, shaped like the parameter, and counts
        ``>= 0``. torch itself checks only the group sizes.
        """
        check_keys("optimizer state", state_dict, ("state", "param_groups"))
        saved_groups = check_list("state['param_groups']", state_dict["param_groups"], len(self.param_groups))
        saved_state = state_dict["state"]
        if not isinstance(saved_state, Mapping):
            raise TypeError(f"state['state'] must be a dict, got {type(saved_state).__name__}")
        seen: set[int | str] = set()
        for index, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            where = f"state['param_groups'][{index}]"
            if not isinstance(saved, Mapping):
                raise TypeError(f"{where} must be a dict, got {type(saved).__name__}")
            # torch fills a missing hyper-parameter with its default (amsgrad=False, ...): require them all
            required = (set(group) | set(self._active_defaults)) - _BOOKKEEPING_KEYS
            missing = sorted(key for key in required if key not in saved)
            if missing:
                raise KeyError(f"{where} lacks {missing}")
            _check_active_args(f" of saved param group {index}", saved)
            check_int(f"{where}['epoch_steps']", saved["epoch_steps"], 0)
            check_int(f"{where}['epoch']", saved["epoch"], 0)
            if not isinstance(saved["lr"], Tensor):
                check_real(f"{where}['lr']", saved["lr"], "[0, inf)")
            for key, current in group.items():
                if key != "params" and key not in _BOOKKEEPING_KEYS:
                    _check_like(f"{where}[{key!r}]", saved[key], current)
            keys = check_list(f"{where}['params']", saved["params"], len(group["params"]))
            for position, (param, key) in enumerate(zip(group["params"], keys)):
                if isinstance(key, bool) or not isinstance(key, (int, str)) or key in seen:
                    raise ValueError(f"{where}['params'][{position}] must be a unique parameter index, got {key!r}")
                seen.add(key)
                if key in saved_state:
                    _check_param_state(f"state['state'][{key!r}]", saved_state[key], param)
                    self._check_base_state(f"state['state'][{key!r}]", saved_state[key], group)
        unknown = [key for key in saved_state if key not in seen]
        if unknown:
            raise ValueError(f"state['state'] has entries {unknown!r} for no parameter of the param groups")

    def _check_base_state(self, where: str, state: Mapping[str, Any], group: dict[str, Any]) -> None:
        """Once a parameter has stepped (the rule's state is there), the base's state must be complete."""
        if "multiplier" not in state and not any(key not in _RULE_STATE for key in state):
            return
        missing = sorted(key for key in self._base_state_keys(group) if state.get(key) is None)
        if missing:
            raise KeyError(f"{where} lacks the base optimizer's {missing} (absent or None): its next step would fail")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state from :meth:`state_dict`, the multipliers, sums and epoch positions included.

        The whole state is checked first (:meth:`check_state`); a bad one raises and
        changes nothing, also when the base optimizer's own loading fails halfway.
        """
        self.check_state(state_dict)
        previous = self.state, self.param_groups
        try:
            super().load_state_dict(state_dict)
        except Exception as error:
            # torch assigns the new state before the base's __setstate__ checks it
            self.state, self.param_groups = previous
            raise ValueError(
                f"{type(self).__name__} could not load the state: the base optimizer raised {error!r}; "
                "the optimizer is unchanged"
            ) from error


class ActiveSGD(ActiveLR, SGD):
    __doc__ = (
        r"""SGD with (Nesterov) momentum whose step is scaled per element by ActiveLR's g.

    torch's SGD step, unchanged, then ``p := p_old + g (p_sgd - p_old)``: with
    momentum this is the authors' ``p -= lr * g * buf`` (``buf`` including the
    coupled weight decay). See :class:`ActiveLR` for the rule and the state.

    Args:
        params, lr (default 1e-3), momentum, dampening, weight_decay, nesterov,
        maximize, foreach, fused: as :class:`torch.optim.SGD`.
"""
        + _ARGS_DOC
        + """
    Example:
        >>> model = torch.nn.Linear(4, 1)
        >>> optimizer = ActiveSGD(model.parameters(), lr=0.1, momentum=0.9, steps_per_epoch=10)
        >>> for _ in range(20):
        ...     optimizer.zero_grad()
        ...     model(torch.randn(8, 4)).square().mean().backward()
        ...     optimizer.step()
        >>> optimizer.param_groups[0]["epoch"]
        2
    """
    )

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        steps_per_epoch: int | None = None,
        lr_high: float = 2.0,
        lr_low: float = 0.5,
        max_multiplier: float | None = None,
        min_multiplier: float | None = None,
    ) -> None:
        super().__init__(
            params,
            lr,
            momentum,
            dampening,
            weight_decay,
            nesterov,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            steps_per_epoch=steps_per_epoch,
            lr_high=lr_high,
            lr_low=lr_low,
            max_multiplier=max_multiplier,
            min_multiplier=min_multiplier,
        )

    def _decoupled_decay(self, group: dict[str, Any]) -> bool:
        return False

    def _base_state_keys(self, group: dict[str, Any]) -> set[str]:
        return {"momentum_buffer"} if group["momentum"] != 0 else set()


class ActiveAdamW(ActiveLR, AdamW):
    __doc__ = (
        r"""AdamW whose step, decoupled weight decay included, is scaled per element by ActiveLR's g.

    torch's AdamW step, unchanged, then ``p := p_old + g (p_adamw - p_old)``, i.e.
    ``p -= lr * g * (m_hat / (sqrt(v_hat) + eps) + weight_decay * p)``. See
    :class:`ActiveLR` for the rule and the state.

    Args:
        params, lr (default 1e-3), betas, eps, weight_decay (default 1e-2), amsgrad,
        maximize, foreach, fused: as :class:`torch.optim.AdamW`.
"""
        + _DECAY_DOC
        + _ARGS_DOC
        + """
    Example:
        >>> model = torch.nn.Linear(4, 1)
        >>> optimizer = ActiveAdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
        >>> for epoch in range(2):
        ...     for _ in range(5):
        ...         optimizer.zero_grad()
        ...         model(torch.randn(8, 4)).square().mean().backward()
        ...         optimizer.step()
        ...     ended = optimizer.end_epoch()
        >>> optimizer.param_groups[0]["epoch"]
        2
    """
    )

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        steps_per_epoch: int | None = None,
        lr_high: float = 2.0,
        lr_low: float = 0.5,
        max_multiplier: float | None = None,
        min_multiplier: float | None = None,
        scale_weight_decay: bool = True,
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            steps_per_epoch=steps_per_epoch,
            lr_high=lr_high,
            lr_low=lr_low,
            max_multiplier=max_multiplier,
            min_multiplier=min_multiplier,
            scale_weight_decay=check_bool("scale_weight_decay", scale_weight_decay),
        )

    def _decoupled_decay(self, group: dict[str, Any]) -> bool:
        return True

    def _base_state_keys(self, group: dict[str, Any]) -> set[str]:
        return {"step", "exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if group["amsgrad"] else set())


class ActiveRAdam(ActiveLR, RAdam):
    __doc__ = (
        r"""RAdam whose step is scaled per element by ActiveLR's g.

    torch's RAdam step, unchanged (with this step's moments, not the previous
    step's as in the authors' file), then ``p := p_old + g (p_radam - p_old)``.
    See :class:`ActiveLR` for the rule and the state.

    Args:
        params, lr (default 1e-3), betas, eps, weight_decay (default 0),
        decoupled_weight_decay (default False), maximize, foreach: as
        :class:`torch.optim.RAdam`.
"""
        + _DECAY_DOC
        + _ARGS_DOC
    )

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        decoupled_weight_decay: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        steps_per_epoch: int | None = None,
        lr_high: float = 2.0,
        lr_low: float = 0.5,
        max_multiplier: float | None = None,
        min_multiplier: float | None = None,
        scale_weight_decay: bool = True,
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            decoupled_weight_decay,
            maximize=maximize,
            foreach=foreach,
            steps_per_epoch=steps_per_epoch,
            lr_high=lr_high,
            lr_low=lr_low,
            max_multiplier=max_multiplier,
            min_multiplier=min_multiplier,
            scale_weight_decay=check_bool("scale_weight_decay", scale_weight_decay),
        )

    def _base_state_keys(self, group: dict[str, Any]) -> set[str]:
        return {"step", "exp_avg", "exp_avg_sq"}


class ActiveAdaBelief(ActiveLR, AdaBelief):
    __doc__ = (
        r"""AdaBelief (:class:`autodrop.optim.adabelief.AdaBelief`) whose step is scaled per element by ActiveLR's g.

    See :class:`ActiveLR` for the rule and the state.

    Args:
        params, lr (default 1e-3), betas, eps (default 1e-16), weight_decay
        (default 0), decoupled_weight_decay (default True), maximize: as
        :class:`autodrop.optim.adabelief.AdaBelief`.
"""
        + _DECAY_DOC
        + _ARGS_DOC
    )

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
        steps_per_epoch: int | None = None,
        lr_high: float = 2.0,
        lr_low: float = 0.5,
        max_multiplier: float | None = None,
        min_multiplier: float | None = None,
        scale_weight_decay: bool = True,
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            decoupled_weight_decay,
            maximize=maximize,
            steps_per_epoch=steps_per_epoch,
            lr_high=lr_high,
            lr_low=lr_low,
            max_multiplier=max_multiplier,
            min_multiplier=min_multiplier,
            scale_weight_decay=check_bool("scale_weight_decay", scale_weight_decay),
        )

    def _base_state_keys(self, group: dict[str, Any]) -> set[str]:
        return {"step", "exp_avg", "exp_avg_var"}
