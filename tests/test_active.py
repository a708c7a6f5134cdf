import copy
import io
import math
import pickle
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from states import MUTATIONS, load_exactly_or_fail_cleanly, mutated, paths, states_equal

from autodrop import (
    ACTIVE_PRESETS,
    ActiveAdaBelief,
    ActiveAdamW,
    ActiveRAdam,
    ActiveSGD,
    AdaBelief,
    AutoDrop,
)
from autodrop.optim import ActiveLR

STATE_KEYS = ("multiplier", "grad_sum", "grad_sign")


def make_model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    return model.to(dtype)


def make_batches(count, seed=1, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(16, 6, generator=generator, dtype=dtype), torch.randint(0, 3, (16,), generator=generator))
        for _ in range(count)
    ]


def train_step(model, optimizer, batch):
    x, y = batch
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()


def same_params(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


BASES = [
    ("sgd-nesterov", ActiveSGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    ("sgd-foreach", ActiveSGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.1, foreach=True)),
    ("sgd-fused", ActiveSGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, fused=True)),
    ("adamw", ActiveAdamW, torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1)),
    ("adamw-amsgrad-foreach", ActiveAdamW, torch.optim.AdamW, dict(lr=1e-2, amsgrad=True, foreach=True)),
    ("adamw-fused", ActiveAdamW, torch.optim.AdamW, dict(lr=1e-2, fused=True)),
    ("radam", ActiveRAdam, torch.optim.RAdam, dict(lr=1e-2, weight_decay=0.1)),
    ("radam-decoupled", ActiveRAdam, torch.optim.RAdam, dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True)),
    ("adabelief", ActiveAdaBelief, AdaBelief, dict(lr=1e-2, weight_decay=0.1)),
    ("adabelief-coupled", ActiveAdaBelief, AdaBelief, dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=False)),
]
# decoupled decay applied by the rule (scaled by lr alone) instead of by the base
UNSCALED_DECAY = [
    ("adamw-unscaled-decay", ActiveAdamW, torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1)),
    (
        "radam-unscaled-decay",
        ActiveRAdam,
        torch.optim.RAdam,
        dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True),
    ),
    ("adabelief-unscaled-decay", ActiveAdaBelief, AdaBelief, dict(lr=1e-2, weight_decay=0.1)),
]


@pytest.mark.parametrize(
    "active_cls, base_cls, kwargs, extra",
    [(*b[1:], {}) for b in BASES] + [(*b[1:], dict(scale_weight_decay=False)) for b in UNSCALED_DECAY],
    ids=[b[0] for b in BASES + UNSCALED_DECAY],
)
def test_neutral_rule_is_the_base_bit_for_bit(active_cls, base_cls, kwargs, extra):
    active_model, base_model = make_model(), make_model()
    active = active_cls(active_model.parameters(), **kwargs, steps_per_epoch=4, lr_high=0.0, lr_low=1.0, **extra)
    base = base_cls(base_model.parameters(), **kwargs)
    for batch in make_batches(14):
        train_step(active_model, active, batch)
        train_step(base_model, base, batch)
        assert same_params(active_model, base_model)
    assert active.param_groups[0]["epoch"] == 3
    multipliers = [active.state[p]["multiplier"] for p in active_model.parameters()]
    assert all(torch.equal(g, torch.ones_like(g)) for g in multipliers)


def sign_rule64(grad_epochs, lr, lr_high, lr_low, low=None, high=None):
    """ActiveLR on plain SGD in float64 numpy: per epoch a list of gradients (None: no .grad)."""
    theta = np.zeros_like(next(g for epoch in grad_epochs for g in epoch if g is not None))
    g = np.ones_like(theta)
    last_sign = np.zeros_like(theta)
    multipliers, thetas = [], []
    for epoch in grad_epochs:
        total = np.zeros_like(theta)
        for grad in epoch:
            if grad is not None:
                theta = theta - lr * g * grad
                total += grad
            thetas.append(theta.copy())
        agreement = np.sign(total) * last_sign
        g = np.where(agreement > 0, g + lr_high, np.where(agreement < 0, g * lr_low, g))
        g = np.clip(g, low if low is not None else -np.inf, high if high is not None else np.inf)
        last_sign = np.where(total != 0, np.sign(total), last_sign)
        multipliers.append(g.copy())
    return multipliers, thetas


def hand_made_epochs(rng):
    """Six epochs of two steps on seven elements, each element with a story."""
    keep = [1.0] * 6  # always positive: additive increase from epoch 2 on
    flip = [1.0, -1.0] * 3  # flips every epoch: halved from epoch 2 on
    never = [0.0] * 6  # never a gradient: untouched
    gap = [1.0, -1.0, 0.0, -1.0, 1.0, 1.0]  # no gradient in epoch 3: compared with epoch 2 after it
    late = [0.0, 0.0, 2.0, 3.0, -1.0, -1.0]  # first sign in epoch 3: first comparison in epoch 4
    epochs = []
    for e in range(6):
        first = rng.normal(size=7) * 0.1
        second = rng.normal(size=7) * 0.1
        for column, story in enumerate((keep, flip, never, gap, late)):
            first[column] = story[e] * abs(first[column]) + story[e]
            second[column] = story[e] * abs(second[column])
        epochs.append([first, second])
    epochs[4][1] = None  # a step with no .grad at all
    return epochs


