"""The paper's other data sets: the two-digit and cluttered MNIST generators, the CIFAR-10 and SVHN loaders on
small files written in their exact formats, the photo patches, and a colour model trained and scored by the CLI."""
import hashlib
import io
import json
import math
import os
import pickle
import re
import struct
import zipfile
from functools import partial

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from drawnet import DrawnetError
from drawnet import data
from drawnet.cli import main
from drawnet.data import cluttered_mnist, load_dataset, load_labels, two_digit_mnist
from drawnet.train import TrainConfig, train

TINY_MODEL = ["--T", "2", "--enc-size", "16", "--dec-size", "16", "--z-size", "4"]


def _digits(m=12, seed=0):
    """m fake 'digits' [m, 784] with every pixel in [0.05, 1), and labels 0..m-1 naming each one."""
    x = np.random.default_rng(seed).uniform(0.05, 1, (m, 784)).astype(np.float32)
    return x, np.arange(m)


def _paste_reference(size, digits, positions):
    """The canvas the slow, obvious way: add each digit at its top-left (row, col), clip to 1."""
    canvas = np.zeros((size, size), np.float32)
    for digit, (r, c) in zip(digits, positions):
        canvas[r : r + 28, c : c + 28] += digit.reshape(28, 28)
    return np.minimum(canvas, 1)


# --- two-digit MNIST ---

def test_two_digit_mnist_pastes_two_digits_wholly_inside():
    x, y = _digits()
    out = two_digit_mnist(x, y, n=40, seed=3)
    assert out.images.shape == (40, 1, 60, 60) and out.images.dtype == np.float32
    assert out.labels.shape == (40, 2) and out.positions.shape == (40, 2, 2)
    assert out.images.min() >= 0 and out.images.max() == 1  # overlaps of values up to 1 are clipped
    assert out.positions.min() >= 0 and out.positions.max() <= 60 - 28
    assert len(np.unique(out.positions[:, :, 0])) > 10  # positions really vary
    for image, labels, positions in zip(out.images, out.labels, out.positions):
        np.testing.assert_array_equal(image[0], _paste_reference(60, x[labels], positions))


def test_two_digit_mnist_is_determined_by_the_seed():
    x, y = _digits()
    a, b, c = (two_digit_mnist(x, y, n=10, seed=s) for s in (5, 5, 6))
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)


def _fake_mnist_npz(path, per_split=(6, 4, 4)):
    """An mnist.npz whose splits hold different labels: train 0..2, valid 3..5, test 6..8."""
    arrays = {}
    for i, (split, n) in enumerate(zip(("train", "valid", "test"), per_split)):
        x, _ = _digits(n, seed=i)
        arrays[f"{split}_x"], arrays[f"{split}_y"] = x, np.arange(n) % 3 + 3 * i
    np.savez(path / "mnist.npz", **arrays)


def test_two_digit_mnist_arrays_are_generated_once_and_cached(tmp_path, monkeypatch):
    _fake_mnist_npz(tmp_path)
    arrays = data.two_digit_mnist_arrays(tmp_path, seed=1, sizes=(8, 5, 3))
    cache = tmp_path / "two-digit-mnist-seed1-8-5-3.npz"
    assert cache.is_file() and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    for i, (split, n) in enumerate(zip(("train", "valid", "test"), (8, 5, 3))):
        assert arrays[f"{split}_x"].shape == (n, 1, 60, 60)
        assert set(arrays[f"{split}_y"].ravel()) <= {3 * i, 3 * i + 1, 3 * i + 2}  # digits of its own split
    (tmp_path / "mnist.npz").unlink()  # the cache alone is enough now
    again = data.two_digit_mnist_arrays(tmp_path, seed=1, sizes=(8, 5, 3))
    np.testing.assert_array_equal(again["test_x"], arrays["test_x"])

    monkeypatch.setitem(data.DATASETS, "two-digit-mnist", partial(data.two_digit_mnist_arrays, seed=1, sizes=(8, 5, 3)))
    splits = load_dataset("two-digit-mnist", tmp_path, shape=(1, 60, 60))
    assert [tuple(s.shape) for s in splits] == [(8, 1, 60, 60), (5, 1, 60, 60), (3, 1, 60, 60)]
    assert splits.train.dtype == torch.float32 and 0 <= splits.train.min() and splits.train.max() <= 1
    torch.testing.assert_close(splits.valid, torch.from_numpy(arrays["valid_x"]).float())  # float16 -> float32


