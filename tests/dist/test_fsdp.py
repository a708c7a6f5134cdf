"""FSDP2 (fully_shard, DTensor Shard(0) parameters): omega, averaging and memory per rank."""

import torch


def test_omega_on_every_rank_equals_single_process_on_full_parameters(ranks):
    for result in ranks:
        omegas = result["fsdp"]["omegas"]
        assert omegas[0] == (None, None)
        for sharded, reference in omegas[1:]:
            assert abs(sharded - reference) <= 1e-4
        assert result["fsdp"]["events"] == result["fsdp"]["reference_events"]
    assert ranks[0]["fsdp"]["omegas"] == ranks[1]["fsdp"]["omegas"]


def test_averaged_parameters_after_a_drop_equal_single_process(ranks):
    for result in ranks:
        averaged = result["fsdp"]["averaged"]
        assert len(averaged) >= 1, "the run must drop to exercise averaging"
        for drop in averaged:
            for sharded, reference in zip(drop["sharded"], drop["reference"], strict=True):
                assert torch.equal(sharded, reference)
            # The model computes with the averaged shards, not with a stale copy.
            torch.testing.assert_close(drop["output"], drop["reference_output"])


def test_buffers_hold_only_the_local_shards(ranks):
    bytes_per_element = 4
    total = 0
    for result in ranks:
        fsdp = result["fsdp"]
        assert fsdp["buffer_bytes"] == 2 * bytes_per_element * fsdp["local_numel"]
        assert fsdp["window_bytes"] == bytes_per_element * fsdp["local_numel"]
        assert fsdp["buffer_bytes"] < fsdp["reference_buffer_bytes"]
        total += fsdp["buffer_bytes"]
    assert total == ranks[0]["fsdp"]["reference_buffer_bytes"] == 2 * bytes_per_element * ranks[0]["fsdp"]["numel"]
