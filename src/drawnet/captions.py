"""MNIST with captions, the synthetic data set of alignDRAW (Mansimov et al. 2016), and a caption checker.

Each 60x60 canvas holds one or two MNIST digits placed as its caption says. One digit: "the digit 3 is at the
top left of the image", at one of nine places (top left, top, top right, left, center, right, bottom left,
bottom, bottom right). Two different digits: "the digit 3 is at the top of the digit 5" (or at the bottom
of, on the left of, on the right of). A digit's top-left corner lies in one of three bands per axis, low
0..4, middle 14..18 or high 28..32, drawn uniformly within the band; an axis the caption says nothing about
(the columns of "at the top of", the rows of "on the left of") is uniform in 0..32. That makes 90 one-digit
and 360 two-digit captions. A fixed 10 % of each kind (HELD_OUT) never appears in the training or validation
splits and makes up the test split, to see whether a model composes captions it has never seen.

caption_agreement() measures how well generated images do what their captions say, with a small convnet
(DigitClassifier) that names the digit found where the caption puts it.
"""
import sys
from typing import NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from .checkpoint import atomic_write, load_weights
from .data import _digits, _paste, cache_dir, generated_from_mnist, mnist_arrays
from .errors import DrawnetError

CANVAS, DIGIT = 60, 28
LAST = CANVAS - DIGIT  # the largest top-left coordinate that keeps a digit wholly inside: 32
LOW, MIDDLE, HIGH, ANY = (0, 4), (14, 18), (28, 32), (0, LAST)  # inclusive ranges of a top-left coordinate
PLACES = {  # one digit: where in the image, as (row range, column range)
    "top left": (LOW, LOW), "top": (LOW, MIDDLE), "top right": (LOW, HIGH),
    "left": (MIDDLE, LOW), "center": (MIDDLE, MIDDLE), "right": (MIDDLE, HIGH),
    "bottom left": (HIGH, LOW), "bottom": (HIGH, MIDDLE), "bottom right": (HIGH, HIGH),
}
RELATIONS = {  # two digits: the words, then the (row range, column range) of the first digit and of the second
    "top": ("is at the top of", (LOW, ANY), (HIGH, ANY)),
    "bottom": ("is at the bottom of", (HIGH, ANY), (LOW, ANY)),
    "left": ("is on the left of", (ANY, LOW), (ANY, HIGH)),
    "right": ("is on the right of", (ANY, HIGH), (ANY, LOW)),
}
VOCAB = ("<pad>", "the", "digit", "is", "at", "on", "of", "image", "top", "bottom", "left", "right", "center",
         *map(str, range(10)))
WORD_IDS = {word: i for i, word in enumerate(VOCAB)}
EXAMPLE_CAPTIONS = ("the digit 3 is at the top left of the image", "the digit 7 is on the left of the digit 1",
                    "the digit 0 is at the center of the image", "the digit 5 is at the top of the digit 2",
                    "the digit 8 is at the bottom right of the image", "the digit 4 is on the right of the digit 9")
EXAMPLES = "e.g. " + " or ".join(repr(c) for c in EXAMPLE_CAPTIONS[:2])  # for error messages
HELD_OUT_SEED = 2016  # fixes which captions are held out, for good: changing it changes the test split
# caption_agreement: how far (pixels) a digit may stray beyond its band; the width of the Gaussian that weights a
# window's ink towards its centre; the share of the best window's weighted ink that a digit's window must hold
# (a thin 1 holds under half the ink of a bold 0 in 16 % of pairs of MNIST digits, under a quarter in 0.6 %);
# and the least weighted ink that counts as a digit (MNIST's faintest digits hold about 18, the median 57).
SLACK, WINDOW_SIGMA, INK_FRACTION, MIN_INK = 4, 6.0, 0.25, 10.0
SHIFT = 2  # the digit classifier learns digits shifted by up to this many pixels, as windows rarely centre exactly


