"""Property tests of AutoDrop: invariants over random omega sequences and faults, and checkpoint fuzzing."""

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from states import MUTATIONS, load_exactly_or_fail_cleanly, mutated, paths, states_equal
from trajectories import PlanarWalk

from autodrop import AutoDrop, TrendTest

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
PROPERTY = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

# An interval either turns the walk by omega degrees, leaves the parameters alone, or sees a NaN.
intervals = st.one_of(st.floats(0.0, 180.0), st.sampled_from(["stay", "nan"]))


@st.composite
def settings_and_lr(draw):
    threshold = draw(st.floats(0.01, 60.0))
    kwargs = {
        "detector": "paper",
        "factor": draw(st.floats(0.05, 0.95)),
        "min_lr": draw(st.floats(0.0, 0.5)),
        "threshold": threshold,
        "max_threshold": threshold * draw(st.floats(1.0, 20.0)),
        "delay": draw(st.integers(0, 6)),
        "window": draw(st.integers(1, 3)),
        "average": draw(st.booleans()),
    }
    return kwargs, draw(st.floats(1e-3, 1.0))


@PROPERTY
@given(settings_and_lr(), st.lists(intervals, min_size=1, max_size=40))
def test_invariants_hold_over_random_omega_sequences_and_faults(config, script):
    kwargs, lr = config
    param = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    optimizer = torch.optim.SGD([param], lr=lr)
    scheduler = AutoDrop(optimizer, **kwargs)
    walk = PlanarWalk(param)
    floor = min(kwargs["min_lr"], lr)
    measured, drops, previous_lr, previous_threshold = [], [], lr, scheduler.threshold
    for steps, interval in enumerate([None, *script], start=1):
        good = param.detach().clone()
        if interval == "nan":
            with torch.no_grad():
                param[0] = float("nan")
        elif interval != "stay":
            walk.move(interval)
        position = param.detach().numpy().copy()
        scheduler.step()
        record = scheduler.history[-1]
        if interval == "nan":
            with torch.no_grad():
                param.copy_(good)
        if record["event"] != "skipped":
            measured.append(position)

        current_lr = optimizer.param_groups[0]["lr"]
        assert floor <= current_lr <= previous_lr
        assert previous_threshold <= scheduler.threshold <= kwargs["max_threshold"]
        assert len(scheduler.history) == steps and record["interval"] == steps
        if interval in ("nan", "stay"):
            assert record["event"] == "skipped" and record["reason"] == (
                "nonfinite" if interval == "nan" else "zero_step"
            )
        k = scheduler.delay_count
        if scheduler.sums is not None:
            assert scheduler.pending and 1 <= k < kwargs["delay"]
        if record["event"] == "drop":
            # A drop ends a window of `delay` measured intervals, so two drops are >= max(delay, 1) apart.
            assert not drops or steps - drops[-1] >= max(kwargs["delay"], 1)
            drops.append(steps)
            if kwargs["average"] and kwargs["delay"] > 0:
                n = kwargs["delay"]
                weights = np.arange(1, n + 1) / (n * (n + 1) / 2)
                assert math.isclose(weights.sum(), 1.0, rel_tol=1e-15)
                expected = (weights[:, None] * np.stack(measured[-n:])).sum(0)
                np.testing.assert_allclose(param.detach().numpy(), expected, rtol=1e-9, atol=1e-9)
                measured[-1] = expected  # the next step is measured from the average
        previous_lr, previous_threshold = current_lr, scheduler.threshold
    assert scheduler.num_drops == len(drops)


def build(detector="paper"):
    """A scheduler over two (device, dtype) buckets, left inside an averaging window with some skipped intervals."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    extra = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    optimizer = torch.optim.SGD([{"params": model.parameters()}, {"params": [extra], "lr": 0.5}], lr=0.1)
    if detector == "paper":
        options = {"detector": "paper", "threshold": 30.0, "max_threshold": 60.0}
    else:  # a trend test that passes as soon as it may test: 3 omegas, then one pass
        options = {"detector": TrendTest(tolerance=100.0, horizon=1, window=4, min_intervals=3, patience=1)}
    scheduler = AutoDrop(optimizer, delay=5, min_lr=[1e-4, 1e-3], **options)
    walk = PlanarWalk(extra)
    generator = torch.Generator().manual_seed(1)
    return model, walk, scheduler, generator


def advance(model, walk, scheduler, generator, turns):
    for turn in turns:
        if turn is not None:
            walk.move(turn)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(1e-3 * torch.randn(p.shape, generator=generator))
        scheduler.step()


def saved_state(detector="paper"):
    model, walk, scheduler, generator = build(detector)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        advance(model, walk, scheduler, generator, [0.0, 10.0, 12.0, None, 12.5, 13.0])
    assert scheduler.pending and scheduler.sums is not None and scheduler.history[3]["event"] == "skipped"
    return scheduler.state_dict()


GOOD = saved_state()
GOOD_TREND = saved_state("trend")


ALL_PATHS = list(paths(GOOD))
TOP_LEVEL = [(key,) for key in GOOD]
# Top-level keys are drawn as often as all the nested positions together.
mutation_paths = st.one_of(st.sampled_from(TOP_LEVEL), st.sampled_from(ALL_PATHS))


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(mutation_paths, st.sampled_from(MUTATIONS)), min_size=1, max_size=3))
def test_a_mutated_checkpoint_loads_exactly_or_fails_clearly_and_changes_nothing(mutations):
    fuzz_one_checkpoint("paper", GOOD, mutations)


TREND_PATHS = list(paths(GOOD_TREND))


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(TREND_PATHS), st.sampled_from(MUTATIONS)), min_size=1, max_size=3))
def test_a_mutated_trend_checkpoint_loads_exactly_or_fails_clearly_and_changes_nothing(mutations):
    fuzz_one_checkpoint("trend", GOOD_TREND, mutations)


def fuzz_one_checkpoint(detector, good, mutations):
    model, walk, target, generator = build(detector)
    advance(model, walk, target, generator, [0.0, 40.0])
    if load_exactly_or_fail_cleanly(target, mutated(good, mutations)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            advance(model, walk, target, generator, [5.0, None, 7.0])  # a loaded state also runs on
        # the history counts AutoDrop's own intervals; last_epoch is torch's counter, which compositions move
        assert len(target.history) == min(target.intervals, target.max_history or target.intervals)
        assert target.history[-1]["interval"] == target.intervals


def test_the_unmutated_checkpoint_round_trips_exactly():
    model, walk, target, generator = build()
    target.load_state_dict(copy.deepcopy(GOOD))
    assert states_equal(target.state_dict(), GOOD)