@pytest.mark.parametrize(
    "rule",
    [
        dict(),
        ACTIVE_PRESETS["final_sgd"],
        ACTIVE_PRESETS["first_adamw"],
        dict(max_multiplier=4.0, min_multiplier=0.3),
    ],
    ids=["default", "final_sgd", "first_adamw", "bounded"],
)
def test_multiplier_update_matches_numpy(rule):
    epochs = hand_made_epochs(np.random.default_rng(0))
    param = torch.nn.Parameter(torch.zeros(7, dtype=torch.float64))
    optimizer = ActiveSGD([param], lr=0.1, steps_per_epoch=2, **rule)
    full = {"lr_high": 2.0, "lr_low": 0.5, "min_multiplier": None, "max_multiplier": None} | rule
    want_g, want_theta = sign_rule64(
        epochs, 0.1, full["lr_high"], full["lr_low"], full["min_multiplier"], full["max_multiplier"]
    )
    thetas = iter(want_theta)
    for epoch, expected_g in zip(epochs, want_g, strict=True):
        for grad in epoch:
            param.grad = None if grad is None else torch.tensor(grad)
            optimizer.step()
            np.testing.assert_allclose(param.detach().numpy(), next(thetas), rtol=1e-13, atol=1e-15)
        np.testing.assert_array_equal(optimizer.state[param]["multiplier"].numpy(), expected_g)
    if not rule:
        # keep: 1, 1+2k; flip: halved; never: 1; gap skips epoch 3; late first compares in epoch 4
        np.testing.assert_array_equal(want_g[-1][:5], [11.0, 1 / 32, 1.0, 3.25, 3.5])
        assert want_g[2][3] == 0.5 and want_g[3][3] == 2.5  # gap: epoch 3 skipped, epoch 4 vs epoch 2
        assert want_g[2][4] == 1.0 and want_g[3][4] == 3.0


@pytest.mark.parametrize("cls", [ActiveAdamW, ActiveAdaBelief])
@pytest.mark.parametrize("scale_weight_decay", [True, False])
@pytest.mark.parametrize("closure", [False, True], ids=["grads", "closure"])
def test_decoupled_decay_is_scaled_by_the_multiplier_unless_asked_not_to(cls, scale_weight_decay, closure):
    model = make_model(dtype=torch.float64)
    lr, decay = 1e-2, 0.3
    optimizer = cls(
        model.parameters(), lr=lr, weight_decay=decay, steps_per_epoch=3, scale_weight_decay=scale_weight_decay
    )
    batches = make_batches(8, dtype=torch.float64)
    for batch in batches[:7]:
        train_step(model, optimizer, batch)
    multipliers = [optimizer.state[p]["multiplier"].clone() for p in model.parameters()]
    assert any(not torch.equal(g, torch.ones_like(g)) for g in multipliers)

    # the plain base from the same state, stepped once without decay, gives the direction
    base_model = make_model(dtype=torch.float64)
    base_model.load_state_dict(model.state_dict())
    base = (torch.optim.AdamW if cls is ActiveAdamW else AdaBelief)(base_model.parameters(), lr=lr, weight_decay=0.0)
    base.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # state_dict() shares the tensors
    for group in base.param_groups:
        group["weight_decay"] = 0.0
    before = [p.detach().clone() for p in model.parameters()]
    if closure:  # the gradients are made inside step(): none exist when it begins
        x, y = batches[7]
        optimizer.zero_grad()
        optimizer.step(lambda: F.cross_entropy(model(x), y).backward())
    else:
        train_step(model, optimizer, batches[7])
    train_step(base_model, base, batches[7])
    for p, q, old, g in zip(model.parameters(), base_model.parameters(), before, multipliers, strict=True):
        step = q.detach() - old
        if scale_weight_decay:
            want = old + g * (step - lr * decay * old)
        else:
            want = old * (1 - lr * decay) + g * step
        torch.testing.assert_close(p.detach(), want, rtol=1e-10, atol=1e-13)


def test_steps_per_epoch_and_end_epoch_together():
    model = make_model()
    batches = iter(make_batches(20))
    manual = ActiveSGD(model.parameters(), lr=0.1)
    for _ in range(5):
        train_step(model, manual, next(batches))
    assert manual.param_groups[0]["epoch"] == 0 and manual.param_groups[0]["epoch_steps"] == 5
    assert manual.end_epoch() is True and manual.param_groups[0]["epoch"] == 1
    assert manual.end_epoch() is False and manual.param_groups[0]["epoch"] == 1  # no step since: nothing to end

    counted = ActiveSGD(model.parameters(), lr=0.1, momentum=0.9, steps_per_epoch=3)
    for _ in range(6):
        train_step(model, counted, next(batches))
    group = counted.param_groups[0]
    assert group["epoch"] == 2 and group["epoch_steps"] == 0
    state = {k: [counted.state[p][k].clone() for p in model.parameters()] for k in STATE_KEYS}
    # the habit of calling end_epoch() after the loop: the count already ended this epoch
    assert counted.end_epoch() is False and group["epoch"] == 2
    for key, before in state.items():
        assert all(torch.equal(counted.state[p][key], b) for p, b in zip(model.parameters(), before, strict=True))
    # end_epoch() mid-count ends a short epoch now and restarts the count
    for _ in range(2):
        train_step(model, counted, next(batches))
    assert counted.end_epoch() is True and group["epoch"] == 3 and group["epoch_steps"] == 0
    for expected_steps in (1, 2, 0):
        train_step(model, counted, next(batches))
        assert group["epoch_steps"] == expected_steps
    assert group["epoch"] == 4


