"""Cluttered MNIST classification with DRAW's read attention (Gregor et al. 2015, section 4.1).

The classifier is an LSTM that takes T glimpses of N x N pixels (eq. 27, without the error image) and names
the digit from its last hidden state; there is no decoder and no canvas (SPEC.md, Table 3: 100x100 images,
T = 8, 256 LSTM units, 12x12 reads; the paper's test error is 4.18 % with 4 glimpses, 3.36 % with 8).

Data: each canvas is one MNIST digit at a random position on a 100x100 canvas plus CLUTTER pieces of
PIECE x PIECE pixels cut from other digits (data.cluttered_mnist), all from the same MNIST split. Every
batch of canvases is generated when needed from a seed (split, run seed, index): training canvases are made
afresh for every step, seeded by (train, --seed, step), so no two steps see the same clutter and a resumed
run continues exactly. The validation and test sets are fixed: VALID_SIZE / TEST_SIZE canvases made in
chunks of CHUNK, chunk k seeded by (valid or test, 0, k), so canvas i is the same however many are asked
for, and nothing needs caching (10,000 canvases of 100x100 floats would take 400 MB; generating them takes
about half a second).
"""
import csv
import dataclasses
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .attention import Window, filterbank, grid_window_params, read_attention, window_from_params
from .checkpoint import (CHECKPOINT_NAME, JsonConfig, atomic_write, load_checkpoint, load_state, load_weights,
                         read_config, save_checkpoint, save_pretrained, tensors_under)
from .data import cluttered_mnist, mnist_arrays
from .errors import DrawnetError
from .model import CONFIG_NAME, WEIGHTS_NAME, lstm_step

CLUTTER, PIECE = 8, 8  # clutter fragments per canvas and their side, as in the paper's data set
VALID_SIZE = TEST_SIZE = 10000
CHUNK = 1000  # canvases per seeded chunk of the validation and test sets
SPLIT_STREAMS = {"train": 0, "valid": 1, "test": 2}  # the first word of every canvas seed: splits never share one
# Adam moves every weight by about lr per step, and the 256 weights behind one window parameter tend to move
# together: at lr = 1e-3 a window could jump several pixels per step. Runs at that rate for all weights threw
# windows off the canvas after about 1,000 steps, where their filters read nothing and get no gradient to
# come back (stuck at chance, measured); with the window layer at a tenth of the rate the error kept falling.
WINDOW_LR_SCALE = 0.1
LOG_FIELDS = ["epoch", "step", "train_loss", "train_error", "valid_error", "lr", "wall_time_s"]


@dataclass(frozen=True)
class ClassifierConfig(JsonConfig):
    """Everything that fixes an AttentionClassifier's architecture; serialised as config.json."""

    height: int = 100
    width: int = 100
    channels: int = 1
    T: int = 8  # glimpses
    read_n: int = 12  # the glimpse is read_n x read_n
    hidden_size: int = 256  # LSTM units
    classes: int = 10

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise DrawnetError(f"config: {f.name} must be a positive integer, got {value!r}")
        if self.read_n > min(self.height, self.width):
            raise DrawnetError(f"config: read_n={self.read_n} is larger than the image ({self.height}x{self.width})")
        if self.classes < 2:
            raise DrawnetError(f"config: classes must be at least 2, got {self.classes}")



class Classification(NamedTuple):
    logits: torch.Tensor  # [batch, classes]
    windows: Window  # fields [T, batch]: the window of every glimpse
    glimpses: torch.Tensor  # [T, batch, C, N, N]: what the LSTM read at every step


