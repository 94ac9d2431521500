"""Observation models D(x | c_T): how the final canvas scores an image, in nats per image."""
import math

import torch
import torch.nn.functional as F
from torch import nn


class Bernoulli(nn.Module):
    """Binary pixels with probabilities sigmoid(c_T); L_x is the binary cross-entropy summed over pixels."""

    def nll(self, canvas: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log D(x | c_T) per image, [batch]."""
        return F.binary_cross_entropy_with_logits(canvas, x, reduction="none").flatten(1).sum(1)

    def mean(self, canvas: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(canvas)

    def sample(self, canvas: torch.Tensor, generator=None) -> torch.Tensor:
        return torch.bernoulli(torch.sigmoid(canvas), generator=generator)


class DiscretizedLogistic(nn.Module):
    """8-bit pixels x = k/255 under a logistic with mean sigmoid(c_T) and a learned scale per channel,
    integrated over each pixel's bin (the edge bins take the tails), so that bits/dim is a true bound."""

    def __init__(self, channels: int):
        super().__init__()
        self.log_scale = nn.Parameter(torch.full((channels,), math.log(0.1)))

    def nll(self, canvas: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        mu = torch.sigmoid(canvas)
        log_s = self.log_scale.clamp(min=-7.0)[:, None, None]
        inv_s = torch.exp(-log_s)
        centred = x - mu
        plus = inv_s * (centred + 0.5 / 255)
        minus = inv_s * (centred - 0.5 / 255)
        log_cdf_plus = F.logsigmoid(plus)  # bin k = 0 takes the left tail
        log_sf_minus = -F.softplus(minus)  # bin k = 255 takes the right tail
        cdf_delta = torch.sigmoid(plus) - torch.sigmoid(minus)
        # When the bin mass underflows, fall back to density times bin width.
        mid = inv_s * centred
        log_pdf_mid = mid - log_s - 2 * F.softplus(mid) - math.log(255)
        log_mid = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp(min=1e-12)), log_pdf_mid)
        log_p = torch.where(x < 0.5 / 255, log_cdf_plus, torch.where(x > 1 - 0.5 / 255, log_sf_minus, log_mid))
        return -log_p.flatten(1).sum(1)

    def mean(self, canvas: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(canvas)

    def sample(self, canvas: torch.Tensor, generator=None) -> torch.Tensor:
        u = torch.rand(canvas.shape, generator=generator, device=canvas.device).clamp(1e-5, 1 - 1e-5)
        s = torch.exp(self.log_scale)[:, None, None]
        x = torch.sigmoid(canvas) + s * (torch.log(u) - torch.log1p(-u))
        return torch.round(x.clamp(0, 1) * 255) / 255


LIKELIHOODS = {"bernoulli": Bernoulli, "logistic": DiscretizedLogistic}


def make_likelihood(name: str, channels: int) -> nn.Module:
    return Bernoulli() if name == "bernoulli" else DiscretizedLogistic(channels)
