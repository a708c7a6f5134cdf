"""A checkpoint saved under 2 ranks inside a delay window continues identically."""

import pytest
import torch


@pytest.mark.parametrize("route", ["dcp", "per_rank"])
def test_resumed_run_continues_identically(ranks, route):
    for result in ranks:
        resume = result["resume"]
        assert resume["pending_at_save"], "the checkpoint must fall inside a delay window"
        reference = result["fsdp"]
        assert any(r["event"] == "drop" and r["interval"] > resume["stop"] for r in reference["history"])
        resumed = resume["resumed"][route]
        assert resumed["history"] == reference["history"]
        for a, b in zip(resumed["params"], reference["params"], strict=True):
            assert torch.equal(a, b)
