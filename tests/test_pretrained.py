"""The models shipped in the package load, draw, and score what the README says they score."""
import re
from pathlib import Path

import pytest
import torch

from drawnet import DRAW
from drawnet.cli import PRETRAINED, SHIPPED
from drawnet.data import TEST_SEED, binarize, load_images_and_labels
from drawnet.evaluate import elbo
from drawnet.train import PRESET_DATASETS

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_bound_on_1000(name: str) -> float:
    """The 'test ELBO, first 1,000' cell of the model's row in the README's shipped-models table."""
    for line in README.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == f"`{name}`" and len(cells) >= 6:
            return float(re.match(r"[\d.]+", cells[5]).group())
    raise AssertionError(f"no row for {name} in the README's shipped-models table")


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
