import csv
import statistics

import numpy as np
import pytest

from autodrop.apps.bench.report import SUMMARY_COLUMNS, write_report


def fake_record(schedule, lr, seed, errors, drops=(), deltas=None, task="digits-cnn"):
    epochs = len(errors)
    history = None
    if deltas is not None:
        history = [
            {
                "interval": i + 1,
                "omega": None if i == 0 else 90.0 + i,
                "delta": d,
                "threshold": 0.01,
                "lrs": [lr],
                "event": "drop" if i + 1 in drops else None,
            }
            for i, d in enumerate(deltas)
        ]
    best = min(range(epochs), key=errors.__getitem__)
    return {
        "key": f"{task}/{schedule}/{lr}/{seed}",
        "task": task,
        "schedule": schedule,
        "optimizer": "sgd",
        "lr": lr,
        "seed": seed,
        "epochs": epochs,
        "batch_size": 64,
        "device": "cpu",
        "threads": 1,
        "num_params": 1442,
        "settings": {"delay": 1} if history else {},
        "history": history,
        "train_loss": [1.0 / (i + 1) for i in range(epochs)],
        "val_loss": [1.0] * epochs,
        "test_error": errors,
        "epoch_lr": [lr] * epochs,
        "omega": [None] + [90.0 + i for i in range(1, epochs)],
        "delta": deltas or [None] * epochs,
        "threshold": [0.01] * epochs if history else [None] * epochs,
        "event": [None] * epochs,
        "final_test_error": errors[-1],
        "best_test_error": errors[best],
        "best_epoch": best + 1,
        "final_train_loss": 1.0 / epochs,
        "trigger_epochs": list(drops),
        "drop_epochs": list(drops),
        "diverged": False,
        "wall_s": 2.0,
        "cpu_s": 1.5,
    }


@pytest.fixture(scope="module")
def records():
    deltas = [None, None, 2.0, 1.5, 0.005]
    return [
        fake_record("step", 0.05, 0, [9.0, 7.0, 6.0, 5.0, 4.0]),
        fake_record("step", 0.05, 1, [9.0, 7.0, 6.0, 5.0, 5.0]),
        fake_record("autodrop", 0.05, 0, [9.0, 6.0, 3.0, 3.5, 3.0], drops=(5,), deltas=deltas),
        fake_record("autodrop", 0.05, 1, [9.0, 6.0, 5.0, 4.0, 4.0], deltas=[None, None, 2.0, 1.5, 1.0]),
        dict(fake_record("step", 0.1, 0, [9.0, 8.0, 8.0, 8.0, 8.0]), diverged=True),
        fake_record("autodrop", 0.1, 0, [9.0, 8.0, 7.0, 7.0, 7.0], deltas=[None, None, 3.0, 3.0, 3.0]),
    ]


