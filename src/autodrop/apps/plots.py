"""Figures of an AutoDrop run: omega with its threshold, LR and loss against intervals.

Needs matplotlib (``pip install autodrop[plots]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._optional import import_optional


def _pyplot():
    import_optional("matplotlib", "plots", "autodrop's figures").use("Agg")
    return import_optional("matplotlib.pyplot", "plots", "autodrop's figures")


def plot_history(
    history: Sequence[dict[str, Any]],
    path: str | Path,
    losses: Sequence[float] | None = None,
    title: str = "AutoDrop",
) -> Path:
    """Write a PNG with omega, the detector's statistic and bound, the LR of group 0, and optionally the loss.

    ``history`` is ``AutoDrop.history``; ``losses`` has one value per record.
    Drops are marked by vertical lines on every panel.
    """
    plt = _pyplot()
    intervals = [r["interval"] for r in history]
    drops = [r["interval"] for r in history if r["event"] == "drop"]
    panels = 3 if losses is not None else 2
    figure, axes = plt.subplots(panels, 1, figsize=(8, 2.6 * panels), sharex=True)

    omega_axis, lr_axis = axes[0], axes[1]
    omega_axis.plot(
        intervals, [r["omega"] if r["omega"] is not None else float("nan") for r in history], label="omega (deg)"
    )
    delta_axis = omega_axis.twinx()
    delta_axis.semilogy(
        intervals,
        [r["delta"] if r["delta"] else float("nan") for r in history],
        color="tab:gray",
        alpha=0.6,
        label="detector statistic (delta)",
    )
    delta_axis.semilogy(
        intervals, [r["threshold"] for r in history], color="tab:red", ls="--", label="its bound (threshold)"
    )
    delta_axis.set_ylabel("statistic, bound")
    omega_axis.set_ylabel("omega (deg)")
    lines = omega_axis.get_legend_handles_labels()
    more = delta_axis.get_legend_handles_labels()
    omega_axis.legend(lines[0] + more[0], lines[1] + more[1], loc="lower right", fontsize=8)

    lr_axis.semilogy(intervals, [r["lrs"][0] for r in history], color="tab:green", drawstyle="steps-post")
    lr_axis.set_ylabel("learning rate")
    if losses is not None:
        axes[2].semilogy(intervals, losses, color="tab:purple")
        axes[2].set_ylabel("train loss")
    for axis in axes:
        for drop in drops:
            axis.axvline(drop, color="black", lw=0.8, ls=":")
        axis.grid(alpha=0.3)
    axes[-1].set_xlabel("interval (epoch)")
    axes[0].set_title(title + (f" — drops at {drops}" if drops else " — no drop"))
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
