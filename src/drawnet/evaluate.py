"""Test-set bounds on -log p(x) in nats: the ELBO (SPEC.md's L = L_x + L_z) and the importance-weighted
bound with K whole-trajectory samples."""
import fcntl
import hashlib
import json
import math
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from .errors import DrawnetError
from .model import DRAW


@torch.no_grad()
def per_image_elbo(model: DRAW, x: torch.Tensor, batch_size: int = 500, seed: int = 0, progress: bool = False,
                   y=None):
    """L_x + L_z for every image, [n] (the posterior noise is seeded, so repeated calls agree); y: a
    conditional model's labels or captions, one per image."""
    if len(x) == 0:
        raise DrawnetError("no images to evaluate")
    model.eval()
    torch.manual_seed(seed)
    chunks = []
    for i in tqdm(range(0, len(x), batch_size), desc="eval", disable=not progress, leave=False):
        out = model(x[i : i + batch_size], y=None if y is None else y[i : i + batch_size])
        chunks.append(out.L_x + out.L_z)
    return torch.cat(chunks)


def mean_and_stderr(values: torch.Tensor):
    values = values.double()
    stderr = values.std().item() / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return values.mean().item(), stderr


def elbo(model: DRAW, x: torch.Tensor, batch_size: int = 500, seed: int = 0, progress: bool = False, y=None):
    """(mean, standard error) of the per-image ELBO bound in nats."""
    return mean_and_stderr(per_image_elbo(model, x, batch_size, seed, progress, y))


