"""DRAW's differentiable 2-D Gaussian filterbank attention (Gregor et al. 2015, section 3.2).

Images are arrays of shape [batch, C, B, A]: width A (x axis), height B (y axis). All pixel and
filter indices are 1-based exactly as in the paper's equations (SPEC.md).
"""
from typing import NamedTuple

import torch

EPS = 1e-8  # guards the filter normalisation Z against underflow far outside the image


class Window(NamedTuple):
    """One attention window per image: each field has shape [batch]."""

    gx: torch.Tensor
    gy: torch.Tensor
    sigma2: torch.Tensor
    delta: torch.Tensor
    gamma: torch.Tensor


def window_from_params(params: torch.Tensor, N: int, A: int, B: int) -> Window:
    """Map the linear layer's 5 outputs to a window (eq. 21-24).

    (gx~, gy~, log sigma2, log delta~, log gamma) = W h_dec;
    gx = (A+1)/2 (gx~+1), gy = (B+1)/2 (gy~+1), delta = (max(A,B)-1)/(N-1) delta~.
    """
    gx_, gy_, log_sigma2, log_delta_, log_gamma = params.unbind(-1)
    gx = (A + 1) / 2 * (gx_ + 1)
    gy = (B + 1) / 2 * (gy_ + 1)
    # With N = 1 there is a single filter at the centre and delta never enters mu.
    delta = (max(A, B) - 1) / max(N - 1, 1) * torch.exp(log_delta_)
    return Window(gx, gy, torch.exp(log_sigma2), delta, torch.exp(log_gamma))


def _filters(g: torch.Tensor, delta: torch.Tensor, sigma2: torch.Tensor, N: int, size: int) -> torch.Tensor:
    """One axis of the filterbank: F[i, a] = exp(-(a - mu_i)^2 / (2 sigma2)) / Z (eq. 25-26)."""
    i = torch.arange(1, N + 1, dtype=g.dtype, device=g.device)
    a = torch.arange(1, size + 1, dtype=g.dtype, device=g.device)
    mu = g[:, None] + (i - N / 2 - 0.5) * delta[:, None]  # eq. 19-20, [batch, N]
    F = torch.exp(-((a - mu[:, :, None]) ** 2) / (2 * sigma2[:, None, None]))
    return F / F.sum(-1, keepdim=True).clamp(min=EPS)


def filterbank(gx, gy, sigma2, delta, N: int, A: int, B: int):
    """Return (Fx [batch, N, A], Fy [batch, N, B]) for 1-D tensors of length batch (eq. 19-20, 25-26)."""
    for name, v in (("gx", gx), ("gy", gy), ("sigma2", sigma2), ("delta", delta)):
        if v.dim() != 1:
            raise ValueError(f"{name} must be a 1-D tensor of length batch, got shape {tuple(v.shape)}")
    return _filters(gx, delta, sigma2, N, A), _filters(gy, delta, sigma2, N, B)


def read_attention(x: torch.Tensor, Fx: torch.Tensor, Fy: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """gamma * Fy x Fx^T for every channel (eq. 27): [batch, C, B, A] -> [batch, C, N, N]."""
    patch = Fy[:, None] @ x @ Fx[:, None].transpose(-1, -2)
    return gamma[:, None, None, None] * patch


def write_attention(w: torch.Tensor, Fx: torch.Tensor, Fy: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """(1/gamma) Fy^T w Fx for every channel (eq. 29): [batch, C, N, N] -> [batch, C, B, A]."""
    image = Fy[:, None].transpose(-1, -2) @ w @ Fx[:, None]
    return image / gamma[:, None, None, None]
