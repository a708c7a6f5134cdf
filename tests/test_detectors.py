import numpy as np
import pytest
from scipy import stats

from autodrop.detectors import PaperRule, TrendTest, make_detector, ols_slope, student_t_quantile


@pytest.mark.parametrize("window", [1, 2, 5])
def test_delta_is_change_of_window_mean(window):
    omegas = np.random.default_rng(0).uniform(60, 120, size=20)
    detector = PaperRule(threshold=0.01, max_threshold=1.0, window=window)
    deltas = []
    for omega in omegas:
        detector.observe(float(omega))
        deltas.append(detector.delta)
    means = np.convolve(omegas, np.ones(window) / window, mode="valid")
    expected = np.abs(np.diff(means))
    assert deltas[:window] == [None] * window
    np.testing.assert_allclose(deltas[window:], expected, rtol=1e-12)


def test_paper_rule_fires_strictly_below_theta_and_theta_grows_to_its_cap():
    detector = PaperRule(threshold=0.3, max_threshold=1.0)
    assert not detector.observe(50.0)  # no change exists yet
    assert detector.observe(50.29) and not detector.observe(50.59)  # 0.29 < 0.3; 0.3 is not
    detector.on_drop(0.5)
    assert detector.threshold == pytest.approx(0.6)
    detector.on_drop(0.5)
    assert detector.threshold == 1.0


def test_paper_rule_state_round_trip():
    detector = PaperRule(threshold=0.1, max_threshold=1.0, window=3)
    for w in [10.0, 20.0, 30.0, 40.0]:
        detector.observe(w)
    restored = PaperRule(threshold=0.5, max_threshold=2.0, window=1)
    restored.load_state_dict(detector.state_dict())
    assert (restored.threshold, restored.max_threshold, restored.window) == (0.1, 1.0, 3)
    assert restored.observe(50.0) == detector.observe(50.0) and restored.delta == detector.delta


def test_student_t_quantile_matches_scipy():
    for probability in (0.9, 0.95, 0.975, 0.99):
        for df in (1, 2, 5, 8, 28, 100):
            assert student_t_quantile(probability, df) == pytest.approx(stats.t.ppf(probability, df), abs=1e-8)


def numpy_slope_statistics(values):
    """Slope, its AR(1)-corrected standard error and the residual sd, in float64 numpy."""
    y = np.asarray(values, dtype=np.float64)
    w = len(y)
    j = np.arange(w, dtype=np.float64)
    slope, intercept = np.polyfit(j, y, 1)
    residuals = y - (intercept + slope * j)
    r = np.sum(residuals[1:] * residuals[:-1]) / np.sum(residuals**2)
    rho = np.clip(r + 3 * (1 + r) / w, 0.0, 0.9)
    noise = np.sqrt(np.sum(residuals**2) / (w - 2))
    error = noise / np.sqrt(np.sum((j - j.mean()) ** 2)) * np.sqrt((1 + rho) / (1 - rho))
    return slope, error, noise


@pytest.mark.parametrize("w", [3, 8, 30])
def test_ols_slope_matches_numpy(w):
    values = list(100 - 30 * np.exp(-np.arange(w) / 7) + np.random.default_rng(w).normal(0, 2, size=w))
    np.testing.assert_allclose(ols_slope(values), numpy_slope_statistics(values), rtol=1e-10, atol=1e-12)


def test_ols_slope_of_a_straight_line_has_no_error():
    slope, error, noise = ols_slope([2.0 + 0.5 * j for j in range(10)])
    assert (
        slope == pytest.approx(0.5)
        and error == pytest.approx(0.0, abs=1e-12)
        and noise == pytest.approx(0.0, abs=1e-12)
    )