def test_param_groups_have_their_own_lr_and_epoch_length():
    model = make_model()
    first, second = list(model[0].parameters()), list(model[2].parameters())
    optimizer = ActiveSGD(
        [{"params": first, "lr": 0.1}, {"params": second, "lr": 0.01, "steps_per_epoch": 3}],
        momentum=0.9,
        steps_per_epoch=2,
    )
    base_model = make_model()
    neutral = ActiveSGD(
        [
            {"params": base_model[0].parameters(), "lr": 0.1},
            {"params": base_model[2].parameters(), "lr": 0.01, "lr_high": 0.0, "lr_low": 1.0},
        ],
        momentum=0.9,
        steps_per_epoch=2,
        lr_high=0.0,
        lr_low=1.0,
    )
    plain_model = make_model()
    plain = torch.optim.SGD(
        [{"params": plain_model[0].parameters(), "lr": 0.1}, {"params": plain_model[2].parameters(), "lr": 0.01}],
        momentum=0.9,
    )

    def changed(params):
        return any(not torch.equal(optimizer.state[p]["multiplier"], torch.ones_like(p)) for p in params)

    for step, batch in enumerate(make_batches(6), start=1):
        for m, o in ((model, optimizer), (base_model, neutral), (plain_model, plain)):
            train_step(m, o, batch)
        assert same_params(base_model, plain_model)
        if step == 4:  # group 0 compared its epochs 1 and 2; group 1 is in its second epoch
            assert changed(first) and not changed(second)
    assert [g["epoch"] for g in optimizer.param_groups] == [3, 2]
    assert changed(second)


def test_sparse_gradients_get_a_clear_error_before_anything_moves():
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    dense = torch.nn.Linear(3, 1)
    optimizer = ActiveSGD([{"params": dense.parameters()}, {"params": embedding.parameters()}], lr=0.1)
    dense(embedding(torch.tensor([1, 2]))).sum().backward()
    before = [p.detach().clone() for p in (*dense.parameters(), *embedding.parameters())]
    with pytest.raises(
        RuntimeError, match=r"ActiveSGD does not support sparse gradients \(parameter 0 of param group 1"
    ):
        optimizer.step()
    after = [*dense.parameters(), *embedding.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))


@pytest.mark.parametrize("cls", [ActiveSGD, ActiveAdamW])
def test_closure_is_evaluated_once_and_its_loss_returned(cls):
    closure_model, plain_model = make_model(), make_model()
    with_closure = cls(closure_model.parameters(), lr=0.05, steps_per_epoch=2)
    plain = cls(plain_model.parameters(), lr=0.05, steps_per_epoch=2)
    calls = 0
    for x, y in make_batches(8):

        def closure():
            nonlocal calls
            calls += 1
            with_closure.zero_grad()
            loss = F.cross_entropy(closure_model(x), y)
            loss.backward()
            return loss

        with torch.no_grad():
            expected = F.cross_entropy(plain_model(x), y)
        loss = with_closure.step(closure)
        train_step(plain_model, plain, (x, y))
        assert torch.equal(loss.detach(), expected)
    assert calls == 8
    assert same_params(closure_model, plain_model)


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (ActiveSGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
        (ActiveAdamW, dict(lr=1e-2)),
        (ActiveRAdam, dict(lr=1e-2)),
        (ActiveAdaBelief, dict(lr=1e-2)),
    ],
    ids=["sgd", "adamw", "radam", "adabelief"],
)
def test_resumed_run_continues_bit_identically(cls, kwargs):
    batches = make_batches(15)
    model = make_model()
    optimizer = cls(model.parameters(), **kwargs, steps_per_epoch=4)
    for batch in batches:
        train_step(model, optimizer, batch)

    first = make_model()
    interrupted = cls(first.parameters(), **kwargs, steps_per_epoch=4)
    for batch in batches[:6]:  # stop mid-epoch, after multipliers moved
        train_step(first, interrupted, batch)
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "optimizer": interrupted.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    resumed_model = make_model(seed=123)
    resumed = cls(resumed_model.parameters(), **kwargs, steps_per_epoch=4)
    resumed_model.load_state_dict(checkpoint["model"])
    resumed.load_state_dict(checkpoint["optimizer"])
    assert resumed.param_groups[0]["epoch"] == 1 and resumed.param_groups[0]["epoch_steps"] == 2
    for batch in batches[6:]:
        train_step(resumed_model, resumed, batch)

    assert same_params(model, resumed_model)
    for p, q in zip(model.parameters(), resumed_model.parameters(), strict=True):
        assert optimizer.state[p].keys() == resumed.state[q].keys()
        for key, value in optimizer.state[p].items():
            other = resumed.state[q][key]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other, key
        assert resumed.state[q]["grad_sign"].dtype == torch.int8
    assert any(not torch.equal(optimizer.state[p]["multiplier"], torch.ones_like(p)) for p in model.parameters())


def test_autodrop_drops_the_group_lr_and_keeps_the_multipliers():
    model = make_model()
    optimizer = ActiveSGD(model.parameters(), lr=0.1, momentum=0.9, steps_per_epoch=4)
    # a threshold no omega change can stay under: the drop comes at the first measured change
    scheduler = AutoDrop(
        optimizer, factor=0.5, min_lr=0.0, detector="paper", threshold=180.0, max_threshold=180.0, delay=0
    )
    batches = iter(make_batches(40))
    for epoch in range(6):
        for _ in range(4):
            train_step(model, optimizer, next(batches))
        multipliers = [optimizer.state[p]["multiplier"].clone() for p in model.parameters()]
        drops = scheduler.num_drops
        scheduler.step()
        after = [optimizer.state[p]["multiplier"] for p in model.parameters()]
        assert all(torch.equal(a, b) for a, b in zip(after, multipliers, strict=True))
        if scheduler.num_drops > drops:
            dropped_at = epoch
            break
    assert optimizer.param_groups[0]["lr"] == 0.05
    assert any(not torch.equal(g, torch.ones_like(g)) for g in multipliers)
    for _ in range(8):  # training goes on at the dropped LR, and the rule keeps adapting g
        train_step(model, optimizer, next(batches))
    assert optimizer.param_groups[0]["epoch"] == dropped_at + 3
    assert optimizer.param_groups[0]["lr"] == 0.05
    now = [optimizer.state[p]["multiplier"] for p in model.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(now, multipliers, strict=True))


