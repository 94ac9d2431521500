"""Bounds: the ELBO and the importance-weighted bound (IW with K=1 is the ELBO in expectation,
and the IW bound does not grow with K), and IW evaluations that stop and continue."""
import math
from types import SimpleNamespace

import pytest
import torch

from drawnet import DRAW, DrawConfig
from drawnet.errors import DrawnetError
from drawnet.evaluate import (BoundsFile, elbo, iw_bound, mean_and_stderr, model_fingerprint, per_image_elbo,
                              per_image_iw)


class FixedWeights:
    """Stands in for DRAW: the k-th trajectory it is asked for gets log w = table[image, k]."""

    def __init__(self, table):
        self.table, self.used = table, torch.zeros(table.shape[0], dtype=torch.long)

    def eval(self):
        return self

    def __call__(self, x, y=None):
        image = x[:, 0, 0, 0].long()  # each test image carries its own index
        k = torch.zeros_like(image)
        for row, i in enumerate(image.tolist()):
            k[row] = self.used[i]
            self.used[i] += 1
        return SimpleNamespace(log_w=self.table[image, k])


@pytest.mark.parametrize("K,batch_size", [(1, 4), (5, 12), (7, 3), (20, 64)])
def test_iw_batching_computes_log_mean_exp_of_every_sample(K, batch_size):
    n = 5
    table = torch.randn(n, K, dtype=torch.float64) * 3 - 90
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    fake = FixedWeights(table)
    bound = per_image_iw(fake, x, K, batch_size=batch_size)
    expected = -(torch.logsumexp(table, dim=1) - math.log(K))
    assert torch.allclose(bound, expected)
    assert fake.used.tolist() == [K] * n  # every sample drawn exactly once


def _model_with_posterior_mismatch():
    """A small DRAW whose posterior is far from the prior, so KL and the IW gap are sizeable."""
    torch.manual_seed(0)
    model = DRAW(DrawConfig(T=3, enc_size=16, dec_size=16, z_size=4))
    with torch.no_grad():
        model.q.weight.mul_(0.1)
        model.q.bias[:4] = 1.0  # mu
        model.q.bias[4:] = -1.0  # log sigma
    return model


def test_iw_with_one_sample_is_the_elbo_in_expectation():
    model = _model_with_posterior_mismatch()
    x = torch.rand(8, 1, 28, 28).bernoulli().repeat(100, 1, 1, 1)
    iw1 = per_image_iw(model, x, K=1, batch_size=400, seed=1)
    bound = per_image_elbo(model, x, batch_size=400, seed=2)
    diff, stderr = mean_and_stderr(iw1 - bound)
    assert abs(diff) < 4 * stderr + 1e-3


def test_iw_bound_does_not_grow_with_k():
    model = _model_with_posterior_mismatch()
    x = torch.rand(16, 1, 28, 28).bernoulli()
    means = [iw_bound(model, x, K, batch_size=256, seed=K)[0] for K in (1, 10, 100)]
    assert means[0] > means[1] > means[2]
    assert means[0] - means[2] > 1.0  # the mismatch makes the gain clear, not noise


def test_elbo_is_repeatable_and_reports_standard_error():
    model = _model_with_posterior_mismatch()
    x = torch.rand(10, 1, 28, 28).bernoulli()
    first, second = elbo(model, x, batch_size=3, seed=5), elbo(model, x, batch_size=3, seed=5)
    assert first == second
    values = per_image_elbo(model, x, batch_size=3, seed=5).double()
    assert first[1] == pytest.approx(values.std().item() / math.sqrt(10))


def test_iw_rejects_k_below_one():
    with pytest.raises(ValueError):
        per_image_iw(_model_with_posterior_mismatch(), torch.zeros(1, 1, 28, 28), K=0)


SETTINGS = {"K": 4, "seed": 3, "dataset": "test", "model": "abc"}


def test_stopped_iw_evaluation_continues_to_the_uninterrupted_numbers(tmp_path):
    model = _model_with_posterior_mismatch()
    x = torch.rand(10, 1, 28, 28).bernoulli()
    straight = per_image_iw(model, x, K=4, batch_size=8, seed=3)  # two images per pass
    bounds_file = BoundsFile(tmp_path / "iw.csv", SETTINGS)
    first = per_image_iw(model, x[:4], K=4, batch_size=8, seed=3, bounds_file=bounds_file)
    assert torch.equal(first, straight[:4])
    # A kill while writing leaves a torn last line: it is dropped and that image evaluated again.
    with open(tmp_path / "iw.csv", "a") as f:
        f.write("4,81.2")
    assert bounds_file.read() == first.tolist()
    resumed = per_image_iw(model, x, K=4, batch_size=8, seed=3, bounds_file=bounds_file)
    assert torch.equal(resumed, straight)
    lines = (tmp_path / "iw.csv").read_text().splitlines()
    assert lines[1] == "image,bound" and [int(line.split(",")[0]) for line in lines[2:]] == list(range(10))
    # A finished file answers without evaluating again (another seed would give other numbers), also for fewer
    # images.
    assert torch.equal(per_image_iw(model, x[:6], K=4, batch_size=8, seed=99, bounds_file=bounds_file),
                       straight[:6])


def test_bounds_file_refuses_other_settings_and_other_files(tmp_path):
    BoundsFile(tmp_path / "iw.csv", SETTINGS).read()
    with pytest.raises(DrawnetError, match="holds bounds for"):
        BoundsFile(tmp_path / "iw.csv", {**SETTINGS, "K": 5}).read()
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DrawnetError, match="not a drawnet bounds file"):
        BoundsFile(tmp_path / "other.csv", SETTINGS).read()


def test_bounds_file_has_one_writer_at_a_time(tmp_path):
    writer = BoundsFile(tmp_path / "iw.csv", SETTINGS)
    writer.read()
    assert writer.read() == []  # the writer itself reads again freely
    with pytest.raises(DrawnetError, match="another evaluation is writing"):
        BoundsFile(tmp_path / "iw.csv", SETTINGS).read()
    writer.close()
    with BoundsFile(tmp_path / "iw.csv", SETTINGS) as next_writer:
        assert next_writer.read() == []
        with pytest.raises(DrawnetError, match="another evaluation is writing"):
            writer.read()
    assert writer.read() == []  # leaving the with released the file


def test_model_fingerprint_tells_weights_apart():
    model = _model_with_posterior_mismatch()
    before = model_fingerprint(model)
    assert before == model_fingerprint(_model_with_posterior_mismatch()) and len(before) == 16
    with torch.no_grad():
        model.q.bias[0] += 1e-6
    assert model_fingerprint(model) != before
