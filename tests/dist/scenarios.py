"""Models, data and settings shared by the distributed worker and the single-process references."""

from __future__ import annotations

import torch

from autodrop import AutoDrop, TrendTest

WORLD_SIZE = 2
DDP_EPOCHS = 10
FSDP_EPOCHS = 10
GLOBAL_BATCH = 32


def autodrop(optimizer: torch.optim.Optimizer, **kwargs) -> AutoDrop:
    return AutoDrop(optimizer, detector="paper", threshold=5.0, max_threshold=20.0, delay=3, window=2, **kwargs)


def autodrop_trend(optimizer: torch.optim.Optimizer) -> AutoDrop:
    """The default detector, scaled to a 10-epoch run so that it triggers and drops."""
    detector = TrendTest(window=4, min_intervals=3, patience=1, tolerance=10.0, horizon=5, max_wait=4)
    return AutoDrop(optimizer, detector=detector, delay=2)


def regression_data(seed: int, features: int, outputs: int, rows: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, features, generator=generator)
    w = torch.randn(features, outputs, generator=generator)
    y = torch.tanh(x @ w) + 0.3 * torch.randn(rows, outputs, generator=generator)
    return x, y


def global_batches(epoch: int, rows: int) -> list[torch.Tensor]:
    """Row indices of each global batch of an epoch; depends only on the epoch."""
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(100 + epoch))
    return list(order.split(GLOBAL_BATCH))


def rank_rows(batch: torch.Tensor, rank: int) -> torch.Tensor:
    """The rows of a global batch that ``rank`` trains on (equal halves)."""
    return batch.chunk(WORLD_SIZE)[rank]


def ddp_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def ddp_data() -> tuple[torch.Tensor, torch.Tensor]:
    return regression_data(1, 10, 3)


def fsdp_model(seed: int = 2) -> torch.nn.Module:
    # Odd sizes shard unevenly over 2 ranks; Linear(3, 1) leaves rank 1 empty shards.
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1)
    )


def fsdp_data() -> tuple[torch.Tensor, torch.Tensor]:
    return regression_data(3, 5, 1)


def sgd(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.02, momentum=0.9)


def probe_steps(rank: int, count: int = 5) -> list[torch.Tensor]:
    """Rank-dependent random steps for a 12-element tensor, to show decisions do not depend on agreement."""
    generator = torch.Generator().manual_seed(50 + rank)
    return [torch.randn(12, generator=generator, dtype=torch.float64).float() for _ in range(count)]
