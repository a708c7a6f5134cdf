import json

import pytest

from autodrop.apps.cli import main
from autodrop.nqm import PAPER_LEARNING_RATES, NoisyQuadratic


def test_nqm_command_writes_the_table_and_both_figures(tmp_path, capsys):
    main(["nqm", "--out", str(tmp_path), "--iterations", "2000", "--autodrop-iterations", "1000"])
    printed = capsys.readouterr().out
    assert "AutoDrop:" in printed and "nqm_autodrop.png" in printed
    summary = json.loads((tmp_path / "nqm.json").read_text())
    problem = NoisyQuadratic.paper()
    assert [row["lr"] for row in summary["fixed_lr"]] == list(PAPER_LEARNING_RATES)
    for row in summary["fixed_lr"]:
        assert row["predicted_angle"] == pytest.approx(problem.predicted_angle(row["lr"]), abs=1e-12)
        assert row["angle_difference"] == pytest.approx(row["measured_angle"] - row["predicted_angle"], abs=1e-12)
        assert 85 < row["measured_angle"] < 125  # the accuracy itself is tested in test_nqm.py
    autodrop = summary["autodrop"]
    assert (autodrop["lr"], autodrop["factor"], autodrop["min_lr"], autodrop["threshold"], autodrop["window"]) == (
        0.06,
        0.5,
        0.001,
        0.01,
        20,
    )
    assert len(autodrop["drops"]) >= 2
    assert autodrop["improvement"] == pytest.approx(autodrop["fixed_lr_stationary_loss"] / autodrop["final_loss"])
    for name in ("nqm_fixed_lr.png", "nqm_autodrop.png"):
        assert (tmp_path / name).stat().st_size > 20_000


def test_without_matplotlib_the_json_is_written_and_one_line_says_what_the_figures_need(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    main(["nqm", "--out", str(tmp_path), "--iterations", "200", "--autodrop-iterations", "100"])
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == f"wrote {tmp_path / 'nqm.json'} (the figures need matplotlib: pip install 'autodrop[plots]')"
    assert json.loads((tmp_path / "nqm.json").read_text())["fixed_lr"]
    assert not list(tmp_path.glob("*.png"))


def test_the_nqm_command_does_not_warn_about_stepping_after_every_optimizer_step(tmp_path, recwarn):
    main(["nqm", "--out", str(tmp_path), "--iterations", "20", "--autodrop-iterations", "40"])
    assert not [w for w in recwarn if "followed every optimizer step" in str(w.message)]
