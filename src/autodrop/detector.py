"""Saturation test on the angular velocity: plain floats, no tensors.

With the window-averaged angular velocity

    omega_bar_i = mean(omega_{i-w+1}, ..., omega_i)          (w = window; 1 in the paper's DL runs)
    delta_i     = |omega_bar_i - omega_bar_{i-1}|

the curve has saturated when ``delta_i < theta``. After each LR drop the
threshold grows, ``theta := min(theta_max, theta / rho)``, because a smaller LR
saturates more slowly and with smaller changes of omega.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from .checks import check_int, check_keys, check_list, check_real

__all__ = ["SaturationDetector"]


class SaturationDetector:
    """Tracks the window-averaged omega, its change ``delta`` and the threshold theta.

    Args:
        threshold: theta_0, degrees, ``> 0``.
        max_threshold: theta_max, degrees, ``>= threshold``; the cap on theta's growth.
        window: number of omega values averaged before the change is taken, ``>= 1``.
    """

    def __init__(self, threshold: float, max_threshold: float, window: int = 1) -> None:
        self.threshold = check_real("threshold", threshold, "> 0", lambda v: v > 0)
        self.max_threshold = check_real(
            "max_threshold", max_threshold, f">= threshold ({threshold})", lambda v: v >= self.threshold
        )
        self.window = check_int("window", window, 1)
        self._recent: deque[float] = deque(maxlen=window + 1)

    def observe(self, omega: float) -> float | None:
        """Add omega; return delta once two window averages exist, else None."""
        self._recent.append(omega)
        if len(self._recent) <= self.window:
            return None
        values = list(self._recent)
        current = sum(values[1:]) / self.window
        previous = sum(values[:-1]) / self.window
        return abs(current - previous)

    def saturated(self, delta: float | None) -> bool:
        return delta is not None and delta < self.threshold

    def grow_threshold(self, factor: float) -> None:
        """theta := min(theta_max, theta / rho), applied at each drop."""
        self.threshold = min(self.max_threshold, self.threshold / factor)

    def state_dict(self) -> dict:
        return {"threshold": self.threshold, "recent": list(self._recent)}

    def check_state(
        self, state: Any, max_threshold: float | None = None, window: int | None = None, name: str = "detector state"
    ) -> None:
        """Raise if ``state`` is not a valid detector state (for the given cap and window); changes nothing."""
        max_threshold = self.max_threshold if max_threshold is None else max_threshold
        window = self.window if window is None else window
        check_keys(name, state, ("threshold", "recent"))
        check_real(f"{name}['threshold']", state["threshold"], f"in (0, {max_threshold}]", lambda v: 0 < v <= max_threshold)
        recent = check_list(f"{name}['recent']", state["recent"])
        if len(recent) > window + 1:
            raise ValueError(f"{name}['recent'] has {len(recent)} values, a window of {window} keeps at most {window + 1}")
        for index, value in enumerate(recent):
            check_real(f"{name}['recent'][{index}]", value, "an omega in [0, 180]", lambda v: 0 <= v <= 180)

    def load_state_dict(self, state: dict) -> None:
        """Check ``state`` completely (:meth:`check_state`), then apply it."""
        self.check_state(state)
        self.threshold = float(state["threshold"])
        self._recent = deque((float(v) for v in state["recent"]), maxlen=self.window + 1)
