"""``autodrop nqm``: the paper's noisy quadratic model, Theorem 1 against simulation.

Writes to ``--out``:

- ``nqm.json``: per LR the measured saturation angle (mean omega over the second
  half of the run), Theorem 1's angle and their difference, the same for the
  inner product of successive steps and the stationary loss; and the AutoDrop
  run's drops and final loss against the fixed-LR stationary loss;
- ``nqm_fixed_lr.png`` (paper Fig. 1): loss and 20-iteration-averaged omega
  against iterations for each LR, with Theorem 1's levels dashed;
- ``nqm_autodrop.png`` (paper Fig. 3): AutoDrop from 0.06, factor 0.5, floor
  0.001, threshold 0.01 degree on the 20-iteration-averaged omega: loss (with
  the fixed-0.06 run for comparison), averaged omega and LR, drops marked.

Needs matplotlib (``pip install 'autodrop[plots]'``). About 15 s of CPU on one core.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from ..nqm import (
    PAPER_LEARNING_RATES,
    PAPER_WINDOW,
    AutoDropRun,
    FixedRateRun,
    NoisyQuadratic,
    run_autodrop,
    simulate_fixed_lr,
    window_mean,
)
from .cli_args import int_at_least, output_folder, real, torch_seed
from .plots import _pyplot

AUTODROP_SETTINGS = {"lr": 0.06, "factor": 0.5, "min_lr": 0.001, "threshold": 0.01, "window": PAPER_WINDOW, "delay": 0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=output_folder("--out"), default="results/nqm", help="output folder")
    parser.add_argument(
        "--iterations", type=int_at_least("--iterations", 10), default=20_000, help="iterations of each fixed-LR run"
    )
    parser.add_argument(
        "--autodrop-iterations",
        type=int_at_least("--autodrop-iterations", 10),
        default=20_000,
        help="iterations of the AutoDrop run",
    )
    parser.add_argument(
        "--momentum",
        type=real("--momentum", "[0, 1)"),
        default=0.0,
        help="heavy-ball beta (paper: 0, plain GD)",
    )
    parser.add_argument("--seed", type=torch_seed, default=0)


def run(args: argparse.Namespace) -> None:
    problem = NoisyQuadratic.paper()
    fixed = simulate_fixed_lr(problem, PAPER_LEARNING_RATES, args.iterations, args.momentum, args.seed)
    autodrop = run_autodrop(
        problem, iterations=args.autodrop_iterations, momentum=args.momentum, seed=args.seed, **AUTODROP_SETTINGS
    )
    summary = summarize(problem, fixed, autodrop, args)
    (args.out / "nqm.json").write_text(json.dumps(summary, indent=2) + "\n")
    try:
        plot_fixed_lr(problem, fixed, args.out / "nqm_fixed_lr.png")
        plot_autodrop(problem, autodrop, fixed, args.out / "nqm_autodrop.png")
        written = f"{args.out / 'nqm.json'}, {args.out / 'nqm_fixed_lr.png'}, {args.out / 'nqm_autodrop.png'}"
    except ImportError:
        written = f"{args.out / 'nqm.json'} (the figures need matplotlib: pip install 'autodrop[plots]')"

    print(
        f"NQM: n = {problem.dimension}, A = diag(1/10..{problem.dimension}/10), Sigma = A, x_0 = 100; "
        f"{args.iterations} iterations per LR, momentum {args.momentum}"
    )
    print(" lr      predicted  measured  difference (saturation angle, degrees)")
    for row in summary["fixed_lr"]:
        print(
            f" {row['lr']:<7g} {row['predicted_angle']:9.3f} {row['measured_angle']:9.3f} "
            f"{row['angle_difference']:+10.3f}"
        )
    result = summary["autodrop"]
    print(
        f"AutoDrop: {len(result['drops'])} drops at iterations {[d['iteration'] for d in result['drops']]}; "
        f"final loss {result['final_loss']:.4g} vs fixed-lr {result['lr']} stationary loss "
        f"{result['fixed_lr_stationary_loss']:.4g} ({result['improvement']:.1f}x lower)"
    )
    print(f"wrote {written}")


def summarize(
    problem: NoisyQuadratic, fixed: FixedRateRun, autodrop: AutoDropRun, args: argparse.Namespace
) -> dict[str, Any]:
    half = len(fixed.inner_product) // 2
    measured_inner = fixed.inner_product[half:].mean(0).tolist()
    angles, losses = fixed.saturation_angle(), fixed.stationary_loss()
    rows = []
    for k, lr in enumerate(fixed.learning_rates):
        moments = problem.stationary_moments(lr, fixed.momentum)
        predicted = problem.predicted_angle(lr, fixed.momentum)
        measured = angles[k]
        rows.append(
            {
                "lr": lr,
                "predicted_angle": predicted,
                "measured_angle": measured,
                "angle_difference": measured - predicted,
                "predicted_inner_product": moments["inner_product"],
                "measured_inner_product": measured_inner[k],
                "predicted_stationary_loss": moments["loss"],
                "measured_stationary_loss": losses[k],
            }
        )
    alpha_0 = fixed.learning_rates.index(AUTODROP_SETTINGS["lr"])
    reference = losses[alpha_0]
    final = autodrop.final_loss()
    return {
        "setting": {
            "dimension": problem.dimension,
            "curvature": f"A = diag(i/10), i = 1..{problem.dimension}",
            "noise": "Sigma = A (sigma_i^2 = a_i); not stated in the paper",
            "start": "x_0 = 100 in every coordinate; not stated in the paper",
            "loss": "L(x) = x^T A x / 2, the mean objective minus its floor tr(A Sigma) / 2",
            "momentum": fixed.momentum,
            "iterations": len(fixed.loss) - 1,
            "seed": args.seed,
            "omega_window": PAPER_WINDOW,
            "measured": "means over the second half of each run",
        },
        "fixed_lr": rows,
        "autodrop": {
            **AUTODROP_SETTINGS,
            "max_threshold": AUTODROP_SETTINGS["threshold"],
            "iterations": len(autodrop.loss) - 1,
            "drops": [{"iteration": t, "lr": lr} for t, lr in autodrop.drops],
            "final_loss": final,
            "final_loss_is": "mean over the last 5% of the iterations",
            "fixed_lr_stationary_loss": reference,
            "improvement": reference / final,
        },
    }


def _iterations(values: torch.Tensor, first: int) -> range:
    return range(first, first + len(values))


def plot_fixed_lr(problem: NoisyQuadratic, fixed: FixedRateRun, path: Path) -> Path:
    """Paper Fig. 1: loss (log) and averaged omega against iterations (log), one colour per LR."""
    plt = _pyplot()
    figure, (loss_axis, omega_axis) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    averaged = window_mean(fixed.omega, PAPER_WINDOW)
    angles = fixed.saturation_angle()
    for k, lr in enumerate(fixed.learning_rates):
        colour = f"C{k}"
        moments = problem.stationary_moments(lr, fixed.momentum)
        loss_axis.plot(_iterations(fixed.loss[1:], 1), fixed.loss[1:, k], color=colour, lw=0.8, label=f"lr {lr:g}")
        loss_axis.axhline(moments["loss"], color=colour, ls="--", lw=1)
        # omega[j] is the angle between steps j+1 and j+2, known at iteration j+2.
        omega_axis.plot(
            _iterations(averaged, 2),
            averaged[:, k],
            color=colour,
            lw=0.8,
            label=f"lr {lr:g}: measured {angles[k]:.2f} deg",
        )
        omega_axis.axhline(problem.predicted_angle(lr, fixed.momentum), color=colour, ls="--", lw=1)
    loss_axis.set_yscale("log")
    loss_axis.set_ylabel("loss  x'Ax/2")
    loss_axis.set_title(
        f"NQM at fixed learning rates (n = {problem.dimension}, A = diag(i/10), Sigma = A)"
        + (f", momentum {fixed.momentum:g}" if fixed.momentum else "")
    )
    loss_axis.plot([], [], color="gray", ls="--", label="predicted stationary loss")
    loss_axis.legend(fontsize=8, loc="upper right")
    omega_axis.plot([], [], color="gray", ls="--", label="Theorem 1 saturation angle")
    omega_axis.set_ylabel(f"omega, {PAPER_WINDOW}-iteration mean (deg)")
    omega_axis.set_ylim(0, 130)
    omega_axis.legend(fontsize=8, loc="lower right")
    omega_axis.set_xscale("log")
    omega_axis.set_xlabel("iteration")
    for axis in (loss_axis, omega_axis):
        axis.grid(alpha=0.3)
    return _save(plt, figure, path)


def plot_autodrop(problem: NoisyQuadratic, autodrop: AutoDropRun, fixed: FixedRateRun, path: Path) -> Path:
    """Paper Fig. 3: AutoDrop's loss against the fixed alpha_0 run, averaged omega, LR; drops marked."""
    plt = _pyplot()
    figure, (loss_axis, omega_axis, lr_axis) = plt.subplots(
        3, 1, figsize=(8, 8.5), sharex=True, gridspec_kw={"height_ratios": [3, 3, 2]}
    )
    lr_0 = AUTODROP_SETTINGS["lr"]
    k = fixed.learning_rates.index(lr_0)
    span = min(len(fixed.loss), len(autodrop.loss))
    loss_axis.plot(range(1, span), fixed.loss[1:span, k], color="tab:gray", lw=0.8, label=f"fixed lr {lr_0:g}")
    loss_axis.plot(range(1, len(autodrop.loss)), autodrop.loss[1:], color="tab:blue", lw=0.8, label="AutoDrop")
    floor = AUTODROP_SETTINGS["min_lr"]
    loss_axis.axhline(
        problem.stationary_moments(floor, fixed.momentum)["loss"],
        color="tab:blue",
        ls="--",
        lw=1,
        label=f"predicted stationary loss at lr {floor:g}",
    )
    loss_axis.set_yscale("log")
    loss_axis.set_ylabel("loss  x'Ax/2")
    loss_axis.legend(fontsize=8, loc="upper right")

    # omega is undefined only at the first iteration (one step, no angle yet).
    omegas = torch.tensor([r["omega"] for r in autodrop.history[1:]], dtype=torch.float64)
    omega_axis.plot(
        _iterations(omegas, 2),
        window_mean(omegas, PAPER_WINDOW),
        color="tab:blue",
        lw=0.8,
        label=f"AutoDrop, omega {PAPER_WINDOW}-iteration mean",
    )
    iterations = [r["interval"] for r in autodrop.history]
    lrs = [r["lrs"][0] for r in autodrop.history]
    starts = [1] + [t for t, _ in autodrop.drops]
    ends = [t for t, _ in autodrop.drops] + [iterations[-1]]
    for start, end, lr in zip(starts, ends, [lr_0] + [lr for _, lr in autodrop.drops], strict=True):
        omega_axis.hlines(problem.predicted_angle(lr, fixed.momentum), start, end, color="tab:red", ls="--", lw=1)
    omega_axis.plot([], [], color="tab:red", ls="--", label="Theorem 1 angle at the current lr")
    omega_axis.set_ylim(60, 130)
    omega_axis.set_ylabel("omega (deg)")
    omega_axis.legend(fontsize=8, loc="lower right")

    lr_axis.semilogy(iterations, lrs, color="tab:green", drawstyle="steps-post")
    lr_axis.set_ylabel("learning rate")
    lr_axis.set_xlabel("iteration")
    for axis in (loss_axis, omega_axis, lr_axis):
        for drop, _ in autodrop.drops:
            axis.axvline(drop, color="black", lw=0.6, ls=":")
        axis.set_xscale("log")
        axis.grid(alpha=0.3)
    loss_axis.set_title(
        f"AutoDrop on the NQM: lr {lr_0:g}, factor {AUTODROP_SETTINGS['factor']:g}, floor {floor:g}, "
        f"threshold {AUTODROP_SETTINGS['threshold']:g} deg\n"
        f"drops (dotted) at iterations {', '.join(str(t) for t, _ in autodrop.drops)}",
        fontsize=10,
    )
    return _save(plt, figure, path)


def _save(plt, figure, path: Path) -> Path:
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
