"""Single-process behaviour of autodrop.distributed (the 2-rank runs live in tests/dist/)."""

import pytest
import torch

from autodrop import AngularVelocity, AutoDrop
from autodrop.distributed import ReplicaCounting, local_tensor


def test_without_a_process_group_every_tensor_counts_and_nothing_is_reduced():
    counting = ReplicaCounting([torch.zeros(3), torch.zeros(2)])
    assert counting.group is None and counting.counted == [True, True]
    totals = torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert counting.all_reduce(totals) is totals


def test_local_tensor_of_a_plain_tensor_shares_its_storage():
    param = torch.nn.Parameter(torch.ones(4))
    local = local_tensor(param)
    assert not local.requires_grad and local.data_ptr() == param.data_ptr()


@pytest.mark.parametrize(
    "build",
    [
        lambda p, group: AngularVelocity(p, process_group=group),
        lambda p, group: AutoDrop(torch.optim.SGD(p, lr=0.1), process_group=group),
    ],
)
def test_process_group_without_torch_distributed_is_rejected(build):
    with pytest.raises(ValueError, match="process_group=.*not initialized"):
        build([torch.nn.Parameter(torch.zeros(2))], "group")
