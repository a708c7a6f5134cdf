import pytest
import torch

import autodrop.trajectory as trajectory


def pytest_configure(config):
    torch.set_num_threads(1)


@pytest.fixture(params=["one chunk", "small chunks"])
def stepping(request, monkeypatch):
    """Run a test with the tests' small models in one chunk, and cut into chunks of 64 elements
    (runs of whole tensors gathered, and pieces of larger ones; ``autodrop.trajectory._Bucket``)."""
    if request.param == "small chunks":
        monkeypatch.setattr(trajectory, "CPU_REDUCTION_CHUNK", 64)
    return request.param
