"""A plain DRAW written the obvious way: the yardstick for drawnet's speed and the oracle for its maths.

nn.LSTMCell encoder and decoder, a separate nn.Linear for every head, and a per-step filterbank built
from the equations as written (Gregor et al. 2015, eq. 19-29; SPEC.md). Nothing is fused, cached or
batched across steps. It lives in benchmarks/ only: drawnet does not import it.

`ReferenceDRAW.from_drawnet(model)` copies a drawnet.DRAW's weights into this layout, so that with the
same noise eps the two compute the same loss, and `grads_in_drawnet_layout()` maps its gradients back
onto drawnet's parameter names for comparison.
"""
import torch
import torch.nn.functional as F
from torch import nn


def reference_filterbank(gx, gy, sigma2, delta, N, A, B, eps=1e-8):
    """Fx [batch, N, A], Fy [batch, N, B] with 1-based indices i, a, b (eq. 19-20, 25-26)."""
    i = torch.arange(1, N + 1, dtype=gx.dtype)
    mu_x = gx[:, None] + (i - N / 2 - 0.5) * delta[:, None]
    mu_y = gy[:, None] + (i - N / 2 - 0.5) * delta[:, None]
    a = torch.arange(1, A + 1, dtype=gx.dtype)
    b = torch.arange(1, B + 1, dtype=gx.dtype)
    Fx = torch.exp(-((a[None, None, :] - mu_x[:, :, None]) ** 2) / (2 * sigma2[:, None, None]))
    Fy = torch.exp(-((b[None, None, :] - mu_y[:, :, None]) ** 2) / (2 * sigma2[:, None, None]))
    Fx = Fx / Fx.sum(dim=2, keepdim=True).clamp(min=eps)
    Fy = Fy / Fy.sum(dim=2, keepdim=True).clamp(min=eps)
    return Fx, Fy


def reference_window(params, N, A, B):
    """(gx, gy, sigma2, delta, gamma) from the 5 linear outputs (eq. 21-24)."""
    gx_, gy_, log_sigma2, log_delta, log_gamma = params[:, 0], params[:, 1], params[:, 2], params[:, 3], params[:, 4]
    gx = (A + 1) / 2 * (gx_ + 1)
    gy = (B + 1) / 2 * (gy_ + 1)
    delta = (max(A, B) - 1) / max(N - 1, 1) * torch.exp(log_delta)
    return gx, gy, torch.exp(log_sigma2), delta, torch.exp(log_gamma)


