"""The fast path computes the paper's maths: the same loss and gradients as a straightforward DRAW.

drawnet's forward fuses the linear layers by input, computes the read and write as single autograd nodes
with hand-written backward passes, and sums each weight's gradient over all steps at once. These tests
compare it with benchmarks/reference_draw.py (nn.LSTMCell, separate heads, the filterbank as written),
with drawnet's own layer-by-layer path, and with the plain attention functions.
"""
import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from drawnet import DRAW, DrawConfig, DrawnetError
from drawnet import model as model_module
from drawnet.attention import filterbank, fused_read, fused_write, read_attention, window_from_params, write_attention

ROOT = Path(__file__).resolve().parents[1]


def _load_reference():
    spec = importlib.util.spec_from_file_location("reference_draw", ROOT / "benchmarks" / "reference_draw.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ReferenceDRAW


ReferenceDRAW = _load_reference()

CASES = [
    ("mnist", {}),
    ("mnist-noattn", {}),
    ("mnist", dict(height=12, width=20, read_n=3, write_n=4)),  # non-square: the filters per axis
    ("mnist", dict(read_n=1, write_n=1)),  # one filter: delta unused
]


def binary_images(cfg, n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.rand(n, cfg.channels, cfg.height, cfg.width, generator=gen), generator=gen)


def with_lively_weights(model):
    """Larger random weights than the initialisation, so windows move and every term matters."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)
    return model


@pytest.mark.parametrize("preset, overrides", CASES)
def test_loss_and_gradients_match_the_straightforward_implementation(preset, overrides):
    cfg = DrawConfig.preset(preset, T=4, enc_size=24, dec_size=20, z_size=6, **overrides)
    model = with_lively_weights(DRAW(cfg).double())
    reference = ReferenceDRAW.from_drawnet(model)
    x = binary_images(cfg, 5).double()

    torch.manual_seed(3)  # both draw eps with torch.randn_like(mu) once per step, in the same order
    out = model(x)
    out.loss.backward()
    torch.manual_seed(3)
    ref_loss = reference(x)
    ref_loss.backward()

    assert torch.allclose(out.loss, ref_loss, rtol=1e-12)
    expected = reference.grads_in_drawnet_layout()
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, expected[name], rtol=1e-9, atol=1e-12), name


@pytest.mark.parametrize("preset", ["mnist", "mnist-noattn"])
def test_full_size_float32_matches_within_float_tolerance(preset):
    cfg = DrawConfig.preset(preset, T=6)  # the preset's layer sizes, fewer glimpses
    torch.manual_seed(0)
    model = DRAW(cfg)
    reference = ReferenceDRAW.from_drawnet(model)
    x = binary_images(cfg, 8)
    noise = [torch.randn(8, cfg.z_size) for _ in range(cfg.T)]
    it = iter(noise)
    real_randn_like = torch.randn_like
    try:  # hand the fast path the reference's noise
        torch.randn_like = lambda t, *a, **k: next(it)
        out = model(x)
    finally:
        torch.randn_like = real_randn_like
    out.loss.backward()
    ref_loss = reference(x, noise=noise)
    ref_loss.backward()
    assert torch.allclose(out.loss, ref_loss, rtol=1e-5)
    expected = reference.grads_in_drawnet_layout()
    for name, p in model.named_parameters():
        scale = expected[name].abs().max()
        assert (p.grad - expected[name]).abs().max() <= 1e-4 * scale, name


@pytest.mark.parametrize("preset, overrides", CASES)
def test_fused_and_layer_by_layer_paths_agree(preset, overrides):
    """Every output, including the per-step canvases and windows and the importance weights."""
    cfg = DrawConfig.preset(preset, T=3, enc_size=16, dec_size=16, z_size=4, **overrides)
    model = with_lively_weights(DRAW(cfg).double())
    x = binary_images(cfg, 4).double()
    torch.manual_seed(7)
    fast = model(x, return_steps=True)
    torch.manual_seed(7)
    plain = model._forward_by_layer(x, return_steps=True)
    for a, b in zip(fast, plain):
        if a is None:
            assert b is None
            continue
        for u, v in zip(a, b) if isinstance(a, tuple) else [(a, b)]:
            assert torch.allclose(u, v, rtol=1e-10, atol=1e-12)

    gen_fast = model.generate(3, generator=torch.Generator().manual_seed(2))
    gen_plain = model._generate_by_layer(3, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(gen_fast.images, gen_plain.images, rtol=1e-10, atol=1e-12)
    if cfg.write_attention:
        for u, v in zip(gen_fast.write_windows, gen_plain.write_windows):
            assert torch.allclose(u, v, rtol=1e-10)


def test_latent_terms_summed_in_groups_of_steps_match(monkeypatch):
    """The KL and log-weight terms are summed over groups of steps; 3 groups of 2 steps and one of 1 here."""
    cfg = DrawConfig.preset("mnist", T=7, enc_size=16, dec_size=16, z_size=4)
    model = with_lively_weights(DRAW(cfg).double())
    x = binary_images(cfg, 5).double()
    torch.manual_seed(5)
    whole = model(x)
    grads = torch.autograd.grad(whole.loss, list(model.parameters()))
    monkeypatch.setattr(model_module._LatentTerms, "GROUP_NUMBERS", 2 * 5 * cfg.z_size)
    torch.manual_seed(5)
    grouped = model(x)
    torch.manual_seed(5)
    plain = model._forward_by_layer(x, return_steps=False)
    for a, b in ((grouped.L_z, plain.L_z), (grouped.log_w, plain.log_w), (grouped.loss, whole.loss)):
        assert torch.allclose(a, b, rtol=1e-12)
    for g, h in zip(torch.autograd.grad(grouped.loss, list(model.parameters())), grads):
        assert torch.allclose(g, h, rtol=1e-10, atol=1e-13)


def test_no_grad_and_grad_mode_give_the_same_loss():
    cfg = DrawConfig.preset("mnist", T=3, enc_size=16, dec_size=16, z_size=4)
    model = with_lively_weights(DRAW(cfg).double())
    x = binary_images(cfg, 4).double()
    torch.manual_seed(1)
    with_grad = model(x).loss
    torch.manual_seed(1)
    with torch.no_grad():
        without = model(x).loss
    torch.manual_seed(1)
    with torch.inference_mode():
        inference = model(x).loss
    assert torch.allclose(with_grad, without, rtol=1e-12) and torch.allclose(without, inference, rtol=1e-12)
    model(x).loss.backward()  # the inference-mode pass left nothing behind that breaks training


def test_weight_gradients_summed_over_steps_survive_repeated_backward():
    """Two forwards in one graph, and a graph walked twice (retain_graph), add up as autograd would."""
    cfg = DrawConfig.preset("mnist", T=3, enc_size=16, dec_size=16, z_size=4)
    model = with_lively_weights(DRAW(cfg).double())
    x = binary_images(cfg, 4).double()

    def grads():
        g = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        return g

    torch.manual_seed(0)
    model(x).loss.backward()
    once = grads()
    torch.manual_seed(0)
    loss = model(x).loss
    loss.backward(retain_graph=True)
    loss.backward()
    twice = grads()
    torch.manual_seed(0)
    first = model(x).loss
    second = model(x[:2]).loss
    torch.manual_seed(0)
    (model(x).loss + model(x[:2]).loss).backward()
    summed = grads()
    first.backward()
    second.backward()
    separately = grads()
    for name in once:
        assert torch.allclose(twice[name], 2 * once[name], rtol=1e-10), name
        assert torch.allclose(summed[name], separately[name], rtol=1e-10), name


def test_gradient_with_respect_to_the_images():
    cfg = DrawConfig.preset("mnist", T=3, enc_size=16, dec_size=16, z_size=4)
    model = with_lively_weights(DRAW(cfg).double())
    x = (torch.rand(3, 1, 28, 28, dtype=torch.float64) * 0.9 + 0.05).requires_grad_()
    torch.manual_seed(0)
    fast = torch.autograd.grad(model(x).loss, x)[0]
    torch.manual_seed(0)
    plain = torch.autograd.grad(model._forward_by_layer(x, False).loss, x)[0]
    assert torch.allclose(fast, plain, rtol=1e-9, atol=1e-12)
    # A pass that stops at the images leaves nothing behind for a later pass through the same graph.
    torch.manual_seed(0)
    model(x).loss.backward()
    once = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    loss = model(x).loss
    torch.autograd.grad(loss, x, retain_graph=True)
    loss.backward()
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, once[name], rtol=1e-10), name


def test_forward_hooks_see_every_layer_call():
    """With a hook on a layer the model runs layer by layer, so the hook sees each step's input."""
    cfg = DrawConfig.preset("mnist", T=3, enc_size=16, dec_size=16, z_size=4)
    model = DRAW(cfg)
    calls = []
    handle = model.encoder.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape))
    try:
        model(binary_images(cfg, 2))
    finally:
        handle.remove()
    assert calls == [(2, model.encoder.in_features)] * cfg.T
    model(binary_images(cfg, 2))
    assert len(calls) == cfg.T  # no hook, fused path: the layer itself is not called