def test_two_digit_mnist_keeps_mnist_grey_levels_exactly():
    """MNIST's levels are k/256: the float16 cache must hold every clipped sum of two of them exactly."""
    levels = np.arange(257, dtype=np.float32) / 256
    sums = np.minimum(levels[:, None] + levels[None, :], 1)
    np.testing.assert_array_equal(sums.astype(np.float16).astype(np.float32), sums)


# --- cluttered MNIST ---

def test_cluttered_mnist_has_its_digit_inside_and_clutter_around_it():
    x, y = _digits(m=20)
    out = cluttered_mnist(x, y % 10, n=30, seed=0)
    assert out.images.shape == (30, 1, 100, 100) and out.images.dtype == np.float32
    assert out.images.min() >= 0 and out.images.max() <= 1
    assert out.positions.shape == (30, 2) and out.positions.min() >= 0 and out.positions.max() <= 100 - 28
    bare = cluttered_mnist(x, y % 10, n=30, seed=0, clutter=0)  # the same draws of digit and position
    np.testing.assert_array_equal(bare.positions, out.positions)
    np.testing.assert_array_equal(bare.labels, out.labels)
    for image, clean, (r, c) in zip(out.images[:, 0], bare.images[:, 0], out.positions):
        assert (image[r : r + 28, c : c + 28] >= clean[r : r + 28, c : c + 28]).all()  # clutter only adds
        assert image.sum() > clean.sum()  # and there is clutter
    # Without clutter the canvas is the digit alone: its label names which one (labels here are 0..19 % 10).
    for image, label, (r, c) in zip(bare.images[:, 0], bare.labels, bare.positions):
        digit = image[r : r + 28, c : c + 28].ravel()
        assert image.sum() == pytest.approx(digit.sum())
        assert any(np.array_equal(digit, x[i]) for i in np.flatnonzero(y % 10 == label))


def test_cluttered_mnist_pieces_are_piece_sized_and_seeded():
    x = np.zeros((5, 784), np.float32)
    x[1:] = 1  # digit 0 is blank: its canvases show the clutter alone, cut from the all-ones digits 1..4
    y = np.arange(5)
    out = cluttered_mnist(x, y, n=200, seed=1, size=40, clutter=1, piece=3)
    blank = out.images[out.labels == 0, 0]
    assert len(blank) > 0 and all(image.sum() == 9 for image in blank)  # one 3x3 piece, wholly inside
    again = cluttered_mnist(x, y, n=200, seed=1, size=40, clutter=1, piece=3)
    np.testing.assert_array_equal(out.images, again.images)
    assert not np.array_equal(out.images, cluttered_mnist(x, y, n=200, seed=2, size=40, clutter=1, piece=3).images)


@pytest.mark.parametrize("kwargs", [dict(size=20), dict(piece=29), dict(piece=0), dict(clutter=-1)])
def test_cluttered_mnist_rejects_bad_sizes(kwargs):
    x, y = _digits()
    with pytest.raises(DrawnetError, match="cluttered MNIST"):
        cluttered_mnist(x, y, n=2, seed=0, **kwargs)


# --- CIFAR-10 ---

