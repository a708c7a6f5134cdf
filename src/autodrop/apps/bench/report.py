"""The benchmark's outputs: ``summary.csv``, ``report.md`` and its PNG figures.

Everything is computed from the run records (``runs.jsonl``), as measured:

- the default detector against the detector issue's goals (never worse than step
  beyond the 95 % interval, level with cosine, no 60-epoch stretch without a
  drop), and what the seeds can resolve (seed spread, interval widths);
- Table 1 analog: final / best test error at each task's LR, mean +- std over
  seeds, and each schedule's paired (same seed) difference to the step schedule;
- per initial LR, each schedule's paired difference to step and to cosine with a
  95 % t interval and its verdict, first drop, drops per run, longest stretch
  without a drop (one section per task and optimizer);
- whether AutoDrop triggered: for the paper's rule the measured changes of omega
  against its threshold (the evidence when 0.01 deg never or randomly fires),
  for the trend test which triggers the test made and which its wait made;
- Table 2 analog: final test error against the initial LR;
- epochs-to-best (paper Fig. 7 analog);
- AutoDrop's cost per epoch: median ``AutoDrop.step()`` time over the median
  training pass, against the 0.5 % target;
- figures: LR, omega, train loss and test error against epochs for every
  schedule (Fig. 6 analog, one per task); AutoDrop's omega with its change and
  threshold (:func:`autodrop.apps.plots.plot_history`); test error against initial LR.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ...detectors import student_t_quantile
from ..plots import _pyplot, plot_history
from .schedules import SCHEDULES
from .tasks import TASKS

__all__ = ["SUMMARY_COLUMNS", "write_report", "write_summary"]

SUMMARY_COLUMNS = (
    "task",
    "schedule",
    "optimizer",
    "lr",
    "seed",
    "epochs",
    "final_test_error",
    "best_test_error",
    "best_epoch",
    "final_train_loss",
    "trigger_epochs",
    "drop_epochs",
    "diverged",
    "wall_s",
    "cpu_s",
    "device",
    "threads",
)

Record = dict[str, Any]

# AutoDrop's step() should cost under this fraction of an epoch's training pass.
OVERHEAD_TARGET = 0.005


def write_summary(records: Iterable[Record], path: Path) -> Path:
    """One CSV row per run with the summary numbers (lists joined by ``;``)."""
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(SUMMARY_COLUMNS)
        for record in records:
            writer.writerow(
                [";".join(map(str, v)) if isinstance(v, list) else v for v in (record[c] for c in SUMMARY_COLUMNS)]
            )
    return path


def _mean_std(values: Sequence[float], digits: int = 2) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f} (n=1)"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _diverged(group: Sequence[Record]) -> str:
    count = sum(r["diverged"] for r in group)
    return f" ({count} diverged)" if count else ""


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def _order(names: Iterable[str]) -> list[str]:
    registry = list(SCHEDULES)
    return sorted(set(names), key=lambda n: (registry.index(n) if n in registry else len(registry), n))


class _Runs:
    """The records of one task, grouped for the tables."""

    def __init__(self, records: list[Record], main_lrs: dict[str, float]) -> None:
        self.records = records
        self.main_lrs = main_lrs  # schedule -> the LR it is compared at
        self.by_schedule_lr: dict[tuple[str, float], list[Record]] = defaultdict(list)
        for record in records:
            self.by_schedule_lr[(record["schedule"], record["lr"])].append(record)
        for group in self.by_schedule_lr.values():
            group.sort(key=lambda r: r["seed"])

    def main(self, schedule: str) -> list[Record]:
        return self.by_schedule_lr.get((schedule, self.main_lrs.get(schedule)), [])

    @property
    def schedules(self) -> list[str]:
        return _order(s for s in self.main_lrs if self.main(s))


def _split_by_task(records: list[Record]) -> dict[tuple[str, str], _Runs]:
    """The records by (task, optimizer): each optimizer family is compared at its own task LR."""
    tasks: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for record in records:
        tasks[(record["task"], record["optimizer"])].append(record)
    result = {}
    for (name, optimizer), task_records in sorted(tasks.items()):
        lr = TASKS[name].lr[optimizer]
        result[(name, optimizer)] = _Runs(task_records, {r["schedule"]: lr for r in task_records})
    return result


def paired_interval(differences: Sequence[float], level: float = 0.95) -> tuple[float, float, float] | None:
    """Mean of paired differences and its two-sided t interval ``(mean, low, high)``; None below 2 pairs."""
    if len(differences) < 2:
        return None
    mean = statistics.mean(differences)
    half = student_t_quantile((1 + level) / 2, len(differences) - 1) * statistics.stdev(differences)
    half /= math.sqrt(len(differences))
    return mean, mean - half, mean + half


def _verdict(differences: Sequence[float]) -> str:
    """``mean [low, high] verdict`` of paired differences; "—" without pairs."""
    interval = paired_interval(differences)
    if interval is None:
        return f"{differences[0]:+.2f} (one seed)" if differences else "—"
    mean, low, high = interval
    if low > 0:
        word = "worse"
    elif high < 0:
        word = "better"
    else:
        word = "no evidence of a difference"
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}] {word}"


def _paired_to(runs: _Runs, schedule: str, reference: str, lr: float) -> list[float]:
    """Final test error of ``schedule`` minus ``reference``'s at the same LR and seed, per seed."""
    base = {r["seed"]: r["final_test_error"] for r in runs.by_schedule_lr.get((reference, lr), [])}
    group = runs.by_schedule_lr.get((schedule, lr), [])
    return [r["final_test_error"] - base[r["seed"]] for r in group if r["seed"] in base]


