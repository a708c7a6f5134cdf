"""ActiveLR (Wadi, Fredette, Senecal, arXiv 2301.10133): per-element LR multipliers from gradient signs.

Per parameter element keep a multiplier g (initially 1), the gradient summed over the current epoch
G_now, and the sign of the last epoch sum that was not zero, s_prev (0 until there is one). Every step,
the base optimizer's update is scaled by g:

    theta_t = theta_{t-1} + g * (base_step(theta_{t-1}) - theta_{t-1}),   G_now += grad

At the end of every epoch, where both signs exist (so from the second epoch on):

    g := g + lr_high    if sign(G_now) == s_prev   (the direction held: additive increase)
    g := g * lr_low     if sign(G_now) == -s_prev  (it flipped: multiplicative decrease)

then s_prev := sign(G_now) where G_now != 0, and G_now := 0; g stays between the smallest normal and
the largest finite number of its dtype, so it never reaches 0 or Inf. An element whose epoch sum is
exactly zero received no gradient (no ``.grad``, unused embedding rows, dead units): it keeps its
multiplier and its last sign, instead of being halved every epoch as in the authors' code. Keeping
sign(G_prev) rather than G_prev is the same test, ``G_prev * G_now > 0``, in a quarter of the memory.

The rule is implemented once, in :class:`ActiveLR`, a handle on any optimizer; :class:`ActiveSGD`,
:class:`ActiveAdamW`, :class:`ActiveRAdam` and :class:`ActiveAdaBelief` are their base optimizers, each
with its own handle, ``optimizer.active_lr``.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
from torch import Tensor
from torch.optim import SGD, Adam, AdamW, Optimizer, RAdam
from torch.optim.optimizer import ParamsT

from ..checks import check_bool, check_int, check_keys, check_list, check_optional_real, check_real
from ..torch_private import opt_out_of_amp_scaling, restore_amp_scaling
from .adabelief import AdaBelief

__all__ = ["ACTIVE_PRESETS", "ActiveAdaBelief", "ActiveAdamW", "ActiveLR", "ActiveRAdam", "ActiveSGD"]

#: The (lr_high, lr_low) pairs of the authors' published files. ``"logs"`` is the default: every experiment
#: log the authors published used it. Use one with ``ActiveAdamW(params, **ACTIVE_PRESETS["final"])``.
ACTIVE_PRESETS: dict[str, dict[str, float]] = {
    "logs": {"lr_high": 2.0, "lr_low": 0.5},  # the "Active" optimizer files
    "final": {"lr_high": 0.2, "lr_low": 0.5},  # the final published AdamW, RAdam, AdaBelief
    "final_sgd": {"lr_high": 0.1, "lr_low": 0.9},  # the final published SGD
    "first_adamw": {"lr_high": 0.05, "lr_low": 0.95},  # the earliest AdamW file
}

_RULE_STATE = ("multiplier", "grad_sum", "grad_sign")
_SETTINGS = ("steps_per_epoch", "lr_high", "lr_low", "max_multiplier", "min_multiplier", "scale_weight_decay")
_POSITION = ("epoch_steps", "epoch")
STEPS_WITHOUT_EPOCH_END = 10_000
"""Steps after which an ActiveLR optimizer whose epochs never end warns (once per param group)."""
MAX_STEPS = 2**63 - 1
"""The largest ``steps_per_epoch`` (and epoch position): an int64, which every checkpoint format holds."""
# Group keys a checkpoint may lack: set by schedulers or by torch for its own bookkeeping.
_BOOKKEEPING_KEYS = {"initial_lr", "param_names"}
# The optimizers joined and not left (torch keeps no hooks in a copy or a pickle: a copy may join again).
_JOINED: weakref.WeakSet[Optimizer] = weakref.WeakSet()

_ARGS_DOC = """
    ActiveLR arguments (keyword-only; each is also a param-group key, so groups may differ):
        steps_per_epoch: ``step()`` calls per epoch, an int in ``[1, 2**63 - 1]``, after which the epoch ends
            by itself; ``None`` (default): only ``end_epoch()`` ends it. With both, whichever comes first ends
            the epoch and restarts the count; an epoch with no step yet is never ended (``end_epoch()`` right
            after the count ended one does nothing). Every ``step()`` counts once in every group.
        lr_high: added to g where the epoch-summed gradient kept its sign, ``>= 0`` with ``1 + lr_high``
            finite in the group's parameter dtype (default 2.0).
        lr_low: factor on g where it flipped, in ``(0, 1]`` (default 0.5). Other pairs of the authors'
            files: :data:`ACTIVE_PRESETS`.
        max_multiplier: upper bound on g, ``>= 1`` with ``max_multiplier + lr_high`` at most the largest
            finite number of the group's narrowest parameter dtype; or ``None`` (default): unbounded,
            as the authors (g then saturates at the dtype's largest finite number).
        min_multiplier: lower bound on g, in ``(0, 1]``, or ``None`` (default).
"""

_DECAY_DOC = """        scale_weight_decay: scale the decoupled weight decay (``decoupled_weight_decay=True``) by
            ``lr * g`` like the rest of the step (True, default, as the authors' Active AdamW/RAdam), or by
            ``lr`` alone (False, as their final AdamW). Coupled (L2) decay is part of the gradient and
            always scaled. ``ActiveLR``'s default is ``None``: no such group key, all the step scaled.
"""


def _check_active_args(suffix: str, values: Mapping[str, Any], params: list[Tensor]) -> dict[str, Any]:
    """The ActiveLR keys of ``values`` checked, as plain Python numbers (loadable with ``weights_only=True``);
    ``lr_high`` and ``max_multiplier`` bounded by the largest finite number of ``params``' narrowest dtype."""
    steps, high, low = values["steps_per_epoch"], values["max_multiplier"], values["min_multiplier"]
    checked = {
        "steps_per_epoch": steps if steps is None else check_int("steps_per_epoch" + suffix, steps, 1, MAX_STEPS),
        "lr_high": check_real("lr_high" + suffix, values["lr_high"], "[0, inf)"),
        "lr_low": check_real("lr_low" + suffix, values["lr_low"], "(0, 1]"),
        "max_multiplier": check_optional_real("max_multiplier" + suffix, high, "[1, inf)"),
        "min_multiplier": check_optional_real("min_multiplier" + suffix, low, "(0, 1]"),
    }
    dtype = min((p.dtype for p in params if p.is_floating_point()), key=lambda d: torch.finfo(d).max, default=None)
    if dtype is not None:
        largest, lr_high = torch.finfo(dtype).max, checked["lr_high"]
        why = f"the largest finite {dtype} less {{}}, so that g + lr_high stays finite"
        if lr_high + 1 > largest:
            raise ValueError(
                f"lr_high{suffix} must be a real number in [0, {largest - 1!r}] ({why.format('1')}), "
                f"got {values['lr_high']!r}"
            )
        if checked["max_multiplier"] is not None and checked["max_multiplier"] + lr_high > largest:
            raise ValueError(
                f"max_multiplier{suffix} must be None or a real number in [1, {largest - lr_high!r}] "
                f"({why.format(f'lr_high {lr_high}')}), got {high!r}"
            )
    if "scale_weight_decay" in values:
        checked["scale_weight_decay"] = check_bool("scale_weight_decay" + suffix, values["scale_weight_decay"])
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


def _check_param_state(where: str, state: Any, param: Tensor, needed: set[str], current: Mapping) -> None:
    """One parameter's saved state: the rule's and the base's tensors, and (once it has stepped) the
    ``needed`` state of a known base complete."""
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
            if "step" in current and isinstance(current["step"], Tensor) != isinstance(value, Tensor):
                # torch's Adam family would turn a number into a tensor: the load would not be the state given
                raise TypeError(
                    f"{name} must be a {type(current['step']).__name__} as the base keeps it, got {value!r}"
                )
            if not float(check_real(name, count, "[0, inf)", "a whole number")).is_integer():
                raise ValueError(f"{name} must be a whole number in [0, inf), got {value!r}")
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
    missing = sorted(key for key in needed if state.get(key) is None) if state else []
    if missing:
        raise KeyError(f"{where} lacks the base optimizer's {missing} (absent or None): its next step would fail")


class ActiveLR:
    __doc__ = (
        r"""The ActiveLR sign rule (module docstring) joined to an existing ``torch.optim.Optimizer``: a handle.

    ``active = ActiveLR(optimizer, ...)`` scales each update of ``optimizer`` per element by g (the step is
    ``lr * g`` times the base's direction; the group LR stays the user's and a scheduler's). It runs in
    torch's public optimizer hooks: ``optimizer`` keeps its class, its ``step`` and its constructor
    (torch's, this package's or a third party's), and ``load_state_dict`` checks a checkpoint completely
    (:meth:`check_state`) before anything changes. The state lives in ``optimizer.state[p]``
    (``multiplier`` g, ``grad_sum`` G, ``grad_sign`` s_prev, int8) and the param groups (the settings,
    ``epoch_steps`` since the epoch began, ``epoch`` ended): ``state_dict()`` / ``load_state_dict()``
    and ``torch.save(..., weights_only=True)`` resume it exactly.

    torch keeps no hooks in a copy: a deepcopy or pickle of the optimizer carries the rule's state and
    settings, not the rule; join the copy again (``ActiveLR(copy)`` continues exactly) or copy the handle
    (``copy.deepcopy(active).optimizer`` is a joined copy). It joins once; :meth:`remove` leaves.

    Args:
        optimizer: the ``torch.optim.Optimizer`` to join; its param groups (and those added later with
            ``optimizer.add_param_group``, checked at the next step) take the arguments below unless set.
"""
        + _ARGS_DOC
        + _DECAY_DOC
        + """
    Per step: a copy of the trainable parameters, a ``foreach`` add and lerp; memory: two parameter-sized
    buffers and a byte per element. Sparse gradients and complex parameters are refused. torch's GradScaler
    unscales the gradients before ``step()``, also for a fused base (the sums need true gradients).

    Example:
        >>> model = torch.nn.Linear(4, 1)
        >>> optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        >>> active = ActiveLR(optimizer, steps_per_epoch=5)
        >>> for _ in range(10):
        ...     optimizer.zero_grad()
        ...     model(torch.randn(8, 4)).square().mean().backward()
        ...     optimizer.step()
        >>> type(optimizer).__name__, optimizer.param_groups[0]["epoch"]
        ('Adam', 2)
        >>> active.remove()  # a plain Adam again
    """
    )

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        steps_per_epoch: int | None = None,
        lr_high: float = 2.0,
        lr_low: float = 0.5,
        max_multiplier: float | None = None,
        min_multiplier: float | None = None,
        scale_weight_decay: bool | None = None,
    ) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        name = type(optimizer).__name__
        if optimizer in _JOINED:
            raise ValueError(f"this {name} has an ActiveLR already: remove() it to join a new one")
        settings = dict(zip(_SETTINGS, (steps_per_epoch, lr_high, lr_low, max_multiplier, min_multiplier)))
        if scale_weight_decay is not None:
            settings["scale_weight_decay"] = scale_weight_decay
        self.optimizer = optimizer
        self._name = name if isinstance(optimizer, _ActiveOptimizer) else f"ActiveLR on {name}"  # for messages
        self._defaults = _check_active_args("", settings, [p for g in optimizer.param_groups for p in g["params"]])
        self._starts: list[tuple[list[Tensor], list[Tensor]]] = []
        self._join_groups(every=True)
        optimizer.defaults.update(self._defaults)  # torch's add_param_group fills them in new groups
        # GradScaler then unscales the gradients before step() and skips an overflowing step() whole, also
        # for a fused base, so the rule's sums add true gradients
        self._amp_scaling = opt_out_of_amp_scaling(optimizer)
        self._hooks = (
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
            optimizer.register_state_dict_pre_hook(lambda _: self._join_groups()),
            optimizer.register_load_state_dict_pre_hook(self._before_load),
            optimizer.register_load_state_dict_post_hook(self._after_load),
        )
        _JOINED.add(optimizer)

    @property
    def defaults(self) -> dict[str, Any]:
        """The settings given to the constructor, which a param group takes unless it sets its own."""
        return dict(self._defaults)

    def _join_groups(self, every: bool = False) -> None:
        """Give the rule's keys (a group's own, else the handle's) to the param groups that lack them
        (``every``: to all of them, at the join), every group checked before any changes."""
        joining = [(i, group) for i, group in enumerate(self.optimizer.param_groups) if every or "epoch" not in group]
        keys = []
        for index, group in joining:
            where = f" of param group {index}"
            keys.append(_check_active_args(where, {**self._defaults, **group}, group["params"]))
            for key in _POSITION:  # a copy of a joined optimizer keeps its position
                keys[-1][key] = check_int(key + where, group.get(key, 0), 0, MAX_STEPS)
            # torch's AdamW decays decoupled by definition (before torch 2.6 its groups had no such key)
            decoupled = group.get("decoupled_weight_decay", isinstance(self.optimizer, AdamW))
            if not keys[-1].get("scale_weight_decay", True) and decoupled is not True:
                raise ValueError(
                    f"scale_weight_decay=False (param group {index}) needs decoupled weight decay "
                    "(decoupled_weight_decay=True): coupled (L2) decay is part of the gradient, always scaled by g"
                )
        for (_, group), checked in zip(joining, keys):
            group.update(checked)

    def _trainable(self, index: int, group: dict[str, Any]) -> list[Tensor]:
        """The group's parameters that have a gradient or may get one; a ``RuntimeError`` for sparse
        gradients and complex parameters."""
        params = []
        for position, p in enumerate(group["params"]):
            if p.grad is None and not p.requires_grad:
                continue
            where = f"parameter {position} of param group {index}"
            if p.grad is not None and p.grad.is_sparse:
                raise RuntimeError(
                    f"{self._name} does not support sparse gradients ({where} has one): "
                    "the sign rule needs dense per-element sums; use a dense embedding"
                )
            if torch.is_complex(p):
                raise RuntimeError(f"{self._name} does not support complex parameters ({where})")
            params.append(p)
        return params

    @torch.no_grad()
    def _before_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        """Keep every trainable parameter as it is (a closure may give parameters their gradients inside
        the base's step), after refusing what the rule cannot take."""
        self._join_groups()
        trainable = [self._trainable(index, group) for index, group in enumerate(optimizer.param_groups)]
        self._starts = [(params, [p.detach().clone() for p in params]) for params in trainable]

    @torch.no_grad()
    def _after_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        """Scale what the base did by g, ``p := start + g (p - start)``, add the gradients to the epoch's
        sums, and end the epoch when ``steps_per_epoch`` steps are done."""
        starts, self._starts = self._starts, []
        for index, (group, (params, start)) in enumerate(zip(optimizer.param_groups, starts, strict=True)):
            self._trainable(index, group)  # the gradients the step used (a closure's too): refused if sparse
            stepped = [(p, s) for p, s in zip(params, start) if p.grad is not None]
            if stepped:
                params, start = [p for p, _ in stepped], [s for _, s in stepped]
                if not group.get("scale_weight_decay", True) and group["weight_decay"] != 0:
                    # the base's decoupled decay, p *= 1 - lr * wd, scaled by lr alone: g scales the rest
                    torch._foreach_mul_(start, 1 - group["lr"] * group["weight_decay"])
                states = [optimizer.state[p] for p in params]
                for p, state in zip(params, states):
                    if "multiplier" not in state:
                        state.update(multiplier=torch.ones_like(p), grad_sum=torch.zeros_like(p))
                        state["grad_sign"] = torch.zeros_like(p, dtype=torch.int8)
                torch._foreach_add_([state["grad_sum"] for state in states], [p.grad for p in params])
                # start + g (end - start); exactly the base's result where g == 1
                torch._foreach_lerp_(start, params, [state["multiplier"] for state in states])
                torch._foreach_copy_(params, start)
            group["epoch_steps"] += 1
            if group["steps_per_epoch"] is not None and group["epoch_steps"] >= group["steps_per_epoch"]:
                self._end_group_epoch(group)
            elif group["epoch_steps"] == STEPS_WITHOUT_EPOCH_END and group["epoch"] == 0:
                warnings.warn(
                    f"{self._name}: {STEPS_WITHOUT_EPOCH_END} steps and no epoch has ended, so every g is 1 and "
                    "this runs as its base optimizer: call end_epoch() at each epoch's end, or pass steps_per_epoch",
                    RuntimeWarning,
                    stacklevel=3,
                )

    def _before_load(self, optimizer: Optimizer, state_dict: dict[str, Any]) -> None:
        self._join_groups()
        self.check_state(state_dict)

    def _after_load(self, optimizer: Optimizer) -> None:
        for state in optimizer.state.values():  # torch casts floating state to the parameter's dtype
            if "grad_sign" in state:
                state["grad_sign"] = state["grad_sign"].to(torch.int8)

    def end_epoch(self) -> bool:
        """End the current epoch of every param group that has stepped since its epoch began; returns
        whether any group ended one. See ``steps_per_epoch`` for how this combines with the automatic end."""
        if self.optimizer not in _JOINED:
            raise RuntimeError(f"this ActiveLR was removed from its {type(self.optimizer).__name__}")
        self._join_groups()
        return any([self._end_group_epoch(group) for group in self.optimizer.param_groups])  # a list: all end

    @torch.no_grad()
    def _end_group_epoch(self, group: dict[str, Any]) -> bool:
        if group["epoch_steps"] == 0:
            return False
        lr_high, lr_low = group["lr_high"], group["lr_low"]
        for p in group["params"]:
            state = self.optimizer.state.get(p)
            if state is None or "multiplier" not in state:
                continue
            multiplier, total, last_sign = state["multiplier"], state["grad_sum"], state["grad_sign"]
            sign = total.sign()
            agreement = sign * last_sign  # +1 kept its sign, -1 flipped, 0 nothing to compare
            updated = torch.where(agreement > 0, multiplier + lr_high, multiplier)
            updated = torch.where(agreement < 0, multiplier * lr_low, updated)
            # Within the dtype's smallest normal (halved on every flip, g would reach 0) and largest finite
            # number (g + lr_high would reach Inf), as the dtype may have narrowed since the bounds' check.
            finfo, low, high = torch.finfo(multiplier.dtype), group["min_multiplier"], group["max_multiplier"]
            updated.clamp_(min=max(low or 0.0, finfo.tiny), max=min(high or finfo.max, finfo.max))
            multiplier.copy_(updated)
            last_sign.copy_(torch.where(total != 0, sign.to(torch.int8), last_sign))
            total.zero_()
        group["epoch_steps"] = 0
        group["epoch"] += 1
        return True

    def check_state(self, state_dict: Any) -> None:
        """Raise ``ValueError``/``TypeError``/``KeyError`` naming what in ``state_dict`` (one of
        ``optimizer.state_dict()``) does not fit, or would make the next step fail; changes nothing.
        ``load_state_dict`` runs it first."""
        check_keys("optimizer state", state_dict, ("state", "param_groups"))
        groups = self.optimizer.param_groups
        saved_groups = check_list("state['param_groups']", state_dict["param_groups"], len(groups))
        saved_state = state_dict["state"]
        if not isinstance(saved_state, Mapping):
            raise TypeError(f"state['state'] must be a dict, got {type(saved_state).__name__}")
        base_state = _BASE_STATE.get(type(self.optimizer))
        seen: set[int | str] = set()
        for index, (group, saved) in enumerate(zip(groups, saved_groups)):
            where = f"state['param_groups'][{index}]"
            if not isinstance(saved, Mapping):
                raise TypeError(f"{where} must be a dict, got {type(saved).__name__}")
            # torch fills a missing hyper-parameter with its default (amsgrad=False, ...): require them all
            missing = sorted((set(group) | set(self._defaults)) - _BOOKKEEPING_KEYS - set(saved))
            if missing:
                raise KeyError(f"{where} lacks {missing}")
            _check_active_args(f" of saved param group {index}", saved, group["params"])
            for key in _POSITION:
                check_int(f"{where}[{key!r}]", saved[key], 0, MAX_STEPS)
            if not isinstance(saved["lr"], Tensor):
                check_real(f"{where}['lr']", saved["lr"], "[0, inf)")
            for key, current in group.items():
                if key != "params" and key not in _BOOKKEEPING_KEYS:
                    _check_like(f"{where}[{key!r}]", saved[key], current)
            needed = base_state(group) if base_state else set()
            keys = check_list(f"{where}['params']", saved["params"], len(group["params"]))
            for position, (param, key) in enumerate(zip(group["params"], keys)):
                if isinstance(key, bool) or not isinstance(key, (int, str)) or key in seen:
                    raise ValueError(f"{where}['params'][{position}] must be a unique parameter index, got {key!r}")
                seen.add(key)
                if key in saved_state:
                    _check_param_state(
                        f"state['state'][{key!r}]", saved_state[key], param, needed, self.optimizer.state.get(param, {})
                    )
        unknown = [key for key in saved_state if key not in seen]
        if unknown:
            raise ValueError(f"state['state'] has entries {unknown!r} for no parameter of the param groups")

    def remove(self) -> None:
        """Leave the optimizer: unregister the hooks and delete the rule's state and keys, so that it steps,
        saves and loads as before the join. Twice does nothing; an ``Active*`` optimizer cannot leave."""
        optimizer = self.optimizer
        if isinstance(optimizer, _ActiveOptimizer):
            raise TypeError(
                f"the rule is what makes {type(optimizer).__name__}: build its base optimizer for the plain one"
            )
        if optimizer not in _JOINED:
            return
        for hook in self._hooks:
            hook.remove()
        for keys in (*optimizer.param_groups, optimizer.defaults):
            for key in (*_SETTINGS, *_POSITION):
                keys.pop(key, None)
        for param, state in list(optimizer.state.items()):
            for key in _RULE_STATE:
                state.pop(key, None)
            if not state:
                del optimizer.state[param]
        restore_amp_scaling(optimizer, self._amp_scaling)
        self._starts = []
        _JOINED.discard(optimizer)

    def __reduce__(self) -> tuple[Any, ...]:
        if self.optimizer not in _JOINED:
            raise TypeError("a removed ActiveLR cannot be copied or pickled")
        if isinstance(self.optimizer, _ActiveOptimizer):  # its copy joins its own handle as it loads
            return getattr, (self.optimizer, "active_lr")
        return partial(ActiveLR, **self._defaults), (self.optimizer,)  # joins the copy (it has no hooks)

    def __repr__(self) -> str:
        settings = ", ".join(f"{key}={value!r}" for key, value in self._defaults.items())
        return f"ActiveLR({type(self.optimizer).__name__}, {settings})"


class _ActiveOptimizer(Optimizer):
    """What the ``Active*`` classes share: a base optimizer class whose objects join their own
    :class:`ActiveLR` handle, ``active_lr``, in ``__init__`` (and again when copied or unpickled)."""

    active_lr: ActiveLR

    def _join(self, *settings: Any) -> None:  # the ActiveLR arguments, in the order of _SETTINGS
        self.active_lr = ActiveLR(self, **dict(zip(_SETTINGS, settings)))

    def end_epoch(self) -> bool:
        """:meth:`ActiveLR.end_epoch`: end the epoch of every group that stepped in it; whether any did."""
        return self.active_lr.end_epoch()

    def check_state(self, state_dict: Any) -> None:
        """:meth:`ActiveLR.check_state`: raise naming what in ``state_dict`` does not fit; changes nothing."""
        self.active_lr.check_state(state_dict)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group; the ActiveLR keys not given take the constructor's values, checked here."""
        super().add_param_group(param_group)
        if hasattr(self, "active_lr"):  # the base's constructor adds its groups before the handle exists
            try:
                self.active_lr._join_groups()
            except (TypeError, ValueError):
                self.param_groups.pop()
                raise

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if not hasattr(self, "active_lr"):  # a copy or an unpickled one; load_state_dict calls this too
            self._join(*map(self.defaults.get, _SETTINGS))


class ActiveSGD(_ActiveOptimizer, SGD):
    __doc__ = (
        r"""SGD with (Nesterov) momentum whose step is scaled per element by ActiveLR's g.

    With momentum this is the authors' ``p -= lr * g * buf`` (``buf`` including the coupled weight decay).

    Args:
        params, lr (default 1e-3), momentum, dampening, weight_decay, nesterov,
        maximize, foreach, fused: as :class:`torch.optim.SGD`.
"""
        + _ARGS_DOC
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
            params, lr, momentum, dampening, weight_decay, nesterov, maximize=maximize, foreach=foreach, fused=fused
        )
        self._join(steps_per_epoch, lr_high, lr_low, max_multiplier, min_multiplier)


class ActiveAdamW(_ActiveOptimizer, AdamW):
    __doc__ = (
        r"""AdamW whose step, decoupled weight decay included, is scaled per element by ActiveLR's g.

    That is, ``p -= lr * g * (m_hat / (sqrt(v_hat) + eps) + weight_decay * p)``.

    Args:
        params, lr (default 1e-3), betas, eps, weight_decay (default 1e-2), amsgrad,
        maximize, foreach, fused: as :class:`torch.optim.AdamW`.
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
        check_bool("scale_weight_decay", scale_weight_decay)  # the handle reads None as: no such group key
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize, foreach=foreach, fused=fused)
        self._join(steps_per_epoch, lr_high, lr_low, max_multiplier, min_multiplier, scale_weight_decay)


class ActiveRAdam(_ActiveOptimizer, RAdam):
    __doc__ = (
        r"""RAdam whose step is scaled per element by ActiveLR's g.

    torch's RAdam step uses this step's moments (the authors' file used the previous step's).

    Args:
        params, lr (default 1e-3), betas, eps, weight_decay (default 0), decoupled_weight_decay
        (default False), maximize, foreach: as :class:`torch.optim.RAdam`.
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
        check_bool("scale_weight_decay", scale_weight_decay)  # the handle reads None as: no such group key
        super().__init__(
            params, lr, betas, eps, weight_decay, decoupled_weight_decay, maximize=maximize, foreach=foreach
        )
        self._join(steps_per_epoch, lr_high, lr_low, max_multiplier, min_multiplier, scale_weight_decay)


class ActiveAdaBelief(_ActiveOptimizer, AdaBelief):
    __doc__ = (
        r"""AdaBelief (:mod:`autodrop.optim.adabelief`) whose step is scaled per element by ActiveLR's g.

    Args:
        params, lr (default 1e-3), betas, eps (default 1e-16), weight_decay (default 0),
        decoupled_weight_decay (default True), maximize: as :class:`autodrop.optim.adabelief.AdaBelief`.
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
        check_bool("scale_weight_decay", scale_weight_decay)  # the handle reads None as: no such group key
        super().__init__(params, lr, betas, eps, weight_decay, decoupled_weight_decay, maximize=maximize)
        self._join(steps_per_epoch, lr_high, lr_low, max_multiplier, min_multiplier, scale_weight_decay)


# The per-parameter state a known base's step needs once it has stepped, by the optimizer's exact class
# (a subclass may keep other state); other bases are not checked.
_BASE_STATE = {
    SGD: lambda group: {"momentum_buffer"} if group["momentum"] != 0 else set(),
    Adam: lambda group: {"step", "exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if group["amsgrad"] else set()),
    RAdam: lambda group: {"step", "exp_avg", "exp_avg_sq"},
    AdaBelief: lambda group: {"step", "exp_avg", "exp_avg_var"},
}
_BASE_STATE[AdamW] = _BASE_STATE[Adam]
_BASE_STATE |= {cls: _BASE_STATE[cls.__bases__[1]] for cls in (ActiveSGD, ActiveAdamW, ActiveRAdam, ActiveAdaBelief)}
