"""The DRAW model: configs and presets, the recurrence, the loss terms, generation, save/load."""
import dataclasses
import json
import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from drawnet import DRAW, PRESETS, DrawConfig, DrawnetError
from drawnet.attention import Window, filterbank, read_attention, window_from_params, write_attention
from drawnet.data import binarize
from drawnet.captions import VOCAB
from drawnet.model import CONFIG_NAME, WEIGHTS_NAME, bits_per_dim, iw_loss


def images_for(cfg: DrawConfig, n: int, seed: int = 0) -> torch.Tensor:
    """Valid random inputs: binary for Bernoulli models, 8-bit values for the discretised logistic."""
    gen = torch.Generator().manual_seed(seed)
    shape = (n, cfg.channels, cfg.height, cfg.width)
    if cfg.likelihood == "bernoulli":
        return torch.bernoulli(torch.rand(shape, generator=gen), generator=gen)
    return torch.randint(0, 256, shape, generator=gen).float() / 255


# --- configs and presets ---------------------------------------------------------------------------

def test_presets_follow_the_paper_table():
    assert set(PRESETS) == {"mnist", "mnist-noattn", "mnist-label", "mnist-captions", "two-digit-mnist", "svhn",
                            "cifar10"}
    m = PRESETS["mnist"]
    assert (m.height, m.width, m.channels, m.T, m.enc_size, m.dec_size, m.z_size, m.read_n, m.write_n) == \
        (28, 28, 1, 64, 256, 256, 100, 2, 5)
    assert m.read_attention and m.write_attention and m.likelihood == "bernoulli"
    noattn = PRESETS["mnist-noattn"]
    assert not noattn.read_attention and not noattn.write_attention
    assert (noattn.height, noattn.width, noattn.T, noattn.enc_size, noattn.z_size) == (28, 28, 64, 256, 100)
    assert PRESETS["mnist-label"] == dataclasses.replace(m, num_classes=10)
    captions = PRESETS["mnist-captions"]
    assert captions == dataclasses.replace(PRESETS["two-digit-mnist"], vocab_size=len(VOCAB))
    two = PRESETS["two-digit-mnist"]
    assert (two.height, two.width, two.T, two.read_n, two.write_n) == (60, 60, 64, 2, 5)
    svhn = PRESETS["svhn"]
    assert (svhn.height, svhn.width, svhn.channels, svhn.T, svhn.enc_size, svhn.z_size, svhn.read_n,
            svhn.write_n, svhn.likelihood) == (32, 32, 3, 32, 800, 100, 12, 12, "logistic")
    cifar = PRESETS["cifar10"]
    assert (cifar.height, cifar.width, cifar.channels, cifar.T, cifar.enc_size, cifar.z_size, cifar.read_n,
            cifar.write_n, cifar.likelihood) == (32, 32, 3, 64, 400, 200, 5, 5, "logistic")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_and_runs(name):
    cfg = DrawConfig.preset(name, T=2)  # full layer sizes, only two glimpses
    assert cfg == dataclasses.replace(PRESETS[name], T=2)
    model = DRAW(cfg)
    C, H, W = cfg.channels, cfg.height, cfg.width
    read_size = 2 * C * (cfg.read_n ** 2 if cfg.read_attention else H * W)
    assert model.encoder.in_features == read_size + cfg.dec_size + cfg.enc_size
    assert model.encoder.out_features == 4 * cfg.enc_size
    assert model.q.out_features == 2 * cfg.z_size
    x = images_for(cfg, 2)
    # a conditional preset's y: labels, or two captions' word ids (the second one shorter, padded with 0)
    y = {"label": torch.tensor([3, 9]), "caption": torch.tensor([[1, 2, 3], [4, 5, 0]]), None: None}[model.condition]
    with torch.no_grad():
        out = model(x, y=y)
    assert out.L_x.shape == out.L_z.shape == out.log_w.shape == (2,)
    assert torch.isfinite(out.loss) and out.loss.dim() == 0
    with torch.no_grad():
        gen = model.generate(2, generator=torch.Generator().manual_seed(0), y=y)
    assert gen.images.shape == (2, C, H, W)


def test_config_round_trips_through_dict():
    cfg = DrawConfig.preset("cifar10", T=3, enc_size=7)
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert DrawConfig.from_dict(d) == cfg