# --- the fused read and write against the plain attention functions ------------------------------------

def plain_read(x, x_hat, params, N):
    A, B = x.shape[3], x.shape[2]
    w = window_from_params(params, N, A, B)
    Fx, Fy = filterbank(w.gx, w.gy, w.sigma2, w.delta, N, A, B)
    return read_attention(torch.cat([x, x_hat], 1), Fx, Fy, w.gamma).flatten(1)


def plain_write(patch, params, N, B, A):
    n, C = patch.shape[0], patch.shape[1] // (N * N)
    w = window_from_params(params, N, A, B)
    Fx, Fy = filterbank(w.gx, w.gy, w.sigma2, w.delta, N, A, B)
    return write_attention(patch.view(n, C, N, N), Fx, Fy, w.gamma)


@pytest.mark.parametrize("C, B, A, N", [(1, 28, 28, 2), (1, 28, 28, 5), (3, 7, 9, 3), (2, 12, 20, 4), (1, 6, 6, 1),
                                        (2, 8, 5, 2)])
def test_fused_read_and_write_match_the_plain_functions(C, B, A, N):
    gen = torch.Generator().manual_seed(N)
    x = torch.rand(3, C, B, A, generator=gen, dtype=torch.float64).requires_grad_()
    x_hat = (torch.rand(3, C, B, A, generator=gen, dtype=torch.float64) - 0.5).requires_grad_()
    params = (torch.randn(3, 5, generator=gen, dtype=torch.float64) * 0.5).requires_grad_()
    patch = torch.randn(3, C * N * N, generator=gen, dtype=torch.float64).requires_grad_()

    for fused, plain, inputs in ((fused_read(x, x_hat, params, N), plain_read(x, x_hat, params, N), (x, x_hat, params)),
                                 (fused_write(patch, params, N, B, A), plain_write(patch, params, N, B, A), (patch, params))):
        assert fused.shape == plain.shape
        assert torch.allclose(fused, plain, rtol=1e-10, atol=1e-13)
        g = torch.randn(fused.shape, generator=gen, dtype=torch.float64)
        for u, v in zip(torch.autograd.grad(fused, inputs, g), torch.autograd.grad(plain, inputs, g)):
            assert torch.allclose(u, v, rtol=1e-9, atol=1e-12)

    if B * A <= 100:  # numerical Jacobians of whole images are slow; the larger cases rely on the comparison
        assert torch.autograd.gradcheck(lambda a, b, p: fused_read(a, b, p, N), (x, x_hat, params))
        assert torch.autograd.gradcheck(lambda w, p: fused_write(w, p, N, B, A), (patch, params))