class AttentionClassifier(nn.Module):
    """h_t = LSTM(h_{t-1}, read(x, h_{t-1})) for t = 1..T, logits = W_out h_T; h_0 = c_0 = 0.

    read(x, h_{t-1}) = gamma Fy x Fx^T (eq. 27) with the window's five parameters a linear function of h_{t-1}
    (eq. 21-24). With h_0 = 0 the first window is the window layer's bias alone, initialised to
    grid_window_params: centred, its 12 x 12 filters cutting the 100x100 image into a grid of cells with
    sigma half a cell, so the first glimpse is a blurred view of the whole canvas, enough to find the digit.
    (With a zero bias the filters would also span the image, but with sigma = 1 pixel 9 pixels apart: the
    first glimpse would sample isolated pixels and could miss a digit's thin strokes altogether.)
    """

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = cfg = config
        self.window = nn.Linear(cfg.hidden_size, 5)  # (gx~, gy~, log sigma2, log delta~, log gamma) from h_{t-1}
        self.lstm = nn.Linear(cfg.channels * cfg.read_n**2 + cfg.hidden_size, 4 * cfg.hidden_size)
        self.out = nn.Linear(cfg.hidden_size, cfg.classes)
        with torch.no_grad():
            self.window.bias.copy_(grid_window_params(cfg.read_n, cfg.width, cfg.height))

    def check_images(self, x: torch.Tensor) -> None:
        cfg = self.config
        if x.dim() != 4 or tuple(x.shape[1:]) != (cfg.channels, cfg.height, cfg.width):
            raise DrawnetError(f"images must have shape [batch, {cfg.channels}, {cfg.height}, {cfg.width}] for "
                               f"this model, got {list(x.shape)}")
        if not torch.is_floating_point(x) or x.numel() and not ((x >= 0) & (x <= 1)).all():  # NaN fails too
            raise DrawnetError("images must be floating point with values in [0, 1]")

    def forward(self, x: torch.Tensor) -> Classification:
        self.check_images(x)
        cfg = self.config
        h = c = x.new_zeros(x.shape[0], cfg.hidden_size)
        windows, glimpses = [], []
        for _ in range(cfg.T):
            window = window_from_params(self.window(h), cfg.read_n, cfg.width, cfg.height)  # eq. 21-24
            Fx, Fy = filterbank(window.gx, window.gy, window.sigma2, window.delta, cfg.read_n, cfg.width, cfg.height)
            glimpse = read_attention(x, Fx, Fy, window.gamma)  # eq. 27
            h, c = lstm_step(self.lstm, torch.cat([glimpse.flatten(1), h], dim=1), c)
            windows.append(window)
            glimpses.append(glimpse)
        return Classification(self.out(h), Window(*(torch.stack(field) for field in zip(*windows))),
                              torch.stack(glimpses))

    def save_pretrained(self, directory) -> None:
        save_pretrained(directory, self)

    @classmethod
    def from_pretrained(cls, directory, map_location="cpu") -> "AttentionClassifier":
        directory = Path(directory)
        model = cls(read_config(directory / CONFIG_NAME, ClassifierConfig))
        load_weights(model, directory / WEIGHTS_NAME, map_location)
        return model


# --- data ---
def mnist_split(split: str, limit: Optional[int] = None):
    """The digits (float32 [n, 784]) and labels of one MNIST split, the first `limit` only if given."""
    mnist = mnist_arrays()
    return mnist[f"{split}_x"][:limit], mnist[f"{split}_y"][:limit]


def canvases(digits, labels, n: int, seed, size: int):
    """n cluttered canvases as tensors (images [n, 1, size, size], labels [n])."""
    c = cluttered_mnist(digits, labels, n, seed, size=size, clutter=CLUTTER, piece=PIECE)
    return torch.from_numpy(c.images), torch.from_numpy(c.labels)


def fixed_set(split: str, n: int, size: int):
    """The first n canvases of the fixed validation or test set, chunk by chunk: yields (images, labels) of
    CHUNK canvases (fewer at the end) made from all the split's digits. Chunk k is seeded by (split, 0, k) and
    always made whole, then cut, so that canvas i is the same whatever n is."""
    digits, labels = mnist_split(split)
    for k in range(math.ceil(n / CHUNK)):
        x, y = canvases(digits, labels, CHUNK, [SPLIT_STREAMS[split], 0, k], size)
        yield x[: n - k * CHUNK], y[: n - k * CHUNK]


@torch.no_grad()
def error_rate(model: AttentionClassifier, split: str, n: int, batch_size: int = 500, progress: bool = False) -> float:
    """The fraction of the first n canvases of the fixed validation or test set that the model gets wrong."""
    wrong = 0
    bar = tqdm(total=n, desc=f"{split} error", disable=not progress, leave=False, dynamic_ncols=True)
    for images, labels in fixed_set(split, n, model.config.height):
        for x, y in zip(images.split(batch_size), labels.split(batch_size)):
            wrong += (model(x).logits.argmax(1) != y).sum().item()
            bar.update(len(y))
    bar.close()
    return wrong / n