class _Python2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` (SHORT_BINSTRING / BINSTRING), as cPickle wrote CIFAR-10's batches."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def _python2_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def _write_cifar(root, n=6, n_test=4):
    """cifar-10-batches-py/ with data_batch_1..5 and test_batch of n (n_test) random images each."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name, k in [(f"data_batch_{i}", n) for i in range(1, 6)] + [("test_batch", n_test)]:
        batch = {b"batch_label": b"training batch", b"labels": [int(v) for v in rng.integers(0, 10, k)],
                 b"data": rng.integers(0, 256, (k, 3072)).astype(np.uint8),
                 b"filenames": [f"img_{j}.png".encode() for j in range(k)]}
        (folder / name).write_bytes(_python2_pickle(batch))
        batches[name] = batch
    return folder, batches


def test_cifar_test_files_are_in_the_python2_format():
    """The fixture writes what cPickle wrote: no bytes reconstructor, only numpy's globals."""
    import pickletools

    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(_python2_pickle({b"data": np.zeros((2, 3), np.uint8)}))]
    globals_ = {arg for name, arg in ops if name == "GLOBAL"}
    assert globals_ and all(g.startswith("numpy") for g in globals_), globals_
    assert ("SHORT_BINSTRING", "data") in [(n, a.decode() if isinstance(a, bytes) else a) for n, a in ops]


@pytest.mark.parametrize("given", ["folder", "parent"])
def test_cifar10_loader_reads_the_python_version(tmp_path, given):
    folder, batches = _write_cifar(tmp_path)
    splits = load_dataset("cifar10", folder if given == "folder" else tmp_path, shape=(3, 32, 32))
    assert [len(s) for s in splits] == [27, 3, 4]  # 30 training images: the last 10% (3) validate
    assert all(s.dtype == torch.float32 for s in splits)
    test_data = batches["test_batch"][b"data"]
    # Channel-major R, G, B planes, each row-major, and 8-bit levels k as k/255.
    assert splits.test[1, 2, 5, 7].item() == pytest.approx(test_data[1, 2 * 1024 + 5 * 32 + 7] / 255)
    torch.testing.assert_close(splits.test * 255, torch.from_numpy(test_data).float().reshape(-1, 3, 32, 32))
    last_train = torch.from_numpy(batches["data_batch_5"][b"data"][-1]).float().reshape(3, 32, 32)
    torch.testing.assert_close(splits.valid[-1] * 255, last_train)
    labels = load_labels("cifar10", tmp_path)
    assert labels.train[:6].tolist() == batches["data_batch_1"][b"labels"]
    assert labels.test.tolist() == batches["test_batch"][b"labels"]


def test_cifar10_loader_reads_a_python3_copy_too(tmp_path):
    """A batch re-pickled by Python 3 (protocol 4, bytes keys) loads the same."""
    folder, batches = _write_cifar(tmp_path)
    (folder / "test_batch").write_bytes(pickle.dumps(batches["test_batch"], protocol=4))
    x, y = data.read_cifar_batch(folder / "test_batch")
    np.testing.assert_array_equal(x.reshape(-1, 3072), batches["test_batch"][b"data"])
    assert y.tolist() == batches["test_batch"][b"labels"]


class _RunsShell:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_cifar10_loader_refuses_a_malicious_batch(tmp_path):
    folder, batches = _write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    batches["data_batch_2"][b"labels"] = _RunsShell(f"touch {marker}")
    (folder / "data_batch_2").write_bytes(_python2_pickle(batches["data_batch_2"]))
    with pytest.raises(DrawnetError, match=r"data_batch_2.*refusing to unpickle (posix|nt|os)\.system"):
        load_dataset("cifar10", tmp_path, shape=(3, 32, 32))
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "not a dict", "wrong data shape", "float data", "missing labels"])
def test_cifar10_loader_rejects_broken_batches(tmp_path, damage):
    folder, batches = _write_cifar(tmp_path)
    batch = batches["data_batch_3"]
    raw = {"truncated": _python2_pickle(batch)[:500], "not a dict": _python2_pickle([1, 2]),
           "wrong data shape": _python2_pickle({**batch, b"data": batch[b"data"][:, :100]}),
           "float data": _python2_pickle({**batch, b"data": batch[b"data"].astype(np.float32)}),
           "missing labels": _python2_pickle({b"data": batch[b"data"]})}[damage]
    (folder / "data_batch_3").write_bytes(raw)
    with pytest.raises(DrawnetError, match="unreadable data file .*data_batch_3"):
        load_dataset("cifar10", tmp_path, shape=(3, 32, 32))


def test_cifar10_loader_names_what_is_missing(tmp_path):
    with pytest.raises(DrawnetError, match="CIFAR-10 not found .*data_batch_1"):
        load_dataset("cifar10", tmp_path, shape=(3, 32, 32))
    folder, _ = _write_cifar(tmp_path)
    (folder / "test_batch").unlink()
    with pytest.raises(DrawnetError, match="missing test_batch"):
        load_dataset("cifar10", tmp_path, shape=(3, 32, 32))


# --- SVHN ---

def _write_svhn(folder, n=20, n_test=5):
    """train_32x32.mat and test_32x32.mat as the cropped-digits release has them: X [32, 32, 3, n], y [n, 1]."""
    rng = np.random.default_rng(1)
    files = {}
    for name, k in (("train_32x32.mat", n), ("test_32x32.mat", n_test)):
        files[name] = {"X": rng.integers(0, 256, (32, 32, 3, k)).astype(np.uint8),
                       "y": rng.integers(1, 11, (k, 1)).astype(np.uint8)}
        scipy.io.savemat(folder / name, files[name])
    return files


def test_svhn_loader_reads_the_cropped_digits(tmp_path):
    files = _write_svhn(tmp_path)
    splits = load_dataset("svhn", tmp_path, shape=(3, 32, 32))
    assert [len(s) for s in splits] == [18, 2, 5]  # the last 10% of train validates
    X = files["test_32x32.mat"]["X"]
    assert splits.test[3, 1, 4, 9].item() == pytest.approx(X[4, 9, 1, 3] / 255)  # X is [row, col, channel, n]
    last_train = torch.from_numpy(files["train_32x32.mat"]["X"][..., 19]).permute(2, 0, 1).float()
    torch.testing.assert_close(splits.valid[1] * 255, last_train)
    labels = load_labels("svhn", tmp_path)
    expected = files["train_32x32.mat"]["y"].ravel().astype(int) % 10  # label 10 is the digit 0
    assert torch.cat([labels.train, labels.valid]).tolist() == expected.tolist()
    assert 0 <= labels.test.min() and labels.test.max() <= 9


def test_svhn_loader_errors(tmp_path):
    with pytest.raises(DrawnetError, match="SVHN not found .*train_32x32.mat"):
        load_dataset("svhn", tmp_path, shape=(3, 32, 32))
    _write_svhn(tmp_path)
    (tmp_path / "test_32x32.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(DrawnetError, match="unreadable data file .*test_32x32.mat"):
        load_dataset("svhn", tmp_path, shape=(3, 32, 32))
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((28, 28, 1, 2), np.uint8), "y": np.ones((2, 1))})
    with pytest.raises(DrawnetError, match="test_32x32.mat.*X"):
        load_dataset("svhn", tmp_path, shape=(3, 32, 32))


def test_svhn_is_32x32_not_the_papers_64x64(tmp_path):
    _write_svhn(tmp_path)
    with pytest.raises(DrawnetError, match=r"svhn has images of shape \[3, 32, 32\]"):
        load_dataset("svhn", tmp_path, shape=(3, 64, 64))


# --- photo patches ---

def _fake_photo_wheel(folder, monkeypatch, sizes=((128, 192), (192, 128), (64, 64), (128, 128), (64, 192))):
    """A scikit-image wheel whose five PNGs encode each pixel's (row, col, photograph) as its (R, G, B)."""
    photos = {}
    with zipfile.ZipFile(folder / "scikit_image-0.26.0-cp311-cp311-manylinux_2_28_x86_64.whl", "w") as zf:
        for i, (name, (h, w)) in enumerate(zip(data.PHOTOS, sizes)):
            rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
            image = np.stack([rows, cols, np.full_like(rows, i)], axis=-1).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            zf.writestr(name, buffer.getvalue())
            photos[name] = hashlib.sha256(buffer.getvalue()).hexdigest()
    monkeypatch.setattr(data, "PHOTOS", photos)


def test_photo_patches_come_from_disjoint_tiles(tmp_path, monkeypatch):
    _fake_photo_wheel(tmp_path, monkeypatch)  # 6 + 6 + 1 + 4 + 3 = 20 tiles: 2 test, 2 valid, 16 train
    arrays = data.photo_patches_arrays(tmp_path, seed=0)
    assert (tmp_path / "photo-patches-seed0.npz").is_file()
    covered = {}
    for split, tiles in (("train", 16), ("valid", 2), ("test", 2)):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        assert x.shape == (tiles * 32, 3, 32, 32) and x.dtype == np.uint8 and y.shape == (len(x),)
        assert (x[:, 2] == y[:, None, None]).all()  # the label is the photograph
        # Every patch is one contiguous 32x32 crop of its photograph.
        assert (np.diff(x[:, 0].astype(int), axis=1) == 1).all() and (np.diff(x[:, 1].astype(int), axis=2) == 1).all()
        pixel = x.astype(np.int64)
        covered[split] = np.unique(pixel[:, 2] * 65536 + pixel[:, 0] * 256 + pixel[:, 1])  # (photo, row, col)
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        assert len(np.intersect1d(covered[a], covered[b])) == 0, (a, b)

    splits = load_dataset("photo-patches", tmp_path, shape=(3, 32, 32))
    assert [len(s) for s in splits] == [512, 64, 64]
    assert splits.train.dtype == torch.float32 and splits.train.max() <= 1
    torch.testing.assert_close(splits.train * 255, torch.round(splits.train * 255))  # 8-bit levels k/255


def test_photo_patches_are_determined_by_the_seed(tmp_path, monkeypatch):
    _fake_photo_wheel(tmp_path, monkeypatch)
    a = data.photo_patches_arrays(tmp_path, seed=0)
    (tmp_path / "photo-patches-seed0.npz").rename(tmp_path / "first.npz")
    b = data.photo_patches_arrays(tmp_path, seed=0)
    c = data.photo_patches_arrays(tmp_path, seed=1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["train_x"], c["train_x"])


def test_photo_with_the_wrong_checksum_is_refused(tmp_path, monkeypatch):
    _fake_photo_wheel(tmp_path, monkeypatch)
    monkeypatch.setitem(data.PHOTOS, next(iter(data.PHOTOS)), "0" * 64)
    with pytest.raises(DrawnetError, match="astronaut.png has the wrong checksum"):
        data.photo_patches_arrays(tmp_path)


# --- colour models end to end ---

def test_colour_model_trains_and_evaluates_in_bits_per_dim(tmp_path, capsys):
    _write_cifar(tmp_path / "cifar", n=8)  # 40 training images: 36 train, 4 valid
    run = tmp_path / "run"
    # No --dataset: the cifar10 preset trains on cifar10.
    code = main(["train", "--preset", "cifar10", "--data-dir", str(tmp_path / "cifar"), *TINY_MODEL,
                 "--batch-size", "12", "--epochs", "1", "--no-progress", "--out", str(run)])
    assert code == 0
    assert json.loads((run / "log.json").read_text())[0]["step"] == 3  # 36 training images, batches of 12
    capsys.readouterr()
    code = main(["eval", "--model", str(run), "--dataset", "cifar10", "--data-dir", str(tmp_path / "cifar")])
    out = capsys.readouterr().out
    assert code == 0
    found = re.search(r"test NLL bound \(ELBO\) on 4 images: ([\d.]+) \+- [\d.]+ nats \(([\d.]+) bits/dim\)", out)
    assert found, out
    nats, bits = map(float, found.groups())
    assert bits == pytest.approx(nats / (3 * 32 * 32 * math.log(2)), abs=1e-3)
    assert 0 < bits < 16  # 8-bit pixels: a uniform guess scores 8


@pytest.mark.parametrize("likelihood", ["bernoulli", "logistic"])
def test_training_binarises_exactly_for_a_bernoulli_likelihood(tmp_path, monkeypatch, tiny_config, likelihood):
    _fake_mnist_npz(tmp_path, per_split=(16, 8, 8))
    calls = []
    bernoulli = torch.bernoulli
    monkeypatch.setattr(torch, "bernoulli", lambda *a, **k: calls.append(1) or bernoulli(*a, **k))
    config = tiny_config(likelihood=likelihood)
    train(config, TrainConfig(out_dir=str(tmp_path / "run"), data_dir=str(tmp_path), batch_size=8, epochs=1,
                              progress=False), log=lambda *_: None)
    assert (len(calls) > 0) == (likelihood == "bernoulli")
