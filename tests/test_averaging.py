import pytest
import numpy as np
import torch

from autodrop.averaging import WeightedAverage
from autodrop.geometry import ParameterTrajectory

from trajectories import flat64

pytestmark = pytest.mark.usefixtures("stepping")


def test_linear_weights_and_exact_normaliser():
    params = [torch.zeros(4, 3), torch.zeros(5)]
    trajectory = ParameterTrajectory(params)
    average = WeightedAverage(trajectory)
    average.start()
    seen = []
    for k in range(1, 5):
        with torch.no_grad():
            for p in params:
                p.normal_()
        trajectory.advance()
        seen.append(flat64(params))
        average.add(float(k))
    assert average.buffer_bytes() == trajectory.buffer_bytes() // 2
    average.apply()
    weights = np.arange(1, 5, dtype=np.float64)
    expected = (weights[:, None] * np.stack(seen)).sum(0) / (4 * 5 / 2)
    np.testing.assert_allclose(flat64(params), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(flat64([trajectory.snapshots()[0]]), flat64(params))
    assert not average.active and average.buffer_bytes() == 0
