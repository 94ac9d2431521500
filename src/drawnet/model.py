"""DRAW: the Deep Recurrent Attentive Writer (Gregor et al. 2015), one file, read top to bottom.

Conventions (SPEC.md): images are [batch, C, H, W] in [0, 1]; losses are nats per image.
The initial states c_0, h_enc_0 and h_dec_0 (and both LSTM cell states) are zero, so the first
error image is x - sigmoid(0) = x - 0.5 and the first read window comes from the bias alone.

Conditional models give the decoder one more input y_t at every step, h_dec_t = LSTM_dec(h_dec_{t-1},
[z_t, y_t]): the one-hot class label (num_classes > 0), or alignDRAW's attention over a caption's words
(vocab_size > 0, CaptionReader). The prior stays N(0, I) and the encoder sees y only through h_dec.
"""
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .attention import (Window, filterbank, fused_read, fused_write, grid_window_params, read_attention,
                        window_from_params, write_attention)
from .captions import VOCAB
from .checkpoint import JsonConfig
from .errors import DrawnetError
from .likelihoods import LIKELIHOODS, make_likelihood

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass(frozen=True)
class DrawConfig(JsonConfig):
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
    num_classes: int = 0  # > 0: the decoder is given the one-hot class label at every step
    vocab_size: int = 0  # > 0: the decoder attends over a caption of word ids < vocab_size (alignDRAW)
    caption_size: int = 128  # units of each direction of the caption's bidirectional LSTM
    align_size: int = 128  # width of the alignment between h_dec and the caption's words

    def __post_init__(self):
        for name in ("height", "width", "channels", "enc_size", "dec_size", "z_size", "read_n", "write_n",
                     "caption_size", "align_size"):
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
        for name in ("num_classes", "vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise DrawnetError(f"config: {name} must be an integer >= 0, got {value!r}")
        if self.num_classes and self.vocab_size:
            raise DrawnetError("config: a model is conditioned on labels (num_classes) or captions (vocab_size), "
                               "not both")
        if self.vocab_size == 1:
            raise DrawnetError("config: vocab_size must hold the padding id 0 and at least one word")

    @classmethod
    def preset(cls, name: str, **overrides) -> "DrawConfig":
        if name not in PRESETS:
            raise DrawnetError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)