def _drop_gap(record: Record) -> int:
    """The longest stretch of epochs without a drop (from the start, between drops, to the end)."""
    marks = [0, *record["drop_epochs"], len(record["test_error"])]
    return max(b - a for a, b in zip(marks, marks[1:]))


def _cells(runs: _Runs) -> list[str]:
    """Per initial LR, each schedule's paired difference to step and to cosine with 95 % intervals."""
    rows = []
    for lr in sorted({lr for (_, lr) in runs.by_schedule_lr}):
        for schedule in _order(s for (s, lr2) in runs.by_schedule_lr if lr2 == lr):
            group = runs.by_schedule_lr[(schedule, lr)]
            dropping = group[0]["history"] is not None
            first = [str(r["drop_epochs"][0]) if r["drop_epochs"] else "none" for r in group]
            rows.append(
                [
                    f"{lr:g}",
                    f"`{schedule}`",
                    len(group),
                    _mean_std([r["final_test_error"] for r in group]) + _diverged(group),
                    "—" if schedule == "step" else _verdict(_paired_to(runs, schedule, "step", lr)),
                    "—" if schedule == "cosine" else _verdict(_paired_to(runs, schedule, "cosine", lr)),
                    ", ".join(first) if dropping else "—",
                    _mean_std([float(len(r["drop_epochs"])) for r in group], 1) if dropping else "—",
                    max(_drop_gap(r) for r in group) if dropping else "—",
                    _mean_std([float(r["best_epoch"]) for r in group], 1),
                ]
            )
    header = [
        "initial LR",
        "schedule",
        "seeds",
        "final test error %",
        "− step, pp: mean [95 % CI]",
        "− cosine, pp: mean [95 % CI]",
        "first drop epoch per seed",
        "drops per run",
        "longest epochs without a drop",
        "epoch of best",
    ]
    return _table(header, rows)


