"""A NaN on one rank's shard: every rank skips the interval together, and nothing is corrupted."""

import numpy as np
import torch

from trajectories import angle64


def test_a_nan_on_one_rank_is_skipped_by_every_rank_and_the_next_step_resumes(ranks):
    histories = [result["faults"]["history"] for result in ranks]
    assert histories[0] == histories[1]
    assert [(r["event"], r["reason"]) for r in histories[0]][2] == ("skipped", "nonfinite")
    assert all(result["faults"]["unchanged"] for result in ranks)
    # The step after the fault is measured from the last finite snapshot against the last step.
    generator = torch.Generator().manual_seed(11)
    steps = [torch.randn(6, generator=generator, dtype=torch.float64).numpy() for _ in range(4)]
    assert histories[0][3]["omega"] is not None
    assert abs(histories[0][3]["omega"] - angle64(steps[2], steps[1])) < 1e-9
    assert abs(histories[0][4]["omega"] - angle64(steps[3], steps[2])) < 1e-9
    assert np.isfinite([r["threshold"] for r in histories[0]]).all()
