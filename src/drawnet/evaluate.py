"""Test-set bounds on -log p(x) in nats: the ELBO (SPEC.md's L = L_x + L_z) and the importance-weighted
bound with K whole-trajectory samples."""
import math

import torch
from tqdm import tqdm

from .model import DRAW


@torch.no_grad()
def per_image_elbo(model: DRAW, x: torch.Tensor, batch_size: int = 500, seed: int = 0, progress: bool = False):
    """L_x + L_z for every image, [n] (the posterior noise is seeded, so repeated calls agree)."""
    model.eval()
    torch.manual_seed(seed)
    chunks = []
    for i in tqdm(range(0, len(x), batch_size), desc="eval", disable=not progress, leave=False):
        out = model(x[i : i + batch_size])
        chunks.append(out.L_x + out.L_z)
    return torch.cat(chunks)


def mean_and_stderr(values: torch.Tensor):
    values = values.double()
    stderr = values.std().item() / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return values.mean().item(), stderr


def elbo(model: DRAW, x: torch.Tensor, batch_size: int = 500, seed: int = 0, progress: bool = False):
    """(mean, standard error) of the per-image ELBO bound in nats."""
    return mean_and_stderr(per_image_elbo(model, x, batch_size, seed, progress))