def test_step_hooks_run_once_per_step():
    torch.optim.SGD(make_model().parameters(), lr=0.1).step()  # torch now hooks SGD.step itself
    model = make_model()
    optimizer = ActiveSGD(model.parameters(), lr=0.1)
    calls = []
    optimizer.register_step_pre_hook(lambda *args: calls.append("pre"))
    optimizer.register_step_post_hook(lambda *args: calls.append("post"))
    for batch in make_batches(3):
        train_step(model, optimizer, batch)
    assert calls == ["pre", "post"] * 3


def test_presets_and_defaults():
    assert ACTIVE_PRESETS["logs"] == {"lr_high": 2.0, "lr_low": 0.5}
    optimizer = ActiveAdamW(make_model().parameters(), **ACTIVE_PRESETS["final"])
    group = optimizer.param_groups[0]
    assert (group["lr_high"], group["lr_low"], group["weight_decay"]) == (0.2, 0.5, 1e-2)
    assert group["max_multiplier"] is None and group["min_multiplier"] is None
    assert group["scale_weight_decay"] is True and group["steps_per_epoch"] is None
    sgd = ActiveSGD(make_model().parameters())
    assert (sgd.param_groups[0]["lr"], sgd.param_groups[0]["lr_high"]) == (1e-3, 2.0)
    assert "scale_weight_decay" not in sgd.param_groups[0]


@pytest.mark.parametrize(
    "make, error, match",
    [
        (
            lambda p: ActiveSGD(p, steps_per_epoch=0),
            ValueError,
            r"steps_per_epoch must be an int in \[1, 9223372036854775807\], got 0",
        ),
        (lambda p: ActiveSGD(p, steps_per_epoch=2.5), TypeError, r"steps_per_epoch must be an int"),
        (lambda p: ActiveSGD(p, lr_high=-1.0), ValueError, r"lr_high must be a real number in \[0, inf\), got -1.0"),
        (lambda p: ActiveSGD(p, lr_low=0.0), ValueError, r"lr_low must be a real number in \(0, 1\], got 0.0"),
        (lambda p: ActiveAdamW(p, lr_low=1.5), ValueError, r"lr_low must be a real number in \(0, 1\], got 1.5"),
        (
            lambda p: ActiveRAdam(p, max_multiplier=0.5),
            ValueError,
            r"max_multiplier must be None or a real number in \[1, inf\), got 0.5",
        ),
        (
            lambda p: ActiveAdaBelief(p, min_multiplier=2.0),
            ValueError,
            r"min_multiplier must be None or a real number in \(0, 1\], got 2.0",
        ),
        (lambda p: ActiveAdamW(p, scale_weight_decay=1), TypeError, r"scale_weight_decay must be a bool"),
        (lambda p: ActiveRAdam(p, weight_decay=0.1, scale_weight_decay=False), ValueError, r"needs decoupled"),
        (
            lambda p: ActiveSGD([{"params": p[:2]}, {"params": p[2:], "lr_low": 2.0}], lr=0.1),
            ValueError,
            r"lr_low of param group 1 must be a real number in \(0, 1\], got 2.0",
        ),
    ],
)
def test_bad_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make(list(make_model().parameters()))


def test_complex_parameters_are_rejected():
    z = torch.nn.Parameter(torch.ones(2, dtype=torch.complex64))
    z.grad = torch.ones_like(z)
    with pytest.raises(RuntimeError, match=r"ActiveAdamW does not support complex parameters"):
        ActiveAdamW([z]).step()


def test_grad_scaler_with_fused_adamw_sums_true_gradients_and_skips_inf_steps():
    scaled_model, plain_model = make_model(), make_model()
    scaled = ActiveAdamW(scaled_model.parameters(), lr=1e-2, fused=True, steps_per_epoch=2)
    plain = ActiveAdamW(plain_model.parameters(), lr=1e-2, fused=True, steps_per_epoch=2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1000)
    for index, (x, y) in enumerate(make_batches(9)):
        scaled.zero_grad()
        scaler.scale(F.cross_entropy(scaled_model(x), y)).backward()
        if index == 4:  # an overflow: the scaler must skip this step, sums included
            next(scaled_model.parameters()).grad[0, 0] = float("inf")
        scaler.step(scaled)
        scaler.update()
        if index != 4:
            train_step(plain_model, plain, (x, y))
    assert same_params(scaled_model, plain_model)
    for p, q in zip(scaled_model.parameters(), plain_model.parameters(), strict=True):
        for key in STATE_KEYS:
            assert torch.equal(scaled.state[p][key], plain.state[q][key]), key
    assert scaled.param_groups[0]["epoch"] == plain.param_groups[0]["epoch"] == 4


def trained(cls, kwargs, steps=6):
    model = make_model()
    optimizer = cls(model.parameters(), **kwargs, steps_per_epoch=4)
    for batch in make_batches(steps):
        train_step(model, optimizer, batch)
    return model, optimizer


