"""Saturation tests on the angular velocity: plain floats, no tensors.

A detector (the :class:`Detector` protocol) sees one omega (degrees) per
measured interval and says whether omega has saturated at the current LR. Every
detector reduces its evidence to one statistic ``delta`` and a bound
``threshold``: it passes when ``delta < threshold``. :class:`~autodrop.AutoDrop`
records both (and the detector's own :meth:`Detector.statistics`) in each
history record, so a person can see why it fired or not. A detector's state
holds its settings too, as torch's schedulers do. Two detectors:
:class:`PaperRule` (``"paper"``, the paper's test) and :class:`TrendTest`
(``"trend"``, the default).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Protocol, runtime_checkable

from .checks import check_int, check_keys, check_list, check_real
from .history import RECORD_KEYS

__all__ = ["DETECTORS", "Detector", "PaperRule", "TrendTest", "make_detector", "student_t_quantile"]

MAX_WINDOW = 10_000
"""The largest window a detector accepts (intervals); far beyond any use, and a bound for checkpoints."""
MAX_COUNT = 2**53
"""The largest interval count a detector accepts (a float holds every int up to it exactly)."""


@runtime_checkable
class Detector(Protocol):
    """What :class:`~autodrop.AutoDrop` needs of a saturation test."""

    name: str
    delta: float | None
    threshold: float

    def observe(self, omega: float) -> bool:
        """Take the interval's omega (degrees); True when omega has saturated."""

    def statistics(self) -> dict[str, float | None]:
        """The latest observation's statistics beyond ``delta`` and ``threshold`` (fixed keys)."""

    def on_drop(self, factor: float) -> None:
        """The LR was just multiplied by ``factor``; start the next phase."""

    def state_dict(self) -> dict[str, Any]: ...

    def check_state(self, state: Any, name: str = "detector state") -> None:
        """Raise if ``state`` is not a valid state of this detector; change nothing."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _check_omegas(name: str, values: Any, maximum: int) -> list[float]:
    values = check_list(name, values)
    if len(values) > maximum:
        raise ValueError(f"{name} has {len(values)} values, at most {maximum} are kept")
    return [check_real(f"{name}[{i}]", v, "[0, 180]") for i, v in enumerate(values)]


def _check_keys(detector: Any, state: Any, name: str, counters: tuple[str, ...]) -> None:
    """``state`` is a dict of ``detector``'s kind (its name checked first) with its settings and ``counters``."""
    if isinstance(state, Mapping) and "name" in state and state["name"] != detector.name:
        raise ValueError(
            f"{name}['name'] is {state['name']!r}: a checkpoint of another detector "
            f"(this scheduler's is {detector.name!r})"
        )
    check_keys(name, state, ("name", *detector.SETTINGS, *counters))


