"""DRAW's differentiable 2-D Gaussian filterbank attention (Gregor et al. 2015, section 3.2).

Images are arrays of shape [batch, C, B, A]: width A (x axis), height B (y axis). All pixel and
filter indices are 1-based exactly as in the paper's equations (SPEC.md).
"""
import functools
import math
from typing import NamedTuple

import torch

EPS = 1e-8  # guards the filter normalisation Z against underflow far outside the image (Z >= EPS)
LOG2_E = math.log2(math.e)


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


def grid_window_params(N: int, A: int, B: int) -> torch.Tensor:
    """The 5 parameters (eq. 21-24 solved for them) of the centred window that cuts the image into an N x N
    grid of cells, one filter per cell: delta = max(A, B) / N, sigma = delta / 2, gamma = 1."""
    delta = max(A, B) / N
    log_delta_ = math.log(delta * (N - 1) / (max(A, B) - 1)) if N > 1 else 0.0  # delta is unused when N = 1
    return torch.tensor([0.0, 0.0, math.log(delta**2 / 4), log_delta_, 0.0])


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


# --- the fused read and write used by DRAW's training loop --------------------------------------------
#
# read_attention(filterbank(window_from_params(...))) is a chain of some forty tiny tensor ops; autograd
# records each of them and replays about twice as many in the backward pass, 64 times per image batch.
# On a CPU that per-op overhead, not arithmetic, dominated the attention's cost, so the two functions
# below do the same maths as one autograd node each, with the backward written out by hand. They are
# checked against the plain functions above (tests/test_fastpath.py).


