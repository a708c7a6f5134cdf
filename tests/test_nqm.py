import math

import numpy as np
import pytest
import torch

from autodrop.nqm import (
    PAPER_LEARNING_RATES,
    NoisyQuadratic,
    run_autodrop,
    simulate_fixed_lr,
    window_mean,
)


def monte_carlo(a, var, lr, momentum, runs, burn_in, samples, seed):
    """Heavy-ball SGD on the NQM from x = 0 in plain numpy float64, independent of autodrop.nqm.

    Returns the means over iterations after the burn-in and their standard errors
    over the independent runs, for <s_t, s_t+1>, |s|^2 and x'Ax/2.
    """
    rng = np.random.default_rng(seed)
    x = np.zeros((runs, a.size))
    step = np.zeros_like(x)
    sums = np.zeros((3, runs))
    for t in range(burn_in + samples):
        optimum = rng.standard_normal(x.shape) * np.sqrt(var)
        new_step = momentum * step - lr * a * (x - optimum)
        x += new_step
        if t >= burn_in:
            sums += [(new_step * step).sum(1), (new_step * new_step).sum(1), 0.5 * (a * x * x).sum(1)]
        step = new_step
    per_run = sums / samples
    return per_run.mean(1), per_run.std(1, ddof=1) / math.sqrt(runs)


@pytest.fixture(scope="module")
def paper():
    return NoisyQuadratic.paper()


@pytest.fixture(scope="module")
def paper_runs(paper):
    return simulate_fixed_lr(paper, PAPER_LEARNING_RATES, iterations=10_000, seed=0)


def test_paper_setting(paper):
    assert paper.dimension == 200
    np.testing.assert_allclose(paper.curvature.numpy(), np.arange(1, 201) / 10)
    np.testing.assert_array_equal(paper.noise.numpy(), paper.curvature.numpy())


@pytest.mark.parametrize("lr", PAPER_LEARNING_RATES)
def test_theorem1_closed_form_is_the_zero_momentum_lyapunov_solution(paper, lr):
    a, var = paper.curvature.numpy(), paper.noise.numpy()
    moments = paper.stationary_moments(lr)
    inner = -(lr**3) * np.sum(a**3 * var / (2 - lr * a))
    norm_sq = 2 * lr**2 * np.sum(a**2 * var / (2 - lr * a))
    assert paper.theorem1_inner_product(lr) == pytest.approx(inner, rel=1e-12)
    assert moments["inner_product"] == pytest.approx(inner, rel=1e-10)
    assert moments["step_norm_sq"] == pytest.approx(norm_sq, rel=1e-10)
    assert moments["loss"] == pytest.approx(0.5 * np.sum(a * lr * a * var / (2 - lr * a)), rel=1e-10)
    assert paper.theorem1_cosine(lr) == pytest.approx(inner / norm_sq, rel=1e-12)
    assert paper.predicted_angle(lr) == pytest.approx(math.degrees(math.acos(inner / norm_sq)), abs=1e-9)
    # Theorem 1's bounds: C* >= -lr max(a) / 2, so the angle lies in [90, 120] degrees.
    assert -lr * a.max() / 2 <= paper.theorem1_cosine(lr) <= 0
    assert 90 <= paper.predicted_angle(lr) <= 120


@pytest.mark.parametrize("lr", PAPER_LEARNING_RATES)
def test_theorem1_matches_an_independent_monte_carlo(paper, lr):
    a, var = paper.curvature.numpy(), paper.noise.numpy()
    burn_in = 2000
    # The walk starts at x = 0: coordinate i lacks (1 - lr a_i)^(2 burn_in) of its
    # stationary variance. Weighted as in each predicted sum, that is negligible.
    unrelaxed = (1 - lr * a) ** (2 * burn_in)
    for weight in (a**4, a**3):
        assert np.sum(weight * unrelaxed) / np.sum(weight) < 1e-5
    mean, error = monte_carlo(a, var, lr, 0.0, runs=64, burn_in=burn_in, samples=1000, seed=1)
    moments = paper.stationary_moments(lr)
    predicted = [moments["inner_product"], moments["step_norm_sq"], moments["loss"]]
    for name, value, mc, se in zip(["inner product", "|s|^2", "loss"], predicted, mean, error, strict=True):
        assert abs(value - mc) < 4 * se, f"{name}: predicted {value}, Monte-Carlo {mc} +- {se}"
    assert paper.theorem1_inner_product(lr) == pytest.approx(mean[0], rel=0.15)
    assert paper.predicted_angle(lr) == pytest.approx(math.degrees(math.acos(mean[0] / mean[1])), abs=0.1)


def test_heavy_ball_prediction_matches_monte_carlo_for_any_diagonal_problem():
    rng = np.random.default_rng(7)
    a, var = rng.uniform(0.5, 3.0, size=8), rng.uniform(0.2, 2.0, size=8)
    problem = NoisyQuadratic(torch.tensor(a), torch.tensor(var), torch.zeros(8))
    lr, momentum = 0.4, 0.6
    mean, error = monte_carlo(a, var, lr, momentum, runs=2000, burn_in=300, samples=400, seed=2)
    moments = problem.stationary_moments(lr, momentum)
    predicted = [moments["inner_product"], moments["step_norm_sq"], moments["loss"]]
    for name, value, mc, se in zip(["inner product", "|s|^2", "loss"], predicted, mean, error, strict=True):
        assert abs(value - mc) < 4 * se, f"{name}: predicted {value}, Monte-Carlo {mc} +- {se}"
    # Momentum changes the answer: the GD formula would be far off here.
    assert abs(problem.stationary_moments(lr)["inner_product"] - mean[0]) > 20 * error[0]