class PaperRule:
    r"""The paper's trigger: the change of the window-averaged omega is below theta.

    .. math::
        \bar\omega_i = \frac1w \sum_{j=i-w+1}^{i} \omega_j,\qquad
        \delta_i = |\bar\omega_i - \bar\omega_{i-1}|,\qquad
        \text{saturated} \iff \delta_i < \theta

    At each drop :math:`\theta \leftarrow \min(\theta_{max}, \theta / \rho)`.
    With per-interval noise of sd sigma, ``P(delta < theta) ~ theta / (sigma sqrt(pi))``
    for ``window=1``: on noisy omega curves this rule fires at random.

    Args:
        threshold: theta_0, degrees, ``> 0`` (paper: 0.01).
        max_threshold: theta_max, degrees, ``>= threshold`` (paper: 1.0).
        window: omegas averaged before the change is taken, ``>= 1`` (paper: 1).
    """

    name = "paper"
    SETTINGS = ("threshold", "max_threshold", "window")

    def __init__(self, threshold: float = 0.01, max_threshold: float = 1.0, window: int = 1) -> None:
        self.threshold = check_real("threshold", threshold, "(0, inf)")
        self.max_threshold = check_real("max_threshold", max_threshold, f"[{self.threshold}, inf)")
        self.window = check_int("window", window, 1, MAX_WINDOW)
        self.delta: float | None = None
        self._recent: deque[float] = deque(maxlen=self.window + 1)

    def observe(self, omega: float) -> bool:
        self._recent.append(check_real("omega", omega, "[0, 180]"))
        self.delta = None
        if len(self._recent) > self.window:
            values = list(self._recent)
            self.delta = abs(sum(values[1:]) / self.window - sum(values[:-1]) / self.window)
        return self.delta is not None and self.delta < self.threshold

    def statistics(self) -> dict[str, float | None]:
        return {}

    def on_drop(self, factor: float) -> None:
        self.threshold = min(self.max_threshold, self.threshold / factor)

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, **{key: getattr(self, key) for key in self.SETTINGS}, "recent": list(self._recent)}

    def check_state(self, state: Any, name: str = "detector state") -> None:
        _check_keys(self, state, name, ("recent",))
        maximum = check_real(f"{name}['max_threshold']", state["max_threshold"], "(0, inf)")
        check_real(f"{name}['threshold']", state["threshold"], f"(0, {maximum}]")
        window = check_int(f"{name}['window']", state["window"], 1, MAX_WINDOW)
        _check_omegas(f"{name}['recent']", state["recent"], window + 1)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Check ``state`` completely (:meth:`check_state`), then apply it."""
        self.check_state(state)
        self.__init__(**{key: state[key] for key in self.SETTINGS})
        self._recent.extend(float(omega) for omega in state["recent"])


@lru_cache(maxsize=256)
def student_t_quantile(probability: float, df: int) -> float:
    r"""The ``probability`` quantile of Student's t with ``df`` degrees of freedom (``probability >= 0.5``).

    Bisection on the exact CDF for integer ``df`` (Abramowitz and Stegun 26.7.3-4): with
    :math:`\theta = \arctan(t/\sqrt{df})`, :math:`c = \cos\theta` and ``df // 2`` terms in each sum,
    :math:`F(t) = \tfrac12 + \tfrac12 \sin\theta\,(1 + \tfrac12 c^2 + \tfrac{1\cdot3}{2\cdot4} c^4 + \dots)` for
    even df, :math:`F(t) = \tfrac12 + \tfrac1\pi\big(\theta + \sin\theta\,(c + \tfrac23 c^3 + \dots)\big)` for
    odd df; accurate to about 1e-11 (tests compare with ``scipy.stats.t.ppf``).
    """

    def cdf(t: float) -> float:
        theta = math.atan(t / math.sqrt(df))
        odd = df % 2
        term, total = (math.cos(theta) if odd else 1.0), 0.0
        for j in range(1, df // 2 + 1):
            total += term
            term *= (2 * j - 1 + odd) / (2 * j + odd) * math.cos(theta) ** 2
        share = math.sin(theta) * total
        return 0.5 + (theta + share) / math.pi if odd else 0.5 + share / 2

    low, high = 0.0, 1.0
    while cdf(high) < probability:
        low, high = high, 2 * high
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if cdf(middle) < probability else (low, middle)
    return (low + high) / 2


def ols_slope(values: list[float]) -> tuple[float, float, float]:
    r"""OLS slope of ``values`` against 0..w-1, its standard error under AR(1) noise, and the residual sd.

    With :math:`j = 0..w-1`, :math:`S = \sum (j-\bar j)^2`,
    :math:`b = \sum (j-\bar j)(y_j-\bar y)/S`, residuals :math:`e_j`, residual sd
    :math:`s_e^2 = \sum e_j^2 / (w-2)` and lag-1 autocorrelation
    :math:`r = \sum e_j e_{j-1} / \sum e_j^2`:

    .. math::
        s_b = \frac{s_e}{\sqrt S}\sqrt{\frac{1+\rho}{1-\rho}},\qquad
        \rho = \operatorname{clip}\big(r + 3(1+r)/w,\ 0,\ 0.9\big)

    :math:`3(1+r)/w` undoes the downward bias of :math:`r` on few detrended
    residuals (Marriott-Pope's :math:`(1+3r)/w` plus :math:`2/w` for the fitted
    line). Per-epoch omega noise is mildly autocorrelated; on AR(1) noise with
    coefficient 0-0.3 and w = 10-30 the one-sided 95 % bound covers the true
    slope 93-97 % of the time (Newey-West's Bartlett estimator, tried first,
    covered far less: its mean error was 0.6 of the true sd at w = 20).
    """
    w = len(values)
    j_mean = (w - 1) / 2
    y_mean = math.fsum(values) / w
    centred = [j - j_mean for j in range(w)]
    sjj = math.fsum(c * c for c in centred)
    slope = math.fsum(c * (y - y_mean) for c, y in zip(centred, values)) / sjj
    residuals = [y - y_mean - slope * c for c, y in zip(centred, values)]
    squares = math.fsum(e * e for e in residuals)
    if squares == 0.0:
        return slope, 0.0, 0.0
    lagged = math.fsum(residuals[k] * residuals[k - 1] for k in range(1, w)) / squares
    rho = min(0.9, max(0.0, lagged + 3 * (1 + lagged) / w))
    noise = math.sqrt(squares / (w - 2))
    return slope, noise / math.sqrt(sjj) * math.sqrt((1 + rho) / (1 - rho)), noise


class TrendTest:
    r"""Saturation as an equivalence test on omega's trend since the last drop.

    Over the last :math:`w = \min(n, W)` omegas of the current phase (the
    :math:`n` intervals since the last drop), :func:`ols_slope` gives the slope
    :math:`b` (degrees per interval) and its standard error :math:`s_b` under
    autocorrelated noise. The test statistic is the upper confidence bound of
    :math:`|b|`; the bound is the larger of an absolute and a relative rate:

    .. math::
        \delta = |b| + t_{c,\,w-2}\, s_b ,\qquad
        \theta = \max\Big(\frac{\Delta}{H},\; q\, b_{peak}\Big),

    :math:`b_{peak}` the largest slope :math:`b` measured so far in the phase.
    :math:`\delta < \theta` says, with confidence ``confidence``: at its current
    trend omega moves less than :math:`\Delta` degrees over the next :math:`H`
    intervals (flat), or omega's climb has slowed to less than :math:`q` of its
    fastest pace in this phase (levelled off: at a fixed LR omega rises and then
    saturates, the paper's P1). A steady rise never slows, and noise rarely
    fakes a slowdown: it inflates :math:`b_{peak}` by a couple of :math:`s_b`,
    and :math:`q` times that stays below the margin :math:`t\,s_b` inside
    :math:`\delta`. Saturated after ``patience`` consecutive passes (a
    debounce: the test runs every interval), or when the phase reaches its
    maximum wait.

    The wait: omega saturates at the first LR within a few dozen intervals, but
    after a drop it climbs back for far longer (a smaller LR saturates later,
    the paper's P2; measured: still rising 30 epochs after a drop), so a test
    alone would drop once per run. The first phase is where saturation can be
    measured, so it sets the pace: a later phase triggers at the latest after
    ``wait_factor`` times the first phase's length (the intervals from its start
    to its trigger), never before ``min_intervals``; every phase also triggers
    at ``max_wait`` intervals. Each history record's ``passes`` and ``wait``
    show which of the two fired.

    Args:
        confidence: c, one-sided confidence of the bound, in (0.5, 1) (default 0.95).
        tolerance: Delta, degrees omega may still move over ``horizon`` intervals, ``> 0`` (default 2).
        horizon: H, intervals, in [1, 2**53] (default 20).
        slowdown: q, the fraction of the phase's fastest climb below which omega
            has levelled off, in [0, 1) (0: only the absolute bound; default 0.3).
        window: W, the most recent omegas the slope is taken over, ``>= 3`` (default 15).
        min_intervals: omegas in a phase before it is tested, in [3, window] (default 8).
        patience: consecutive passes needed, in [1, 2**53] (default 4).
        max_wait: every phase triggers once it has this many omegas, in [min_intervals, 2**53];
            ``None`` = never (default 60).
        wait_factor: a phase after the first triggers after at most this times
            the first phase's length, in (0, 2**53]; ``None`` = only ``max_wait`` (default 1).
    """

    name = "trend"
    SETTINGS = tuple("confidence tolerance horizon slowdown window min_intervals patience max_wait wait_factor".split())

    def __init__(
        self,
        confidence: float = 0.95,
        tolerance: float = 2.0,
        horizon: int = 20,
        slowdown: float = 0.3,
        window: int = 15,
        min_intervals: int = 8,
        patience: int = 4,
        max_wait: int | None = 60,
        wait_factor: float | None = 1.0,
    ) -> None:
        self.confidence = check_real("confidence", confidence, "(0.5, 1)")
        self.tolerance = check_real("tolerance", tolerance, "(0, inf)")
        self.horizon = check_int("horizon", horizon, 1, MAX_COUNT)
        self.slowdown = check_real("slowdown", slowdown, "[0, 1)")
        self.window = check_int("window", window, 3, MAX_WINDOW)
        self.min_intervals = check_int("min_intervals", min_intervals, 3, self.window)
        self.patience = check_int("patience", patience, 1, MAX_COUNT)
        self.max_wait = None if max_wait is None else check_int("max_wait", max_wait, self.min_intervals, MAX_COUNT)
        self.wait_factor = None if wait_factor is None else check_real("wait_factor", wait_factor, "(0, 2**53]")
        self.first_phase: int | None = None
        self._start_phase()

    def _start_phase(self) -> None:
        """A phase with no omega yet."""
        self._recent: deque[float] = deque(maxlen=self.window)
        self.length = 0
        self.passes = 0
        self.peak_slope = 0.0
        self.fired_at: int | None = None
        self._measure()

    @property
    def wait(self) -> int | None:
        """The interval count at which the current phase triggers whatever the test says (None: never)."""
        waits = [self.max_wait] if self.max_wait is not None else []
        if self.first_phase is not None and self.wait_factor is not None:
            waits.append(max(self.min_intervals, round(self.wait_factor * self.first_phase)))
        return min(waits, default=None)

    def _measure(self) -> None:
        """The statistics of the phase's omegas so far (``slope``, ``delta``, ``noise``, ``threshold``)."""
        self.slope = self.delta = self.noise = None
        if self.length >= self.min_intervals:
            self.slope, error, self.noise = ols_slope(list(self._recent))
            self.delta = abs(self.slope) + student_t_quantile(self.confidence, len(self._recent) - 2) * error
            self.peak_slope = max(self.peak_slope, self.slope)
        self.threshold = max(self.tolerance / self.horizon, self.slowdown * self.peak_slope)

    def observe(self, omega: float) -> bool:
        self._recent.append(check_real("omega", omega, "[0, 180]"))
        self.length += 1
        self._measure()
        if self.delta is not None:
            self.passes = self.passes + 1 if self.delta < self.threshold else 0
        wait = self.wait
        saturated = self.passes >= self.patience or (wait is not None and self.length >= wait)
        if saturated and self.fired_at is None:
            self.fired_at = self.length
        return saturated

    def statistics(self) -> dict[str, float | None]:
        return {
            "slope": self.slope,
            "noise": self.noise,
            "phase": self.length,
            "passes": self.passes,
            "wait": self.wait,
        }

    def on_drop(self, factor: float) -> None:
        if self.first_phase is None:
            self.first_phase = self.fired_at if self.fired_at is not None else self.length
        self._start_phase()

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            **{key: getattr(self, key) for key in self.SETTINGS},
            "recent": list(self._recent),
            "length": self.length,
            "passes": self.passes,
            "peak_slope": self.peak_slope,
            "fired_at": self.fired_at,
            "first_phase": self.first_phase,
        }

    def check_state(self, state: Any, name: str = "detector state") -> None:
        counters = ("recent", "length", "passes", "peak_slope", "fired_at", "first_phase")
        _check_keys(self, state, name, counters)
        try:  # the constructor's checks: a checkpoint obeys the arguments' bounds
            settings = TrendTest(**{key: state[key] for key in self.SETTINGS})
        except (TypeError, ValueError) as error:
            raise type(error)(f"{name}: {error}") from None
        length = check_int(f"{name}['length']", state["length"], 0, MAX_COUNT)
        recent = _check_omegas(f"{name}['recent']", state["recent"], settings.window)
        if len(recent) != min(length, settings.window):
            raise ValueError(
                f"{name}['recent'] has {len(recent)} omegas, expected the last "
                f"{min(length, settings.window)} of the phase's {length}"
            )
        check_int(f"{name}['passes']", state["passes"], 0, max(0, length - settings.min_intervals + 1))
        check_real(f"{name}['peak_slope']", state["peak_slope"], "[0, inf)")
        if state["fired_at"] is not None:
            check_int(f"{name}['fired_at']", state["fired_at"], 1, length)
        if state["first_phase"] is not None:
            check_int(f"{name}['first_phase']", state["first_phase"], 1, MAX_COUNT)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Check ``state`` completely (:meth:`check_state`), then apply it; the statistics are recomputed."""
        self.check_state(state)
        self.__init__(**{key: state[key] for key in self.SETTINGS})
        self._recent.extend(float(omega) for omega in state["recent"])
        self.length, self.passes = int(state["length"]), int(state["passes"])
        self.peak_slope = float(state["peak_slope"])
        self.fired_at = None if state["fired_at"] is None else int(state["fired_at"])
        self.first_phase = None if state["first_phase"] is None else int(state["first_phase"])
        self._measure()


DETECTORS: dict[str, type] = {PaperRule.name: PaperRule, TrendTest.name: TrendTest}


def make_detector(detector: Any, **paper_options: Any) -> Detector:
    """A detector from a name in :data:`DETECTORS` or a detector object. ``paper_options`` (those not
    None) configure :class:`PaperRule` and need ``detector="paper"``; a detector's statistics may not
    be named like the history record's own keys."""
    given = {key: value for key, value in paper_options.items() if value is not None}
    if given and detector != PaperRule.name:
        name = detector if isinstance(detector, str) else type(detector).__name__
        raise ValueError(
            f"{', '.join(given)} configure the paper's rule and need detector='paper' (detector is {name!r}); "
            "configure another detector by passing it as an object, e.g. detector=TrendTest(max_wait=40)"
        )
    if isinstance(detector, str):
        if detector not in DETECTORS:
            raise ValueError(f"detector must be one of {sorted(DETECTORS)} or a detector object, got {detector!r}")
        return DETECTORS[detector](**given)
    if not isinstance(detector, Detector):
        raise TypeError(
            f"detector must be a name ({', '.join(sorted(DETECTORS))}) or an object with the Detector protocol "
            f"(observe, statistics, on_drop, state_dict, check_state, load_state_dict), got {type(detector).__name__}"
        )
    clashes = sorted(set(detector.statistics()) & set(RECORD_KEYS))
    if clashes:
        raise ValueError(f"detector statistics {clashes} clash with the history record's own keys {RECORD_KEYS}")
    return detector