@pytest.mark.parametrize("B, A", [(28, 28), (12, 20)])
def test_fused_filters_outside_the_image_match_the_plain_ones(B, A):
    """Far outside every filter underflows to zero; a few pixels outside the normalisation Z falls below
    EPS and is clamped there (the gradient then skips the division by Z)."""
    g_far, g_near = 40.0, (-5.5 / ((A + 1) / 2)) - 1  # gx~ for gx far to the right, and gx = -5.5
    params = torch.tensor([[g_far, -g_far, -3.0, 0.0, 0.0], [g_near, 0.0, 0.0, 0.0, -1.0],
                           [0.0, g_near, 0.5, -2.0, 0.3]], dtype=torch.float64, requires_grad=True)
    x = torch.rand(3, 1, B, A, dtype=torch.float64)
    x_hat = (x - 0.5).requires_grad_()
    patch = torch.randn(3, 25, dtype=torch.float64, requires_grad=True)
    for fused, plain, inputs in ((fused_read(x, x_hat, params, 2), plain_read(x, x_hat, params, 2), (x_hat, params)),
                                 (fused_write(patch, params, 5, B, A), plain_write(patch, params, 5, B, A), (patch, params))):
        assert torch.isfinite(fused).all()
        assert torch.allclose(fused, plain, rtol=1e-10, atol=1e-13)
        g = torch.randn_like(fused)
        for u, v in zip(torch.autograd.grad(fused, inputs, g), torch.autograd.grad(plain, inputs, g)):
            assert torch.isfinite(u).all()
            assert torch.allclose(u, v, rtol=1e-9, atol=1e-12)


# --- bfloat16 products -------------------------------------------------------------------------------------

