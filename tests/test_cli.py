import csv
import json
import os

import pytest
import torch

from autodrop.apps.cli import main
from autodrop.apps.cli_args import MAX_LR, MAX_SEED


def test_demo_runs_end_to_end_and_writes_the_figure(tmp_path, capsys):
    main(["demo", "--out", str(tmp_path), "--epochs", "12", "--samples", "1000", "--delay", "2"])
    printed = capsys.readouterr().out
    assert "drops; final lr" in printed
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    rows = (tmp_path / "history.csv").read_text().splitlines()
    assert rows[0].startswith("interval,step,omega,delta,threshold,event,reason,lr") and len(rows) == 1 + 12


def test_bench_runs_end_to_end_and_writes_the_report(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = [
        "bench",
        "--suite",
        "tiny",
        "--schedules",
        "constant",
        "step",
        "autodrop",
        "--lrs",
        "0.05",
        "0.1",
        "--epochs",
        "3",
        "--seeds",
        "1",
        "--jobs",
        "1",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    main(argv)
    printed = capsys.readouterr().out
    # 3 schedules at the task's LR 0.05, plus step and autodrop at 0.1 for the sweep.
    assert "5 runs on digits-cnn" in printed and "[5/5]" in printed

    records = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert sorted((r["schedule"], r["lr"]) for r in records) == [
        ("autodrop", 0.05),
        ("autodrop", 0.1),
        ("constant", 0.05),
        ("step", 0.05),
        ("step", 0.1),
    ]
    for record in records:
        assert len(record["test_error"]) == len(record["omega"]) == len(record["epoch_lr"]) == 3
        assert record["best_test_error"] == min(record["test_error"])
    with (out / "summary.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 5 and {row["schedule"] for row in rows} == {"constant", "step", "autodrop"}

    report = (out / "report.md").read_text()
    for heading in (
        "# AutoDrop benchmark: `tiny` suite",
        "## Set-up",
        "## Task `digits-cnn`",
        "### Test error at the compared LR (paper Table 1 analog)",
        "### Did AutoDrop trigger?",
        "### Robustness to the initial LR (paper Table 2 analog)",
        "### Epochs to best (paper Fig. 7 analog)",
        "### Figures",
    ):
        assert heading in report
    for figure in ("digits-cnn-curves.png", "digits-cnn-autodrop-omega.png", "digits-cnn-lr-sweep.png"):
        assert f"](figures/{figure})" in report
        assert (out / "figures" / figure).stat().st_size > 10_000
    assert "| `autodrop` | 0.05 | 1 |" in report and "| 0.1 | " in report
    assert "Identical runs draw one line: `constant` = `autodrop`." in report  # no trigger in 3 epochs

    main(argv)  # the same runs again: all found in runs.jsonl, nothing retrained
    assert "(5 already in" in capsys.readouterr().out
    assert len((out / "runs.jsonl").read_text().splitlines()) == 5


def refused(argv, capsys):
    """Run the command, expect argparse's exit status 2, return the one-line error it printed."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(lines)
    return lines[-1]


def test_bench_without_its_data_is_a_clear_error(tmp_path, capsys):
    assert "needs --data-dir" in refused(["bench", "--suite", "cifar10", "--out", str(tmp_path)], capsys)
    assert "lacks" in refused(
        ["bench", "--suite", "cifar10", "--data-dir", str(tmp_path), "--out", str(tmp_path)], capsys
    )
    assert "--schedules" in refused(
        ["bench", "--suite", "tiny", "--schedules", "weekly", "--out", str(tmp_path)], capsys
    )


def test_bad_input_is_one_line_naming_the_option_and_exit_status_2(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    cases = [
        (["bench", "--out", str(a_file)], "--out '" + str(a_file) + "' is a file; give a folder"),
        (["bench", "--out", str(a_file / "below")], "--out '" + str(a_file / "below") + "' cannot be made"),
        (["bench", "--device", "meta"], "--device must be auto, cpu, cuda or cuda:N, got 'meta'"),
        (["bench", "--device", "mps"], "--device must be auto, cpu, cuda or cuda:N, got 'mps'"),
        (["bench", "--device", "xpu"], "--device must be auto, cpu, cuda or cuda:N, got 'xpu'"),
        (["bench", "--lrs", "0.1", "-1"], "--lrs must be a real number in (0, 1e+06], got -1"),
        (["bench", "--jobs", "0"], "--jobs must be an int >= 1, got 0"),
        (["nqm", "--iterations", "0"], "--iterations must be an int >= 10, got 0"),
        (["nqm", "--autodrop-iterations", "3"], "--autodrop-iterations must be an int >= 10, got 3"),
        (["nqm", "--momentum", "nan"], "--momentum must be a real number in [0, 1), got nan"),
        (["nqm", "--out", str(a_file)], "is a file; give a folder"),
        (["demo", "--lr", "-1"], "--lr must be a real number in (0, 1e+06], got -1"),
        (["demo", "--samples", "0"], "--samples must be an int >= 10, got 0"),
        (["demo", "--epochs", "x"], "--epochs must be an int >= 1, got 'x'"),
        (["calibrate", "--replications", "0"], "--replications must be an int >= 1, got 0"),
        (["calibrate", "--sigmas", "1", "-2"], "--sigmas must be a real number in [0, inf), got -2"),
    ]
    if os.geteuid() != 0:  # root writes anywhere
        cases.append((["demo", "--out", str(locked)], "is not writable"))
    for argv, message in cases:
        assert message in refused(argv, capsys), argv


@pytest.mark.filterwarnings("ignore:Data has no positive values")  # the LR plot of a run at lr 0
def test_demo_prints_a_skipped_interval_without_an_omega(tmp_path, capsys, monkeypatch):
    from autodrop import scheduler

    original = scheduler.AutoDrop.__init__

    def faulty(self, optimizer, **kwargs):  # every interval is skipped: nothing moves at lr 0
        for group in optimizer.param_groups:
            group["lr"] = 0.0
        original(self, optimizer, **kwargs)

    monkeypatch.setattr(scheduler.AutoDrop, "__init__", faulty)
    with pytest.warns(UserWarning, match="did not move"):
        main(["demo", "--out", str(tmp_path), "--epochs", "3", "--samples", "200", "--delay", "1"])
    assert "skipped   omega      - deg" in capsys.readouterr().out


def test_calibrate_prints_every_detector_on_every_series(capsys):
    main(["calibrate", "--replications", "3", "--length", "40", "--sigmas", "1"])
    printed = capsys.readouterr().out
    from autodrop.apps.bench.calibrate import CANDIDATES

    for name in CANDIDATES:
        assert printed.count(name) == 7  # 3 saturating shapes, 3 linear rises, the NQM
    assert "linear 0.2 deg/interval sigma 1" in printed and "nqm" in printed and "Targets for the default" in printed


def test_lrs_and_seeds_beyond_what_works_are_refused_in_one_line(capsys):
    seed = f"--seed must be an int in [0, {MAX_SEED}], got {MAX_SEED + 1}"
    cases = [
        (["demo", "--lr", "1e308"], "--lr must be a real number in (0, 1e+06], got 1e308"),
        (["bench", "--lrs", "0.1", "1e308"], "--lrs must be a real number in (0, 1e+06], got 1e308"),
        (["demo", "--seed", str(MAX_SEED + 1)], seed),
        (["nqm", "--seed", str(MAX_SEED + 1)], seed),
        (["calibrate", "--seed", str(MAX_SEED + 1)], seed),
        (["calibrate", "--seed", "-1"], f"--seed must be an int in [0, {MAX_SEED}], got -1"),
    ]
    for argv, message in cases:
        assert message in refused(argv, capsys), argv


def test_the_cli_bounds_are_what_torch_takes():
    torch.Generator().manual_seed(MAX_SEED)
    with pytest.raises((ValueError, RuntimeError, OverflowError)):
        torch.Generator().manual_seed(MAX_SEED + 1)

    def step(make, lr):
        parameter = torch.nn.Parameter(torch.ones(3))
        parameter.grad = torch.ones(3)
        make([parameter], lr=lr).step()

    for make in (torch.optim.SGD, torch.optim.AdamW):
        step(make, MAX_LR)
    with pytest.raises(RuntimeError, match="overflow"):
        step(torch.optim.SGD, 1e308)
    with pytest.raises(RuntimeError, match="overflow"):  # AdamW's first step is 10 x lr
        step(torch.optim.AdamW, float(torch.finfo(torch.float32).max) / 2)


def test_device_is_parsed_once_by_the_librarys_check(tmp_path, capsys, monkeypatch):
    from autodrop.apps.cli_args import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "--device 'cuda' is not available on this machine" in refused(["bench", "--device", "cuda"], capsys)
    assert "--device must be auto, cpu, cuda or cuda:N, got 'toaster'" in refused(
        ["bench", "--device", "toaster"], capsys
    )
    assert resolve_device("--device", "auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("--device", "auto") == torch.device("cuda")
    assert resolve_device("--device", "cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match="--device 'cuda:1' does not exist: this machine has 1 cuda device"):
        resolve_device("--device", "cuda:1")


def test_a_runs_jsonl_of_the_wrong_shape_is_one_line_naming_file_and_line_and_nothing_is_overwritten(tmp_path, capsys):
    from autodrop.apps.bench.runner import SUITES, plan_runs

    out = tmp_path / "bench"
    argv = ["bench", "--suite", "tiny", "--epochs", "1", "--seeds", "1", "--device", "cpu", "--out", str(out)]
    main(argv + ["--schedules", "constant"])
    capsys.readouterr()
    written = {name: (out / name).read_bytes() for name in ("runs.jsonl", "summary.csv", "report.md")}
    good = written["runs.jsonl"].decode().strip()
    record = json.loads(good)
    planned = plan_runs(SUITES["tiny"], schedules=["step"], seeds=1, epochs=1)[0].key
    cases = [
        (json.dumps({k: v for k, v in record.items() if k != "key"}), "it lacks 'key'"),
        ("[1, 2]", "it is an array, not an object"),
        ("null", "it is null, not an object"),
        ('"key"', "it is a string, not an object"),
        (json.dumps({"key": planned, "schedule": "step"}), "it lacks 'task', 'optimizer', 'lr'"),
        (
            json.dumps({**record, "test_error": "low"}),
            "'test_error' must be a list of 1 to 1 values, one per epoch run",
        ),
        (json.dumps({**record, "lr": "0.05"}), "'lr' must be a number, got \"0.05\""),
        (json.dumps({**record, "key": planned}), f"its key '{planned}' is not that of its run"),
        (json.dumps({**record, "drop_epochs": [2]}), "epoch 2 is after the 1 epochs run"),
        ("[" * 100_000 + "]" * 100_000, "is nested too deeply"),
    ]
    for line, problem in cases:
        (out / "runs.jsonl").write_text(f"{good}\n{line}\n{good}\n")
        message = refused(argv + ["--schedules", "constant", "step"], capsys)
        assert f"{out / 'runs.jsonl'} line 2 " in message and problem in message, line[:80]
        assert (out / "runs.jsonl").read_text() == f"{good}\n{line}\n{good}\n"
        for name in ("summary.csv", "report.md"):
            assert (out / name).read_bytes() == written[name]

    folder = tmp_path / "folder"
    (folder / "runs.jsonl").mkdir(parents=True)
    message = refused(argv[:-1] + [str(folder)], capsys)
    assert f"{folder / 'runs.jsonl'} is a folder, not a runs.jsonl file" in message
    assert not (folder / "report.md").exists()