def test_trend_statistic_and_bound_are_the_stated_formulas():
    omegas = 100 - 20 * np.exp(-np.arange(45) / 6) + np.random.default_rng(1).normal(0, 1.5, size=45)
    detector = TrendTest(
        confidence=0.9, tolerance=4.0, horizon=10, slowdown=0.2, window=12, min_intervals=5, patience=2, max_wait=None
    )
    passes, peak = 0, 0.0
    for n, omega in enumerate(omegas, start=1):
        saturated = detector.observe(float(omega))
        if n < 5:
            assert detector.delta is None and detector.statistics()["slope"] is None and not saturated
            assert detector.threshold == pytest.approx(0.4)
            continue
        recent = omegas[max(0, n - 12) : n]
        slope, error, noise = numpy_slope_statistics(recent)
        delta = abs(slope) + stats.t.ppf(0.9, len(recent) - 2) * error
        peak = max(peak, slope)
        threshold = max(0.4, 0.2 * peak)
        assert detector.delta == pytest.approx(delta, rel=1e-9)
        assert detector.threshold == pytest.approx(threshold, rel=1e-9)
        passes = passes + 1 if delta < threshold else 0
        statistics = detector.statistics()
        assert statistics.pop("wait") is None
        assert statistics == pytest.approx({"slope": slope, "noise": noise, "phase": n, "passes": passes}, rel=1e-9)
        assert saturated == (passes >= 2)


def test_trend_fires_on_a_flat_series_after_patience_and_not_on_a_steady_rise():
    flat, rising = TrendTest(max_wait=None), TrendTest(max_wait=None)
    rng = np.random.default_rng(0)
    fired_flat = [flat.observe(100 + float(e)) for e in rng.normal(0, 0.5, size=60)]
    fired_rising = [rising.observe(60 + 1.0 * i + float(e)) for i, e in enumerate(rng.normal(0, 0.5, size=100))]
    first = fired_flat.index(True)
    assert first + 1 >= 8 + 4 - 1  # min_intervals, then 4 passes in a row
    assert not any(fired_rising)


def test_maximum_wait_and_later_phases_paced_by_the_first():
    detector = TrendTest(min_intervals=4, max_wait=50, wait_factor=0.5)
    rise = [60.0 + 2 * i for i in range(200)]  # never saturates
    fired = [detector.observe(w) for w in rise[:50]]
    assert fired.index(True) == 49 and detector.statistics()["wait"] == 50
    for w in rise[50:53]:  # the scheduler's delay window: still the first phase
        assert detector.observe(w)
    detector.on_drop(0.2)
    assert detector.first_phase == 50 and detector.wait == 25 and detector.statistics()["phase"] == 0
    fired = [detector.observe(w) for w in rise[:25]]
    assert fired.index(True) == 24
    detector.on_drop(0.2)
    assert detector.first_phase == 50 and detector.wait == 25  # paced by the first phase only


def test_wait_never_below_min_intervals_and_none_means_test_only():
    detector = TrendTest(min_intervals=6, max_wait=None, wait_factor=0.01)
    for _ in range(3):
        detector.observe(50.0)
    detector.on_drop(0.5)
    assert detector.first_phase == 3 and detector.wait == 6
    assert TrendTest(max_wait=None, wait_factor=None).wait is None


