"""DRAW: the Deep Recurrent Attentive Writer (Gregor et al. 2015), one file, read top to bottom.

Conventions (SPEC.md): images are [batch, C, H, W] in [0, 1]; losses are nats per image.
The initial states c_0, h_enc_0 and h_dec_0 (and both LSTM cell states) are zero, so the first
error image is x - sigmoid(0) = x - 0.5 and the first read window comes from the bias alone.
"""
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional

import torch
from torch import nn

from .attention import Window, filterbank, read_attention, window_from_params, write_attention
from .errors import DrawnetError
from .likelihoods import LIKELIHOODS, make_likelihood

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass(frozen=True)
class DrawConfig:
    """Everything that fixes a DRAW model's architecture; serialised as config.json."""

    height: int = 28
    width: int = 28
    channels: int = 1
    T: int = 64
    read_n: int = 2
    write_n: int = 5
    read_attention: bool = True
    write_attention: bool = True
    enc_size: int = 256
    dec_size: int = 256
    z_size: int = 100
    likelihood: str = "bernoulli"

    def __post_init__(self):
        for name in ("height", "width", "channels", "enc_size", "dec_size", "z_size", "read_n", "write_n"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise DrawnetError(f"config: {name} must be a positive integer, got {value!r}")
        if not isinstance(self.T, int) or isinstance(self.T, bool) or self.T < 1:
            raise DrawnetError(f"config: T must be an integer >= 1 (number of glimpses), got {self.T!r}")
        for name in ("read_attention", "write_attention"):
            if not isinstance(getattr(self, name), bool):
                raise DrawnetError(f"config: {name} must be true or false, got {getattr(self, name)!r}")
        side = min(self.height, self.width)
        for name, used in (("read_n", self.read_attention), ("write_n", self.write_attention)):
            if used and getattr(self, name) > side:
                raise DrawnetError(
                    f"config: {name}={getattr(self, name)} is larger than the image ({self.height}x{self.width})"
                )
        if self.likelihood not in LIKELIHOODS:
            raise DrawnetError(f"config: likelihood must be one of {sorted(LIKELIHOODS)}, got {self.likelihood!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DrawConfig":
        if not isinstance(d, dict):
            raise DrawnetError("config: expected a JSON object")
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise DrawnetError(f"config: unknown field(s) {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def preset(cls, name: str, **overrides) -> "DrawConfig":
        if name not in PRESETS:
            raise DrawnetError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)


# The paper's Table 3 (SPEC.md); colour models use a discretised logistic for 8-bit pixels.
PRESETS = {
    "mnist": DrawConfig(),
    "mnist-noattn": DrawConfig(read_attention=False, write_attention=False),
    "two-digit-mnist": DrawConfig(height=60, width=60),
    "svhn": DrawConfig(height=64, width=64, channels=3, T=32, read_n=12, write_n=12,
                       enc_size=800, dec_size=800, z_size=100, likelihood="logistic"),
    "cifar10": DrawConfig(height=32, width=32, channels=3, T=64, read_n=5, write_n=5,
                          enc_size=400, dec_size=400, z_size=200, likelihood="logistic"),
}


class DrawOutput(NamedTuple):
    """What model(x) returns. Per-image terms are [batch] tensors in nats."""

    loss: torch.Tensor  # mean over the batch of L_x + L_z
    L_x: torch.Tensor  # -log D(x | c_T)
    L_z: torch.Tensor  # sum_t KL(Q(Z_t | h_enc_t) || N(0, I)), analytic
    log_w: torch.Tensor  # log D(x|c_T) + sum_t [log p(z_t) - log q(z_t|.)] for the sampled trajectory
    canvases: Optional[torch.Tensor] = None  # [T, batch, C, H, W] mean image after each glimpse
    read_windows: Optional[Window] = None  # fields [T, batch]
    write_windows: Optional[Window] = None  # fields [T, batch]


class Generation(NamedTuple):
    images: torch.Tensor  # [n, C, H, W] mean of D(X | c_T)
    canvases: torch.Tensor  # [T, n, C, H, W] mean image after each glimpse
    write_windows: Optional[Window]  # fields [T, n]; None without write attention


def lstm_step(linear: nn.Linear, inputs: torch.Tensor, c: torch.Tensor):
    """One LSTM step with every input and the previous hidden state in one matmul (inputs end with h)."""
    i, f, g, o = linear(inputs).chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class DRAW(nn.Module):
    def __init__(self, config: DrawConfig):
        super().__init__()
        self.config = cfg = config
        C, H, W = cfg.channels, cfg.height, cfg.width
        read_size = 2 * C * (cfg.read_n**2 if cfg.read_attention else H * W)
        self.write_size = C * (cfg.write_n**2 if cfg.write_attention else H * W)
        self.encoder = nn.Linear(read_size + cfg.dec_size + cfg.enc_size, 4 * cfg.enc_size)
        self.q = nn.Linear(cfg.enc_size, 2 * cfg.z_size)  # mu_t and log sigma_t (eq. 1-2)
        self.decoder = nn.Linear(cfg.z_size + cfg.dec_size, 4 * cfg.dec_size)
        # One linear layer reads h_dec_t for everything the decoder emits: the write patch w_t, the
        # write window of step t and the read window of step t+1 (both come from h_dec_t).
        self.n_write_params = 5 if cfg.write_attention else 0
        self.n_read_params = 5 if cfg.read_attention else 0
        self.dec_out = nn.Linear(cfg.dec_size, self.write_size + self.n_write_params + self.n_read_params)
        self.likelihood = make_likelihood(cfg.likelihood, C)

    # --- read and write (section 3) ---
    def read(self, x, x_hat, read_params):
        """r_t = read(x, x_hat_t, h_dec_{t-1}) (eq. 27 with attention, eq. 17 without)."""
        cfg = self.config
        if not cfg.read_attention:
            return torch.cat([x.flatten(1), x_hat.flatten(1)], dim=1), None
        window = window_from_params(read_params, cfg.read_n, cfg.width, cfg.height)
        Fx, Fy = filterbank(window.gx, window.gy, window.sigma2, window.delta, cfg.read_n, cfg.width, cfg.height)
        return read_attention(torch.cat([x, x_hat], dim=1), Fx, Fy, window.gamma).flatten(1), window

    def write(self, out):
        """write(h_dec_t) (eq. 29 with attention, eq. 18 without); out is dec_out(h_dec_t)."""
        cfg = self.config
        w = out[:, : self.write_size]
        if not cfg.write_attention:
            return w.view(-1, cfg.channels, cfg.height, cfg.width), None
        N = cfg.write_n
        window = window_from_params(out[:, self.write_size : self.write_size + 5], N, cfg.width, cfg.height)
        Fx, Fy = filterbank(window.gx, window.gy, window.sigma2, window.delta, N, cfg.width, cfg.height)
        return write_attention(w.view(-1, cfg.channels, N, N), Fx, Fy, window.gamma), window

    def _read_params(self, out):
        return out[:, self.write_size + self.n_write_params :]

    def _initial_state(self, batch: int, ref: torch.Tensor):
        cfg = self.config
        zeros = lambda size: ref.new_zeros(batch, size)  # noqa: E731
        h_dec = zeros(cfg.dec_size)
        canvas = ref.new_zeros(batch, cfg.channels, cfg.height, cfg.width)
        return zeros(cfg.enc_size), zeros(cfg.enc_size), h_dec, zeros(cfg.dec_size), canvas, self.dec_out(h_dec)

    def check_images(self, x: torch.Tensor):
        cfg = self.config
        expected = (cfg.channels, cfg.height, cfg.width)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise DrawnetError(
                f"images must have shape [batch, {cfg.channels}, {cfg.height}, {cfg.width}] for this model, "
                f"got {list(x.shape)}"
            )
        if not torch.is_floating_point(x) or x.numel() and not ((x >= 0) & (x <= 1)).all():  # NaN fails too
            raise DrawnetError("images must be floating point with values in [0, 1]")

    # --- the recurrence (eq. 3-8) and the loss (eq. 9-12) ---
    def forward(self, x: torch.Tensor, return_steps: bool = False) -> DrawOutput:
        self.check_images(x)
        cfg = self.config
        h_enc, c_enc, h_dec, c_dec, canvas, out = self._initial_state(x.shape[0], x)
        L_z = x.new_zeros(x.shape[0])
        log_q_over_p = x.new_zeros(x.shape[0])
        canvases, reads, writes = [], [], []
        for _ in range(cfg.T):
            x_hat = x - torch.sigmoid(canvas)  # eq. 3
            r, read_window = self.read(x, x_hat, self._read_params(out))  # eq. 4
            h_enc, c_enc = lstm_step(self.encoder, torch.cat([r, h_dec, h_enc], dim=1), c_enc)  # eq. 5
            mu, log_sigma = self.q(h_enc).chunk(2, dim=1)  # eq. 1-2
            eps = torch.randn_like(mu)
            z = mu + torch.exp(log_sigma) * eps  # eq. 6, reparameterised
            h_dec, c_dec = lstm_step(self.decoder, torch.cat([z, h_dec], dim=1), c_dec)  # eq. 7
            out = self.dec_out(h_dec)
            delta_canvas, write_window = self.write(out)
            canvas = canvas + delta_canvas  # eq. 8
            # KL(N(mu, sigma^2) || N(0, 1)) per step and latent dimension (eq. 11)
            L_z = L_z + 0.5 * (mu**2 + torch.exp(2 * log_sigma) - 2 * log_sigma - 1).sum(1)
            # log q(z|.) - log p(z) at the sampled z, for the importance-weighted bound
            log_q_over_p = log_q_over_p + (0.5 * (z**2 - eps**2) - log_sigma).sum(1)
            if return_steps:
                canvases.append(self.likelihood.mean(canvas))
                reads.append(read_window)
                writes.append(write_window)
        L_x = self.likelihood.nll(canvas, x)  # eq. 9
        loss = (L_x + L_z).mean()
        if not return_steps:
            return DrawOutput(loss, L_x, L_z, -L_x - log_q_over_p)
        return DrawOutput(loss, L_x, L_z, -L_x - log_q_over_p, torch.stack(canvases), _stack(reads), _stack(writes))

    @torch.no_grad()
    def generate(self, n: int, generator: Optional[torch.Generator] = None) -> Generation:
        """Run the decoder alone with z_t ~ N(0, I) (section 2.3)."""
        cfg = self.config
        ref = next(self.parameters())
        _, _, h_dec, c_dec, canvas, _ = self._initial_state(n, ref)
        canvases, writes = [], []
        for _ in range(cfg.T):
            z = torch.randn(n, cfg.z_size, generator=generator, device=ref.device, dtype=ref.dtype)
            h_dec, c_dec = lstm_step(self.decoder, torch.cat([z, h_dec], dim=1), c_dec)
            delta_canvas, write_window = self.write(self.dec_out(h_dec))
            canvas = canvas + delta_canvas
            canvases.append(self.likelihood.mean(canvas))
            writes.append(write_window)
        return Generation(canvases[-1], torch.stack(canvases), _stack(writes))

    # --- save_pretrained / from_pretrained: config.json + model.safetensors, never a pickle ---
    def save_pretrained(self, directory) -> None:
        from safetensors.torch import save_file

        from .checkpoint import atomic_write

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(tensors, str(p)))
        text = json.dumps(self.config.to_dict(), indent=2) + "\n"
        atomic_write(directory / CONFIG_NAME, lambda p: p.write_text(text))

    @classmethod
    def from_pretrained(cls, directory, map_location="cpu") -> "DRAW":
        from .checkpoint import load_weights, read_config

        directory = Path(directory)
        model = cls(read_config(directory / CONFIG_NAME))
        load_weights(model, directory / WEIGHTS_NAME, map_location)
        return model

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _stack(windows):
    if windows[0] is None:
        return None
    return Window(*(torch.stack(field) for field in zip(*windows)))


def bits_per_dim(nats: float, config: DrawConfig) -> float:
    return nats / (config.height * config.width * config.channels * math.log(2))
