"""Choosing the device, and training on a GPU with each step replayed as a CUDA graph.

The device choice and its errors run everywhere; the tests marked `cuda` run only where CUDA is available.
This project's CI has no GPU, and no GPU has run them yet (the README's GPU section)."""
import pytest
import torch

from drawnet import DRAW
from drawnet.distributed import pick_device
from drawnet.errors import DrawnetError

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
TINY_RUN = ["--limit", "256", "--batch-size", "64", "--no-progress", "--T", "3", "--enc-size", "32",
            "--dec-size", "32", "--z-size", "8"]


def test_default_device_is_the_gpu_when_there_is_one():
    assert pick_device() == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where CUDA is missing")
def test_asking_for_a_missing_gpu_is_a_clear_error():
    with pytest.raises(DrawnetError, match="CUDA is not available here; give --device cpu"):
        pick_device("cuda")


@pytest.mark.parametrize("name, message", [("gpu", "unknown device 'gpu'"), ("meta", "not supported")])
def test_unknown_devices_are_refused(name, message):
    with pytest.raises(DrawnetError, match=message):
        pick_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where CUDA is missing")
def test_cli_refuses_a_missing_gpu_in_one_line(run_cli, one_line_error, tmp_path):
    code, _, err = run_cli("train", *TINY_RUN, "--epochs", "1", "--device", "cuda", "--out", tmp_path / "run")
    one_line_error(code, err)
    assert not (tmp_path / "run").exists()
    code, _, err = run_cli("eval", "--model", "mnist", "--limit", "2", "--device", "cuda")
    one_line_error(code, err)


def test_eval_on_the_cpu_when_asked(run_cli):
    code, out, _ = run_cli("eval", "--model", "mnist", "--limit", "20", "--device", "cpu")
    assert code in (0, None)
    assert "test NLL bound (ELBO) on 20 images" in out


def _batch(cfg, n, seed, device):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, cfg.channels, cfg.height, cfg.width, generator=g).bernoulli(generator=g)
    return x.to(device), torch.randn(cfg.T, n, cfg.z_size, generator=g).to(device)


@cuda
@pytest.mark.parametrize("preset, matmul_dtype", [("mnist", None), ("mnist-noattn", None), ("mnist", torch.bfloat16)])
def test_graph_replays_compute_the_eager_step(tiny_config, preset, matmul_dtype):
    from drawnet.train import CudaGraphStep

    device = torch.device("cuda")
    model = DRAW(tiny_config(preset, T=4)).to(device)
    x, noise = _batch(model.config, 16, 0, device)
    graphed = CudaGraphStep(model, x, noise, None, matmul_dtype)
    for seed in (1, 2):  # batches other than the captured one
        x, noise = _batch(model.config, 16, seed, device)
        out = graphed(x, noise, None)
        got = [out.L_x.clone(), out.L_z.clone()] + [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        ref = model(x, noise=noise, matmul_dtype=matmul_dtype)
        ref.loss.backward()
        want = [ref.L_x, ref.L_z] + [p.grad for p in model.parameters()]
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@cuda
def test_training_on_the_gpu_resumes_exactly(run_cli, tmp_path):
    """Two epochs in one go, and one epoch then a resume, give the same weights (graphs on); the run also
    trains with graphs off to the same losses up to rounding."""
    from drawnet.checkpoint import load_checkpoint

    def weights(run):
        return {k: v for k, v in load_checkpoint(run / "checkpoint.safetensors")[0].items() if k.startswith("model.")}

    assert run_cli("train", *TINY_RUN, "--epochs", "2", "--out", tmp_path / "a")[0] in (0, None)
    assert run_cli("train", *TINY_RUN, "--epochs", "1", "--out", tmp_path / "b")[0] in (0, None)
    assert run_cli("train", "--epochs", "2", "--no-progress", "--resume", "--out", tmp_path / "b")[0] in (0, None)
    assert run_cli("train", *TINY_RUN, "--epochs", "2", "--cuda-graph", "false", "--out", tmp_path / "c")[0] in (0, None)
    a, b, c = (weights(tmp_path / name) for name in "abc")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a[name], c[name], rtol=1e-3, atol=1e-4)