class ReferenceDRAW(nn.Module):
    """DRAW with zero initial states, Bernoulli likelihood, loss = mean over the batch of L_x + L_z."""

    def __init__(self, height=28, width=28, channels=1, T=64, enc_size=256, dec_size=256, z_size=100,
                 read_n=2, write_n=5, read_attention=True, write_attention=True):
        super().__init__()
        self.H, self.W, self.C, self.T = height, width, channels, T
        self.read_n, self.write_n = read_n, write_n
        self.read_attn, self.write_attn = read_attention, write_attention
        self.enc_size, self.dec_size, self.z_size = enc_size, dec_size, z_size
        read_size = 2 * channels * (read_n * read_n if read_attention else height * width)
        write_size = channels * (write_n * write_n if write_attention else height * width)
        self.encoder = nn.LSTMCell(read_size + dec_size, enc_size)
        self.decoder = nn.LSTMCell(z_size, dec_size)
        self.mu = nn.Linear(enc_size, z_size)
        self.log_sigma = nn.Linear(enc_size, z_size)
        self.write_head = nn.Linear(dec_size, write_size)
        self.write_window = nn.Linear(dec_size, 5) if write_attention else None
        self.read_window = nn.Linear(dec_size, 5) if read_attention else None

    @classmethod
    def from_config(cls, config):
        """Build from a drawnet.DrawConfig (only the fields this reference knows)."""
        if config.likelihood != "bernoulli":
            raise ValueError("the reference implements the Bernoulli likelihood only")
        return cls(config.height, config.width, config.channels, config.T, config.enc_size, config.dec_size,
                   config.z_size, config.read_n, config.write_n, config.read_attention, config.write_attention)

    def read(self, x, x_hat, h_dec_prev):
        if not self.read_attn:
            return torch.cat([x.flatten(1), x_hat.flatten(1)], dim=1)
        N = self.read_n
        gx, gy, sigma2, delta, gamma = reference_window(self.read_window(h_dec_prev), N, self.W, self.H)
        Fx, Fy = reference_filterbank(gx, gy, sigma2, delta, N, self.W, self.H)
        def glimpse(img):  # gamma * Fy img Fx^T, per channel
            return gamma[:, None, None, None] * (Fy[:, None] @ img @ Fx[:, None].transpose(-1, -2))
        return torch.cat([glimpse(x).flatten(1), glimpse(x_hat).flatten(1)], dim=1)

    def write(self, h_dec):
        w = self.write_head(h_dec)
        if not self.write_attn:
            return w.view(-1, self.C, self.H, self.W)
        N = self.write_n
        gx, gy, sigma2, delta, gamma = reference_window(self.write_window(h_dec), N, self.W, self.H)
        Fx, Fy = reference_filterbank(gx, gy, sigma2, delta, N, self.W, self.H)
        w = w.view(-1, self.C, N, N)
        return (Fy[:, None].transpose(-1, -2) @ w @ Fx[:, None]) / gamma[:, None, None, None]

    def forward(self, x, noise=None):
        """Return the mean loss over the batch; noise, if given, is a list of T tensors [batch, z]."""
        batch = x.shape[0]
        h_enc = x.new_zeros(batch, self.enc_size)
        c_enc = x.new_zeros(batch, self.enc_size)
        h_dec = x.new_zeros(batch, self.dec_size)
        c_dec = x.new_zeros(batch, self.dec_size)
        canvas = x.new_zeros(batch, self.C, self.H, self.W)
        L_z = x.new_zeros(batch)
        for t in range(self.T):
            x_hat = x - torch.sigmoid(canvas)
            r = self.read(x, x_hat, h_dec)
            h_enc, c_enc = self.encoder(torch.cat([r, h_dec], dim=1), (h_enc, c_enc))
            mu = self.mu(h_enc)
            log_sigma = self.log_sigma(h_enc)
            sigma = torch.exp(log_sigma)
            eps = torch.randn_like(mu) if noise is None else noise[t]
            z = mu + sigma * eps
            h_dec, c_dec = self.decoder(z, (h_dec, c_dec))
            canvas = canvas + self.write(h_dec)
            L_z = L_z + 0.5 * (mu * mu + sigma * sigma - 2 * log_sigma - 1).sum(dim=1)
        L_x = F.binary_cross_entropy_with_logits(canvas, x, reduction="none").flatten(1).sum(dim=1)
        return (L_x + L_z).mean()

    # --- mapping to and from drawnet's parameter layout ---
    @torch.no_grad()
    def copy_from_drawnet(self, model):
        """Copy drawnet.DRAW weights. drawnet's encoder reads [r, h_dec, h_enc] and its decoder [z, h_dec],
        both with gate order (i, f, g, o) as nn.LSTMCell; dec_out rows are [w_t, write window, read window]."""
        r_and_hdec = self.encoder.input_size
        self.encoder.weight_ih.copy_(model.encoder.weight[:, :r_and_hdec])
        self.encoder.weight_hh.copy_(model.encoder.weight[:, r_and_hdec:])
        self.encoder.bias_ih.copy_(model.encoder.bias)
        self.encoder.bias_hh.zero_()
        self.decoder.weight_ih.copy_(model.decoder.weight[:, : self.z_size])
        self.decoder.weight_hh.copy_(model.decoder.weight[:, self.z_size :])
        self.decoder.bias_ih.copy_(model.decoder.bias)
        self.decoder.bias_hh.zero_()
        Z = self.z_size
        self.mu.weight.copy_(model.q.weight[:Z]), self.mu.bias.copy_(model.q.bias[:Z])
        self.log_sigma.weight.copy_(model.q.weight[Z:]), self.log_sigma.bias.copy_(model.q.bias[Z:])
        for head, rows in self._dec_out_rows():
            head.weight.copy_(model.dec_out.weight[rows]), head.bias.copy_(model.dec_out.bias[rows])
        return self

    @classmethod
    def from_drawnet(cls, model):
        ref = next(model.parameters())
        return cls.from_config(model.config).to(ref.device, ref.dtype).copy_from_drawnet(model)

    def _dec_out_rows(self):
        n = self.write_head.out_features
        heads = [(self.write_head, slice(0, n))]
        if self.write_window is not None:
            heads.append((self.write_window, slice(n, n + 5)))
            n += 5
        if self.read_window is not None:
            heads.append((self.read_window, slice(n, n + 5)))
        return heads

    def grads_in_drawnet_layout(self):
        """{drawnet parameter name: gradient} assembled from this model's .grad fields."""
        g = lambda p: p.grad if p.grad is not None else torch.zeros_like(p)  # noqa: E731
        dec_out = self._dec_out_rows()
        return {
            "encoder.weight": torch.cat([g(self.encoder.weight_ih), g(self.encoder.weight_hh)], dim=1),
            "encoder.bias": g(self.encoder.bias_ih),  # bias_hh gets the same gradient
            "decoder.weight": torch.cat([g(self.decoder.weight_ih), g(self.decoder.weight_hh)], dim=1),
            "decoder.bias": g(self.decoder.bias_ih),
            "q.weight": torch.cat([g(self.mu.weight), g(self.log_sigma.weight)]),
            "q.bias": torch.cat([g(self.mu.bias), g(self.log_sigma.bias)]),
            "dec_out.weight": torch.cat([g(head.weight) for head, _ in dec_out]),
            "dec_out.bias": torch.cat([g(head.bias) for head, _ in dec_out]),
        }