def _resolution(split: dict[tuple[str, str], _Runs]) -> list[str]:
    """What differences these seeds can resolve: seed-to-seed spread and the width of paired intervals."""
    spreads, halves = [], []
    for runs in split.values():
        for (schedule, lr), group in runs.by_schedule_lr.items():
            if len(group) > 1:
                spreads.append(statistics.stdev(r["final_test_error"] for r in group))
            if schedule != "step":
                interval = paired_interval(_paired_to(runs, schedule, "step", lr))
                if interval is not None:
                    halves.append((interval[2] - interval[1]) / 2)
    if not spreads:
        return []
    lines = [
        "## What this evidence can and cannot show",
        "",
        f"Final test errors moved from seed to seed by a median sd of {statistics.median(spreads):.2f} pp "
        f"(range {min(spreads):.2f}-{max(spreads):.2f} over the {len(spreads)} cells with several seeds).",
    ]
    if halves:
        lines[-1] += (
            f" The paired 95 % intervals against the step schedule have a median half-width of "
            f"{statistics.median(halves):.2f} pp: smaller differences cannot be told from noise here."
        )
    lines += [
        "A difference is claimed only where its interval excludes 0; otherwise the tables say "
        '"no evidence of a difference". The same command on another CPU, or with another thread count, '
        "sums in another order and changes the last digits of every number (and, once two runs diverge, "
        "more): read single-seed numbers as one draw from that spread, not as a result.",
        "",
    ]
    return lines


def _goal_check(split: dict[tuple[str, str], _Runs], schedule: str = "autodrop") -> list[str]:
    """The detector issue's goals for the default row, from every cell that has it."""
    worse, to_cosine, gaps, cells = [], [], [], 0
    for (task, optimizer), runs in split.items():
        for (name, lr), group in runs.by_schedule_lr.items():
            if name != schedule:
                continue
            cells += 1
            step = _paired_to(runs, schedule, "step", lr)
            interval = paired_interval(step)
            if interval is not None and interval[1] > 0:
                worse.append(f"{task} {optimizer} LR {lr:g} ({_verdict(step)})")
            cosine = _paired_to(runs, schedule, "cosine", lr)
            if cosine:
                to_cosine.append(statistics.mean(cosine))
            gaps += [_drop_gap(r) for r in group]
    if not cells:
        return []
    lines = [
        "## The default detector against the goals",
        "",
        f"Over the {cells} task × optimizer × LR cells with `{schedule}` runs:",
        "",
    ]
    lines.append("- Worse than the step schedule beyond the 95 % interval in: " + ("; ".join(worse) or "no cell") + ".")
    if to_cosine:
        lines.append(
            f"- Paired difference to cosine, averaged over the {len(to_cosine)} cells that have cosine: "
            f"{statistics.mean(to_cosine):+.2f} pp (per cell: " + ", ".join(f"{d:+.2f}" for d in to_cosine) + ")."
        )
    lines.append(f"- Longest stretch without a drop in any run: {max(gaps)} epochs (goal: under 60).")
    return lines + [""]


STOPPING_ROWS = ("autodrop-stop", "step-earlystop")
SAVING_TARGET = 0.3  # the convergence signal should save at least this fraction of the step schedule's budget


def _stop_epochs(record: Record) -> int:
    """Epochs the run trained: its stop, or the whole budget."""
    return len(record["test_error"])


def _converged_at(record: Record, drops: int) -> tuple[int, float] | None:
    """Where an ``autodrop`` run would have converged with ``max_drops=drops``: the interval of its
    next drop, which averages exactly as convergence does; ``(epoch, test error there)``, or None."""
    if len(record["drop_epochs"]) <= drops:
        return None
    epoch = record["drop_epochs"][drops]
    return epoch, record["test_error"][epoch - 1]