@pytest.mark.parametrize("overrides, match", [
    (dict(T=0), "T"),
    (dict(T=-3), "T"),
    (dict(T=2.5), "T"),
    (dict(read_n=29), "read_n"),
    (dict(write_n=40), "write_n"),
    (dict(height=20, width=30, read_n=21), "read_n"),  # larger than the shorter side
    (dict(likelihood="gaussian"), "likelihood"),
    (dict(enc_size=0), "enc_size"),
    (dict(z_size=True), "z_size"),
    (dict(read_attention="yes"), "read_attention"),
])
def test_invalid_configs_raise_drawnet_error(overrides, match):
    with pytest.raises(DrawnetError, match=match):
        DrawConfig.preset("mnist", **overrides)


def test_unknown_preset():
    with pytest.raises(DrawnetError, match="unknown preset"):
        DrawConfig.preset("imagenet")


def test_from_dict_rejects_unknown_fields_and_non_objects():
    d = PRESETS["mnist"].to_dict()
    d["n_layers"] = 3
    with pytest.raises(DrawnetError, match="n_layers"):
        DrawConfig.from_dict(d)
    with pytest.raises(DrawnetError):
        DrawConfig.from_dict([1, 2, 3])


def test_bits_per_dim():
    cfg = PRESETS["cifar10"]
    assert bits_per_dim(3072 * math.log(2) * 4.5, cfg) == pytest.approx(4.5)


# --- forward pass -----------------------------------------------------------------------------------

@pytest.mark.parametrize("preset, overrides", [
    ("mnist", {}),
    ("mnist-noattn", {}),
    ("cifar10", dict(read_n=3, write_n=4)),
    ("mnist", dict(height=12, width=20, read_n=3, write_n=4)),  # non-square
])
def test_forward_shapes_and_steps(tiny_config, preset, overrides):
    cfg = tiny_config(preset, T=3, **overrides)
    model = DRAW(cfg)
    b, C, H, W = 4, cfg.channels, cfg.height, cfg.width
    x = images_for(cfg, b)
    out = model(x)
    assert out.L_x.shape == out.L_z.shape == out.log_w.shape == (b,)
    assert torch.allclose(out.loss, (out.L_x + out.L_z).mean())
    assert (out.L_z >= 0).all() and (out.L_x > 0).all()
    assert out.canvases is None and out.read_windows is None and out.write_windows is None

    out = model(x, return_steps=True)
    assert out.canvases.shape == (cfg.T, b, C, H, W)
    assert (out.canvases >= 0).all() and (out.canvases <= 1).all()
    for windows, used in ((out.read_windows, cfg.read_attention), (out.write_windows, cfg.write_attention)):
        if used:
            for field in windows:
                assert field.shape == (cfg.T, b)
            assert (windows.sigma2 > 0).all() and (windows.delta > 0).all() and (windows.gamma > 0).all()
        else:
            assert windows is None


def test_last_canvas_scores_the_reconstruction(tiny_config):
    # canvases[-1] is sigmoid(c_T), the Bernoulli mean that L_x scores.
    model = DRAW(tiny_config("mnist", T=3))
    x = images_for(model.config, 3)
    out = model(x, return_steps=True)
    p = out.canvases[-1].double()
    bce = -(x * torch.log(p) + (1 - x) * torch.log1p(-p)).flatten(1).sum(1)
    assert torch.allclose(out.L_x.double(), bce, rtol=1e-4)


def test_first_read_window_comes_from_the_bias_alone(tiny_config):
    # h_dec_0 = 0, so the first read window is the same for every image in the batch.
    model = DRAW(tiny_config("mnist", T=2))
    out = model(images_for(model.config, 5), return_steps=True)
    for field in out.read_windows:
        assert torch.allclose(field[0], field[0, :1].expand(5))
        assert not torch.allclose(field[1], field[1, :1].expand(5))


