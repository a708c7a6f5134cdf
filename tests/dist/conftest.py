import pytest
import torch

from world import run_world
from scenarios import WORLD_SIZE


@pytest.fixture(scope="session")
def ranks(tmp_path_factory):
    """What every rank of one 2-process gloo world recorded (all scenarios run in that one world)."""
    out_dir = tmp_path_factory.mktemp("world")
    run_world(out_dir, WORLD_SIZE)
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]
