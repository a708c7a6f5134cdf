import numpy as np
import pytest

from autodrop.detector import SaturationDetector


@pytest.mark.parametrize("window", [1, 2, 5])
def test_delta_is_change_of_window_mean(window):
    omegas = np.random.default_rng(0).uniform(60, 120, size=20)
    detector = SaturationDetector(threshold=0.01, max_threshold=1.0, window=window)
    deltas = [detector.observe(float(w)) for w in omegas]
    means = np.convolve(omegas, np.ones(window) / window, mode="valid")
    expected = np.abs(np.diff(means))
    assert deltas[:window] == [None] * window
    np.testing.assert_allclose(deltas[window:], expected, rtol=1e-12)


def test_saturated_uses_strict_inequality_and_threshold_grows_to_cap():
    detector = SaturationDetector(threshold=0.3, max_threshold=1.0)
    assert detector.saturated(0.29) and not detector.saturated(0.3) and not detector.saturated(None)
    detector.grow_threshold(0.5)
    assert detector.threshold == pytest.approx(0.6)
    detector.grow_threshold(0.5)
    assert detector.threshold == 1.0


def test_state_round_trip():
    detector = SaturationDetector(threshold=0.1, max_threshold=1.0, window=3)
    for w in [10.0, 20.0, 30.0, 40.0]:
        detector.observe(w)
    restored = SaturationDetector(threshold=0.1, max_threshold=1.0, window=3)
    restored.load_state_dict(detector.state_dict())
    assert restored.observe(50.0) == detector.observe(50.0)