# --- training ---
@dataclass
class ClassifyTrainConfig:
    """How to train. An epoch is as many canvases as there are training digits (50,000 without a limit)."""

    out_dir: str = "runs/classify"
    batch_size: int = 64
    lr: float = 1e-3  # the window layer's is WINDOW_LR_SCALE times this
    lr_decay: float = 0.95  # multiplies the learning rate after every epoch
    clip: float = 10.0  # max global gradient norm
    epochs: int = 50
    max_minutes: Optional[float] = None  # stop (with a checkpoint) after this much wall time
    seed: int = 0
    limit: Optional[int] = None  # use only the first `limit` training digits and validation canvases
    threads: Optional[int] = None
    progress: bool = True

    def __post_init__(self):
        for name in ("batch_size", "epochs", "limit", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DrawnetError(f"{name.replace('_', '-')} must be >= 1, got {value}")
        for name in ("lr", "lr_decay", "clip", "max_minutes"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise DrawnetError(f"{name.replace('_', '-')} must be > 0, got {value}")


def saved_settings(out_dir) -> Optional[dict]:
    """The ClassifyTrainConfig fields of the run in out_dir, or None if there is no checkpoint."""
    path = Path(out_dir) / CHECKPOINT_NAME
    return load_checkpoint(path)[1].get("train_config") if path.is_file() else None


def _write_log(path: Path, history: list) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
            writer.writeheader()
            writer.writerows(history)

    atomic_write(path, write)


def train_classifier(config: Optional[ClassifierConfig], tcfg: ClassifyTrainConfig, resume: bool = False,
                     log=print) -> AttentionClassifier:
    """Train (or, with resume, continue) an AttentionClassifier with Adam on cross-entropy; returns it.

    Writes to tcfg.out_dir: config.json + model.safetensors (the latest weights), checkpoint.safetensors
    (weights, Adam's state, the step) and log.csv (one row per epoch, with the validation error), after every
    epoch and when the time limit stops the run. config None means the resumed run's own, or the default."""
    from .train import load_optimizer, optimizer_tensors

    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    out_dir = Path(tcfg.out_dir)
    ckpt = out_dir / CHECKPOINT_NAME
    state = {"step": 0, "wall_time_s": 0.0, "history": []}
    if resume and ckpt.is_file():
        tensors, meta = load_checkpoint(ckpt)
        try:
            saved_config, state = ClassifierConfig.from_dict(meta["model_config"]), meta["state"]
        except (KeyError, TypeError) as e:
            raise DrawnetError(f"{ckpt} has an invalid header ({e})") from None
        if config is not None and config != saved_config:
            raise DrawnetError(f"{out_dir} holds a run of a different model; resume it without model options")
        model = AttentionClassifier(saved_config)
        load_state(model, tensors_under(tensors, "model."), ckpt)
        log(f"resuming {out_dir} at step {state['step']}")
    else:
        if ckpt.is_file():
            raise DrawnetError(f"{out_dir} already holds a run: pass --resume to continue it or choose another --out")
        if resume:
            log(f"no checkpoint in {out_dir}; starting a new run")
        torch.manual_seed(tcfg.seed)  # the initial weights belong to the seed too
        model, tensors = AttentionClassifier(config or ClassifierConfig()), None
    cfg = model.config
    if cfg.channels != 1 or cfg.height != cfg.width:
        raise DrawnetError(f"cluttered MNIST canvases are square and grey: the model must read [1, S, S] images, "
                           f"not [{cfg.channels}, {cfg.height}, {cfg.width}]")
    others = [p for name, p in model.named_parameters() if not name.startswith("window.")]
    opt = torch.optim.Adam([{"params": others, "scale": 1.0},
                            {"params": list(model.window.parameters()), "scale": WINDOW_LR_SCALE}])
    if tensors is not None:
        load_optimizer(opt, tensors)

    digits, labels = mnist_split("train", tcfg.limit)
    valid_size = min(VALID_SIZE, tcfg.limit or VALID_SIZE)
    steps_per_epoch = len(digits) // tcfg.batch_size
    if steps_per_epoch == 0:
        raise DrawnetError(f"batch size {tcfg.batch_size} is larger than the training set ({len(digits)})")
    log(f"{cfg} | {sum(p.numel() for p in model.parameters()):,} parameters | {cfg.height}x{cfg.width} "
        f"canvases from {len(digits)} training digits, batch {tcfg.batch_size}, {steps_per_epoch} steps/epoch")

    start, start_wall = time.time(), state["wall_time_s"]
    wall = lambda: start_wall + time.time() - start  # noqa: E731

    def save():
        state["wall_time_s"] = round(wall(), 1)
        saved = {f"model.{k}": v for k, v in model.state_dict().items()}
        saved.update(optimizer_tensors(opt))
        save_checkpoint(ckpt, saved, {"model_config": cfg.to_dict(), "train_config": asdict(tcfg), "state": state})
        model.save_pretrained(out_dir)
        _write_log(out_dir / "log.csv", state["history"])

    while state["step"] < tcfg.epochs * steps_per_epoch:
        epoch = state["step"] // steps_per_epoch
        lr = tcfg.lr * tcfg.lr_decay**epoch
        for group in opt.param_groups:
            group["lr"] = lr * group["scale"]
        done_in_epoch = state["step"] - epoch * steps_per_epoch
        bar = tqdm(range(done_in_epoch, steps_per_epoch), desc=f"epoch {epoch + 1}", initial=done_in_epoch,
                   total=steps_per_epoch, dynamic_ncols=True, leave=False, disable=not tcfg.progress)
        loss_sum, wrong, seen = 0.0, 0, 0
        for _ in bar:
            x, y = canvases(digits, labels, tcfg.batch_size, [SPLIT_STREAMS["train"], tcfg.seed, state["step"]],
                            cfg.height)
            logits = model(x).logits
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.clip)
            opt.step()
            state["step"] += 1
            loss_sum += loss.item() * len(y)
            wrong += (logits.argmax(1) != y).sum().item()
            seen += len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{1 - wrong / seen:.3f}")
            if tcfg.max_minutes is not None and wall() - start_wall >= 60 * tcfg.max_minutes:
                bar.close()
                save()
                log(f"stopped (time limit) at step {state['step']} ({state['step'] / steps_per_epoch:.2f} epochs), "
                    f"{wall() / 60:.1f} min; model in {out_dir}")
                return model
        bar.close()
        valid_error = error_rate(model, "valid", valid_size)
        record = {"epoch": epoch + 1, "step": state["step"], "train_loss": round(loss_sum / max(seen, 1), 4),
                  "train_error": round(wrong / max(seen, 1), 4), "valid_error": round(valid_error, 4),
                  "lr": float(f"{lr:.4g}"), "wall_time_s": round(wall(), 1)}
        state["history"].append(record)
        save()
        log(f"epoch {epoch + 1}: train loss {record['train_loss']:.3f}, "
            f"train error {100 * record['train_error']:.2f} %, valid error {100 * valid_error:.2f} % "
            f"({valid_size} canvases), {record['wall_time_s'] / 60:.1f} min")
    return model


# --- the glimpses figure ---
def glimpse_figure(model: AttentionClassifier, x: torch.Tensor, labels: torch.Tensor, path, scale: int = 2) -> Path:
    """For each image, two rows of T panels: the image with glimpse t's window (the region gx +- N delta / 2,
    gy +- N delta / 2) in green, and below it the N x N glimpse the LSTM read (Fy x Fx^T, before the intensity
    gamma), enlarged; a caption gives the true and the predicted digit."""
    from PIL import Image

    from .visualize import READ_COLOUR, add_caption, rgb_tiles, tile_grid, window_arrays, draw_window

    cfg = model.config
    with torch.no_grad():
        out = model(x)
    w = window_arrays(out.windows)
    probs = out.logits.softmax(1)
    # enlarge each N x N patch to the panel's size: panel pixel (i, j) shows patch pixel (i N // H, j N // W)
    rows, cols = (np.arange(side * scale) * cfg.read_n // (side * scale) for side in (cfg.height, cfg.width))
    blocks = []
    for k in range(len(x)):
        image = rgb_tiles(x[k : k + 1], scale)[0]
        panels = [draw_window(image.copy(), w["gx"][t, k], w["gy"][t, k], w["sigma2"][t, k], w["delta"][t, k],
                              cfg.read_n, scale, READ_COLOUR) for t in range(cfg.T)]
        patches = rgb_tiles(out.glimpses[:, k] / out.windows.gamma[:, k, None, None, None])
        panels += list(patches[:, rows][:, :, cols])
        p = probs[k].max().item()
        text = (f"digit {labels[k].item()}, predicted {probs[k].argmax().item()} (p = {p:.2f}); glimpses 1 to "
                f"{cfg.T} from left to right: the window (green) above the patch it read")
        blocks.append(add_caption(tile_grid(np.stack(panels), nrow=cfg.T), text))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(blocks)).save(path)
    return path