@pytest.mark.parametrize("A, read_n, write_n", [(28, 2, 5), (12, 3, 1)])
def test_initial_windows_cut_the_image_into_a_grid(tiny_config, A, read_n, write_n):
    """Untrained, each window is centred and its N filters sit on the centres of N equal cells spanning the
    image, (i - 0.5) A/N + 0.5 in 1-based pixels, with sigma half a cell; the first read uses that window."""
    cfg = tiny_config("mnist", T=2, height=A, width=A, read_n=read_n, write_n=write_n)
    model = DRAW(cfg)
    out = model(images_for(cfg, 3), return_steps=True)
    first_read = Window(*(field[0] for field in out.read_windows))
    bias = model.dec_out.bias.detach()
    write_window = window_from_params(bias[model.write_size : model.write_size + 5][None], write_n, A, A)
    for window, N in ((first_read, read_n), (write_window, write_n)):
        cell = A / N
        mu = window.gx[:, None] + (torch.arange(1, N + 1) - N / 2 - 0.5) * window.delta[:, None]
        expected = ((torch.arange(1, N + 1) - 0.5) * cell + 0.5).expand_as(mu)
        assert torch.allclose(mu, expected, atol=1e-5)
        assert torch.allclose(window.gy, window.gx)
        assert torch.allclose(window.sigma2, torch.full_like(window.sigma2, (cell / 2) ** 2))
        assert torch.allclose(window.gamma, torch.ones_like(window.gamma))


@pytest.mark.parametrize("height, width", [(14, 11), (9, 16)])
def test_windows_from_zero_decoder_output_are_centred(tiny_config, height, width):
    """With dec_out zeroed every window parameter is 0: the read and write windows must be the centred
    full windows of a width-A, height-B image (catches width and height swapped in the model)."""
    cfg = tiny_config("mnist", T=2, height=height, width=width, read_n=3, write_n=4)
    model = DRAW(cfg)
    with torch.no_grad():
        model.dec_out.weight.zero_()
        model.dec_out.bias.zero_()
        out = model(images_for(cfg, 2), return_steps=True)
    A, B = width, height
    for windows, N in ((out.read_windows, cfg.read_n), (out.write_windows, cfg.write_n)):
        assert torch.allclose(windows.gx, torch.full((cfg.T, 2), (A + 1) / 2))
        assert torch.allclose(windows.gy, torch.full((cfg.T, 2), (B + 1) / 2))
        assert torch.allclose(windows.delta, torch.full((cfg.T, 2), (max(A, B) - 1) / (N - 1)))
        assert torch.allclose(windows.sigma2, torch.ones(cfg.T, 2))
        assert torch.allclose(windows.gamma, torch.ones(cfg.T, 2))
    # A zero write patch leaves the canvas at c_0 = 0, i.e. every pixel's mean is 0.5.
    assert torch.allclose(out.canvases, torch.full_like(out.canvases, 0.5))


def test_error_image_and_no_attention_read(tiny_config):
    """Without attention r_t = [x, x - sigmoid(c_{t-1})]; c_0 = 0 and h_enc_0 = h_dec_0 = 0."""
    cfg = tiny_config("mnist-noattn", T=3)
    model = DRAW(cfg).double()
    x = images_for(cfg, 2).double()
    inputs = []
    hook = model.encoder.register_forward_hook(lambda m, inp, out: inputs.append(inp[0].detach()))
    try:
        out = model(x, return_steps=True)
    finally:
        hook.remove()
    assert len(inputs) == cfg.T
    P = cfg.height * cfg.width
    flat = x.flatten(1)
    previous = torch.full_like(flat, 0.5)  # sigmoid(c_0) with c_0 = 0
    for t, inp in enumerate(inputs):
        assert inp.shape == (2, 2 * P + cfg.dec_size + cfg.enc_size)
        assert torch.allclose(inp[:, :P], flat)
        assert torch.allclose(inp[:, P : 2 * P], flat - previous)
        if t == 0:
            assert (inp[:, 2 * P :] == 0).all()  # zero initial states
        previous = out.canvases[t].flatten(1)


