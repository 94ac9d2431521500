"""Data loading: the numpy-only unpickler, checksums, IDX files, the data sets and binarisation."""
import gzip
import hashlib
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from drawnet import DrawnetError
from drawnet import data
from drawnet.data import binarize, load_dataset, parse_mnist_pickle, read_idx, restricted_loads


class _RunsShell:
    """A pickle payload that would run a shell command when unpickled by pickle.loads."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _CallsEval:
    def __reduce__(self):
        return (eval, ("1 + 1",))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_restricted_loads_refuses_os_system_and_never_runs_it(tmp_path, protocol):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_RunsShell(f"touch {marker}"), protocol=protocol)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        restricted_loads(payload)
    assert not marker.exists()


def test_restricted_loads_refuses_builtins_and_nested_payloads(tmp_path):
    with pytest.raises(pickle.UnpicklingError):
        restricted_loads(pickle.dumps(_CallsEval()))
    marker = tmp_path / "pwned"
    nested = pickle.dumps((np.zeros(3), [_RunsShell(f"touch {marker}")]))
    with pytest.raises(pickle.UnpicklingError):
        restricted_loads(nested)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [3, 4])
def test_restricted_loads_accepts_numpy_arrays(protocol):
    arrays = ((np.arange(12, dtype=np.float32).reshape(3, 4), np.array([1, 2, 3], dtype=np.int64)),
              (np.zeros((2, 2), dtype=np.uint8),))
    loaded = restricted_loads(pickle.dumps(arrays, protocol=protocol))
    np.testing.assert_array_equal(loaded[0][0], arrays[0][0])
    assert loaded[0][0].dtype == np.float32
    np.testing.assert_array_equal(loaded[0][1], arrays[0][1])
    np.testing.assert_array_equal(loaded[1][0], arrays[1][0])


def _fake_mnist_gz(n=(6, 3, 2)):
    gen = np.random.default_rng(0)
    splits = tuple((gen.random((k, 784), dtype=np.float32), gen.integers(0, 10, k).astype(np.int64)) for k in n)
    return gzip.compress(pickle.dumps(splits, protocol=4)), splits


def test_parse_mnist_pickle_rejects_wrong_checksum():
    raw, _ = _fake_mnist_gz()
    with pytest.raises(DrawnetError, match="checksum"):
        parse_mnist_pickle(raw)
    with pytest.raises(DrawnetError, match="checksum"):
        parse_mnist_pickle(b"")


def test_parse_mnist_pickle_reads_the_three_splits(monkeypatch):
    raw, splits = _fake_mnist_gz()
    monkeypatch.setattr(data, "MNIST_SHA256", hashlib.sha256(raw).hexdigest())
    arrays = parse_mnist_pickle(raw)
    assert set(arrays) == {f"{s}_{p}" for s in ("train", "valid", "test") for p in ("x", "y")}
    for (x, y), s in zip(splits, ("train", "valid", "test")):
        np.testing.assert_array_equal(arrays[f"{s}_x"], x)
        np.testing.assert_array_equal(arrays[f"{s}_y"], y)


def test_parse_mnist_pickle_with_matching_checksum_still_refuses_code(monkeypatch, tmp_path):
    marker = tmp_path / "pwned"
    raw = gzip.compress(pickle.dumps(_RunsShell(f"touch {marker}")))
    monkeypatch.setattr(data, "MNIST_SHA256", hashlib.sha256(raw).hexdigest())
    with pytest.raises(DrawnetError, match="unreadable"):
        parse_mnist_pickle(raw)
    assert not marker.exists()


def test_mnist_arrays_builds_and_reuses_the_npz_cache(monkeypatch, tmp_path):
    raw, splits = _fake_mnist_gz()
    monkeypatch.setattr(data, "MNIST_SHA256", hashlib.sha256(raw).hexdigest())
    (tmp_path / "mnist.pkl.gz").write_bytes(raw)
    arrays = data.mnist_arrays(tmp_path)
    assert (tmp_path / "mnist.npz").is_file()
    np.testing.assert_array_equal(arrays["valid_x"], splits[1][0])
    (tmp_path / "mnist.pkl.gz").unlink()  # the cache alone is enough now
    again = data.mnist_arrays(tmp_path)
    np.testing.assert_array_equal(again["test_y"], splits[2][1])
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    splits_t = load_dataset("mnist", tmp_path)
    assert [len(s) for s in splits_t] == [6, 3, 2] and splits_t.train.shape[1:] == (1, 28, 28)


def test_corrupted_npz_cache_is_a_drawnet_error(tmp_path):
    (tmp_path / "mnist.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(DrawnetError, match="mnist.npz"):
        data.mnist_arrays(tmp_path)


def test_cache_dir_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DRAWNET_CACHE", str(tmp_path / "c"))
    assert data.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("DRAWNET_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_dir() == tmp_path / "xdg" / "drawnet"


def _idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("shape", [(7,), (3, 4, 5)])
def test_read_idx(tmp_path, compress, shape):
    array = np.random.default_rng(1).integers(0, 256, shape).astype(np.uint8)
    raw = _idx_bytes(array)
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    path.write_bytes(gzip.compress(raw) if compress else raw)
    out = read_idx(path)
    assert out.shape == shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize("damage", ["truncated data", "truncated header", "truncated gzip", "extra bytes",
                                    "not unsigned byte", "empty", "missing"])
def test_read_idx_rejects_broken_files(tmp_path, damage):
    raw = _idx_bytes(np.arange(60, dtype=np.uint8).reshape(3, 4, 5))
    path = tmp_path / "broken.idx"
    if damage == "truncated data":
        path.write_bytes(raw[:-7])
    elif damage == "truncated header":
        path.write_bytes(raw[:10])
    elif damage == "truncated gzip":
        gz = gzip.compress(raw)
        path.write_bytes(gz[: len(gz) // 2])
    elif damage == "extra bytes":
        path.write_bytes(raw + b"\x00\x01")
    elif damage == "not unsigned byte":
        path.write_bytes(raw[:2] + b"\x0d" + raw[3:])
    elif damage == "empty":
        path.write_bytes(b"")
    with pytest.raises(DrawnetError, match="broken.idx"):
        read_idx(path)


def test_load_mnist_splits(mnist):
    assert [len(s) for s in mnist] == [50000, 10000, 10000]
    for split in mnist:
        assert split.shape[1:] == (1, 28, 28)
        assert split.dtype == torch.float32
        assert split.min() >= 0 and split.max() <= 1
    # Grey levels, not pre-binarised; and the splits are different images.
    assert ((mnist.test > 0) & (mnist.test < 1)).any()
    assert not torch.equal(mnist.train[:100], mnist.test[:100])
    assert 0.1 < mnist.train[:1000].mean().item() < 0.2  # MNIST's mean intensity is ~0.13


@pytest.mark.skipif(not data.FASHION_DIR.is_dir(), reason="Fashion-MNIST (dataset-fashion-mnist) not installed")
def test_load_fashion_mnist():
    splits = load_dataset("fashion-mnist")
    assert [len(s) for s in splits] == [50000, 10000, 10000]
    for split in splits:
        assert split.shape[1:] == (1, 28, 28) and split.min() >= 0 and split.max() <= 1
    labels = data.load_labels("fashion-mnist")
    assert [len(s) for s in labels] == [50000, 10000, 10000]
    assert set(labels.test.unique().tolist()) == set(range(10))


def test_missing_fashion_mnist_dir_is_a_drawnet_error(tmp_path):
    with pytest.raises(DrawnetError, match="Fashion-MNIST not found"):
        load_dataset("fashion-mnist", tmp_path)


def test_unknown_dataset():
    with pytest.raises(DrawnetError, match="unknown data set"):
        load_dataset("imagenet")


def test_binarize_is_deterministic_and_binary():
    x = torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    a = binarize(x, seed=3)
    b = binarize(x, seed=3)
    assert torch.equal(a, b)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert a.shape == x.shape and a.dtype == x.dtype
    assert not torch.equal(a, binarize(x, seed=4))
    # Each pixel is 1 with probability x: the mean matches, and 0 / 1 pixels stay put.
    assert abs(a.mean().item() - x.mean().item()) < 0.02
    edges = torch.tensor([0.0, 1.0]).repeat(50)
    assert torch.equal(binarize(edges, seed=0), edges)
    # Independent of the global RNG state.
    torch.manual_seed(99)
    c = binarize(x, seed=3)
    assert torch.equal(a, c)