BF16_CASES = [("mnist", {}), ("mnist-noattn", {}), ("mnist-label", {}),
              ("mnist-captions", dict(height=28, width=28, caption_size=16, align_size=16))]


@pytest.mark.parametrize("preset, overrides", BF16_CASES)
def test_bfloat16_products_keep_the_loss_and_gradients_to_bfloat16_precision(preset, overrides):
    """matmul_dtype=bfloat16 rounds the products' inputs and outputs to 8 significant bits and nothing else:
    loss and gradients stay within a small multiple of that (2^-8 = 0.4 %) of the float32 ones."""
    cfg = DrawConfig.preset(preset, T=6, **overrides)  # the preset's layer sizes, fewer glimpses
    torch.manual_seed(0)
    model = DRAW(cfg)
    x = binary_images(cfg, 16)
    y = None
    if cfg.num_classes:
        y = torch.arange(16) % cfg.num_classes
    elif cfg.vocab_size:
        y = torch.randint(1, cfg.vocab_size, (16, 5))
    noise = torch.randn(cfg.T, 16, cfg.z_size)
    params = [p for p in model.parameters() if p.requires_grad]
    runs = []
    for dtype in (None, torch.bfloat16):
        out = model(x, noise=noise, y=y, matmul_dtype=dtype)
        runs.append((out, torch.autograd.grad(out.loss, params)))
    (out32, grads32), (out16, grads16) = runs
    assert out16.loss.dtype == torch.float32 and out16.loss.item() != out32.loss.item()  # the products did change
    assert abs(out16.loss.item() - out32.loss.item()) < 1e-3 * out32.loss.item()
    for (name, _), g16, g32 in zip(model.named_parameters(), grads16, grads32):
        assert g16.dtype == torch.float32
        assert (g16 - g32).norm() < 0.015 * g32.norm() + 1e-6, name


def test_bfloat16_products_need_the_fused_path():
    cfg = DrawConfig.preset("mnist", T=2, enc_size=8, dec_size=8, z_size=2)
    model = DRAW(cfg)
    handle = model.encoder.register_forward_hook(lambda *args: None)
    with pytest.raises(DrawnetError, match="fused path"):
        model(binary_images(cfg, 2), matmul_dtype=torch.bfloat16)
    handle.remove()


# --- the benchmark runs ------------------------------------------------------------------------------------

def test_benchmark_quick_run_prints_the_ratio():
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--quick", "--threads", "1",
           "--T", "2", "--units", "16", "--z-size", "4", "--batches", "64,96"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    ratio = [line for line in lines if line.startswith("ratio drawnet / reference at batch 64:")]
    assert len(ratio) == 1, result.stdout
    float32, bfloat16 = ratio[0].split(":")[1].split(",")
    assert float32.endswith("x float32") and bfloat16.endswith("x bfloat16 products")
    assert all(math.isfinite(float(part.split("x")[0])) for part in (float32, bfloat16))
    assert any(line.startswith("sampling 64 images") for line in lines)
    assert any("% of the measured float32 matmul rate" in line for line in lines)
    assert any(line.startswith("best drawnet bf16 batch") for line in lines)
    two_procs = [line for line in lines if line.startswith("best drawnet x2 procs batch 96:")]
    assert len(two_procs) == 1 and "% of the larger measured float32 matmul rate" in two_procs[0], result.stdout


def test_encoder_only_run_trains_the_inference_network_alone(tiny_config, mnist, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("encoder_only", ROOT / "benchmarks" / "encoder_only.py")
    encoder_only = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(encoder_only)
    start = DRAW(tiny_config("mnist"))
    start.save_pretrained(tmp_path)
    trained = encoder_only.main(["--model", str(tmp_path), "--epochs", "2", "--train", "256", "--valid", "64",
                                 "--batch-size", "64", "--lr", "1e-2"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{tmp_path}: validation bound ") and len(lines) == 3
    assert lines[2].startswith("epoch 2: training loss ") and "validation bound" in lines[2]
    before, after = start.state_dict(), trained.state_dict()
    for name in ("decoder.weight", "decoder.bias"):
        assert torch.equal(before[name], after[name]), name
    emitted_by_decoder = start.write_size + start.n_write_params
    for name in ("dec_out.weight", "dec_out.bias"):
        assert torch.equal(before[name][:emitted_by_decoder], after[name][:emitted_by_decoder]), name
        assert not torch.equal(before[name][emitted_by_decoder:], after[name][emitted_by_decoder:]), name
    for name in ("encoder.weight", "q.weight", "q.bias"):
        assert not torch.equal(before[name], after[name]), name
