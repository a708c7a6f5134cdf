import subprocess
import sys
from pathlib import Path

import resume_worker
import torch

WORKER = Path(__file__).with_name("resume_worker.py")
EPOCHS = 30


def run_worker(*args: str) -> None:
    subprocess.run([sys.executable, str(WORKER), *args], check=True, timeout=300)


def test_interrupted_run_resumed_in_new_process_is_bit_identical(tmp_path):
    full, first, resumed, checkpoint = (tmp_path / n for n in ("full.pt", "first.pt", "resumed.pt", "ckpt.pt"))
    resume_worker.main([str(full), "--epochs", str(EPOCHS)])  # the reference and the first part run here
    reference = torch.load(full, weights_only=True)
    drops = [r["interval"] for r in reference["history"] if r["event"] == "drop"]
    triggers = [r["interval"] for r in reference["history"] if r["event"] == "trigger"]
    assert len(drops) >= 2, "the run must drop to exercise the resume"
    stop = triggers[-1] + 1  # interrupt inside a delay window: the averaging sum must survive
    assert stop < drops[-1]

    resume_worker.main([str(first), "--epochs", str(EPOCHS), "--stop-after", str(stop), str(checkpoint)])
    assert torch.load(first, weights_only=True)["pending"]
    run_worker(str(resumed), "--epochs", str(EPOCHS), "--resume", str(checkpoint))  # in a new process
    result = torch.load(resumed, weights_only=True)

    assert result["lrs"] == reference["lrs"]
    assert result["history"] == reference["history"]
    for a, b in zip(result["params"], reference["params"], strict=True):
        assert torch.equal(a, b)
