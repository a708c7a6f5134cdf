import numpy as np
import pytest
import torch
from trajectories import flat64

from autodrop.averaging import WeightedAverage
from autodrop.trajectory import ParameterTrajectory

pytestmark = pytest.mark.usefixtures("stepping")


def test_linear_weights_and_exact_normaliser():
    params = [torch.zeros(4, 3), torch.zeros(5)]
    trajectory = ParameterTrajectory(params)
    average = WeightedAverage()
    average.sums = WeightedAverage.empty_sums(trajectory)
    seen = []
    for k in range(1, 5):
        with torch.no_grad():
            for p in params:
                p.normal_()
        trajectory.commit(trajectory.measure(), average.sums, float(k))
        average.total_weight += k
        seen.append(flat64(params))
    assert average.buffer_bytes() == trajectory.buffer_bytes() // 2
    sums = [s.clone() for s in average.sums]
    average.write_back(trajectory)
    weights = np.arange(1, 5, dtype=np.float64)
    expected = (weights[:, None] * np.stack(seen)).sum(0) / (4 * 5 / 2)
    np.testing.assert_allclose(flat64(params), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(flat64([trajectory.snapshots()[0]]), flat64(params))
    # the sum is left as it was: a write-back repeated after an interruption writes the same values
    assert all(torch.equal(a, b) for a, b in zip(sums, average.sums))
    written = flat64(params)
    average.write_back(trajectory)
    np.testing.assert_array_equal(flat64(params), written)
    average.discard()
    assert not average.active and average.buffer_bytes() == 0