def corrupt(state, group=None, param=None, **changes):
    state = copy.deepcopy(state)
    target = state["param_groups"][group] if group is not None else state["state"][param]
    for key, value in changes.items():
        if value is KeyError:
            del target[key]
        else:
            target[key] = value
    return state


@pytest.mark.parametrize(
    "change, error, match",
    [
        (
            dict(group=0, lr_low=2.0),
            ValueError,
            r"lr_low of saved param group 0 must be a real number in \(0, 1\], got 2.0",
        ),
        (dict(group=0, epoch=KeyError), KeyError, r"param_groups'\]\[0\] lacks \['epoch'\]"),
        (
            dict(group=0, epoch_steps=-1),
            ValueError,
            r"epoch_steps'\] must be an int in \[0, 9223372036854775807\], got -1",
        ),
        (
            dict(group=0, steps_per_epoch=10**400),
            ValueError,
            r"steps_per_epoch of saved param group 0 must be an int in \[1, 9223372036854775807\]",
        ),
        (
            dict(group=0, max_multiplier=1e308),
            ValueError,
            r"max_multiplier of saved param group 0 must be None or a real number in \[1, 3.40282\d*e\+38\] "
            r".*torch.float32.* got 1e\+308",
        ),
        (dict(group=0, lr=float("nan")), ValueError, r"\['lr'\] must be a real number in \[0, inf\), got nan"),
        (
            dict(param=0, multiplier=torch.ones(3)),
            ValueError,
            r"\['multiplier'\] has shape \(3,\), the parameter has \(8, 6\)",
        ),
        (dict(param=1, grad_sum=torch.full((8,), float("nan"))), ValueError, r"\['grad_sum'\] contains NaN or Inf"),
        (dict(param=1, grad_sign=torch.full((8,), 3, dtype=torch.int8)), ValueError, r"signs in \{-1, 0, 1\}"),
        (dict(param=1, multiplier=torch.zeros(8)), ValueError, r"must be > 0 everywhere"),
        (dict(param=2, grad_sign=KeyError), KeyError, r"lacks \['grad_sign'\] \(the rule's state is all or nothing\)"),
        (dict(param=0, exp_avg=torch.zeros(2)), ValueError, r"\['exp_avg'\] has shape \(2,\)"),
        (dict(param=0, step=torch.tensor(-1.0)), ValueError, r"\['step'\] must be a whole number in \[0, inf\)"),
        (dict(param=0, step="3"), TypeError, r"\['step'\] must be a step count"),
    ],
)
def test_a_bad_checkpoint_is_rejected_naming_what_differs_and_changes_nothing(change, error, match):
    _, source = trained(ActiveAdamW, dict(lr=1e-2))
    bad = corrupt(source.state_dict(), **change)
    _, target = trained(ActiveAdamW, dict(lr=1e-2), steps=3)
    before = copy.deepcopy(target.state_dict())
    with pytest.raises(error, match=match):
        target.load_state_dict(bad)
    assert states_equal(target.state_dict(), before)


@pytest.mark.parametrize("cls", [ActiveAdamW, ActiveAdaBelief], ids=["adamw", "adabelief"])
def test_a_mutated_checkpoint_loads_exactly_or_fails_clearly_and_changes_nothing(cls):
    _, source = trained(cls, dict(lr=1e-2))
    good = source.state_dict()
    every_path = list(paths(good))
    # torch casts floating state to the parameter's dtype on load by design: no dtype mutations here.
    kinds = [kind for kind in MUTATIONS if kind != "tensor_dtype"]

    @settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.tuples(st.sampled_from(every_path), st.sampled_from(kinds)), min_size=1, max_size=2))
    def check(mutations):
        _, target = trained(cls, dict(lr=1e-2), steps=1)
        load_exactly_or_fail_cleanly(target, mutated(good, mutations))

    check()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_a_multiplier_halved_on_every_flip_stops_at_the_smallest_normal_and_the_state_loads(dtype):
    param = torch.nn.Parameter(torch.ones(3, dtype=dtype))
    optimizer = ActiveSGD([param], lr=1e-3, steps_per_epoch=1)
    for epoch in range(200):  # the gradient's sign flips every epoch
        optimizer.zero_grad()
        ((-1) ** epoch * param.float().sum()).backward()
        optimizer.step()
    multiplier = optimizer.state[param]["multiplier"]
    assert torch.equal(multiplier, torch.full_like(multiplier, torch.finfo(dtype).tiny))
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    fresh = ActiveSGD([torch.nn.Parameter(torch.ones(3, dtype=dtype))], lr=1e-3, steps_per_epoch=1)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))


def test_numpy_scalars_and_non_bools_are_checked_at_the_door():
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = ActiveSGD([param], lr=0.1, lr_high=np.float64(2.0), lr_low=np.float32(0.5), steps_per_epoch=np.int64(4))
    group = optimizer.param_groups[0]
    assert (type(group["lr_high"]), type(group["lr_low"]), type(group["steps_per_epoch"])) == (float, float, int)
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    torch.load(buffer, weights_only=True)
    with pytest.raises(TypeError, match="scale_weight_decay must be a bool, got None"):
        ActiveAdamW([param], scale_weight_decay=None)
    with pytest.raises(TypeError, match="maximize must be a bool, got 'False'"):
        AdaBelief([param], maximize="False")
    with pytest.raises(TypeError, match="decoupled_weight_decay must be a bool, got 1"):
        AdaBelief([param], decoupled_weight_decay=1)


