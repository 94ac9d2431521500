"""The models shipped in the package load, draw, and score what the README says they score."""
import re
from pathlib import Path

import pytest
import torch

from drawnet import DRAW
from drawnet.cli import PRETRAINED
from drawnet.data import TEST_SEED, binarize, load_dataset
from drawnet.evaluate import elbo

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_bound_on_1000(name: str) -> float:
    """The 'test ELBO, first 1,000 images' cell of the model's row in the README's shipped-models table."""
    for line in README.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == f"`{name}`" and len(cells) >= 5:
            return float(re.match(r"[\d.]+", cells[4]).group())
    raise AssertionError(f"no row for {name} in the README's shipped-models table")


@pytest.fixture(scope="module")
def test_images():
    return binarize(load_dataset("mnist").test, TEST_SEED)[:1000]


@pytest.mark.parametrize("name", ["mnist", "mnist-noattn"])
def test_shipped_model_matches_readme(name, test_images):
    model = DRAW.from_pretrained(PRETRAINED / name)
    assert model.config.read_attention == (name == "mnist")
    mean, _ = elbo(model, test_images, batch_size=500, seed=0)
    assert abs(mean - readme_bound_on_1000(name)) <= 2.0
    gen = model.generate(4, generator=torch.Generator().manual_seed(0))
    assert gen.images.shape == (4, 1, 28, 28) and torch.isfinite(gen.images).all()