@pytest.fixture(scope="module")
def out(records, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    write_report(records, out, {"suite": "tiny", "description": "fake", "wall_s": 60.0, "jobs": 2})
    return out


def test_report_tables_hold_the_measured_numbers(out):
    text = (out / "report.md").read_text()
    std = statistics.stdev
    # Table 1: mean ± std over seeds, and the paired difference to step (seed 0: -1, seed 1: -1).
    assert f"| `step` | 0.05 | 2 | 4.50 ± {std([4.0, 5.0]):.2f} |" in text
    assert f"| `autodrop` | 0.05 | 2 | 3.50 ± {std([3.0, 4.0]):.2f} | 3.50 ± {std([3.0, 4.0]):.2f} |" in text
    assert "| -1.00 ± 0.00 | [5]; [] |" in text
    # Table 2: one row per initial LR.
    assert f"| 0.05 | 4.50 ± {std([4.0, 5.0]):.2f} | 3.50 ± {std([3.0, 4.0]):.2f} |" in text
    assert "| 0.1 | 8.00 (n=1) (1 diverged) | 7.00 (n=1) |" in text
    # Epochs to best, and the first epoch at or below step's mean final error 4.5 per seed.
    assert f"| `autodrop` | 3.5 ± {std([3.0, 4.0]):.1f} | 3, 4 | 5 |" in text
    assert f"| `step` | 4.5 ± {std([5.0, 4.0]):.1f} | 5, never | 5 |" in text
    # The trigger evidence: measured changes of omega against the threshold.
    assert "triggered in 1 of 2 runs (trigger epochs [[5]], drop epochs [[5]])" in text
    assert "median 1.5 deg and minimum 0.005 deg; 1 of 6 changes were below the initial threshold 0.01 deg" in text
    assert "150x the initial threshold" in text
    for name in ("digits-cnn-curves.png", "digits-cnn-autodrop-omega.png", "digits-cnn-lr-sweep.png"):
        assert (out / "figures" / name).stat().st_size > 10_000 and f"(figures/{name})" in text


def test_summary_csv_has_one_row_per_run(out, records):
    with (out / "summary.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert tuple(rows[0]) == SUMMARY_COLUMNS and len(rows) == len(records)
    assert rows[2]["schedule"] == "autodrop" and rows[2]["drop_epochs"] == "5"
    assert float(rows[3]["final_test_error"]) == 4.0


def timed(record, train_s, autodrop_step_s):
    return dict(record, train_s=train_s, autodrop_step_s=autodrop_step_s)


def test_autodrop_cost_is_the_median_step_over_the_median_training_pass(tmp_path):
    errors = [9.0, 8.0, 7.0]
    records = [
        timed(
            fake_record("autodrop", 0.05, 0, errors, deltas=[None, None, 1.0]), [2.0, 4.0, 3.0], [0.001, 0.003, 0.002]
        ),
        timed(
            fake_record("autodrop-smooth", 0.05, 0, errors, deltas=[None, None, 1.0]),
            [5.0, 1.0, 6.0],
            [0.004, 0.05, 0.0005],
        ),
        fake_record("autodrop", 0.1, 0, errors, deltas=[None, None, 1.0]),  # recorded before runs were timed
        timed(fake_record("step", 0.05, 0, errors), [100.0] * 3, [None] * 3),  # no AutoDrop: left out
        timed(
            dict(
                fake_record("autodrop", 0.05, 0, errors, deltas=[None, None, 1.0], task="mnist-mlp"),
                num_params=269322,
                threads=2,
            ),
            [2.0, 2.0, 2.0],
            [0.02, 0.01, 0.03],
        ),
    ]
    text = write_report(records, tmp_path, {"suite": "tiny"}).read_text()
    section = text[text.index("## AutoDrop's cost per epoch") : text.index("## Task")]
    # digits-cnn: training passes 1 2 3 4 5 6 -> median 3.5 s; steps 0.5 1 2 3 4 50 ms -> median 2.5 ms;
    # 2.5e-3 / 3.5 = 0.0714 %. mnist-mlp: 20 ms / 2 s = 1 %.
    assert "| `digits-cnn` | 1442 | 2 of 3 | 3.5 | 2.5 | 0.0714 % | met |" in section
    assert "| `mnist-mlp` | 269322 | 1 of 1 | 2 | 20 | 1 % | missed |" in section
    assert "on cpu with 1 thread per run, cpu with 2 threads per run" in section
    assert "(`autodrop`, `autodrop-smooth`)" in section and "target of 0.5 %" in section
    assert "left out of the figures above: `digits-cnn` 1 of 3 AutoDrop runs." in section


def test_autodrop_cost_without_timings_in_the_records_says_so(out):
    text = (out / "report.md").read_text()
    assert "| `digits-cnn` | 1442 | 0 of 3 | — | — | — | — |" in text
    assert "left out of the figures above: `digits-cnn` 3 of 3 AutoDrop runs." in text


def test_paired_intervals_per_cell_and_the_goal_check(tmp_path):
    from scipy import stats

    finals = {"step": [2.0, 2.2, 2.1], "cosine": [1.9, 2.3, 2.0], "autodrop": [1.8, 2.0, 2.05]}
    records = []
    for schedule, errors in finals.items():
        for seed, final in enumerate(errors):
            drops = (2, 4) if schedule == "autodrop" else ()
            deltas = [None, 1.0, 1.0, 1.0, 1.0] if schedule == "autodrop" else None
            records.append(fake_record(schedule, 0.05, seed, [9.0, 5.0, 4.0, 3.0, final], drops=drops, deltas=deltas))
    records += [fake_record("step", 0.1, seed, [9.0, 5.0, 4.0, 3.0, 2.0]) for seed in range(3)]
    records += [
        fake_record("autodrop", 0.1, seed, [9.0, 5.0, 4.0, 3.0, 2.5 + 0.1 * seed], deltas=[None] * 5)
        for seed in range(3)
    ]
    text = write_report(records, tmp_path, {"suite": "tiny"}).read_text()

    differences = np.array(finals["autodrop"]) - np.array(finals["step"])
    half = stats.t.ppf(0.975, 2) * differences.std(ddof=1) / np.sqrt(3)
    mean = differences.mean()
    expected = f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}] no evidence of a difference"
    assert "| 0.05 | `autodrop` | 3 | " in text and expected in text
    # At LR 0.1 autodrop is 0.5-0.7 pp worse on every seed: the interval lies above 0; no cosine there.
    assert "+0.60 [+0.35, +0.85] worse | — | none, none, none | 0.0 ± 0.0 | 5 |" in text
    goal = text[text.index("## The default detector against the goals") : text.index("## AutoDrop's cost")]
    assert "Worse than the step schedule beyond the 95 % interval in: digits-cnn sgd LR 0.1" in goal
    cosine = float(np.mean(np.array(finals["autodrop"]) - np.array(finals["cosine"])))
    assert f"averaged over the 1 cells that have cosine: {cosine:+.2f} pp" in goal
    assert "Longest stretch without a drop in any run: 5 epochs" in goal
    spreads = [statistics.stdev(v) for v in finals.values()] + [0.0, 0.1]
    assert f"median sd of {statistics.median(spreads):.2f} pp" in text and "cannot be told from noise" in text