def test_attention_read_and_write_use_the_reported_windows(tiny_config):
    """r_t = gamma [Fy x Fx^T, Fy x_hat Fx^T] with the read window of step t, and
    c_t - c_{t-1} = (1/gamma) Fy^T w_t Fx with the write window of step t."""
    cfg = tiny_config("mnist", T=3, height=14, width=11, read_n=3, write_n=4)
    model = DRAW(cfg).double()
    x = images_for(cfg, 2).double()
    enc_inputs, dec_outs = [], []
    hooks = [model.encoder.register_forward_hook(lambda m, inp, out: enc_inputs.append(inp[0].detach())),
             model.dec_out.register_forward_hook(lambda m, inp, out: dec_outs.append(out.detach()))]
    try:
        with torch.no_grad():
            out = model(x, return_steps=True)
    finally:
        for h in hooks:
            h.remove()
    A, B, C = cfg.width, cfg.height, cfg.channels
    logits = torch.logit(out.canvases)
    previous_mean = torch.full_like(x, 0.5)
    previous_logit = torch.zeros_like(x)
    for t in range(cfg.T):
        rw = type(out.read_windows)(*(f[t] for f in out.read_windows))
        Fx, Fy = filterbank(rw.gx, rw.gy, rw.sigma2, rw.delta, cfg.read_n, A, B)
        expected_r = read_attention(torch.cat([x, x - previous_mean], 1), Fx, Fy, rw.gamma).flatten(1)
        assert torch.allclose(enc_inputs[t][:, : expected_r.shape[1]], expected_r, atol=1e-10)

        ww = type(out.write_windows)(*(f[t] for f in out.write_windows))
        Fx, Fy = filterbank(ww.gx, ww.gy, ww.sigma2, ww.delta, cfg.write_n, A, B)
        w = dec_outs[-cfg.T + t][:, : C * cfg.write_n ** 2].view(2, C, cfg.write_n, cfg.write_n)
        assert torch.allclose(logits[t] - previous_logit, write_attention(w, Fx, Fy, ww.gamma), atol=1e-8)
        previous_mean, previous_logit = out.canvases[t], logits[t]


def test_batch_elements_are_independent(tiny_config):
    model = DRAW(tiny_config("mnist", T=3)).double()
    x = images_for(model.config, 3).double()
    torch.manual_seed(5)
    whole = model(x)
    torch.manual_seed(5)
    again = model(x)  # the same seed gives the same noise and the same result
    assert torch.equal(whole.L_x, again.L_x) and torch.equal(whole.log_w, again.log_w)
    # Changing images 1 and 2 (with the same noise) leaves image 0's terms unchanged.
    x2 = x.clone()
    x2[1:] = 1 - x2[1:]
    torch.manual_seed(5)
    other = model(x2)
    assert torch.allclose(other.L_x[0], whole.L_x[0]) and torch.allclose(other.L_z[0], whole.L_z[0])
    assert not torch.allclose(other.L_x[1:], whole.L_x[1:])


def test_given_noise_is_the_noise_forward_draws(tiny_config):
    """forward(x, noise=eps) with the T draws forward would make itself gives the same result on both paths,
    and a shard of the batch with its share of the noise gives those images' terms (data-parallel training)."""
    model = DRAW(tiny_config("mnist", T=3)).double()
    x = images_for(model.config, 6).double()
    torch.manual_seed(7)
    drawn = model(x)
    torch.manual_seed(7)
    noise = torch.stack([torch.randn(6, model.config.z_size, dtype=torch.float64) for _ in range(3)])
    for given in (model(x, noise=noise), model._forward_by_layer(x, False, noise)):
        assert torch.allclose(given.L_x, drawn.L_x) and torch.allclose(given.log_w, drawn.log_w)
    shard = model(x[2:4], noise=noise[:, 2:4])
    assert torch.allclose(shard.L_x, drawn.L_x[2:4]) and torch.allclose(shard.L_z, drawn.L_z[2:4])


# --- the loss terms ---------------------------------------------------------------------------------

def test_iw_loss_is_minus_the_log_mean_weight_with_normalised_weights_as_gradient():
    # two images, K = 2: weights (1, 3) and (e^-1, e^-1)
    log_w = torch.tensor([0.0, math.log(3.0), -1.0, -1.0], requires_grad=True)
    loss = iw_loss(log_w, 2)
    assert loss.item() == pytest.approx((-math.log(2.0) + 1.0) / 2)
    loss.backward()
    # d loss / d log w_k = -(w_k / sum_j w_j) / images
    assert torch.allclose(log_w.grad, torch.tensor([-0.125, -0.375, -0.25, -0.25]))
    assert iw_loss(log_w, 1).item() == pytest.approx(-log_w.mean().item())  # K = 1: the ELBO's estimate


def test_closed_form_gaussian_kl_matches_torch():
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(1000, generator=gen, dtype=torch.float64) * 2
    log_sigma = torch.randn(1000, generator=gen, dtype=torch.float64)
    sigma = log_sigma.exp()
    closed = 0.5 * (mu ** 2 + sigma ** 2 - torch.log(sigma ** 2) - 1)
    reference = kl_divergence(Normal(mu, sigma), Normal(torch.zeros_like(mu), torch.ones_like(mu)))
    assert torch.allclose(closed, reference, rtol=1e-10, atol=1e-12)