@functools.lru_cache(maxsize=None)
def _positions(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """1, 2, ..., n: the 1-based pixel indices a (or b) of eq. 25-26, built once per size."""
    with torch.inference_mode(False), torch.no_grad():
        return torch.arange(1, n + 1, dtype=dtype, device=device)


@functools.lru_cache(maxsize=None)
def _offsets(N: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """i - N/2 - 0.5 for i = 1..N: filter i's centre is g + offset_i * delta (eq. 19-20)."""
    with torch.inference_mode(False), torch.no_grad():
        return torch.arange(1, N + 1, dtype=dtype, device=device) - N / 2 - 0.5


@functools.lru_cache(maxsize=None)
def _window_scales(N: int, A: int, B: int, dtype: torch.dtype, device: torch.device):
    """The constants of eq. 21-24: ((A+1)/2, (B+1)/2) for (gx, gy) and (1, (max(A,B)-1)/(N-1), 1) for
    (sigma2, delta, gamma)."""
    with torch.inference_mode(False), torch.no_grad():
        return (torch.tensor([(A + 1) / 2, (B + 1) / 2], dtype=dtype, device=device),
                torch.tensor([1.0, (max(A, B) - 1) / max(N - 1, 1), 1.0], dtype=dtype, device=device))


def _gaussian_filters(g, delta, inv_sigma2, N, size):
    """eq. 19-20, 25-26 for centres g [batch, k] (k = 1 or 2 axes of the same size): F [batch, k, N, size]
    and the distances a - mu_i that the backward needs."""
    n, k = g.shape
    mu = torch.addcmul(g.view(n, k, 1), _offsets(N, g.dtype, g.device), delta.view(n, 1, 1))  # [batch, k, N]
    dist = _positions(size, g.dtype, g.device) - mu.view(n, k, N, 1)
    # exp(q) as exp2(q log2(e)): torch.exp goes through MKL's vector exp, which is 10-30x slower for the
    # arguments below about -87 that underflow, and most entries far from a filter's centre do. exp2 in
    # turn slows down below -126, where it returns denormals; clamping there changes F by < 1e-30.
    q2 = dist.square().mul_((-0.5 * LOG2_E * inv_sigma2).view(n, 1, 1, 1))  # q log2(e)
    F = torch.exp2(q2.clamp_(min=-126.0))
    Z = F.sum(-1, keepdim=True)
    normalised = Z >= EPS  # where Z is not clamped, the backward goes through the division by it
    F /= Z.clamp_(min=EPS)
    return F, dist, normalised


def _gaussian_filters_backward(dF, F, dist, normalised, inv_sigma2, N):
    """Gradients of (g [batch, k], delta, sigma2) from dF. With q = -(a - mu)^2 / (2 sigma2) and
    F = exp(q) / Z, Z = max(sum_a exp(q), EPS): dq = F (dF - sum_a dF F) where Z is the sum (and dq = F dF
    where Z is the constant EPS), dmu_i = sum_a dq (a - mu_i) / sigma2,
    dsigma2 = sum dq (a - mu)^2 / (2 sigma2^2), dg = sum_i dmu_i, ddelta = sum_i offset_i dmu_i."""
    dq = F * (dF - (dF * F).sum(-1, keepdim=True) * normalised)
    dq_dist = dq * dist
    d_mu = dq_dist.sum(-1) * inv_sigma2.view(-1, 1, 1)
    d_sigma2 = (dq_dist * dist).sum((1, 2, 3)) * (0.5 * inv_sigma2.square())
    d_delta = (d_mu @ _offsets(N, F.dtype, F.device)).sum(1)
    return d_mu.sum(-1), d_delta, d_sigma2


class _Filterbank:
    """window_from_params and filterbank in few tensor ops (both axes in one go for square images), with
    the backward from d loss / d (Fx, Fy, gamma) to d loss / d params written out."""

    def __init__(self, params, N, A, B):
        # eq. 21-24: (gx, gy) = (A+1)/2, (B+1)/2 times (g~ + 1); (sigma2, delta, gamma) = exp(.) times (1, d, 1)
        self.g_scale, e_scale = _window_scales(N, A, B, params.dtype, params.device)
        g_, log_e = params.split([2, 3], 1)
        g = torch.addcmul(self.g_scale, g_, self.g_scale)
        self.e = torch.exp(log_e).mul_(e_scale)
        sigma2, delta, self.gamma = self.e.unbind(1)
        self.inv_sigma2 = torch.reciprocal(sigma2)
        # (F, dist, normalised) for both axes at once when A = B, else for x and then y
        centres_and_sizes = [(g, A)] if A == B else [(g[:, :1], A), (g[:, 1:], B)]
        self.parts = [_gaussian_filters(centres, delta, self.inv_sigma2, N, size) for centres, size in centres_and_sizes]
        self.Fx, self.Fy = self.parts[0][0].unbind(1) if A == B else (F[:, 0] for F, _, _ in self.parts)

    def saved(self):
        """What backward() needs, for ctx.save_for_backward."""
        return [self.g_scale, self.e, self.inv_sigma2] + [t for part in self.parts for t in part]

    @staticmethod
    def backward(saved, N, dFx, dFy, d_gamma):
        """d loss / d params from d loss / d (Fx, Fy, gamma); saved is what saved() returned."""
        g_scale, e, inv_sigma2, *parts = saved
        if len(parts) == 3:  # both axes in one tensor
            d_g, d_delta, d_sigma2 = _gaussian_filters_backward(torch.stack([dFx, dFy], 1), *parts, inv_sigma2, N)
        else:
            (d_gx, d_delta_x, d_sigma2_x), (d_gy, d_delta_y, d_sigma2_y) = (
                _gaussian_filters_backward(dF.unsqueeze(1), *parts[k : k + 3], inv_sigma2, N)
                for k, dF in ((0, dFx), (3, dFy)))
            d_g, d_delta, d_sigma2 = torch.cat([d_gx, d_gy], 1), d_delta_x + d_delta_y, d_sigma2_x + d_sigma2_y
        # back through eq. 21-24; the last three are exponentials, so each derivative is the value itself
        return torch.cat([d_g * g_scale, torch.stack([d_sigma2, d_delta, d_gamma], 1) * e], 1)


class _FusedRead(torch.autograd.Function):
    """r = gamma [Fy x Fx^T, Fy x_hat Fx^T] from the 5 window parameters (eq. 21-27), as one node."""

    @staticmethod
    def forward(ctx, params, x, x_hat, N):
        n, C, B, A = x.shape
        bank = _Filterbank(params, N, A, B)
        Fx, Fy, gamma = bank.Fx, bank.Fy, bank.gamma
        # Rows of X are image rows b; columns run over (x or x_hat, channel, a). Putting the N filters
        # on the rows of each product (N x B times B x 2CA) is the layout MKL's batched GEMM is fast at.
        X = torch.cat([x.transpose(1, 2), x_hat.transpose(1, 2)], 2).view(n, B, 2 * C * A)
        V = torch.bmm(Fy, X)  # Fy X: [n, j, (s, c, a)]
        P = torch.bmm(V.view(n, N * 2 * C, A), Fx.transpose(1, 2))  # (Fy X) Fx^T: [n, (j, s, c), i]
        glimpse = P.view(n, N, 2 * C, N).transpose(1, 2).reshape(n, 2 * C * N * N)  # read()'s order (s, c, j, i)
        ctx.save_for_backward(Fx, Fy, gamma, X, V, glimpse, *bank.saved())
        ctx.N, ctx.C = N, C
        return gamma[:, None] * glimpse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_r):
        Fx, Fy, gamma, X, V, glimpse, *saved = ctx.saved_tensors
        N, C = ctx.N, ctx.C
        n, B, A = X.shape[0], X.shape[1], X.shape[2] // (2 * C)
        d_gamma = (d_r * glimpse).sum(1)
        G = (gamma[:, None] * d_r).view(n, 2 * C * N, N)  # d loss / d (Fy X Fx^T): [n, (s, c, j), i]
        GF = torch.bmm(G, Fx).view(n, 2 * C, N, A).transpose(1, 2).reshape(n, N, 2 * C * A)  # [n, j, (s, c, a)]
        dFy = torch.bmm(GF, X.transpose(1, 2))
        dFx = torch.bmm(G.transpose(1, 2), V.view(n, N, 2 * C, A).transpose(1, 2).reshape(n, 2 * C * N, A))
        # d loss / d x_hat = Fy^T G Fx for the x_hat half of the columns (and the x half only if asked)
        d_x, d_x_hat = (
            torch.bmm(Fy.transpose(1, 2), half).view(n, B, C, A).transpose(1, 2) if needed else None
            for half, needed in zip(GF.split(C * A, 2), ctx.needs_input_grad[1:3])
        )
        d_params = _Filterbank.backward(saved, N, dFx, dFy, d_gamma)
        return d_params, d_x, d_x_hat, None


class _FusedWrite(torch.autograd.Function):
    """(1/gamma) Fy^T w Fx from the 5 window parameters (eq. 21-26, 29), as one node."""

    @staticmethod
    def forward(ctx, w, params, N, B, A):
        n, C = w.shape[0], w.shape[1] // (N * N)
        bank = _Filterbank(params, N, A, B)
        Fx, Fy, gamma = bank.Fx, bank.Fy, bank.gamma
        w = (w / gamma.view(n, 1)).view(n, C * N, N)  # 1/gamma applied to the N x N patch, not the image
        WF = torch.bmm(w, Fx).view(n, C, N, A).transpose(1, 2).reshape(n, N, C * A)  # w Fx: [n, j, (c, a)]
        image = torch.bmm(Fy.transpose(1, 2), WF)  # Fy^T w Fx: [n, b, (c, a)]
        ctx.save_for_backward(w, Fx, Fy, gamma, WF, *bank.saved())
        ctx.N = N
        return image.view(n, B, C, A).transpose(1, 2)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_image):
        w, Fx, Fy, gamma, WF, *saved = ctx.saved_tensors  # w is the patch already divided by gamma
        N = ctx.N
        n, C, B, A = d_image.shape
        dI = d_image.transpose(1, 2).reshape(n, B, C * A)
        dFy = torch.bmm(WF, dI.transpose(1, 2))
        dWF = torch.bmm(Fy, dI).view(n, N, C, A).transpose(1, 2).reshape(n, C * N, A)  # [n, (c, j), a]
        dFx = torch.bmm(w.transpose(1, 2), dWF)
        d_w = torch.bmm(dWF, Fx.transpose(1, 2)).view(n, C * N * N)  # d loss / d (w / gamma)
        d_gamma = -(d_w * w.view(n, C * N * N)).sum(1) / gamma
        d_params = _Filterbank.backward(saved, N, dFx, dFy, d_gamma)
        return d_w / gamma.view(n, 1), d_params, None, None, None


def fused_read(x: torch.Tensor, x_hat: torch.Tensor, params: torch.Tensor, N: int) -> torch.Tensor:
    """read(x, x_hat, h_dec) (eq. 27) from the window parameters [batch, 5]: [batch, 2*C*N*N], equal to
    read_attention(cat([x, x_hat], 1), *filterbank(window_from_params(params, N, A, B))).flatten(1)."""
    return _FusedRead.apply(params, x, x_hat, N)


def fused_write(w: torch.Tensor, params: torch.Tensor, N: int, height: int, width: int) -> torch.Tensor:
    """write(h_dec) (eq. 29) for patches w [batch, C*N*N] and window parameters [batch, 5]: [batch, C, H, W]."""
    return _FusedWrite.apply(w, params, N, height, width)
