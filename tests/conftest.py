import pytest
import torch

import autodrop.geometry as geometry


def pytest_configure(config):
    torch.set_num_threads(1)


@pytest.fixture(params=["out of place", "in place"])
def stepping(request, monkeypatch):
    """Run a test with both ways a bucket takes its step (``autodrop.geometry._Bucket``).

    A bucket that fits in one chunk steps out of place, as the tests' small models do by
    default; "in place" makes the chunks small (64 elements) so that they are cut into
    runs of whole tensors and pieces of larger ones.
    """
    if request.param == "in place":
        monkeypatch.setattr(geometry, "CPU_REDUCTION_CHUNK", 64)
    return request.param
