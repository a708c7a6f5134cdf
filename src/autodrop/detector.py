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

__all__ = ["SaturationDetector"]


class SaturationDetector:
    """Tracks the window-averaged omega, its change ``delta`` and the threshold theta.

    Args:
        threshold: theta_0, degrees.
        max_threshold: theta_max, degrees; the cap on theta's growth.
        window: number of omega values averaged before the change is taken.
    """

    def __init__(self, threshold: float, max_threshold: float, window: int = 1) -> None:
        self.threshold = threshold
        self.max_threshold = max_threshold
        self.window = window
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

    def load_state_dict(self, state: dict) -> None:
        self.threshold = float(state["threshold"])
        self._recent = deque((float(v) for v in state["recent"]), maxlen=self.window + 1)