def test_measured_saturation_angle_is_within_one_degree_of_theorem1(paper, paper_runs):
    measured = paper_runs.saturation_angle()
    predicted = [paper.predicted_angle(lr) for lr in PAPER_LEARNING_RATES]
    for lr, m, p in zip(PAPER_LEARNING_RATES, measured, predicted, strict=True):
        assert abs(m - p) < 1.0, f"lr {lr}: measured {m:.3f} deg, Theorem 1 {p:.3f} deg"
    # P2: between 90 and 120 degrees, lower for a smaller learning rate.
    assert all(90 < m < 120 for m in measured)
    assert measured == sorted(measured, reverse=True)


def test_smaller_learning_rate_saturates_later(paper_runs):
    averaged = window_mean(paper_runs.omega, 20)
    final = torch.tensor(paper_runs.saturation_angle())
    first_within_two_degrees = [
        int(torch.nonzero((averaged[:, k] - final[k]).abs() < 2)[0]) for k in range(len(PAPER_LEARNING_RATES))
    ]
    assert first_within_two_degrees == sorted(first_within_two_degrees)


def test_measured_heavy_ball_angle_follows_its_prediction(paper):
    run = simulate_fixed_lr(paper, [0.01], iterations=4000, momentum=0.5, seed=3)
    assert run.saturation_angle()[0] == pytest.approx(paper.predicted_angle(0.01, 0.5), abs=1.0)
    assert abs(paper.predicted_angle(0.01, 0.5) - paper.predicted_angle(0.01)) > 5


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_vectorised_simulator_is_torch_sgd_step_for_step(paper, momentum):
    fixed = simulate_fixed_lr(paper, [0.03], iterations=300, momentum=momentum, seed=5)
    # A threshold no change of omega falls below: AutoDrop measures but never drops.
    measured = run_autodrop(paper, lr=0.03, iterations=300, threshold=1e-300, momentum=momentum, seed=5)
    assert measured.drops == []
    np.testing.assert_allclose(measured.loss.numpy(), fixed.loss[:, 0].numpy(), rtol=1e-9)
    omegas = [r["omega"] for r in measured.history[1:]]
    np.testing.assert_allclose(omegas, fixed.omega[:, 0].numpy(), atol=1e-6)


def test_autodrop_drops_at_least_twice_and_ends_far_below_the_fixed_lr_loss(paper, paper_runs):
    run = run_autodrop(paper, iterations=5000, seed=0)
    lrs = [lr for _, lr in run.drops]
    assert len(lrs) >= 2
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] >= 0.001
    assert all(r["lrs"][0] >= 0.001 for r in run.history)
    stationary = paper_runs.stationary_loss()[PAPER_LEARNING_RATES.index(0.06)]
    assert run.final_loss() * 10 <= stationary
    # It did not get there at the fixed 0.06: the loss fell only after the drops.
    first_drop = run.drops[0][0]
    assert run.loss[first_drop // 2 : first_drop].mean() > stationary / 3


def test_window_mean_matches_numpy():
    values = torch.tensor(np.random.default_rng(0).uniform(80, 120, size=(50, 3)))
    means = window_mean(values, 20)
    assert torch.isnan(means[:19]).all()
    expected = np.stack([np.convolve(values[:, k].numpy(), np.ones(20) / 20, mode="valid") for k in range(3)], 1)
    np.testing.assert_allclose(means[19:].numpy(), expected, rtol=1e-12)


def test_bad_input_is_rejected_with_the_argument_named(paper):
    with pytest.raises(ValueError, match=r"lr must be in \(0, 0\.1\)"):
        paper.predicted_angle(0.1)
    with pytest.raises(ValueError, match="lr must be in"):
        simulate_fixed_lr(paper, [0.06, 0.2])
    with pytest.raises(ValueError, match="momentum must be in"):
        paper.stationary_moments(0.01, momentum=1.0)
    with pytest.raises(ValueError, match="curvature must be > 0"):
        NoisyQuadratic(torch.tensor([1.0, 0.0]), torch.ones(2), torch.zeros(2))
    with pytest.raises(ValueError, match="noise .* must be >= 0"):
        NoisyQuadratic(torch.ones(2), torch.tensor([1.0, -1.0]), torch.zeros(2))
    with pytest.raises(ValueError, match="lengths 2, 3, 2"):
        NoisyQuadratic(torch.ones(2), torch.ones(3), torch.zeros(2))
    with pytest.raises(ValueError, match="iterations must be an int >= 2"):
        simulate_fixed_lr(paper, [0.01], iterations=1)
    with pytest.raises(ValueError, match="dimension must be an int >= 1"):
        NoisyQuadratic.paper(dimension=0)
    with pytest.raises(ValueError, match="window must be an int >= 1"):
        window_mean(torch.zeros(3), 0)
