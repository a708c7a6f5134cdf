import math

import numpy as np
import pytest
import torch
from trajectories import PlanarWalk, angle64, flat64

from autodrop import AngularVelocity
from autodrop.velocity import angle_degrees


def planar_step(turn_degrees):
    return 0.3 * np.array([math.cos(math.radians(turn_degrees)), math.sin(math.radians(turn_degrees))])


@pytest.mark.parametrize("angle", [0.5, 30.0, 60.0, 90.0, 135.0, 179.0])
def test_known_angle_in_a_plane(angle):
    param = torch.zeros(2, dtype=torch.float64)
    velocity = AngularVelocity([param])
    walk = PlanarWalk(param, length=0.3)
    walk.move()
    assert velocity.update() is None
    walk.move()
    # Parallel steps: the paper's eps in the denominator makes this 0.027, not 0.
    assert velocity.update() == pytest.approx(angle64(planar_step(0), planar_step(0)), abs=1e-6)
    walk.move(angle)
    assert velocity.update() == pytest.approx(angle64(planar_step(0), planar_step(angle)), abs=1e-6)
    assert velocity.omega == pytest.approx(angle, abs=0.05)


def test_random_multi_tensor_trajectory_matches_numpy():
    generator = torch.Generator().manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(9, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    params = list(model.parameters())
    velocity = AngularVelocity(params)
    snapshots = [flat64(params)]
    measured = []
    for i in range(6):
        with torch.no_grad():
            for p in params:
                # Correlated steps: a drift shared across intervals plus noise.
                p.add_(0.05 * torch.ones_like(p) + 0.1 * torch.randn(p.shape, generator=generator))
        snapshots.append(flat64(params))
        measured.append(velocity.update())
    steps = np.diff(np.stack(snapshots), axis=0)
    assert measured[0] is None
    for i in range(1, 6):
        assert measured[i] == pytest.approx(angle64(steps[i], steps[i - 1]), abs=1e-4)


def test_angle_is_not_a_per_tensor_average():
    a, b = torch.zeros(2), torch.zeros(2)
    velocity = AngularVelocity([a, b])
    with torch.no_grad():
        a.add_(torch.tensor([1.0, 0.0]))
        velocity.update()
        a.add_(torch.tensor([10.0, 0.0]))  # big tensor keeps its direction
        b.add_(torch.tensor([0.0, 1.0]))  # small tensor turns by 90 degrees
    omega = velocity.update()
    with torch.no_grad():
        a.add_(torch.tensor([10.0, 0.0]))
        b.add_(torch.tensor([0.0, 1.0]))
    omega = velocity.update()
    assert omega == pytest.approx(angle64(np.array([10.0, 0, 0, 1]), np.array([10.0, 0, 0, 1])), abs=1e-4)


def test_zero_step_gives_no_direction():
    param = torch.zeros(3)
    velocity = AngularVelocity([param])
    with torch.no_grad():
        param.add_(1.0)
    velocity.update()
    assert velocity.update() is None  # parameters did not move


def test_angle_degrees_matches_formula():
    assert angle_degrees(0.0, 1.0, 1.0, 1e-8) == pytest.approx(90.0)
    assert angle_degrees(-4.0, 4.0, 4.0, 0.0) == pytest.approx(180.0)
    # eps enters the denominator exactly as in the paper
    assert angle_degrees(1.0, 1.0, 1.0, 1.0) == pytest.approx(math.degrees(math.acos(0.5)))


def unit(v):
    return v / np.linalg.norm(v)


@pytest.mark.parametrize(
    "angle, first_norm, second_norm",
    [
        (5e-4, 1.0, 1.0),
        (1e-4, 1e3, 1e3),  # eps negligible: the angle itself is tiny
        (5e-4, 1e-3, 1e3),  # norms 1e6x apart (small first: fp32 positions can still hold it)
        (30.0, 1e-3, 1e3),
        (179.9995, 1.0, 1.0),
        (179.9999, 1e3, 1e3),
        (179.9995, 1e-3, 1e3),
    ],
)
def test_omega_near_0_and_180_and_across_scales_matches_float64_within_1e_3_degree(angle, first_norm, second_norm):
    # 200k fp32 elements over several tensors: fp32 dot products would miss by ~0.03 degree here.
    # The first (tiny, random) step only makes omega defined at the third measurement.
    rng = np.random.default_rng(0)
    u, w = rng.standard_normal(200_000), rng.standard_normal(200_000)
    w = unit(w - (w @ unit(u)) * unit(u))
    turn = math.radians(angle)
    steps = [first_norm * unit(u), second_norm * (math.cos(turn) * unit(u) + math.sin(turn) * w)]
    flat = torch.zeros(200_000, dtype=torch.float32)
    params = list(flat.split([120_000, 50_000, 29_999, 1]))
    velocity = AngularVelocity(params)
    positions = [flat64(params)]
    with torch.no_grad():
        for step in [1e-7 * rng.standard_normal(200_000), *steps]:
            flat.add_(torch.from_numpy(step).float())
            positions.append(flat64(params))
            omega = velocity.update()
    realised = np.diff(np.stack(positions), axis=0)
    reference = angle64(realised[2], realised[1])
    assert abs(omega - reference) < 1e-3
    assert abs(reference - angle) < 0.05  # the realised fp32 steps keep the intended geometry (eps included)