def _stopping(split: dict[tuple[str, str], _Runs]) -> list[str]:
    """Epochs used and final error of the rows that stop early, against the step schedule's full budget."""
    rows, met, cells, identical, compared, omega_gap = [], 0, 0, 0, 0, 0.0
    for (task, optimizer), runs in split.items():
        for lr in sorted({lr for (_, lr) in runs.by_schedule_lr}):
            step = {r["seed"]: r for r in runs.by_schedule_lr.get(("step", lr), [])}
            autodrop = {r["seed"]: r for r in runs.by_schedule_lr.get(("autodrop", lr), [])}
            candidates = []
            for name in STOPPING_ROWS:
                group = [r for r in runs.by_schedule_lr.get((name, lr), []) if r["seed"] in step]
                candidates.append((f"`{name}`", [(_stop_epochs(r), r["final_test_error"], r) for r in group]))
            derived = [(_converged_at(r, 2), r) for r in autodrop.values() if r["seed"] in step]
            if derived and all(point is not None for point, _ in derived):
                candidates.append(
                    ("`autodrop`, max_drops=2 (its 3rd drop)", [(point[0], point[1], r) for point, r in derived])
                )
            for label, runs_of_row in candidates:
                if not runs_of_row:
                    continue
                budget = step[runs_of_row[0][2]["seed"]]["epochs"]
                epochs = [e for e, _, _ in runs_of_row]
                errors = [error for _, error, _ in runs_of_row]
                differences = [error - step[r["seed"]]["final_test_error"] for _, error, r in runs_of_row]
                step_interval = paired_interval([r["final_test_error"] for r in step.values()])
                early = all(e <= (1 - SAVING_TARGET) * budget for e in epochs)
                inside = step_interval is not None and statistics.mean(errors) <= step_interval[2]
                if label == "`autodrop-stop`":
                    cells += 1
                    met += early and inside
                    for e, _, r in runs_of_row:
                        twin = autodrop.get(r["seed"])
                        if twin is not None:
                            compared += 1
                            identical += twin["test_error"][:e] == r["test_error"]
                            omega_gap = max(
                                [omega_gap]
                                + [
                                    abs(a - b)
                                    for a, b in zip(twin["omega"][:e], r["omega"])
                                    if a is not None and b is not None
                                ]
                            )
                rows.append(
                    [
                        f"`{task}`",
                        optimizer,
                        f"{lr:g}",
                        label,
                        len(runs_of_row),
                        ", ".join(map(str, epochs)),
                        f"{100 * (1 - statistics.mean(epochs) / budget):.0f} %",
                        _mean_std(errors),
                        f"{step_interval[1]:.2f}-{step_interval[2]:.2f}" if step_interval else "—",
                        _verdict(differences),
                        "met" if early and inside else "missed",
                    ]
                )
    if not rows:
        return []
    header = [
        "task",
        "optimizer",
        "initial LR",
        "row",
        "seeds",
        "epochs used per seed",
        "saved vs the budget",
        "final test error %",
        "step at its full budget: 95 % interval of its final error %",
        "− step, paired, pp: mean [95 % CI]",
        f"target: every seed ≤ {100 * (1 - SAVING_TARGET):.0f} % of the budget, mean error ≤ the interval's top",
    ]
    lines = [
        "## Stopping early: AutoDrop's convergence signal against the full budget and early stopping",
        "",
        f"`autodrop-stop` meets the target in {met} of {cells} cells. `step-earlystop` is Lightning's "
        "`EarlyStopping` on validation loss (patience 10) over the step schedule, with the same budget as a "
        "cap; its error is the model at the stop (EarlyStopping does not restore the best epoch).",
    ]
    if compared:
        lines[-1] += (
            f" Each `autodrop-stop` run repeats the `autodrop` run of its seed epoch for epoch until it "
            f"stops (test error identical at every epoch in {identical} of {compared} runs, omega within "
            f"{omega_gap:.1g} degrees), so the rows read from the `autodrop` runs (convergence at its next "
            "drop, which averages as convergence does) are what that `max_drops` would give."
        )
    return lines + [""] + _table(header, rows)