@pytest.mark.parametrize(
    "cls, moment",
    [
        (ActiveSGD, "momentum_buffer"),
        (ActiveAdamW, "exp_avg"),
        (ActiveRAdam, "exp_avg_sq"),
        (ActiveAdaBelief, "exp_avg_var"),
    ],
)
@pytest.mark.parametrize("damage", ["deleted", "None"])
def test_a_state_whose_base_moment_is_gone_is_refused_at_load_not_at_the_next_step(cls, moment, damage):
    param = torch.nn.Parameter(torch.ones(3))
    kwargs = {"momentum": 0.9} if cls is ActiveSGD else {}
    optimizer = cls([param], lr=0.1, steps_per_epoch=2, **kwargs)
    param.grad = torch.ones(3)
    optimizer.step()
    state = copy.deepcopy(optimizer.state_dict())
    if damage == "deleted":
        del state["state"][0][moment]
    else:
        state["state"][0][moment] = None
    with pytest.raises(KeyError, match=f"lacks the base optimizer's \\['{moment}'\\]"):
        optimizer.load_state_dict(state)


def test_an_optimizer_whose_epochs_never_end_says_so_once(monkeypatch):
    import autodrop.optim.active as active

    monkeypatch.setattr(active, "STEPS_WITHOUT_EPOCH_END", 5)
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = ActiveSGD([param], lr=0.01)
    with pytest.warns(RuntimeWarning, match="5 steps and no epoch has ended.*end_epoch") as caught:
        for _ in range(12):
            param.grad = torch.ones(3)
            optimizer.step()
    assert len([w for w in caught if "no epoch has ended" in str(w.message)]) == 1
    ended = ActiveSGD([param], lr=0.01, steps_per_epoch=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(12):
            param.grad = torch.ones(3)
            ended.step()


class Lion(torch.optim.Optimizer):
    """A third-party optimizer this package does not wrap (Chen et al. 2023): the sign of an
    interpolated momentum, with decoupled weight decay."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                momentum = self.state[p].setdefault("exp_avg", torch.zeros_like(p))
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_((beta1 * momentum + (1 - beta1) * p.grad).sign(), alpha=-group["lr"])
                momentum.mul_(beta2).add_(p.grad, alpha=1 - beta2)
        return loss


class CountedLion(Lion):
    """Lion that counts its constructor's runs."""

    runs = 0

    def __init__(self, *args, **kwargs):
        type(self).runs += 1
        super().__init__(*args, **kwargs)


def run(make, steps=12):
    """12 steps of a fixed regression with the optimizer ``make(params)``: the parameters, the optimizer."""
    torch.manual_seed(0)
    model = make_model()
    optimizer = make(model.parameters())
    x, y = torch.randn(32, 6), torch.randn(32, 3)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()], optimizer


@pytest.mark.parametrize("base", [Lion, torch.optim.Adam])
def test_the_rule_works_on_optimizers_this_package_does_not_wrap(base):
    plain, _ = run(lambda params: base(params, lr=1e-2))
    neutral, _ = run(
        lambda params: ActiveLR(base(params, lr=1e-2), lr_high=0.0, lr_low=1.0, steps_per_epoch=3).optimizer
    )
    assert all(torch.equal(a, b) for a, b in zip(plain, neutral))  # g stays 1: bit for bit the base
    scaled, optimizer = run(lambda params: ActiveLR(base(params, lr=1e-2), steps_per_epoch=3).optimizer)
    assert type(optimizer) is base
    assert optimizer.param_groups[0]["epoch"] == 4 and not all(torch.equal(a, b) for a, b in zip(plain, scaled))
    multipliers = torch.cat([optimizer.state[p]["multiplier"].reshape(-1) for p in optimizer.param_groups[0]["params"]])
    assert bool((multipliers != 1).any())


def test_active_lr_joins_an_optimizer_that_already_exists():
    plain, _ = run(lambda params: torch.optim.Adam(params, lr=1e-2))
    neutral, _ = run(lambda params: ActiveLR(torch.optim.Adam(params, lr=1e-2), lr_high=0.0, lr_low=1.0).optimizer)
    assert all(torch.equal(a, b) for a, b in zip(plain, neutral))
    scaled, optimizer = run(lambda params: ActiveLR(torch.optim.Adam(params, lr=1e-2), steps_per_epoch=3).optimizer)
    assert type(optimizer) is torch.optim.Adam
    assert optimizer.param_groups[0]["epoch"] == 4 and optimizer.param_groups[0]["lr_high"] == 2.0
    assert not all(torch.equal(a, b) for a, b in zip(plain, scaled))
    restored = ActiveLR(torch.optim.Adam(make_model().parameters(), lr=1e-2), steps_per_epoch=3).optimizer
    restored.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    assert states_equal(restored.state_dict(), optimizer.state_dict())
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer, got generator"):
        ActiveLR(make_model().parameters())


def test_joining_twice_is_refused_and_the_optimizers_constructor_runs_once():
    CountedLion.runs = 0
    lion = CountedLion(make_model().parameters(), lr=1e-2)
    active = ActiveLR(lion, steps_per_epoch=3)
    assert CountedLion.runs == 1 and type(lion) is CountedLion and active.optimizer is lion
    with pytest.raises(ValueError, match="this CountedLion has an ActiveLR already"):
        ActiveLR(lion, lr_high=0.2)
    assert len(lion._optimizer_step_pre_hooks) == len(lion._optimizer_step_post_hooks) == 1
    copied = pickle.loads(pickle.dumps(lion))  # the copy has no hooks: it may be joined
    ActiveLR(copied, steps_per_epoch=3)
    assert CountedLion.runs == 1
    sgd = ActiveSGD(make_model().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="this ActiveSGD has an ActiveLR already"):
        ActiveLR(sgd)
    runs = []
    original = torch.optim.AdamW.__init__
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.optim.AdamW, "__init__", lambda self, *a, **k: runs.append(1) or original(self, *a, **k))
        ActiveAdamW(make_model().parameters())
    assert runs == [1]