class Layout(NamedTuple):
    """What a caption asks for: its digits (one or two), for each the inclusive (first, last) range of its
    top-left row and of its top-left column, and for two digits how the first relates to the second
    ("top", "bottom", "left" or "right"; None for one digit)."""

    digits: tuple
    rows: tuple
    cols: tuple
    relation: Optional[str]


def _grammar() -> dict:
    """{caption: Layout} for every caption the grammar makes, one-digit captions first."""
    layouts = {}
    for d in range(10):
        for place, (rows, cols) in PLACES.items():
            layouts[f"the digit {d} is at the {place} of the image"] = Layout((d,), (rows,), (cols,), None)
    for a in range(10):
        for b in range(10):
            for relation, (words, (rows_a, cols_a), (rows_b, cols_b)) in RELATIONS.items():
                if a != b:
                    layouts[f"the digit {a} {words} the digit {b}"] = Layout((a, b), (rows_a, rows_b),
                                                                             (cols_a, cols_b), relation)
    return layouts


LAYOUTS = _grammar()
MAX_WORDS = max(len(caption.split()) for caption in LAYOUTS)


def _held_out() -> frozenset:
    """10 % of each kind of caption (one digit, two digits), by a permutation seeded with HELD_OUT_SEED."""
    rng = np.random.default_rng(HELD_OUT_SEED)
    held = []
    for k in (1, 2):
        kind = [caption for caption, layout in LAYOUTS.items() if len(layout.digits) == k]
        held += [kind[i] for i in rng.permutation(len(kind))[: len(kind) // 10]]
    return frozenset(held)


HELD_OUT = _held_out()


def all_captions() -> tuple:
    """The 450 captions of the grammar, always in the same order: the 90 one-digit captions, then the 360
    two-digit ones."""
    return tuple(LAYOUTS)


def held_out_captions() -> list:
    """The 45 captions of the test split (never in training or validation), sorted."""
    return sorted(HELD_OUT)


def training_captions() -> tuple:
    """The 405 captions of the training and validation splits: all_captions() but HELD_OUT, in its order."""
    return tuple(caption for caption in LAYOUTS if caption not in HELD_OUT)


# --- words ---

def _words(text: str) -> list:
    """The caption's words, lower-cased; a DrawnetError for a caption no vocabulary id sequence can hold."""
    words = str(text).lower().split()
    vocabulary = f"the vocabulary is: {' '.join(VOCAB[1:])}"
    if not words:
        raise DrawnetError(f"empty caption; {vocabulary}")
    unknown = [w for w in words if w not in WORD_IDS or w == VOCAB[0]]
    if unknown:
        raise DrawnetError(f"unknown word {unknown[0]!r} in caption {' '.join(words)!r}; {vocabulary}")
    if len(words) > MAX_WORDS:
        raise DrawnetError(f"caption {' '.join(words)!r} has {len(words)} words, at most {MAX_WORDS}; {vocabulary}")
    return words


def encode_captions(texts) -> torch.Tensor:
    """Word ids [n, MAX_WORDS] (int64, padded with 0 = <pad>) of a list of n captions."""
    ids = torch.zeros(len(texts), MAX_WORDS, dtype=torch.long)
    for i, text in enumerate(texts):
        words = _words(text)
        ids[i, : len(words)] = torch.tensor([WORD_IDS[w] for w in words])
    return ids


def decode_caption(ids) -> str:
    """The caption that a sequence of word ids spells, padding dropped."""
    ids = [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < len(VOCAB)]
    if bad:
        raise DrawnetError(f"word id {bad[0]} is out of range: the vocabulary has {len(VOCAB)} words")
    return " ".join(VOCAB[i] for i in ids if i != 0)


def parse_caption(text: str) -> Layout:
    """The layout a caption asks for (any caption of the grammar, held out or not; case and spacing are free)."""
    caption = " ".join(_words(text))
    if caption not in LAYOUTS:
        raise DrawnetError(f"{caption!r} is not a caption this data set knows ({EXAMPLES}; two digits must "
                           "differ)")
    return LAYOUTS[caption]


def _layout_table(captions):
    """The layouts of captions as arrays: digits int64 [c, 2] (-1 for no second digit) and the inclusive
    top-left ranges lo, hi int64 [c, 2 digits, 2 axes] (0 for no second digit)."""
    layouts = [parse_caption(c) for c in captions]
    digits = np.full((len(layouts), 2), -1, np.int64)
    lo, hi = np.zeros((2, len(layouts), 2, 2), np.int64)
    for i, layout in enumerate(layouts):
        for k, (d, rows, cols) in enumerate(zip(layout.digits, layout.rows, layout.cols)):
            digits[i, k] = d
            (lo[i, k, 0], hi[i, k, 0]), (lo[i, k, 1], hi[i, k, 1]) = rows, cols
    return digits, lo, hi


# --- the data set ---

class CaptionCanvases(NamedTuple):
    """Captioned canvases. images: float32 [n, 1, 60, 60] in [0, 1]; words: int64 [n, MAX_WORDS], the
    caption's word ids; labels: int64 [n, 2], the digits the caption names (-1: no second digit); positions:
    int64 [n, 2, 2], each digit's top-left (row, col) (-1 for no second digit)."""

    images: np.ndarray
    words: np.ndarray
    labels: np.ndarray
    positions: np.ndarray


def mnist_captions(x, y, n: int, seed, captions) -> CaptionCanvases:
    """n canvases drawn as their captions say: canvases alternate between a one-digit and a two-digit caption
    (all of one kind if captions holds only that kind), each chosen uniformly among the given captions of its
    kind; each digit is an image of that digit drawn uniformly from x (MNIST images [m, 784] in [0, 1], labels
    y) at a uniform top-left within its caption's ranges; the canvas is their sum clipped to 1. The same seed
    (an int or a sequence of ints) gives the same canvases."""
    kinds = [[c for c in captions if len(parse_caption(c).digits) == k] for k in (1, 2)]
    kinds = [kind for kind in kinds if kind]
    if not kinds:
        raise DrawnetError("MNIST with captions: no captions given to draw")
    pool = [c for kind in kinds for c in kind]
    table_digits, table_lo, table_hi = _layout_table(pool)
    digits, y = _digits(x), np.asarray(y, dtype=np.int64)
    counts = np.bincount(y, minlength=10)
    missing = sorted(set(table_digits[table_digits >= 0].tolist()) - set(np.flatnonzero(counts).tolist()))
    if missing:
        raise DrawnetError(f"MNIST with captions: the captions need the digit {missing[0]}, which x has no image of")

    rng = np.random.default_rng(seed)
    sizes = np.array([len(kind) for kind in kinds])
    kind = np.arange(n) % len(kinds)
    chosen = np.cumsum(sizes)[kind] - sizes[kind] + rng.integers(0, sizes[kind])  # index into pool
    labels, positions = table_digits[chosen], rng.integers(table_lo[chosen], table_hi[chosen] + 1)
    # An image of each named digit: the k-th of its label's images in x, k uniform. A missing second digit
    # draws one of the first digit (always there) and pastes it blank.
    by_label, first = np.argsort(y, kind="stable"), np.cumsum(counts) - counts
    wanted = np.where(labels >= 0, labels, labels[:, :1])
    picks = by_label[first[wanted] + rng.integers(0, counts[wanted])]

    canvas = np.zeros((n, CANVAS, CANVAS), np.float32)
    for k in range(2):
        present = (labels[:, k] >= 0)[:, None, None]
        _paste(canvas, digits[picks[:, k]] * present, positions[:, k, 0], positions[:, k, 1])
    positions[labels < 0] = -1
    words = encode_captions(pool).numpy()[chosen]
    return CaptionCanvases(np.minimum(canvas, 1)[:, None], words, labels, positions)


def mnist_captions_arrays(data_dir=None, seed: int = 0, sizes=(50000, 10000, 10000)) -> dict:
    """MNIST with captions: {train,valid,test}_x float16 [n, 1, 60, 60], _y the caption's word ids
    [n, MAX_WORDS], _labels [n, 2] and _positions [n, 2, 2] (see CaptionCanvases). Train and valid draw the
    training captions and the digits of MNIST's train and valid splits; test draws the HELD_OUT captions and
    MNIST's test digits. Generated once from the seed and cached beside mnist.npz."""

    def make(x, y, n, split_seed, split):
        captions = held_out_captions() if split == "test" else training_captions()
        c = mnist_captions(x, y, n, seed=split_seed, captions=captions)
        # MNIST's grey levels are k/256 and so are their clipped sums: float16 holds them exactly.
        return {"x": c.images.astype(np.float16), "y": c.words, "labels": c.labels, "positions": c.positions}

    return generated_from_mnist("mnist-captions", data_dir, seed, sizes, make)


# --- checking images against their captions ---

class DigitClassifier(nn.Module):
    """A small convnet naming the digit in 28x28 images in [0, 1] ([n, 1, 28, 28] or [n, 784]): logits [n, 10]."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),  # 14x14
            nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),  # 7x7
            nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(-1, 1, DIGIT, DIGIT))


def _crops(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """The 28x28 crops [n, 1, 28, 28] of images [n, H, W], crop i with its top-left at (top[i], left[i])."""
    span = torch.arange(DIGIT, device=images.device)
    rows, cols = (top[:, None] + span)[:, :, None], (left[:, None] + span)[:, None, :]
    return images[torch.arange(len(images), device=images.device)[:, None, None], rows, cols][:, None]


def train_digit_classifier(steps: int = 2000, seed: int = 0, batch_size: int = 64) -> DigitClassifier:
    """A DigitClassifier trained with Adam on MNIST's training split, each digit shifted by up to SHIFT pixels
    each way. The default 2,000 steps take about half a minute on one CPU thread and reach 98.9 % validation
    accuracy."""
    mnist = mnist_arrays()
    x, y = torch.from_numpy(_digits(mnist["train_x"])), torch.from_numpy(mnist["train_y"]).long()
    rng = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # seed the initial weights without touching the caller's stream
        torch.manual_seed(seed)
        model = DigitClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    # The rate decays linearly to zero: the last steps average out the noise of small batches.
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    for _ in range(steps):
        batch = torch.randint(0, len(x), (batch_size,), generator=rng)
        padded = F.pad(x[batch], (SHIFT,) * 4)
        top, left = torch.randint(0, 2 * SHIFT + 1, (2, batch_size), generator=rng)
        loss = F.cross_entropy(model(_crops(padded, top, left)), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


@torch.no_grad()
def digit_accuracy(classifier: nn.Module, x, y, batch_size: int = 1000) -> float:
    """The fraction of MNIST images x ([n, 784] in [0, 1]) whose label y the classifier names."""
    x, y = torch.as_tensor(np.asarray(x, np.float32)), torch.as_tensor(np.asarray(y, np.int64))
    predicted = torch.cat([classifier(chunk).argmax(1) for chunk in x.split(batch_size)])
    return (predicted == y).float().mean().item()


def digit_classifier(cache: bool = True) -> DigitClassifier:
    """The digit classifier of caption_agreement: loaded from cache_dir()/digit-classifier.safetensors, or
    trained (under a minute) and, if cache, saved there."""
    path = cache_dir() / "digit-classifier.safetensors"
    model = DigitClassifier()
    if cache and path.is_file():
        load_weights(model, path)
        return model.eval()
    print("drawnet: training the digit classifier (under a minute)...", file=sys.stderr)
    model = train_digit_classifier()
    if cache:
        tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
        atomic_write(path, lambda p: save_file(tensors, str(p)))
    return model


def _window_weights() -> torch.Tensor:
    """[28, 28]: a Gaussian bump (sigma WINDOW_SIGMA) centred on the window, peaking near 1. Weighted by it, the
    best window is the one centred on a digit, not one that also catches the edge of a neighbour."""
    t = torch.arange(DIGIT, dtype=torch.float32) - (DIGIT - 1) / 2
    bump = torch.exp(-t**2 / (2 * WINDOW_SIGMA**2))
    return bump[:, None] * bump[None, :]


@torch.no_grad()
def caption_agreement(images: torch.Tensor, captions, classifier: nn.Module, batch_size: int = 1000) -> dict:
    """How well images [n, 1, 60, 60] in [0, 1] (on the classifier's device) agree with their n captions:
    {"digits", "positions", "both"}, the fractions of images whose digits, whose positions, and whose digits
    and positions all agree.

    A window is a 28x28 square of the image; its ink is the sum of its pixels weighted by a Gaussian (sigma
    WINDOW_SIGMA = 6) centred on it. For each digit a caption names, the checker takes the window with the most
    ink among those whose top-left lies in the caption's range for that digit widened by SLACK = 4 pixels each
    way (within 0..32). The digit agrees if the classifier's argmax on that window is the stated digit. Its
    position agrees if the window holds at least INK_FRACTION = a quarter of the ink of the best window anywhere
    in the image and at least MIN_INK = 10 (so a blank image agrees with nothing), and if the digit in it sits
    where the caption says: the window centred on the (weighted) centre of mass of its ink must also have its
    top-left in the widened range. For two digits that puts the first at least 16 rows above (at the top of) or
    below, or 16 columns left of (on the left of) or right of the second. An image agrees on digits
    (positions) if every digit it names does. On the data set's own canvases the digits agree as often as the
    classifier is right (98 to 99 %) and the positions 99.9 % of the time."""
    if images.ndim != 4 or tuple(images.shape[1:]) != (1, CANVAS, CANVAS) or len(images) != len(captions):
        raise DrawnetError(f"caption_agreement needs images [n, 1, {CANVAS}, {CANVAS}] and n captions; got images "
                           f"{list(images.shape)} and {len(captions)} captions")
    device = images.device
    digits, lo, hi = (torch.from_numpy(a).to(device) for a in _layout_table(captions))
    lo, hi = (lo - SLACK).clamp(0, LAST), (hi + SLACK).clamp(0, LAST)
    weights = _window_weights().to(device)
    canvas = images[:, 0].float()
    ink = F.conv2d(canvas[:, None], weights[None, None])[:, 0]  # [n, 33, 33]: the window at each top-left
    best = ink.flatten(1).amax(1)
    n, span, centre = len(images), torch.arange(LAST + 1, device=device), (DIGIT - 1) / 2
    digits_ok, places_ok = (torch.ones(n, dtype=torch.bool, device=device) for _ in range(2))
    for k in range(2):
        first, last = lo[:, k], hi[:, k]  # [n, 2]: the (row, col) range of digit k's top-left
        rows_ok = (span >= first[:, :1]) & (span <= last[:, :1])  # [n, 33]
        cols_ok = (span >= first[:, 1:]) & (span <= last[:, 1:])
        at = ink.masked_fill(~(rows_ok[:, :, None] & cols_ok[:, None, :]), -1).flatten(1).argmax(1)
        top, left = at // (LAST + 1), at % (LAST + 1)
        crops = _crops(canvas, top, left)
        named = torch.cat([classifier(chunk).argmax(1) for chunk in crops.split(batch_size)])
        # Where the digit in the window sits: the top-left of the window (inside the image) centred on its
        # ink's centre of mass.
        mass = crops[:, 0] * weights
        total = mass.sum((1, 2)).clamp_min(1e-12)
        offset = torch.stack([mass.sum(2), mass.sum(1)], 1) @ span[:DIGIT].float() / total[:, None]
        corner = (torch.stack([top, left], 1) + (offset - centre).round().long()).clamp(0, LAST)
        held = ink.flatten(1).gather(1, at[:, None])[:, 0]
        there = (held >= INK_FRACTION * best) & (held >= MIN_INK) & ((corner >= first) & (corner <= last)).all(1)
        absent = digits[:, k] < 0
        digits_ok &= absent | (named == digits[:, k])
        places_ok &= absent | there
    return {"digits": digits_ok.float().mean().item(), "positions": places_ok.float().mean().item(),
            "both": (digits_ok & places_ok).float().mean().item()}