def trend_script(seed):
    """Omegas with drops after some intervals: (omega, drop after it?) pairs."""
    rng = np.random.default_rng(seed)
    steps = []
    for phase in range(3):
        length = int(rng.integers(5, 40))
        level = rng.uniform(60, 110)
        steps += [
            (float(np.clip(level - 30 * np.exp(-i / 5) + rng.normal(0, 2), 0, 180)), i == length - 1)
            for i in range(length)
        ]
    return steps


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_trend_resumes_identically_from_every_state(seed):
    script = trend_script(seed)
    settings = {"window": 10, "min_intervals": 4, "patience": 2, "max_wait": 25, "wait_factor": 0.7}
    reference = TrendTest(**settings)
    expected = []
    for omega, drop in script:
        expected.append((reference.observe(omega), reference.delta, reference.threshold, reference.statistics()))
        if drop:
            reference.on_drop(0.2)
    for cut in range(len(script) + 1):
        first = TrendTest(**settings)
        for omega, drop in script[:cut]:
            first.observe(omega)
            if drop:
                first.on_drop(0.2)
        resumed = TrendTest()  # other settings: the state carries them
        resumed.load_state_dict(first.state_dict())
        assert resumed.state_dict() == first.state_dict()
        for (omega, drop), (saturated, delta, threshold, recorded) in zip(script[cut:], expected[cut:]):
            assert (resumed.observe(omega), resumed.delta, resumed.threshold, resumed.statistics()) == (
                saturated,
                delta,
                threshold,
                recorded,
            )
            if drop:
                resumed.on_drop(0.2)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"name": "paper"}, "another detector"),
        ({"window": 2}, r"window must be an int in \[3, 10000\]"),
        ({"length": -1}, "length"),
        ({"recent": [1.0]}, "recent'\\] has 1 omegas"),
        ({"recent": [1.0] * 7 + [200.0]}, "a real number in \\[0, 180\\]"),
        ({"passes": 9}, "passes"),
        ({"fired_at": 9}, "fired_at"),
        ({"first_phase": 0}, "first_phase"),
        ({"max_wait": 2}, "max_wait"),
    ],
)
def test_bad_trend_states_are_refused_and_change_nothing(change, message):
    detector = TrendTest(max_wait=30)
    for omega in range(8):
        detector.observe(float(omega))
    before = detector.state_dict()
    with pytest.raises((ValueError, TypeError, KeyError), match=message):
        detector.load_state_dict({**before, **change})
    assert detector.state_dict() == before


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"confidence": 1.0}, r"confidence must be a real number in \(0.5, 1\)"),
        ({"tolerance": 0}, r"tolerance must be a real number in \(0, inf\)"),
        ({"horizon": 0}, r"horizon must be an int in \[1, 9007199254740992\]"),
        ({"window": 2}, r"window must be an int in \[3, 10000\]"),
        ({"min_intervals": 16}, r"min_intervals must be an int in \[3, 15\]"),
        ({"patience": 0}, r"patience must be an int in \[1, 9007199254740992\]"),
        ({"max_wait": 5}, r"max_wait must be an int in \[8, 9007199254740992\]"),
        ({"max_wait": 10**400}, r"max_wait must be an int in \[8, 9007199254740992\]"),
        ({"horizon": 10**400}, "horizon must be an int in"),
        ({"wait_factor": 0.0}, r"wait_factor must be a real number in \(0, 2\*\*53\]"),
        ({"wait_factor": 1e308}, r"wait_factor must be a real number in \(0, 2\*\*53\]"),
    ],
)
def test_trend_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrendTest(**kwargs)


def test_make_detector_takes_names_and_protocol_objects():
    assert isinstance(make_detector("trend"), TrendTest) and isinstance(make_detector("paper"), PaperRule)
    custom = TrendTest(window=10)
    assert make_detector(custom) is custom
    with pytest.raises(ValueError, match="detector must be one of"):
        make_detector("sasa")
    with pytest.raises(TypeError, match="Detector protocol"):
        make_detector(object())


@pytest.mark.parametrize("make", [TrendTest, PaperRule])
@pytest.mark.parametrize("omega", [float("nan"), float("inf"), -float("inf"), -1.0, 181.0, True, None, "30"])
def test_an_omega_outside_0_to_180_is_refused_and_changes_nothing(make, omega):
    detector = make()
    for value in (60.0, 70.0, 75.0):
        detector.observe(value)
    before = detector.state_dict()
    with pytest.raises((TypeError, ValueError), match=r"omega must be a real number in \[0, 180\]"):
        detector.observe(omega)
    assert detector.state_dict() == before
    make().load_state_dict(detector.state_dict())
    assert detector.observe(76.0) in (True, False)


@pytest.mark.parametrize("key", ["length", "first_phase"])
def test_a_trend_state_with_a_count_beyond_2_to_the_53_is_refused(key):
    detector = TrendTest()
    state = {**detector.state_dict(), key: 10**400}
    with pytest.raises(ValueError, match=rf"\['{key}'\] must be an int in \[\d, 9007199254740992\]"):
        TrendTest().load_state_dict(state)