def _comparison(runs: _Runs) -> list[str]:
    step = {r["seed"]: r["final_test_error"] for r in runs.main("step")}
    rows = []
    for schedule in runs.schedules:
        group = runs.main(schedule)
        paired = [r["final_test_error"] - step[r["seed"]] for r in group if r["seed"] in step]
        rows.append(
            [
                f"`{schedule}`",
                f"{group[0]['lr']:g}",
                len(group),
                _mean_std([r["final_test_error"] for r in group]) + _diverged(group),
                _mean_std([r["best_test_error"] for r in group]),
                _mean_std([float(r["best_epoch"]) for r in group], 1),
                _mean_std([r["final_train_loss"] for r in group], 4),
                "—" if schedule == "step" or not paired else _mean_std(paired),
                "; ".join(str(r["drop_epochs"]) for r in group) if any(r["drop_epochs"] for r in group) else "—",
                f"{statistics.mean(r['wall_s'] for r in group):.0f}",
                f"{statistics.mean(r['cpu_s'] for r in group):.0f}",
            ]
        )
    header = [
        "schedule",
        "LR",
        "seeds",
        "final test error %",
        "best test error %",
        "epoch of best",
        "final train loss",
        "final − step (paired) pp",
        "AutoDrop drops per seed",
        "wall s/run",
        "CPU s/run",
    ]
    return _table(header, rows)


def _trigger_evidence(runs: _Runs) -> list[str]:
    lines: list[str] = []
    for schedule in runs.schedules:
        group = runs.main(schedule)
        if not group or group[0]["history"] is None:
            continue
        settings = group[0]["settings"]
        triggered = [r for r in group if r["trigger_epochs"]]
        lines.append(
            f"- `{schedule}` ({', '.join(f'{k} {v}' for k, v in settings.items())}): triggered in "
            f"{len(triggered)} of {len(group)} runs"
            + (
                f" (trigger epochs {[r['trigger_epochs'] for r in triggered]}, drop epochs "
                f"{[r['drop_epochs'] for r in triggered]})"
                if triggered
                else ""
            )
            + "."
        )
        if "passes" in group[0]["history"][0]:
            lines += _trend_evidence(group)
        else:
            lines += _paper_evidence(group)
    return lines + [""] if lines else []


def _trend_evidence(group: list[Record]) -> list[str]:
    """Which trend-test triggers the test made (``passes`` in a row) and which its wait made."""
    by_test = by_wait = 0
    noise = [h["noise"] for r in group for h in r["history"] if h["noise"] is not None]
    for record in group:
        for epoch in record["trigger_epochs"]:
            entry = record["history"][epoch - 1]
            waited = entry["wait"] is not None and entry["phase"] >= entry["wait"]
            by_wait += waited
            by_test += not waited
    line = (
        f"  Of the triggers, {by_test} came from the trend test and {by_wait} from the wait (the first "
        "phase's pacing or `max_wait`)."
    )
    if noise:
        line += (
            f" The residual sd of omega around its trend (the noise the test sees) had median "
            f"{statistics.median(noise):.2f} deg."
        )
    return [line]


def _paper_evidence(group: list[Record]) -> list[str]:
    theta0 = group[0]["history"][0]["threshold"]
    deltas = [h["delta"] for r in group for h in r["history"] if h["delta"] is not None]
    late_omega = [h["omega"] for r in group for h in r["history"][-5:] if h["omega"] is not None]
    if not (deltas and late_omega):
        return []
    median = statistics.median(deltas)
    below = sum(d < theta0 for d in deltas)
    lines = [
        f"  The epoch-to-epoch change of (window-averaged) omega had median {median:.3g} deg and "
        f"minimum {min(deltas):.3g} deg; {below} of {len(deltas)} changes were below the initial "
        f"threshold {theta0:g} deg. Omega over the last 5 epochs averaged "
        f"{statistics.mean(late_omega):.1f} deg."
    ]
    if median > 10 * theta0:
        lines.append(
            f"  The typical change is {median / theta0:.0f}x the initial threshold: a trigger needs "
            "one change to fall below it by chance, so whether and when it fires here is noise, not "
            "a detected saturation (see the omega figure below)."
        )
    return lines