def test_stopping_section_counts_epochs_and_checks_the_target_against_steps_interval(tmp_path):
    from scipy import stats

    budget = [9.0] * 9
    step_finals = [2.0, 2.2, 2.1]
    records = [fake_record("step", 0.05, seed, budget + [final]) for seed, final in enumerate(step_finals)]
    # autodrop-stop: stops after 6 of 10 epochs, error at the stop 2.1-2.2; step-earlystop: after 4, error 3
    for seed in range(3):
        stop = fake_record(
            "autodrop-stop", 0.05, seed, [9.0, 5.0, 4.0, 3.0, 2.5, 2.1 + 0.05 * seed], drops=(3,), deltas=[None] * 6
        )
        records.append({**stop, "epochs": 10, "stopped_epoch": 6})
        early = fake_record("step-earlystop", 0.05, seed, [9.0, 5.0, 4.0, 3.0])
        records.append({**early, "epochs": 10, "stopped_epoch": 4})
    text = write_report(records, tmp_path, {"suite": "tiny"}).read_text()
    section = text[text.index("## Stopping early") : text.index("## What this evidence")]

    mean, sd = np.mean(step_finals), np.std(step_finals, ddof=1)
    half = stats.t.ppf(0.975, 2) * sd / np.sqrt(3)
    interval = f"{mean - half:.2f}-{mean + half:.2f}"
    assert "`autodrop-stop` meets the target in 1 of 1 cells" in section
    assert f"| `autodrop-stop` | 3 | 6, 6, 6 | 40 % | 2.15 ± 0.05 | {interval} |" in section
    assert f"| `step-earlystop` | 3 | 4, 4, 4 | 60 % | 3.00 ± 0.00 | {interval} |" in section
    rows = [line for line in section.splitlines() if line.startswith("| `digits-cnn`")]
    assert [row.rsplit("|", 2)[1].strip() for row in rows] == ["met", "missed"]