def test_L_z_and_log_w_match_the_sampled_posterior(tiny_config, monkeypatch):
    """L_z = sum_t KL(N(mu_t, sigma_t^2) || N(0, I)) and -log_w - L_x = sum_t [log q(z_t) - log p(z_t)]."""
    cfg = tiny_config("mnist", T=3, z_size=5)
    model = DRAW(cfg).double()
    x = images_for(cfg, 4).double()
    q_outs, eps_draws = [], []
    real_randn_like = torch.randn_like

    def recording_randn_like(t, *args, **kwargs):
        e = real_randn_like(t, *args, **kwargs)
        eps_draws.append(e)
        return e

    monkeypatch.setattr(torch, "randn_like", recording_randn_like)
    hook = model.q.register_forward_hook(lambda m, inp, out: q_outs.append(out.detach()))
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        hook.remove()
    assert len(q_outs) == len(eps_draws) == cfg.T
    L_z = torch.zeros(4, dtype=torch.float64)
    log_q_minus_log_p = torch.zeros(4, dtype=torch.float64)
    prior = Normal(torch.zeros(4, cfg.z_size, dtype=torch.float64), 1.0)
    for q_out, eps in zip(q_outs, eps_draws):
        mu, log_sigma = q_out.chunk(2, dim=1)
        posterior = Normal(mu, log_sigma.exp())
        z = mu + log_sigma.exp() * eps
        L_z += kl_divergence(posterior, prior).sum(1)
        log_q_minus_log_p += (posterior.log_prob(z) - prior.log_prob(z)).sum(1)
    assert torch.allclose(out.L_z, L_z, rtol=1e-10)
    assert torch.allclose(-out.log_w - out.L_x, log_q_minus_log_p, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("T", [1, 3])
def test_L_z_is_the_expectation_of_log_q_minus_log_p(tiny_config, T):
    """Monte Carlo: E_q[-log_w - L_x] = E_q[log q(z) - log p(z)] = E[L_z], over many passes of one image."""
    cfg = tiny_config("mnist", T=T, z_size=6)
    model = DRAW(cfg).double()
    with torch.no_grad():  # a posterior far from the prior, so the KL is large and easy to check
        model.q.weight.mul_(8)
        model.q.bias.add_(0.3)
    x = images_for(cfg, 1, seed=3).double().expand(2000, -1, -1, -1)
    diffs, L_z_values = [], []
    with torch.no_grad():
        for seed in range(3):
            torch.manual_seed(seed)
            out = model(x)
            diffs.append(-out.log_w - out.L_x)
            L_z_values.append(out.L_z)
    d = torch.cat(diffs)
    L_z = torch.cat(L_z_values)
    if T == 1:  # the encoder sees only x: L_z is the same for every pass
        assert torch.allclose(L_z, L_z[:1].expand_as(L_z))
        assert L_z[0].item() > 1.0
    gap = d - L_z
    stderr = gap.std().item() / math.sqrt(len(gap))
    assert abs(gap.mean().item()) < 4 * stderr, (gap.mean().item(), stderr, L_z.mean().item())
    assert stderr < 0.1 * L_z.mean().item()  # the check is not vacuous


# --- gradients and learning -------------------------------------------------------------------------

@pytest.mark.parametrize("preset, overrides", [
    ("mnist", {}),
    ("mnist-noattn", {}),
    ("cifar10", dict(read_n=3, write_n=3)),
])
def test_gradients_reach_every_parameter(tiny_config, preset, overrides):
    cfg = tiny_config(preset, T=3, **overrides)
    model = DRAW(cfg)
    # Grey values (not binary) so that no input column is zero in every image.
    x = torch.rand(4, cfg.channels, cfg.height, cfg.width) * 0.98 + 0.01
    out = model(x)
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} has no gradient"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"
    # Every output of the decoder's linear layer is used (write patch, write window, next read window)
    # and every input of the encoder's LSTM (read, h_dec, h_enc) matters.
    assert (model.dec_out.weight.grad.abs().sum(1) > 0).all()
    assert (model.encoder.weight.grad.abs().sum(0) > 0).all()
    assert (model.decoder.weight.grad.abs().sum(0) > 0).all()
    assert (model.q.weight.grad.abs().sum(1) > 0).all()


