"""Observation models: -log D(x | c_T) in nats per image."""
import math

import pytest
import torch

from drawnet.likelihoods import LIKELIHOODS, Bernoulli, DiscretizedLogistic, make_likelihood


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def test_bernoulli_nll_is_hand_computed_bce():
    canvas = torch.tensor([[[[0.3, -1.2], [2.0, 0.0]]], [[[-4.0, 5.0], [0.7, -0.1]]]])
    x = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]], [[[0.0, 1.0], [0.0, 0.25]]]])  # also a non-binary value
    nll = Bernoulli().nll(canvas, x)
    assert nll.shape == (2,)
    for k in range(2):
        expected = 0.0
        for c, v in zip(canvas[k].flatten().tolist(), x[k].flatten().tolist()):
            p = sigmoid(c)
            expected -= v * math.log(p) + (1 - v) * math.log(1 - p)
        assert nll[k].item() == pytest.approx(expected, rel=1e-5)


def test_bernoulli_nll_is_stable_for_extreme_logits():
    canvas = torch.tensor([[[[200.0, -200.0]]]])
    nll = Bernoulli().nll(canvas, torch.tensor([[[[1.0, 0.0]]]]))
    assert torch.isfinite(nll).all() and nll.item() == pytest.approx(0.0, abs=1e-6)
    nll_wrong = Bernoulli().nll(canvas, torch.tensor([[[[0.0, 1.0]]]]))
    assert nll_wrong.item() == pytest.approx(400.0, rel=1e-5)


def test_bernoulli_mean_and_sample():
    lik = Bernoulli()
    canvas = torch.tensor([[[[-30.0, 30.0, 0.0]]]])
    assert torch.allclose(lik.mean(canvas), torch.sigmoid(canvas))
    s = lik.sample(canvas.expand(2000, 1, 1, 3), generator=torch.Generator().manual_seed(0))
    assert set(s.unique().tolist()) <= {0.0, 1.0}
    assert s[:, 0, 0, 0].sum() == 0 and s[:, 0, 0, 1].sum() == 2000
    assert abs(s[:, 0, 0, 2].mean().item() - 0.5) < 0.05


def _all_bins(canvas_value: float, log_scale: float, channels: int = 1):
    """nll of every 8-bit value k/255 for one pixel with the given canvas logit."""
    lik = DiscretizedLogistic(channels)
    with torch.no_grad():
        lik.log_scale.fill_(log_scale)
    x = (torch.arange(256, dtype=torch.float32) / 255).view(256, 1, 1, 1).expand(256, channels, 1, 1)
    canvas = torch.full_like(x, canvas_value)
    return lik, lik.nll(canvas, x)


@pytest.mark.parametrize("canvas_value", [-3.0, 0.0, 0.37, 2.5, 8.0])
@pytest.mark.parametrize("scale", [0.5, 0.1, 0.01, 0.001])
def test_discretized_logistic_bins_sum_to_one(canvas_value, scale):
    _, nll = _all_bins(canvas_value, math.log(scale))
    assert torch.isfinite(nll).all()
    assert (nll >= -1e-6).all()  # probabilities of bins never exceed 1
    total = torch.exp(-nll.double()).sum().item()
    assert total == pytest.approx(1.0, abs=2e-3)


def test_discretized_logistic_interior_bin_is_cdf_difference():
    mu_logit, scale = 0.4, 0.05
    lik = DiscretizedLogistic(1).double()  # float64: no cancellation in the reference comparison
    with torch.no_grad():
        lik.log_scale.fill_(math.log(scale))
    x = (torch.arange(256, dtype=torch.float64) / 255).view(256, 1, 1, 1)
    nll = lik.nll(torch.full_like(x, mu_logit), x)
    mu = sigmoid(mu_logit)
    for k in (60, 100, 150, 200, 254):  # bins with mass > 1e-5: the exact CDF difference
        xk = k / 255
        p = sigmoid((xk + 0.5 / 255 - mu) / scale) - sigmoid((xk - 0.5 / 255 - mu) / scale)
        assert p > 1e-5
        assert nll[k].item() == pytest.approx(-math.log(p), rel=1e-6)
    # A bin with negligible mass falls back to density x bin width, still close to the exact value.
    xk = 1 / 255
    p = sigmoid((xk + 0.5 / 255 - mu) / scale) - sigmoid((xk - 0.5 / 255 - mu) / scale)
    assert nll[1].item() == pytest.approx(-math.log(p), rel=1e-3)
    # The edge bins take the tails.
    assert nll[0].item() == pytest.approx(-math.log(sigmoid((0.5 / 255 - mu) / scale)), rel=1e-6)
    assert nll[255].item() == pytest.approx(-math.log(1 - sigmoid((1 - 0.5 / 255 - mu) / scale)), rel=1e-6)


@pytest.mark.parametrize("x_value, canvas_value", [(0.0, 20.0), (1.0, -20.0), (0.0, -20.0), (1.0, 20.0)])
def test_discretized_logistic_edges_are_finite(x_value, canvas_value):
    lik = DiscretizedLogistic(1)
    with torch.no_grad():
        lik.log_scale.fill_(math.log(1e-3))
    canvas = torch.full((1, 1, 2, 2), canvas_value, requires_grad=True)
    nll = lik.nll(canvas, torch.full((1, 1, 2, 2), x_value))
    assert torch.isfinite(nll).all() and (nll >= -1e-6).all()
    nll.sum().backward()
    assert torch.isfinite(canvas.grad).all() and torch.isfinite(lik.log_scale.grad).all()


def test_discretized_logistic_per_channel_scales_and_shape():
    lik = DiscretizedLogistic(3)
    assert lik.log_scale.shape == (3,)
    with torch.no_grad():
        lik.log_scale.copy_(torch.log(torch.tensor([0.02, 0.1, 0.3])))
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 3, 5, 6), generator=gen).float() / 255
    canvas = torch.randn(4, 3, 5, 6, generator=gen)
    nll = lik.nll(canvas, x)
    assert nll.shape == (4,)
    # Per image, the nll is the sum of the per-channel nlls computed with each channel's own scale.
    for c in range(3):
        single = DiscretizedLogistic(1)
        with torch.no_grad():
            single.log_scale.copy_(lik.log_scale[c : c + 1])
        part = single.nll(canvas[:, c : c + 1], x[:, c : c + 1])
        nll = nll - part
    assert torch.allclose(nll, torch.zeros(4), atol=1e-2)


def test_discretized_logistic_sample_is_8_bit():
    lik = DiscretizedLogistic(2)
    s = lik.sample(torch.randn(3, 2, 4, 4), generator=torch.Generator().manual_seed(0))
    assert s.shape == (3, 2, 4, 4)
    assert (s >= 0).all() and (s <= 1).all()
    assert torch.allclose(s * 255, (s * 255).round(), atol=1e-4)


def test_make_likelihood():
    assert set(LIKELIHOODS) == {"bernoulli", "logistic"}
    assert isinstance(make_likelihood("bernoulli", 1), Bernoulli)
    logistic = make_likelihood("logistic", 3)
    assert isinstance(logistic, DiscretizedLogistic) and logistic.log_scale.shape == (3,)