def _sweep(runs: _Runs) -> tuple[list[str], dict[str, list[tuple[float, list[float]]]]]:
    swept = _order(
        s for (s, lr) in runs.by_schedule_lr if len({lr2 for (s2, lr2) in runs.by_schedule_lr if s2 == s}) > 1
    )
    if not swept:
        return [], {}
    curves = {
        s: sorted(
            (lr, [r["final_test_error"] for r in group]) for (s2, lr), group in runs.by_schedule_lr.items() if s2 == s
        )
        for s in swept
    }
    lrs = sorted({lr for points in curves.values() for lr, _ in points})
    rows = []
    for lr in lrs:
        row = [f"{lr:g}"]
        for schedule in swept:
            group = runs.by_schedule_lr.get((schedule, lr))
            row.append(_mean_std([r["final_test_error"] for r in group]) + _diverged(group) if group else "—")
        rows.append(row)
    return _table(["initial LR"] + [f"`{s}` final test error %" for s in swept], rows), curves


def _epochs_to_best(runs: _Runs) -> list[str]:
    step_final = [r["final_test_error"] for r in runs.main("step")]
    target = statistics.mean(step_final) if step_final else None
    rows = []
    for schedule in runs.schedules:
        group = runs.main(schedule)
        reach = []
        if target is not None:
            for r in group:
                hits = [i + 1 for i, e in enumerate(r["test_error"]) if e <= target]
                reach.append(str(hits[0]) if hits else "never")
        rows.append(
            [
                f"`{schedule}`",
                _mean_std([float(r["best_epoch"]) for r in group], 1),
                ", ".join(reach) if reach else "—",
                group[0]["epochs"],
            ]
        )
    target_text = f"{target:.2f} %" if target is not None else "n/a (no step runs)"
    header = [
        "schedule",
        "epoch of best test error",
        f"first epoch at or below step's final error ({target_text}), per seed",
        "epochs",
    ]
    return _table(header, rows)


def _autodrop_cost(records: list[Record]) -> list[str]:
    """The section on AutoDrop's cost per epoch: one row per task with AutoDrop runs."""
    tasks: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        if record["history"] is not None:
            tasks[record["task"]].append(record)
    if not tasks:
        return []
    rows, untimed, setups = [], [], set()
    for task, group in sorted(tasks.items()):
        timed = [r for r in group if r.get("autodrop_step_s") is not None]
        missing = len(group) - len(timed)
        if missing:
            untimed.append(f"`{task}` {missing} of {len(group)}")
        setups |= {(r["device"], r["threads"]) for r in timed}
        if not timed:
            rows.append([f"`{task}`", group[0]["num_params"], f"0 of {len(group)}", "—", "—", "—", "—"])
            continue
        train = statistics.median(s for r in timed for s in r["train_s"])
        step = statistics.median(s for r in timed for s in r["autodrop_step_s"])
        overhead = step / train
        rows.append(
            [
                f"`{task}`",
                group[0]["num_params"],
                f"{len(timed)} of {len(group)}",
                f"{train:.3g}",
                f"{step * 1e3:.3g}",
                f"{100 * overhead:.3g} %",
                "met" if overhead < OVERHEAD_TARGET else "missed",
            ]
        )
    where = ", ".join(
        f"{device} with {threads} thread{'s' if threads != 1 else ''} per run" for device, threads in sorted(setups)
    )
    schedules = ", ".join(f"`{s}`" for s in _order(r["schedule"] for g in tasks.values() for r in g))
    lines = [
        "## AutoDrop's cost per epoch",
        "",
        "Every run times with `time.perf_counter()`, per epoch, its training pass (every minibatch's forward, "
        "backward and optimizer step, up to the epoch loss's `.item()`; not the evaluation) and, with an "
        "AutoDrop, the `AutoDrop.step()` at the epoch's end (on CUDA the device is synchronized before each "
        "clock read)"
        + (f", on {where}" if where else "")
        + f". Medians over every epoch of every AutoDrop run ({schedules}) of the task, drop epochs "
        f"included; overhead = median step / median training pass, against the target of "
        f"{100 * OVERHEAD_TARGET:g} %.",
        "",
    ]
    lines += _table(
        [
            "task",
            "parameters",
            "AutoDrop runs timed",
            "median training pass s/epoch",
            "median `AutoDrop.step()` ms",
            "overhead",
            f"target < {100 * OVERHEAD_TARGET:g} %",
        ],
        rows,
    )
    if untimed:
        lines += [
            "Records without timings (written before runs were timed), left out of the figures above: "
            + "; ".join(untimed)
            + " AutoDrop runs.",
            "",
        ]
    return lines