def test_loss_decreases_on_real_mnist(mnist):
    torch.manual_seed(0)
    x = binarize(mnist.train[:64], seed=0)
    cfg = DrawConfig.preset("mnist", T=8, enc_size=64, dec_size=64, z_size=10)
    model = DRAW(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def evaluate():
        torch.manual_seed(123)
        with torch.no_grad():
            return model(x).loss.item()

    before = evaluate()
    for _ in range(30):
        out = model(x)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    after = evaluate()
    assert math.isfinite(after)
    assert after < before - 15, (before, after)


# --- generation -------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset, overrides", [("mnist", {}), ("mnist-noattn", {}), ("cifar10", dict(write_n=3))])
def test_generate(tiny_config, preset, overrides):
    cfg = tiny_config(preset, T=3, **overrides)
    model = DRAW(cfg)
    gen = model.generate(5, generator=torch.Generator().manual_seed(7))
    assert gen.images.shape == (5, cfg.channels, cfg.height, cfg.width)
    assert gen.canvases.shape == (cfg.T, 5, cfg.channels, cfg.height, cfg.width)
    assert torch.equal(gen.images, gen.canvases[-1])
    assert (gen.images >= 0).all() and (gen.images <= 1).all()
    assert not gen.images.requires_grad
    if cfg.write_attention:
        for field in gen.write_windows:
            assert field.shape == (cfg.T, 5)
    else:
        assert gen.write_windows is None
    again = model.generate(5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(gen.images, again.images)
    other = model.generate(5, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(gen.images, other.images)


# --- input checks -----------------------------------------------------------------------------------

@pytest.mark.parametrize("make_x", [
    lambda: torch.rand(2, 1, 27, 28),  # wrong size
    lambda: torch.rand(2, 1, 28, 27),
    lambda: torch.rand(2, 3, 28, 28),  # wrong channels
    lambda: torch.rand(1, 28, 28),  # no batch dimension
    lambda: torch.rand(2, 784),
    lambda: torch.rand(2, 1, 28, 28) + 1.0,  # values above 1
    lambda: torch.rand(2, 1, 28, 28) - 1.0,  # values below 0
    lambda: torch.full((2, 1, 28, 28), 255.0),  # 8-bit values, not scaled
    lambda: torch.randint(0, 2, (2, 1, 28, 28)),  # not floating point
])
def test_bad_images_raise_drawnet_error(tiny_config, make_x):
    model = DRAW(tiny_config("mnist"))
    with pytest.raises(DrawnetError, match="images must"):
        model(make_x())


def test_nan_images_raise_drawnet_error(tiny_config):
    model = DRAW(tiny_config("mnist"))
    x = torch.rand(2, 1, 28, 28)
    x[0, 0, 3, 3] = float("nan")
    with pytest.raises(DrawnetError):
        model(x)


# --- save_pretrained / from_pretrained --------------------------------------------------------------

@pytest.mark.parametrize("preset", ["mnist", "mnist-noattn", "cifar10"])
def test_save_and_load_round_trip(tiny_config, tmp_path, preset):
    cfg = tiny_config(preset, T=3, **({"read_n": 3, "write_n": 3} if preset == "cifar10" else {}))
    model = DRAW(cfg)
    if cfg.likelihood == "logistic":
        with torch.no_grad():
            model.likelihood.log_scale.fill_(-2.5)  # a learned parameter that must be saved too
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    assert json.loads((tmp_path / "m" / CONFIG_NAME).read_text()) == cfg.to_dict()

    loaded = DRAW.from_pretrained(tmp_path / "m")
    assert loaded.config == cfg
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    x = images_for(cfg, 3)
    torch.manual_seed(11)
    a = model(x)
    torch.manual_seed(11)
    b = loaded(x)
    for field in ("loss", "L_x", "L_z", "log_w"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    ga = model.generate(2, generator=torch.Generator().manual_seed(1))
    gb = loaded.generate(2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(ga.images, gb.images)

    # Saving again over the same directory replaces the files and leaves nothing else behind.
    loaded.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]


def test_weights_file_is_safetensors_not_pickle(tiny_config, tmp_path):
    from safetensors.torch import load_file

    DRAW(tiny_config("mnist")).save_pretrained(tmp_path)
    raw = (tmp_path / WEIGHTS_NAME).read_bytes()
    assert not raw.startswith(b"\x80")  # not a pickle (torch.save) stream
    assert not raw.startswith(b"PK")  # not a torch.save zip archive
    tensors = load_file(str(tmp_path / WEIGHTS_NAME))
    assert "encoder.weight" in tensors and "dec_out.bias" in tensors