# The paper's Table 3 (SPEC.md); colour models use a discretised logistic for 8-bit pixels. mnist-label and
# mnist-captions go beyond the paper: a class-conditional mnist, and alignDRAW's MNIST with captions on the
# two-digit-mnist architecture. Both can start from the mnist model's weights (train.warm_start): trained
# from scratch for 20 minutes, a captions model with 5x5 reads and T=32 had let its KL fall to zero and drew
# the right places but no digits.
PRESETS = {
    "mnist": DrawConfig(),
    "mnist-noattn": DrawConfig(read_attention=False, write_attention=False),
    "mnist-label": DrawConfig(num_classes=10),
    "mnist-captions": DrawConfig(height=60, width=60, vocab_size=len(VOCAB)),
    "two-digit-mnist": DrawConfig(height=60, width=60),
    # The paper's SVHN images were 64x64 crops of whole house numbers; the standard files that drawnet reads
    # (train_32x32.mat, test_32x32.mat) are 32x32 crops of single digits, so the preset is 32x32.
    "svhn": DrawConfig(height=32, width=32, channels=3, T=32, read_n=12, write_n=12,
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


def iw_loss(log_w: torch.Tensor, K: int) -> torch.Tensor:
    """The importance-weighted bound -log (1/K) sum_k w_k averaged over images (Burda et al. 2016, eq. 8), from
    log_w [images * K] holding each image's K trajectories next to each other. K = 1 gives a one-sample
    estimate of the ELBO (with the KL term sampled, not analytic)."""
    return (math.log(K) - torch.logsumexp(log_w.view(-1, K), dim=1)).mean()


class Generation(NamedTuple):
    images: torch.Tensor  # [n, C, H, W] mean of D(X | c_T)
    canvases: torch.Tensor  # [T, n, C, H, W] mean image after each glimpse
    write_windows: Optional[Window]  # fields [T, n]; None without write attention
    alignments: Optional[torch.Tensor] = None  # [T, n, words]: caption models' attention over the words


def lstm_cell(gates: torch.Tensor, c: torch.Tensor):
    """The LSTM update from the gates' pre-activations, in nn.LSTMCell's order (i, f, g, o): returns (h, c)."""
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def lstm_step(linear: nn.Linear, inputs: torch.Tensor, c: torch.Tensor):
    """One LSTM step with every input and the previous hidden state in one matmul (inputs end with h)."""
    return lstm_cell(linear(inputs), c)


class _WeightGrad:
    """The gradient of one weight shared by every step, sum_t x_t^T g_t, gathered as the steps' backward
    passes run. In the weight's own precision each term is one GEMM with beta = 1 into the running sum, where
    autograd would compute x_t^T g_t into a new tensor and then add it, a second pass over the whole weight per
    step. With products in a lower precision, which cannot accumulate into a float32 sum in place, the steps'
    x_t and g_t are kept and multiplied in one GEMM over all the steps once the last step's backward has run."""

    def __init__(self, width: int, dtype: torch.dtype):
        self.width, self.dtype, self.sum, self.xs, self.gs = width, dtype, None, [], []

    def add(self, x: torch.Tensor, g: torch.Tensor, weight_node) -> None:
        # A backward pass that does not reach the weight (autograd.grad with respect to the images only)
        # must not leave its terms behind for a later pass through the same graph.
        if weight_node is not None and not _will_run(weight_node):
            return
        if x.dtype == self.dtype:
            if self.sum is None:
                self.sum = x.new_zeros(x.shape[1], self.width)
            self.sum[:, : g.shape[1]].addmm_(x.t(), g)  # the last step's product has only the leading columns
            return
        if g.shape[1] < self.width:
            g = F.pad(g, (0, self.width - g.shape[1]))
        self.xs.append(x)
        self.gs.append(g)

    def take(self) -> Optional[torch.Tensor]:
        total, self.sum = self.sum, None
        if self.xs:
            total = (torch.cat(self.xs).t() @ torch.cat(self.gs)).to(self.dtype)
            self.xs, self.gs = [], []
        return total


def _will_run(node) -> bool:
    will_run = getattr(torch._C, "_will_engine_execute_node", None)
    return will_run is None or will_run(node)


class _SharedWeight(torch.autograd.Function):
    """A weight used by every step, passed through unchanged. The steps' products (_StepProduct) add their
    weight gradients to `grad` and report none; this node's backward hands over the sum. The autograd engine
    runs it only after every step that uses its output, so the sum is complete by then."""

    @staticmethod
    def forward(ctx, weight_t, grad):
        ctx.grad = grad
        ctx.set_materialize_grads(False)  # nothing arrives here: the steps add to ctx.grad instead
        return weight_t.view_as(weight_t)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, _):
        return ctx.grad.take(), None


class _StepProduct(torch.autograd.Function):
    """bias + x @ weight_t for one step, with the weight's gradient going to a _WeightGrad. weight_mm is
    weight_t itself or its copy in a lower precision, in which x and the gradients are multiplied too."""

    @staticmethod
    def forward(ctx, bias, x, weight_t, weight_mm, grad):
        x_mm = x.to(weight_mm.dtype)
        ctx.save_for_backward(x_mm, weight_mm)
        ctx.grad, ctx.weight_node, ctx.bias_shape = grad, weight_t.grad_fn, bias.shape
        return _matmul_plus_bias(bias, x_mm, weight_mm)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        x_mm, weight_mm = ctx.saved_tensors
        g_mm = g.to(weight_mm.dtype)
        ctx.grad.add(x_mm, g_mm, ctx.weight_node)
        d_bias = g if len(ctx.bias_shape) == 2 else g.sum(0)
        return d_bias, (g_mm @ weight_mm.t()).to(g.dtype), None, None, None


def _matmul_plus_bias(bias: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """bias + x @ weight in bias's dtype; a lower-precision product is rounded once, then the bias added."""
    if weight.dtype == bias.dtype:
        return torch.addmm(bias, x, weight)
    return (x @ weight).to(bias.dtype).add_(bias)


class _Projection:
    """The linear map input -> bias + input @ weight_t (weight_t is [in, out]) that every step applies to
    its new state. When gradients are on, its weight gradient is summed over the steps by a _WeightGrad.
    With matmul_dtype (e.g. torch.bfloat16) the products run in that precision, accumulating in float32,
    while the results, the biases and everything between the products stay in the weights' dtype."""

    def __init__(self, weight_t: torch.Tensor, bias: Optional[torch.Tensor] = None,
                 matmul_dtype: Optional[torch.dtype] = None):
        self.bias = bias
        needs_grad = torch.is_grad_enabled() and weight_t.requires_grad
        self.grad = _WeightGrad(weight_t.shape[1], weight_t.dtype) if needs_grad else None
        self.weight_t = weight_t if self.grad is None else _SharedWeight.apply(weight_t, self.grad)
        # cast once per forward, not per step
        self.weight_mm = self.weight_t.detach().to(matmul_dtype or weight_t.dtype)

    def __call__(self, inputs: torch.Tensor, bias: Optional[torch.Tensor] = None,
                 n_out: Optional[int] = None) -> torch.Tensor:
        """The projection of `inputs` (plus `bias` if given, else the stored one); only the first n_out
        outputs if n_out is given (all that the last step needs)."""
        bias, weight_t, weight_mm = self.bias if bias is None else bias, self.weight_t, self.weight_mm
        if n_out is not None:
            bias, weight_t, weight_mm = bias[..., :n_out], weight_t[:, :n_out], weight_mm[:, :n_out]
        if self.grad is None:
            return _matmul_plus_bias(bias, inputs.to(weight_mm.dtype), weight_mm)
        return _StepProduct.apply(bias, inputs, weight_t, weight_mm, self.grad)


class CaptionReader(nn.Module):
    """alignDRAW's caption model (Mansimov et al. 2016): a bidirectional LSTM over the caption's words gives
    h^lang_1..h^lang_L, and before every glimpse the decoder attends over them from h_dec_{t-1}:
        alpha_t = softmax_k(v^T tanh(U h^lang_k + W h_dec_{t-1} + b)),   s_t = sum_k alpha_tk h^lang_k.
    Word id 0 pads captions at the end and gets no attention."""

    def __init__(self, vocab_size: int, caption_size: int, align_size: int, dec_size: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, caption_size, padding_idx=0)
        self.lstm = nn.LSTM(caption_size, caption_size, batch_first=True, bidirectional=True)
        self.U = nn.Linear(2 * caption_size, align_size)
        self.W = nn.Linear(dec_size, align_size, bias=False)
        self.v = nn.Linear(align_size, 1, bias=False)

    def encode(self, words: torch.Tensor):
        """(h_lang [n, L, 2 caption_size], U h_lang + b [n, L, align_size], padding mask [n, L])."""
        pad = words == 0
        # Packed, so that the backward direction starts at each caption's last word, not at its padding.
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(words), (~pad).sum(1).cpu(), batch_first=True,
                                                   enforce_sorted=False)
        h_lang, _ = nn.utils.rnn.pad_packed_sequence(self.lstm(packed)[0], batch_first=True,
                                                     total_length=words.shape[1])
        return h_lang, self.U(h_lang), pad

    def align(self, h_dec: torch.Tensor, h_lang: torch.Tensor, keys: torch.Tensor, pad: torch.Tensor):
        """(s_t [n, 2 caption_size], alpha_t [n, L]) from h_dec_{t-1}."""
        scores = self.v(torch.tanh(keys + self.W(h_dec)[:, None])).squeeze(2)
        alpha = scores.masked_fill(pad, -math.inf).softmax(1)
        return torch.bmm(alpha[:, None], h_lang).squeeze(1), alpha


class DRAW(nn.Module):
    def __init__(self, config: DrawConfig):
        super().__init__()
        self.config = cfg = config
        C, H, W = cfg.channels, cfg.height, cfg.width
        read_size = 2 * C * (cfg.read_n**2 if cfg.read_attention else H * W)
        self.write_size = C * (cfg.write_n**2 if cfg.write_attention else H * W)
        self.encoder = nn.Linear(read_size + cfg.dec_size + cfg.enc_size, 4 * cfg.enc_size)
        self.q = nn.Linear(cfg.enc_size, 2 * cfg.z_size)  # mu_t and log sigma_t (eq. 1-2)
        # y_t, the decoder's input besides z_t: the one-hot label or the caption summary s_t (or nothing)
        self.y_size = cfg.num_classes or (2 * cfg.caption_size if cfg.vocab_size else 0)
        self.captions = (CaptionReader(cfg.vocab_size, cfg.caption_size, cfg.align_size, cfg.dec_size)
                         if cfg.vocab_size else None)
        self.decoder = nn.Linear(cfg.z_size + self.y_size + cfg.dec_size, 4 * cfg.dec_size)
        # One linear layer reads h_dec_t for everything the decoder emits: the write patch w_t, the
        # write window of step t and the read window of step t+1 (both come from h_dec_t).
        self.n_write_params = 5 if cfg.write_attention else 0
        self.n_read_params = 5 if cfg.read_attention else 0
        self.dec_out = nn.Linear(cfg.dec_size, self.write_size + self.n_write_params + self.n_read_params)
        self.likelihood = make_likelihood(cfg.likelihood, C)
        self._init_windows()

    def _init_windows(self):
        """Start every attention window as the image cut into an N x N grid of cells (grid_window_params), set
        through dec_out's bias, which alone gives the first read window (h_dec_0 = 0).

        With zero biases a 2x2 read would start with its filters on the border pixels (delta = A - 1,
        sigma = 1), which are blank in MNIST: the encoder then sees nothing, the KL term pulls the posterior
        onto the prior within a few dozen updates and training stalls at the mean image (about 206 nats after
        a whole epoch, measured). From the grid the reads see the whole image and training takes off."""
        cfg = self.config
        start = self.write_size
        for used, N in ((cfg.write_attention, cfg.write_n), (cfg.read_attention, cfg.read_n)):
            if used:
                with torch.no_grad():
                    self.dec_out.bias[start : start + 5] = grid_window_params(N, cfg.width, cfg.height)
                start += 5

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

    @property
    def condition(self) -> Optional[str]:
        """What y the model is conditioned on: "label", "caption" or None."""
        return "label" if self.config.num_classes else "caption" if self.config.vocab_size else None

    def check_condition(self, y: Optional[torch.Tensor], n: int) -> None:
        cfg, kind = self.config, self.condition
        if kind is None:
            if y is not None:
                raise DrawnetError("this model is unconditional: it takes no label or caption")
            return
        if y is None:
            raise DrawnetError(f"this model draws from a {kind}: give one per image")
        if kind == "label":
            if y.dim() != 1 or len(y) != n or y.dtype != torch.long:
                raise DrawnetError(f"labels must be an int64 tensor of shape [{n}], got {y.dtype} {list(y.shape)}")
            if y.numel() and not ((y >= 0) & (y < cfg.num_classes)).all():
                raise DrawnetError(f"labels must lie in 0..{cfg.num_classes - 1}")
        else:
            if y.dim() != 2 or len(y) != n or y.shape[1] < 1 or y.dtype != torch.long:
                raise DrawnetError(f"captions must be int64 word ids of shape [{n}, words], got {y.dtype} "
                                   f"{list(y.shape)}")
            if y.numel() and not ((y >= 0) & (y < cfg.vocab_size)).all():
                raise DrawnetError(f"caption word ids must lie in 0..{cfg.vocab_size - 1}")
            if y.numel() and not y[:, 0].ne(0).all():
                raise DrawnetError("every caption needs at least one word, starting at position 0")

    def _decoder_input(self, z, h_dec, y, memory):
        """[z_t, y_t, h_dec_{t-1}] and the caption attention alpha_t (None without captions)."""
        if memory is not None:
            s, alpha = self.captions.align(h_dec, *memory)
            return torch.cat([z, s, h_dec], dim=1), alpha
        if y is not None:
            return torch.cat([z, nn.functional.one_hot(y, self.config.num_classes).to(z.dtype), h_dec], dim=1), None
        return torch.cat([z, h_dec], dim=1), None

    def _memory(self, y):
        """The caption's encoding (CaptionReader.encode) for caption models, else None."""
        return self.captions.encode(y) if self.condition == "caption" else None

    # --- the recurrence (eq. 3-8) and the loss (eq. 9-12) ---
    def forward(self, x: torch.Tensor, return_steps: bool = False, noise: Optional[torch.Tensor] = None,
                y: Optional[torch.Tensor] = None, matmul_dtype: Optional[torch.dtype] = None) -> DrawOutput:
        """Run the T glimpses on images x and return the loss terms (and, if asked, every step).

        noise, [T, batch, z_size], is the posterior noise eps of every step; without it, each step draws its
        own with torch.randn_like. Data-parallel training passes each process its share of the noise a single
        process would draw for the whole batch. y: the labels [batch] or caption word ids [batch, words] of a
        conditional model (check_condition). matmul_dtype: run the LSTMs' and heads' matrix products in this
        precision (torch.bfloat16 trains faster on CPUs with bfloat16 instructions); all else stays float32."""
        self.check_images(x)
        self.check_condition(y, x.shape[0])
        if self._layers_are_observed():
            if matmul_dtype is not None:
                raise DrawnetError("matmul_dtype needs the fused path, which forward hooks on the layers turn off")
            return self._forward_by_layer(x, return_steps, noise, y)
        return self._forward_fused(x, return_steps, noise, y, matmul_dtype)

    def _layers_are_observed(self) -> bool:
        """True when forward hooks watch the layers: then run them layer by layer so the hooks see every call
        with the inputs they expect (the fused path never calls encoder, q, decoder or dec_out itself)."""
        from torch.nn.modules import module as nn_module

        if nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks:
            return True
        return any(m._forward_hooks or m._forward_pre_hooks for m in (self.encoder, self.q, self.decoder, self.dec_out))

    def _forward_by_layer(self, x: torch.Tensor, return_steps: bool, noise: Optional[torch.Tensor] = None,
                          y: Optional[torch.Tensor] = None) -> DrawOutput:
        """The recurrence as written in the paper, one layer call at a time (the fused path's yardstick)."""
        cfg = self.config
        h_enc, c_enc, h_dec, c_dec, canvas, out = self._initial_state(x.shape[0], x)
        memory = self._memory(y)
        L_z = x.new_zeros(x.shape[0])
        log_q_over_p = x.new_zeros(x.shape[0])
        canvases, reads, writes = [], [], []
        for t in range(cfg.T):
            x_hat = x - torch.sigmoid(canvas)  # eq. 3
            r, read_window = self.read(x, x_hat, self._read_params(out))  # eq. 4
            h_enc, c_enc = lstm_step(self.encoder, torch.cat([r, h_dec, h_enc], dim=1), c_enc)  # eq. 5
            mu, log_sigma = self.q(h_enc).chunk(2, dim=1)  # eq. 1-2
            eps = torch.randn_like(mu) if noise is None else noise[t]
            z = mu + torch.exp(log_sigma) * eps  # eq. 6, reparameterised
            h_dec, c_dec = lstm_step(self.decoder, self._decoder_input(z, h_dec, y, memory)[0], c_dec)  # eq. 7
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
    def generate(self, n: int, generator: Optional[torch.Generator] = None,
                 y: Optional[torch.Tensor] = None) -> Generation:
        """Run the decoder alone with z_t ~ N(0, I) (section 2.3); y as in forward."""
        self.check_condition(y, n)
        if self._layers_are_observed():
            return self._generate_by_layer(n, generator, y)
        return self._generate_fused(n, generator, y)

    def _generate_by_layer(self, n: int, generator: Optional[torch.Generator], y=None) -> Generation:
        cfg = self.config
        ref = next(self.parameters())
        _, _, h_dec, c_dec, canvas, _ = self._initial_state(n, ref)
        memory = self._memory(y)
        canvases, writes, alphas = [], [], []
        for _ in range(cfg.T):
            z = torch.randn(n, cfg.z_size, generator=generator, device=ref.device, dtype=ref.dtype)
            inputs, alpha = self._decoder_input(z, h_dec, y, memory)
            h_dec, c_dec = lstm_step(self.decoder, inputs, c_dec)
            delta_canvas, write_window = self.write(self.dec_out(h_dec))
            canvas = canvas + delta_canvas
            canvases.append(self.likelihood.mean(canvas))
            writes.append(write_window)
            alphas.append(alpha)
        return Generation(canvases[-1], torch.stack(canvases), _stack(writes), _stack_tensors(alphas))

    # --- the fused path: the same recurrence and loss, organised for speed ---
    #
    # Written as in the paper, every step concatenates [r_t, h_dec_{t-1}, h_enc_{t-1}] for the encoder and
    # [z_t, h_dec_{t-1}] for the decoder, and applies q and dec_out separately. Instead, each new state goes
    # through ONE matrix product holding every layer's columns for that input, as soon as the state exists:
    #     h_enc_t -> [mu_t, log sigma_t | encoder gates of step t+1]                      (q, encoder)
    #     h_dec_t -> [dec_out(h_dec_t) | decoder gates of t+1 | encoder gates of t+1]     (dec_out, decoder, encoder)
    #     r_t -> encoder gates of step t,   z_t -> decoder gates of step t
    # Fewer, wider products run closer to the CPU's peak and no state is copied into a concatenation. The
    # weights are slices and concatenations of the parameters taken inside forward, so gradients reach the
    # same parameters and state_dict() is unchanged. Without read attention r_t = [x, x_hat_t]: x is the same
    # at every step, so its share of the encoder gates is computed once, and so is a label's share of the
    # decoder gates; a caption's s_t depends on h_dec_{t-1} and has its own product. The KL terms are summed
    # over all steps at once after the loop. The read and write are fused_read / fused_write (attention.py).

    def _decoder_constant(self, y) -> torch.Tensor:
        """The decoder gates' part that is the same at every step: the bias [4D], or for labels
        bias + W_y onehot(y) [batch, 4D]."""
        if self.condition != "label":
            return self.decoder.bias
        Z = self.config.z_size
        return self.decoder.bias + self.decoder.weight[:, Z : Z + self.y_size].t()[y]

    def _decoder_projection(self, dec_const: torch.Tensor, with_encoder: bool, matmul_dtype=None) -> _Projection:
        """h_dec_t -> [dec_out(h_dec_t) | decoder gates of t+1 (| encoder gates of t+1)]."""
        D, E = self.config.dec_size, self.config.enc_size
        weights = [self.dec_out.weight, self.decoder.weight[:, -D:]]
        biases = [self.dec_out.bias.expand(*dec_const.shape[:-1], -1), dec_const]
        if with_encoder:  # the encoder's bias comes in through the h_enc projection (see _forward_fused)
            weights.append(self.encoder.weight[:, -D - E : -E])
            biases.append(dec_const.new_zeros(*dec_const.shape[:-1], 4 * E))
        return _Projection(torch.cat(weights).t(), torch.cat(biases, -1), matmul_dtype)

    def _caption_projection(self, matmul_dtype=None) -> Optional[_Projection]:
        """s_t -> its share of the decoder gates (caption models)."""
        if self.condition != "caption":
            return None
        Z = self.config.z_size
        return _Projection(self.decoder.weight[:, Z : Z + self.y_size].t(), matmul_dtype=matmul_dtype)

    def _forward_fused(self, x: torch.Tensor, return_steps: bool, noise: Optional[torch.Tensor] = None,
                       y: Optional[torch.Tensor] = None, matmul_dtype: Optional[torch.dtype] = None) -> DrawOutput:
        """forward() with the fused projections, read and write; the same maths as _forward_by_layer."""
        cfg = self.config
        n, E, D, Z = x.shape[0], cfg.enc_size, cfg.dec_size, cfg.z_size
        n_out = self.dec_out.out_features
        W_enc_r, W_enc_h_enc = self.encoder.weight[:, : -D - E], self.encoder.weight[:, -E:]
        if cfg.read_attention:
            from_r = _Projection(W_enc_r.t(), matmul_dtype=matmul_dtype)
            enc_const = self.encoder.bias.expand(n, -1)
        else:  # r_t = [x, x_hat_t]: x's share of the gates, x W_x^T + b, is the same at every step
            W_x, W_x_hat = W_enc_r.chunk(2, dim=1)
            from_r = _Projection(W_x_hat.t(), matmul_dtype=matmul_dtype)
            enc_const = torch.addmm(self.encoder.bias, x.flatten(1), W_x.t())
        # h_enc_t -> [mu, log sigma | encoder gates of t+1]; the bias of the encoder part carries enc_const.
        from_h_enc = _Projection(torch.cat([self.q.weight, W_enc_h_enc]).t(),
                                 torch.cat([self.q.bias.expand(n, -1), enc_const], 1), matmul_dtype)
        dec_const = self._decoder_constant(y)
        from_h_dec = self._decoder_projection(dec_const, with_encoder=True, matmul_dtype=matmul_dtype)
        from_z = _Projection(self.decoder.weight[:, :Z].t(), matmul_dtype=matmul_dtype)
        from_s, memory = self._caption_projection(matmul_dtype), self._memory(y)

        c_enc, h_dec, c_dec = x.new_zeros(n, E), x.new_zeros(n, D), x.new_zeros(n, D)
        canvas = torch.zeros_like(x)
        # h_enc_0 = h_dec_0 = 0: the step-0 gates are the biases alone, and so are the first read window's
        # parameters (the last n_read_params outputs of dec_out)
        enc_gates_from_states, dec_gates_from_states = enc_const, dec_const.expand(n, -1)
        read_params = self.dec_out.bias[n_out - self.n_read_params :].expand(n, -1)
        canvases, reads, writes = [], [], []
        latents = _LatentTerms(n * Z)
        for t in range(cfg.T):
            last = t == cfg.T - 1  # the last step needs only mu, log sigma and dec_out
            x_hat = x - torch.sigmoid(canvas)  # eq. 3
            if cfg.read_attention:
                r = fused_read(x, x_hat, read_params, cfg.read_n)  # eq. 27
            else:
                r = x_hat.flatten(1)  # eq. 17, less the x half already in enc_const
            h_enc, c_enc = lstm_cell(from_r(r, bias=enc_gates_from_states), c_enc)  # eq. 5
            if last:
                q_out = from_h_enc(h_enc, n_out=2 * Z)
            else:
                q_out, enc_from_h_enc = from_h_enc(h_enc).split([2 * Z, 4 * E], dim=1)
            mu, log_sigma = q_out.chunk(2, dim=1)  # eq. 1-2
            eps = torch.randn_like(mu) if noise is None else noise[t]
            z = torch.addcmul(mu, torch.exp(log_sigma), eps)  # eq. 6, reparameterised
            dec_gates = self._caption_gates(from_s, h_dec, memory, dec_gates_from_states)[0]
            h_dec, c_dec = lstm_cell(from_z(z, bias=dec_gates), c_dec)  # eq. 7
            if last:
                out = from_h_dec(h_dec, n_out=n_out)
            else:
                out, dec_gates_from_states, enc_from_h_dec = from_h_dec(h_dec).split([n_out, 4 * D, 4 * E], dim=1)
                enc_gates_from_states = enc_from_h_enc + enc_from_h_dec
            if return_steps:
                reads.append(self._window(read_params, cfg.read_n) if cfg.read_attention else None)
            # dec_out(h_dec_t) = [w_t, write window of step t, read window of step t+1]
            w, write_params, read_params = out.split([self.write_size, self.n_write_params, self.n_read_params], 1)
            if cfg.write_attention:
                canvas = canvas + fused_write(w, write_params, cfg.write_n, cfg.height, cfg.width)  # eq. 8, 29
            else:
                canvas = canvas + w.view(x.shape)  # eq. 8, 18
            latents.add(q_out, z, eps)
            if return_steps:
                canvases.append(self.likelihood.mean(canvas))
                writes.append(self._window(write_params, cfg.write_n) if cfg.write_attention else None)
        L_z, log_q_over_p = latents.sums()
        L_x = self.likelihood.nll(canvas, x)  # eq. 9
        loss = (L_x + L_z).mean()
        if not return_steps:
            return DrawOutput(loss, L_x, L_z, -L_x - log_q_over_p)
        return DrawOutput(loss, L_x, L_z, -L_x - log_q_over_p, torch.stack(canvases), _stack(reads), _stack(writes))

    def _window(self, params, N):
        return window_from_params(params, N, self.config.width, self.config.height)

    def _caption_gates(self, from_s, h_dec, memory, dec_gates_from_states):
        """The decoder gates less z_t's share, with s_t's share added for caption models; and alpha_t."""
        if memory is None:
            return dec_gates_from_states, None
        s, alpha = self.captions.align(h_dec, *memory)
        return from_s(s, bias=dec_gates_from_states), alpha

    def _generate_fused(self, n: int, generator: Optional[torch.Generator], y=None) -> Generation:
        """generate() with the decoder's projections fused as in _forward_fused."""
        cfg = self.config
        D, Z, n_out = cfg.dec_size, cfg.z_size, self.dec_out.out_features
        ref = self.decoder.weight
        dec_const = self._decoder_constant(y)
        from_h_dec = self._decoder_projection(dec_const, with_encoder=False)
        from_z, from_s, memory = _Projection(self.decoder.weight[:, :Z].t()), self._caption_projection(), self._memory(y)
        h_dec, c_dec = ref.new_zeros(n, D), ref.new_zeros(n, D)
        canvas = ref.new_zeros(n, cfg.channels, cfg.height, cfg.width)
        dec_gates_from_states = dec_const.expand(n, -1)
        canvases, writes, alphas = [], [], []
        for t in range(cfg.T):
            z = torch.randn(n, Z, generator=generator, device=ref.device, dtype=ref.dtype)
            dec_gates, alpha = self._caption_gates(from_s, h_dec, memory, dec_gates_from_states)
            alphas.append(alpha)
            h_dec, c_dec = lstm_cell(from_z(z, bias=dec_gates), c_dec)
            if t == cfg.T - 1:
                out = from_h_dec(h_dec, n_out=n_out)
            else:
                out, dec_gates_from_states = from_h_dec(h_dec).split([n_out, 4 * D], dim=1)
            w, write_params, _ = out.split([self.write_size, self.n_write_params, self.n_read_params], dim=1)
            if cfg.write_attention:
                canvas = canvas + fused_write(w, write_params, cfg.write_n, cfg.height, cfg.width)
                writes.append(self._window(write_params, cfg.write_n))
            else:
                canvas = canvas + w.view(canvas.shape)
                writes.append(None)
            canvases.append(self.likelihood.mean(canvas))
        return Generation(canvases[-1], torch.stack(canvases), _stack(writes), _stack_tensors(alphas))

    # --- save_pretrained / from_pretrained: config.json + model.safetensors, never a pickle ---
    def save_pretrained(self, directory) -> None:
        from .checkpoint import save_pretrained

        save_pretrained(directory, self)

    @classmethod
    def from_pretrained(cls, directory, map_location="cpu") -> "DRAW":
        from .checkpoint import load_weights, read_config

        directory = Path(directory)
        model = cls(read_config(directory / CONFIG_NAME))
        load_weights(model, directory / WEIGHTS_NAME, map_location)
        return model

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class _LatentTerms:
    """The KL term L_z (eq. 11) and log q(z|.) - log p(z) at the sampled z, summed over the steps.

    Summed over a group of steps at once: one op per term for the group rather than one per step. The groups
    hold about 2^20 numbers, which stay in the CPU's cache; one group of all T steps at batch 512 made every
    op on it about ten times slower per number (measured)."""

    GROUP_NUMBERS = 2**20

    def __init__(self, numbers_per_step: int):
        self.group = max(1, self.GROUP_NUMBERS // numbers_per_step)
        self.pending, self.L_z, self.log_q_over_p = [], 0, 0

    def add(self, q_out: torch.Tensor, z: torch.Tensor, eps: torch.Tensor) -> None:
        self.pending.append((q_out, z, eps))
        if len(self.pending) == self.group:
            self._flush()

    def _flush(self) -> None:
        q_out, z, eps = (torch.stack(terms) for terms in zip(*self.pending))
        self.pending = []
        mu, log_sigma = q_out.chunk(2, dim=2)  # [steps, batch, z]
        # KL(N(mu, sigma^2) || N(0, 1)) summed over steps and latent dimensions (eq. 11)
        self.L_z = self.L_z + 0.5 * (mu**2 + torch.exp(2 * log_sigma) - 2 * log_sigma - 1).sum((0, 2))
        self.log_q_over_p = self.log_q_over_p + (0.5 * (z**2 - eps**2) - log_sigma).sum((0, 2))

    def sums(self):
        """(L_z, log q - log p), each [batch]."""
        if self.pending:
            self._flush()
        return self.L_z, self.log_q_over_p


def _stack(windows):
    if windows[0] is None:
        return None
    return Window(*(torch.stack(field) for field in zip(*windows)))


def _stack_tensors(tensors):
    return None if tensors[0] is None else torch.stack(tensors)


def bits_per_dim(nats: float, config: DrawConfig) -> float:
    return nats / (config.height * config.width * config.channels * math.log(2))
