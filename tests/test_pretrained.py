"""The models shipped in the package load, draw, and score what the README says they score."""
import re
from pathlib import Path

import pytest
import torch

from drawnet import DRAW
from drawnet.cli import PRETRAINED, SHIPPED
from drawnet.data import TEST_SEED, binarize, load_images_and_labels
from drawnet.evaluate import BoundsFile, elbo, mean_and_stderr, model_fingerprint
from drawnet.train import PRESET_DATASETS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def readme_cell(name: str, column: int) -> str:
    """A cell of the model's row in the README's shipped-models table."""
    for line in README.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == f"`{name}`" and len(cells) >= 8:
            return cells[column]
    raise AssertionError(f"no row for {name} in the README's shipped-models table")


def readme_bound_on_1000(name: str) -> float:
    """The 'test ELBO, first 1,000' cell."""
    return float(re.match(r"[\d.]+", readme_cell(name, 5)).group())


def test_every_preset_with_a_data_set_ships_a_model():
    assert set(SHIPPED) == {"mnist", "mnist-noattn", "mnist-label", "mnist-captions", "two-digit-mnist"}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_matches_readme(name):
    model = DRAW.from_pretrained(PRETRAINED / name)
    cfg = model.config
    dataset = PRESET_DATASETS[name]
    images, labels = load_images_and_labels(dataset, shape=(cfg.channels, cfg.height, cfg.width))
    # as `drawnet eval --limit 1000` scores them: the first 1,000 test images, binarised with the test seed
    x = binarize(images.test[:1000], TEST_SEED)
    y = labels.test[:1000] if model.condition else None
    mean, _ = elbo(model, x, batch_size=500, seed=0, y=y)
    assert abs(mean - readme_bound_on_1000(name)) <= 2.0
    gen = model.generate(4, generator=torch.Generator().manual_seed(0), y=None if y is None else y[:4])
    assert gen.images.shape == (4, cfg.channels, cfg.height, cfg.width) and torch.isfinite(gen.images).all()


@pytest.mark.parametrize("name, bounds_file", [("mnist", "test-iw1000-step248041.csv"),
                                               ("mnist-noattn", "test-iw1000-step48751.csv")])
def test_readme_iw1000_is_the_committed_bounds_of_the_shipped_model(name, bounds_file):
    """The 'IW bound (K=1000), 10,000 images' cell is the mean +- standard error over the per-image bounds that
    the README's `drawnet eval --iw 1000 --bounds-file checkpoints/NAME/...` left for the shipped weights (read
    as that command reads them, so a file of other weights is refused); an evaluation still going says over
    how many of the first images."""
    cell = re.fullmatch(r"([\d.]+) \+- ([\d.]+) nats(?: on the first ([\d,]+))?", readme_cell(name, 7))
    assert cell, f"{name}'s K=1000 cell: {readme_cell(name, 7)!r}"
    images = int(cell[3].replace(",", "")) if cell[3] else 10_000
    settings = {"K": 1000, "seed": 0, "dataset": "mnist",
                "model": model_fingerprint(DRAW.from_pretrained(PRETRAINED / name))}
    with BoundsFile(ROOT / "checkpoints" / name / bounds_file, settings) as committed:
        bounds = committed.read()
    assert len(bounds) >= images
    mean, stderr = mean_and_stderr(torch.tensor(bounds[:images]))
    assert (f"{mean:.2f}", f"{stderr:.2f}") == (cell[1], cell[2])