def _coinciding(runs: _Runs) -> str:
    """A sentence naming the schedules whose plotted runs are identical (their lines overlap)."""
    groups: dict[tuple, list[str]] = defaultdict(list)
    for schedule in runs.schedules:
        groups[tuple(runs.main(schedule)[0]["test_error"])].append(schedule)
    same = [" = ".join(f"`{s}`" for s in names) for names in groups.values() if len(names) > 1]
    return (" Identical runs draw one line: " + "; ".join(same) + ".") if same else ""


def _plot_curves(runs: _Runs, task: str, path: Path) -> Path:
    plt = _pyplot()
    figure, axes = plt.subplots(4, 1, figsize=(9, 11), sharex=True)
    for schedule in runs.schedules:
        record = runs.main(schedule)[0]
        epochs = range(1, len(record["test_error"]) + 1)
        line = axes[0].semilogy(epochs, record["epoch_lr"], drawstyle="steps-post", label=schedule)[0]
        color = line.get_color()
        axes[1].plot(epochs, [math.nan if v is None else v for v in record["omega"]], color=color)
        axes[2].semilogy(epochs, record["train_loss"], color=color)
        axes[3].plot(epochs, record["test_error"], color=color)
        for drop in record["drop_epochs"]:
            for axis in axes:
                axis.axvline(drop, color=color, lw=0.8, ls=":")
    for axis, label in zip(axes, ("LR during epoch", "omega (deg)", "train loss", "test error %")):
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    errors = [e for s in runs.schedules for e in runs.main(s)[0]["test_error"]]
    low = min(errors)
    axes[3].set_ylim(low * 0.9, min(max(errors), low * 3))
    axes[0].legend(fontsize=8, ncol=2)
    axes[-1].set_xlabel("epoch")
    axes[0].set_title(
        f"{task}: every schedule at its compared LR, seed {runs.main(runs.schedules[0])[0]['seed']}"
        " (dotted: AutoDrop drops)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _plot_sweep(curves: dict[str, list[tuple[float, list[float]]]], task: str, path: Path) -> Path:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4))
    for schedule, points in curves.items():
        lrs = [lr for lr, _ in points]
        means = [statistics.mean(e) for _, e in points]
        stds = [statistics.stdev(e) if len(e) > 1 else 0.0 for _, e in points]
        axis.errorbar(lrs, means, yerr=stds, marker="o", capsize=3, label=schedule)
    axis.set_xscale("log")
    axis.set_xlabel("initial LR")
    axis.set_ylabel("final test error %")
    axis.set_title(f"{task}: final test error vs initial LR (mean ± std)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_report(records: list[Record], out: Path, meta: dict[str, Any]) -> Path:
    """Write ``summary.csv``, ``report.md`` and ``figures/*.png`` under ``out``; return the report path.

    ``meta`` is printed in the report's header: ``suite``, ``description``,
    ``command``, ``machine``, ``wall_s`` (this invocation), ``new_runs`` (runs it
    trained), ``jobs``.
    """
    out.mkdir(parents=True, exist_ok=True)
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    write_summary(records, out / "summary.csv")
    wall = meta.get("wall_s")
    lines = [
        f"# AutoDrop benchmark: `{meta.get('suite', '?')}` suite",
        "",
        f"{meta.get('description', '')}",
        "",
        f"- Command: `{meta.get('command', '')}`",
        f"- Machine: {meta.get('machine', '')}",
        f"- {len(records)} runs, {meta.get('new_runs', len(records))} of them trained by this invocation in "
        + (f"{wall / 60:.1f} min wall clock" if wall is not None else "—")
        + f" with --jobs {meta.get('jobs', 1)}; training CPU time summed over all runs "
        f"{sum(r['cpu_s'] for r in records) / 60:.1f} min (on a machine shared with other work, wall "
        "clock grows with the load, CPU time much less).",
        "- Per-run curves: `runs.jsonl` (one JSON object per run); one row per run: `summary.csv`.",
        "",
        "## Set-up",
        "",
    ]
    task_rows, schedule_rows = [], {}
    for name in sorted({r["task"] for r in records}):
        group = [r for r in records if r["task"] == name]
        task_rows.append(
            [
                f"`{name}`",
                TASKS[name].description,
                group[0]["epochs"],
                group[0]["batch_size"],
                group[0]["num_params"],
                ", ".join(sorted({r["optimizer"] for r in group})),
            ]
        )
        for r in group:
            settings = ", ".join(f"{k} {v}" for k, v in r["settings"].items())
            schedule_rows.setdefault(
                r["schedule"],
                [
                    f"`{r['schedule']}`",
                    SCHEDULES[r["schedule"]].description if r["schedule"] in SCHEDULES else "",
                    settings,
                ],
            )
    lines += _table(["task", "data and model", "epochs", "batch", "parameters", "optimizer"], task_rows)
    lines += _table(["schedule", "what", "settings in these runs"], [schedule_rows[s] for s in _order(schedule_rows)])
    lines += [
        "Optimizers: SGD with Nesterov momentum 0.9 and weight decay 5e-4 (the paper's); AdamW with "
        "weight decay 1e-2. Test error is measured on the test set after every epoch, after the schedule's "
        "end-of-epoch step (at an AutoDrop drop: on the averaged parameters); a run whose training loss "
        "is not finite stops there and counts as diverged. The validation "
        "split (held out of the training set, the same for all runs) feeds ReduceLROnPlateau. "
        "AutoDrop's delay is the paper's 20 epochs of 200, scaled to the same 1:10 ratio when a run is "
        "shorter (the `delay` above). At an AutoDrop drop the parameters are averaged over the delay "
        "window and BatchNorm statistics are recomputed on the training inputs.",
        "",
    ]
    split = _split_by_task(records)
    lines += _goal_check(split) + _stopping(split) + _resolution(split)
    lines += _autodrop_cost(records)
    for (task, optimizer), runs in split.items():
        label = task if optimizer == "sgd" else f"{task}-{optimizer}"
        lines += [f"## Task `{task}`, {optimizer}", "", "### Test error at the compared LR (paper Table 1 analog)", ""]
        lines += _comparison(runs)
        lines += ["### Paired differences per initial LR (same seeds; 95 % t intervals)", ""] + _cells(runs)
        evidence = _trigger_evidence(runs)
        if evidence:
            lines += ["### Did AutoDrop trigger?", ""] + evidence
        sweep_table, curves = _sweep(runs)
        if sweep_table:
            lines += ["### Robustness to the initial LR (paper Table 2 analog)", ""] + sweep_table
        lines += ["### Epochs to best (paper Fig. 7 analog)", ""] + _epochs_to_best(runs)
        lines += ["### Figures", ""]
        curve_path = _plot_curves(runs, task, figures / f"{label}-curves.png")
        lines += [
            "LR, omega, train loss and test error against epochs (paper Fig. 6 analog)." + _coinciding(runs),
            "",
            f"![{task} curves](figures/{curve_path.name})",
            "",
        ]
        for schedule in runs.schedules:
            record = runs.main(schedule)[0]
            if record["history"] is not None:
                path = plot_history(
                    record["history"],
                    figures / f"{label}-{schedule}-omega.png",
                    record["train_loss"],
                    title=f"{task}: {schedule}, seed {record['seed']}",
                )
                lines += [
                    f"`{schedule}`: omega, the detector's statistic against its bound (log scale), LR and loss:",
                    "",
                    f"![{task} {schedule} omega](figures/{path.name})",
                    "",
                ]
        if curves:
            path = _plot_sweep(curves, task, figures / f"{label}-lr-sweep.png")
            lines += ["Final test error against the initial LR:", "", f"![{task} LR sweep](figures/{path.name})", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report