def train_and_copy(make, how, steps=6):
    """A model and its joined optimizer trained ``steps`` steps, and a copy of both made ``how``."""
    model = make_model()
    optimizer = make(model.parameters())
    active = optimizer.active_lr if hasattr(optimizer, "active_lr") else ActiveLR(optimizer, steps_per_epoch=4)
    for batch in make_batches(steps):
        train_step(model, optimizer, batch)
    if how == "deepcopy":
        copied_model, copied = copy.deepcopy((model, active))
        return model, optimizer, copied_model, copied.optimizer
    if how == "pickle":
        copied_model, copied = pickle.loads(pickle.dumps((model, active)))
        return model, optimizer, copied_model, copied.optimizer
    # the optimizer alone: it carries the rule's state and settings, not the hooks; join it again
    copied_model, copied = pickle.loads(pickle.dumps((model, optimizer)))
    if not hasattr(copied, "active_lr"):
        assert not copied._optimizer_step_pre_hooks
        ActiveLR(copied)
    return model, optimizer, copied_model, copied


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "optimizer-alone"])
@pytest.mark.parametrize(
    "make",
    [
        lambda params: torch.optim.Adam(params, lr=1e-2),
        lambda params: CountedLion(params, lr=1e-3),
        lambda params: ActiveAdamW(params, lr=1e-2, steps_per_epoch=4),
        lambda params: ActiveSGD(params, lr=0.1, momentum=0.9, steps_per_epoch=4),
    ],
    ids=["adam", "lion", "ActiveAdamW", "ActiveSGD"],
)
def test_a_copied_or_pickled_joined_optimizer_continues_bit_for_bit(make, how):
    model, optimizer, copied_model, copied = train_and_copy(make, how)
    assert type(copied) is type(optimizer) and copied is not optimizer
    assert len(copied._optimizer_step_pre_hooks) == len(optimizer._optimizer_step_pre_hooks) == 1
    for batch in make_batches(14, seed=2):
        train_step(model, optimizer, batch)
        train_step(copied_model, copied, batch)
    assert same_params(model, copied_model)
    assert states_equal(copied.state_dict(), optimizer.state_dict())
    assert optimizer.param_groups[0]["epoch"] == 5
    assert any(not torch.equal(optimizer.state[p]["multiplier"], torch.ones_like(p)) for p in model.parameters())


def test_remove_gives_back_the_plain_optimizer():
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    before = {"hooks": len(optimizer._optimizer_step_pre_hooks), "amp": optimizer._step_supports_amp_scaling}
    active = ActiveLR(optimizer, steps_per_epoch=2, scale_weight_decay=False)
    assert optimizer._step_supports_amp_scaling is False
    batches = make_batches(9)
    for batch in batches[:6]:
        train_step(model, optimizer, batch)
    assert any(not torch.equal(optimizer.state[p]["multiplier"], torch.ones_like(p)) for p in model.parameters())
    active.remove()
    state = optimizer.state_dict()
    assert not any(key in group for group in state["param_groups"] for key in ("epoch", "lr_high", "epoch_steps"))
    assert not any(key in s for s in state["state"].values() for key in STATE_KEYS)
    assert "lr_high" not in optimizer.defaults
    assert len(optimizer._optimizer_step_pre_hooks) == before["hooks"]
    assert optimizer._step_supports_amp_scaling == before["amp"]
    plain_model = make_model()
    plain_model.load_state_dict(model.state_dict())
    plain = torch.optim.AdamW(plain_model.parameters(), lr=1e-2, fused=True)
    plain.load_state_dict(copy.deepcopy(state))
    for batch in batches[6:]:
        train_step(model, optimizer, batch)
        train_step(plain_model, plain, batch)
    assert same_params(model, plain_model) and states_equal(optimizer.state_dict(), plain.state_dict())
    with pytest.raises(RuntimeError, match="this ActiveLR was removed from its AdamW"):
        active.end_epoch()
    active.remove()  # twice: nothing to do
    with pytest.raises(TypeError, match="a removed ActiveLR cannot be copied"):
        copy.deepcopy(active)
    again = ActiveLR(optimizer, steps_per_epoch=2)  # joins afresh
    train_step(model, optimizer, batches[0])
    assert again.defaults["steps_per_epoch"] == 2 and optimizer.param_groups[0]["epoch_steps"] == 1
    with pytest.raises(TypeError, match="the rule is what makes ActiveSGD"):
        ActiveSGD(make_model().parameters()).active_lr.remove()


def test_groups_added_after_the_join_take_the_rule_at_the_next_step():
    model = make_model()
    optimizer = torch.optim.SGD(model[0].parameters(), lr=0.1)
    ActiveLR(optimizer, steps_per_epoch=2, lr_high=0.5)
    optimizer.add_param_group({"params": model[2].parameters(), "lr_low": 3.0})
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"lr_low of param group 1 must be a real number in \(0, 1\], got 3.0"):
        train_step(model, optimizer, make_batches(1)[0])
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    optimizer.param_groups[1]["lr_low"] = 0.25
    train_step(model, optimizer, make_batches(1)[0])
    group = optimizer.param_groups[1]
    assert (group["lr_high"], group["lr_low"], group["epoch_steps"], group["epoch"]) == (0.5, 0.25, 1, 0)
    # an Active* optimizer checks a new group at once, and does not keep a refused one
    sgd = ActiveSGD(model[0].parameters(), lr=0.1)
    with pytest.raises(
        ValueError, match=r"max_multiplier of param group 1 must be None or a real number in \[1, inf\), got 0.5"
    ):
        sgd.add_param_group({"params": model[2].parameters(), "max_multiplier": 0.5})
    assert len(sgd.param_groups) == 1


