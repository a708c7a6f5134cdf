"""Shard(0), Replicate() and plain tensors in one trajectory: each counted exactly once."""

import numpy as np

from autodrop.velocity import angle_degrees

# Which local tensor rank 1 counts: shards always; a tensor replicated along a mesh
# dimension only on coordinate 0 of it (rank 0), plain tensors only on group rank 0.
RANK1_COUNTS = {
    "shard": True,
    "replicate": False,
    "plain": False,
    "replicate_shard_2d": False,
    "shard_replicate_2d": True,
}


def omegas(trajectory, weights):
    """omega of the concatenated full tensors, each tensor's inner products scaled by its weight."""
    points = [
        np.concatenate([np.sqrt(weights[name]) * snap[name].double().numpy().ravel() for name in weights])
        for snap in trajectory
    ]
    steps = np.diff(np.stack(points), axis=0)
    return [angle_degrees(float(u @ v), float(u @ u), float(v @ v), eps=1e-8) for u, v in zip(steps[1:], steps)]


def test_counting_rule_per_placement(ranks):
    assert ranks[0]["meshes"]["counted"] == dict.fromkeys(RANK1_COUNTS, True)
    assert ranks[1]["meshes"]["counted"] == RANK1_COUNTS


def test_omega_equals_full_vector_float64(ranks):
    trajectory = ranks[0]["meshes"]["trajectory"]
    once = dict.fromkeys(RANK1_COUNTS, 1.0)
    expected = omegas(trajectory, once)
    # Counting the replicated tensors on both ranks would be visible at this tolerance.
    twice = {name: 1.0 if counted else 2.0 for name, counted in RANK1_COUNTS.items()}
    assert max(abs(a - b) for a, b in zip(omegas(trajectory, twice), expected)) > 1e-2
    for result in ranks:
        assert result["meshes"]["omegas"][0] is None
        np.testing.assert_allclose(result["meshes"]["omegas"][1:], expected, atol=1e-4)


def test_averaging_writes_back_into_every_placement(ranks):
    trajectory = ranks[0]["meshes"]["trajectory"]
    for result in ranks:
        for name, value in result["meshes"]["averaged"].items():
            expected = (trajectory[4][name].double() + 2 * trajectory[5][name].double()) / 3
            np.testing.assert_allclose(value.double().numpy(), expected.numpy(), rtol=1e-6, atol=1e-6)


def test_refuses_partial_parameters_meshes_outside_the_group_and_non_groups(ranks):
    for result in ranks:
        messages = result["errors"]
        assert messages["partial"].startswith("ValueError: parameter 0 has placements (Partial(")
        assert "device mesh of ranks [0, 1]" in messages["mesh_outside_group"]
        assert "pass process_group=" in messages["mesh_outside_group"]
        assert messages["not_a_group"] == (
            "TypeError: process_group must be a torch.distributed.ProcessGroup or None, got 'world'"
        )
