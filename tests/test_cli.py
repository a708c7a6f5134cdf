from autodrop.cli import main


def test_demo_runs_end_to_end_and_writes_the_figure(tmp_path, capsys):
    main(["demo", "--out", str(tmp_path), "--epochs", "12", "--samples", "1000", "--delay", "2",
          "--threshold", "1.0", "--window", "1"])
    printed = capsys.readouterr().out
    assert "drops; final lr" in printed
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    rows = (tmp_path / "history.csv").read_text().splitlines()
    assert rows[0].startswith("interval,omega,delta,threshold,event,lr") and len(rows) == 1 + 12