FLOAT32_MAX = torch.finfo(torch.float32).max


@pytest.mark.parametrize(
    "dtype, lr_high, largest, refused",
    [
        (torch.float32, 2.0, FLOAT32_MAX, math.nextafter(FLOAT32_MAX, math.inf)),  # + 2 vanishes in float64
        (torch.float32, 1e38, FLOAT32_MAX - 1e38, math.nextafter(FLOAT32_MAX - 1e38, math.inf)),
        (torch.float16, 2.0, 65502.0, 65502.5),
    ],
    ids=["float32", "float32-large-step", "float16"],
)
def test_max_multiplier_is_bounded_so_that_g_plus_lr_high_stays_finite(dtype, lr_high, largest, refused):
    def make(max_multiplier):
        param = torch.nn.Parameter(torch.ones(3, dtype=dtype))
        return param, ActiveSGD([param], lr=1e-30, steps_per_epoch=1, lr_high=lr_high, max_multiplier=max_multiplier)

    allowed = re.escape(
        f"max_multiplier must be None or a real number in [1, {largest!r}] (the largest finite {dtype} less lr_high"
    )
    with pytest.raises(ValueError, match=allowed):
        make(refused)
    param, optimizer = make(largest)  # the edge: g at the bound, raised by lr_high and clamped, stays finite
    for step in range(4):
        param.grad = torch.ones(3, dtype=dtype)
        optimizer.step()
        if step == 1:
            optimizer.state[param]["multiplier"].fill_(largest)
    multiplier = optimizer.state[param]["multiplier"]
    assert torch.equal(multiplier, torch.full_like(multiplier, largest)) and bool(torch.isfinite(multiplier).all())
    fresh, target = make(largest)
    target.load_state_dict(optimizer.state_dict())


def test_steps_per_epoch_and_lr_high_are_bounded():
    param = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match=r"steps_per_epoch must be an int in \[1, 9223372036854775807\], got 10{400}"):
        ActiveSGD([param], steps_per_epoch=10**400)
    assert ActiveSGD([param], steps_per_epoch=2**63 - 1).param_groups[0]["steps_per_epoch"] == 2**63 - 1
    with pytest.raises(
        ValueError, match=r"steps_per_epoch of param group 1 must be an int in \[1, 9223372036854775807\]"
    ):
        ActiveSGD([param]).add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], "steps_per_epoch": 2**63})
    half = torch.nn.Parameter(torch.ones(3, dtype=torch.float16))
    with pytest.raises(
        ValueError, match=r"lr_high must be a real number in \[0, 65503.0\] \(the largest finite torch.float16 less 1"
    ):
        ActiveLR(torch.optim.SGD([half], lr=0.1), lr_high=65503.5)
    ActiveLR(torch.optim.SGD([half], lr=0.1), lr_high=65503.0)
    with pytest.raises(
        ValueError, match=r"max_multiplier of param group 1 must be None or a real number in \[1, 65502.0\]"
    ):
        ActiveSGD([param], max_multiplier=1e6).add_param_group({"params": [half]})


def test_an_unbounded_multiplier_saturates_at_the_largest_finite_number():
    param = torch.nn.Parameter(torch.ones(3, dtype=torch.float16))
    optimizer = ActiveSGD([param], lr=1e-7, steps_per_epoch=1, lr_high=30000.0)
    for _ in range(6):  # g: 1, 1, 30001, 60001, then past 65504, the largest float16
        param.grad = torch.ones(3, dtype=torch.float16)
        optimizer.step()
    assert torch.equal(optimizer.state[param]["multiplier"], torch.full((3,), 65504.0, dtype=torch.float16))
    fresh = torch.nn.Parameter(torch.ones(3, dtype=torch.float16))
    ActiveSGD([fresh], lr=1e-7, steps_per_epoch=1, lr_high=30000.0).load_state_dict(optimizer.state_dict())
    # a bound checked against float32 parameters that became float16 later still holds, at float16's largest
    wide = torch.nn.Parameter(torch.ones(3))
    bounded = ActiveSGD([wide], lr=1e-7, steps_per_epoch=1, lr_high=30000.0, max_multiplier=1e6)
    wide.data = wide.data.half()
    for _ in range(6):
        wide.grad = torch.ones(3, dtype=torch.float16)
        bounded.step()
    assert torch.equal(bounded.state[wide]["multiplier"], torch.full((3,), 65504.0, dtype=torch.float16))


def test_a_step_count_of_another_kind_than_the_base_keeps_is_refused_not_converted():
    # torch's AdamW turns a number step into a tensor on load (found on torch 2.4): that load would not be exact
    _, source = trained(ActiveAdamW, dict(lr=1e-2))
    _, target = trained(ActiveAdamW, dict(lr=1e-2), steps=1)
    state = source.state_dict()
    state["state"][0]["step"] = 10**9
    before = copy.deepcopy(target.state_dict())
    with pytest.raises(TypeError, match=r"\['step'\] must be a Tensor as the base keeps it, got 1000000000"):
        target.load_state_dict(state)
    assert states_equal(target.state_dict(), before)