@torch.no_grad()
def per_image_iw(model: DRAW, x: torch.Tensor, K: int, batch_size: int = 500, seed: int = 0, progress: bool = False,
                 y=None, bounds_file: Optional["BoundsFile"] = None):
    """-log (1/K) sum_k w_k for every image, [n]: the importance-weighted bound with K whole trajectories
    z_1..z_T per image, log w = log D(x|c_T) + sum_t [log p(z_t) - log q(z_t|.)] (Burda et al. 2016).

    Each forward pass runs up to batch_size trajectories: several images with all their K samples when K is
    small, or one image's samples in chunks when K is large; log-sum-exp accumulates across chunks. Each
    group of images draws its noise from a seed made of seed and the group's first index, so an evaluation
    that starts part way (bounds_file: the bounds of an earlier, stopped run) gives the numbers an
    uninterrupted one would."""
    if K < 1:
        raise ValueError(f"K must be >= 1, got {K}")
    model.eval()
    bounds = bounds_file.read()[: len(x)] if bounds_file is not None else []
    images_per_pass = max(1, batch_size // K)
    samples_per_pass = min(K, max(1, batch_size // images_per_pass))
    with tqdm(total=len(x) * K, initial=len(bounds) * K, desc=f"IW bound, K={K}", unit="traj", unit_scale=True,
              disable=not progress, leave=False) as bar:
        for i in range(len(bounds), len(x), images_per_pass):
            torch.manual_seed(seed << 32 | i)
            xb = x[i : i + images_per_pass]
            log_sum = xb.new_full((len(xb),), -math.inf, dtype=torch.float64)
            for k0 in range(0, K, samples_per_pass):
                k = min(samples_per_pass, K - k0)
                yk = None if y is None else y[i : i + images_per_pass].repeat_interleave(k, dim=0)
                log_w = model(xb.repeat_interleave(k, dim=0), y=yk).log_w.view(len(xb), k).double()
                log_sum = torch.logaddexp(log_sum, torch.logsumexp(log_w, dim=1))
                bar.update(len(xb) * k)
            group = (math.log(K) - log_sum).tolist()
            if bounds_file is not None:
                bounds_file.append(len(bounds), group)
            bounds += group
    return torch.tensor(bounds, dtype=torch.float64)


def model_fingerprint(model: torch.nn.Module) -> str:
    """The first 16 hex digits of a SHA-256 over the model's tensors: tells two sets of weights apart."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


class BoundsFile:
    """Per-image bounds in a CSV that grows as an evaluation goes, so that a long one (K=1000 on 10,000
    images takes hours on a CPU) can be stopped and continued. Its first line records what the bounds are
    of (K, seed, data set, model fingerprint); continuing with other settings is refused, since mixing them
    would give a number that belongs to no model."""

    HEADER = "# drawnet IW bounds "

    def __init__(self, path, settings: dict):
        self.path, self.settings = Path(path), settings
        self._file = None  # held open, and locked, from the first read on

    def read(self) -> list:
        """The bounds so far, images 0, 1, ... in order; creates the file if there is none. A last line
        cut short by a kill is dropped, and its image is evaluated again. From the first read on, this object
        holds a lock on the file: a second evaluation appending to it would write some images twice."""
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a")
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._file.close()
                self._file = None
                raise DrawnetError(f"another evaluation is writing to {self.path}") from None
        text = self.path.read_text()
        if not text:
            self.path.write_text(self.HEADER + json.dumps(self.settings) + "\nimage,bound\n")
            return []
        lines = text.splitlines()
        if not lines[0].startswith(self.HEADER):
            raise DrawnetError(f"{self.path} is not a drawnet bounds file")
        found = json.loads(lines[0][len(self.HEADER):])
        if found != self.settings:
            raise DrawnetError(f"{self.path} holds bounds for {found}, not {self.settings}; "
                               "give another --bounds-file")
        if not text.endswith("\n"):
            lines.pop()
            self.path.write_text("\n".join(lines) + "\n")
        bounds = []
        for line in lines[2:]:
            image, bound = line.split(",")
            if int(image) != len(bounds):
                raise DrawnetError(f"{self.path}: expected image {len(bounds)}, found {image}")
            bounds.append(float(bound))
        return bounds

    def append(self, first: int, bounds: list):
        """Adds the bounds of images first, first + 1, ...; call read first."""
        self._file.writelines(f"{first + j},{b!r}\n" for j, b in enumerate(bounds))
        self._file.flush()

    def close(self):
        """Releases the lock and the file; a later read takes them again."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def iw_bound(model: DRAW, x: torch.Tensor, K: int, batch_size: int = 500, seed: int = 0, progress: bool = False,
             y=None, bounds_file: Optional[BoundsFile] = None):
    """(mean, standard error) of the per-image importance-weighted bound in nats."""
    return mean_and_stderr(per_image_iw(model, x, K, batch_size, seed, progress, y, bounds_file))


# --- conditional models: do the images show what was asked for? ---
@torch.no_grad()
def label_agreement(model: DRAW, classifier, per_label: int = 100, seed: int = 0, batch_size: int = 500) -> torch.Tensor:
    """For a label model: per label, the fraction of per_label generated images that a digit classifier
    (drawnet.captions.digit_classifier) names as that label. Returns [num_classes]."""
    model.eval()
    labels = torch.arange(model.config.num_classes).repeat_interleave(per_label)
    generator = torch.Generator().manual_seed(seed)
    named = torch.cat([classifier(model.generate(len(y), generator, y=y).images).argmax(1)
                       for y in labels.split(batch_size)])
    return (named == labels).view(-1, per_label).float().mean(1)


@torch.no_grad()
def captions_agreement(model: DRAW, captions, classifier, per_caption: int = 10, seed: int = 0,
                       batch_size: int = 500, progress: bool = False) -> dict:
    """For a caption model: drawnet.captions.caption_agreement of per_caption images generated for each caption:
    the fractions whose digits, positions and both agree with their caption."""
    from .captions import caption_agreement, encode_captions

    model.eval()
    texts = [c for c in captions for _ in range(per_caption)]
    generator = torch.Generator().manual_seed(seed)
    images = [model.generate(len(chunk), generator, y=encode_captions(chunk)).images
              for chunk in tqdm([texts[i : i + batch_size] for i in range(0, len(texts), batch_size)],
                                desc="drawing", disable=not progress, leave=False)]
    return caption_agreement(torch.cat(images), texts, classifier)
