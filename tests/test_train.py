"""Training loop: exact resume after a real SIGKILL, non-finite steps, settings kept across resumes."""
import csv
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import drawnet.train as train_module
from drawnet import DRAW, DrawConfig, DrawnetError
from drawnet.checkpoint import load_checkpoint
from drawnet.model import iw_loss
from drawnet.train import TrainConfig, WeightAverage, load_training, train

TINY = ["--T", "2", "--enc-size", "16", "--dec-size", "16", "--z-size", "4"]


def _steps(run: Path):
    with open(run / "steps.csv", newline="") as f:
        return [(int(r["step"]), r["loss"], r["grad_norm"]) for r in csv.DictReader(f)]


def _train_cmd(run: Path, *extra):
    return [sys.executable, "-m", "drawnet.cli", "train", "--out", str(run), "--limit", "512", "--batch-size", "32",
            "--epochs", "3", "--threads", "1", "--no-progress", *TINY, *extra]


def test_sigkill_and_resume_repeats_the_uninterrupted_run(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    full = tmp_path / "full"
    subprocess.run(_train_cmd(full), check=True, env=env, capture_output=True)
    reference = _steps(full)
    assert len(reference) == 3 * (512 // 32)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(killed, "--checkpoint-minutes", "0"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill somewhere in the second epoch, mid-step or mid-write
        if (killed / "steps.csv").is_file() and len(_steps(killed)) >= 21:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert len(_steps(killed)) < len(reference)

    resumed = subprocess.run(_train_cmd(killed, "--resume"), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    assert _steps(killed) == reference
    with open(killed / "log.csv") as f, open(full / "log.csv") as g:
        cut = lambda rows: [r.rsplit(",", 1)[0] for r in rows]  # noqa: E731  (wall time differs)
        assert cut(f.read().splitlines()) == cut(g.read().splitlines())
    resumed_average = DRAW.from_pretrained(killed).state_dict()
    for k, v in DRAW.from_pretrained(full).state_dict().items():  # the weight average too
        assert torch.equal(resumed_average[k], v), k


def _tiny_train_config(tmp_path, **kw):
    base = dict(out_dir=str(tmp_path / "run"), limit=128, batch_size=32, epochs=1, progress=False, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def _nan_on(steps, monkeypatch):
    """Make the loss non-finite on the given (1-based) training steps."""
    forward = train_module.DRAW.forward
    calls = {"n": 0}

    def patched(self, x, *args, **kwargs):
        out = forward(self, x, *args, **kwargs)
        if self.training:
            calls["n"] += 1
            if calls["n"] in steps:
                return out._replace(loss=out.loss * float("nan"))
        return out

    monkeypatch.setattr(train_module.DRAW, "forward", patched)


def test_non_finite_step_is_skipped_and_logged(tmp_path, monkeypatch):
    _nan_on({2}, monkeypatch)
    cfg = DrawConfig(T=2, enc_size=16, dec_size=16, z_size=4)
    messages = []
    train(cfg, _tiny_train_config(tmp_path), log=messages.append)
    assert any("step 2: non-finite" in m for m in messages)
    _, _, state = load_training(tmp_path / "run")
    assert state.skipped == 1 and state.epoch == 1
    model, _, _ = load_training(tmp_path / "run")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert len(state.history) == 1 and state.history[0]["train_loss"] == state.history[0]["train_loss"]  # not NaN


def test_training_stops_after_repeated_non_finite_steps_keeping_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = DrawConfig(T=2, enc_size=16, dec_size=16, z_size=4)
    train(cfg, _tiny_train_config(tmp_path, max_steps=2), log=lambda m: None)
    good = {k: v.clone() for k, v in load_training(tmp_path / "run")[0].state_dict().items()}
    _nan_on(set(range(1, 100)), monkeypatch)
    with pytest.raises(DrawnetError, match="5 non-finite steps in a row"):
        train(None, _tiny_train_config(tmp_path, max_steps=None, epochs=3), resume=True, log=lambda m: None)
    model, _, state = load_training(tmp_path / "run")
    # skipped steps never touch the weights, so every checkpoint written since holds the good ones
    assert state.skipped >= 2 and state.step < 2 + 5
    assert all(torch.equal(v, good[k]) for k, v in model.state_dict().items())


def test_resume_keeps_saved_settings_and_refuses_batch_change_mid_epoch(tmp_path):
    from drawnet.cli import main

    run = tmp_path / "run"
    args = ["train", "--out", str(run), "--limit", "256", "--batch-size", "32", "--lr", "0.002", "--epochs", "1",
            "--max-steps", "3", "--no-progress", *TINY]
    assert main(args) == 0
    _, _, state = load_training(run)
    assert (state.step, state.epoch_step) == (3, 3)
    assert main(["train", "--out", str(run), "--resume", "--batch-size", "64", "--no-progress"]) == 2
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "5", "--no-progress"]) == 0
    saved = train_module.saved_train_config(run)
    assert saved["lr"] == 0.002 and saved["batch_size"] == 32 and saved["limit"] == 256
    assert [s for s, _, _ in _steps(run)] == [1, 2, 3, 4, 5]


def test_unwritable_output_directory_is_a_clear_error(tmp_path):
    if os.geteuid() == 0:
        target = Path("/proc/drawnet-run")  # not writable even for root
    else:
        target = tmp_path / "ro"
        target.mkdir()
        target.chmod(0o500)
        target = target / "run"
    with pytest.raises(DrawnetError, match="not writable|cannot write"):
        train(DrawConfig(T=1, enc_size=8, dec_size=8, z_size=2), _tiny_train_config(tmp_path, out_dir=str(target)))


def test_warm_start_begins_exactly_where_the_source_model_is():
    """A label model warm-started from an unconditional one draws what the source draws, whatever the label."""
    from drawnet.model import DRAW
    from drawnet.train import warm_start

    small = dict(T=3, enc_size=12, dec_size=10, z_size=4)
    source = DRAW(DrawConfig.preset("mnist", **small))
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model = DRAW(DrawConfig.preset("mnist-label", **small))
    warm_start(model, source)
    expected = source.generate(4, torch.Generator().manual_seed(0)).images
    for label in (0, 7):
        got = model.generate(4, torch.Generator().manual_seed(0), y=torch.full((4,), label)).images
        assert torch.allclose(got, expected, atol=1e-6)
    with pytest.raises(DrawnetError, match="same architecture"):
        warm_start(DRAW(DrawConfig.preset("mnist-label", T=4, enc_size=12, dec_size=10, z_size=4)), source)
    # with attention no weight depends on the image size: a 60x60 model takes every weight as it is
    bigger = DRAW(DrawConfig.preset("two-digit-mnist", **small))
    warm_start(bigger, source)
    for (name, mine), theirs in zip(bigger.state_dict().items(), source.state_dict().values()):
        assert torch.equal(mine, theirs), name
    with pytest.raises(DrawnetError, match="image size"):
        warm_start(DRAW(DrawConfig.preset("mnist-noattn", height=30, **small)),
                   DRAW(DrawConfig.preset("mnist-noattn", **small)))


def test_bfloat16_training_runs_and_the_setting_is_kept_on_resume(tmp_path):
    from drawnet.cli import main

    run = tmp_path / "run"
    args = ["train", "--out", str(run), "--limit", "128", "--batch-size", "32", "--epochs", "1", "--max-steps", "2",
            "--matmul-dtype", "bfloat16", "--no-progress", *TINY]
    assert main(args) == 0
    assert train_module.saved_train_config(run)["matmul_dtype"] == "bfloat16"
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "4", "--no-progress"]) == 0
    assert train_module.saved_train_config(run)["matmul_dtype"] == "bfloat16"
    steps = _steps(run)
    assert [s for s, _, _ in steps] == [1, 2, 3, 4] and all(float(loss) > 0 for _, loss, _ in steps)
    model, _, _ = load_training(run)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # only the products were bfloat16
    with pytest.raises(DrawnetError, match="matmul-dtype"):
        TrainConfig(matmul_dtype="float16")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc settings are glibc's")
def test_freed_memory_is_reused_without_page_faults():
    """After keep_freed_memory, a step that allocates and frees tensors of 1-16 MB, as a training step does,
    reuses the pages the previous step freed: no page faults once warm (glibc's default: about 9,000 here)."""
    code = (
        "import resource, torch\n"
        "from drawnet.train import keep_freed_memory\n"
        "assert keep_freed_memory()\n"
        "def step():\n"
        "    return [torch.ones(mb << 18) for mb in (1, 3, 8, 2, 5, 16, 4)]\n"
        "for _ in range(3):\n"
        "    step()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "step()\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) < 100


def test_weight_average_warms_up_then_decays():
    """average += (1 - d_t)(weights - average), d_t = min(decay, (1 + t) / (10 + t)): by hand for one weight."""
    model = DRAW(DrawConfig.preset("mnist", T=1, enc_size=4, dec_size=4, z_size=2))
    average = WeightAverage(model, decay=0.2)
    expected = model.q.bias.detach().clone()
    for t, value in enumerate([1.0, 2.0, -1.0]):
        with torch.no_grad():
            model.q.bias.fill_(value)
        average.update(model)
        d = min(0.2, (1 + t) / (10 + t))  # 1/10, 2/11, then the decay 0.2 (below 3/12)
        expected += (1 - d) * (value - expected)
        assert torch.allclose(average.model.q.bias, expected)
    assert average.steps == 3
    assert not average.model.q.bias.requires_grad


def test_no_average_exports_the_trained_weights(tmp_path):
    model = train(DrawConfig.preset("mnist", T=2, enc_size=8, dec_size=8, z_size=2),
                  _tiny_train_config(tmp_path, ema=0.0), log=lambda message: None)
    tensors, meta = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    assert not any(k.startswith("average.") for k in tensors)
    for k, v in DRAW.from_pretrained(tmp_path / "run").state_dict().items():
        assert torch.equal(tensors[f"model.{k}"], v) and torch.equal(model.state_dict()[k], v), k
    with pytest.raises(DrawnetError, match="ema"):
        TrainConfig(ema=1.0)


def test_iw_training_steps_down_the_importance_weighted_bound(tmp_path, mnist):
    cfg, K, lr = DrawConfig.preset("mnist", T=2, enc_size=8, dec_size=8, z_size=2), 3, 1e-3
    trained = train(cfg, _tiny_train_config(tmp_path, iw_samples=K, max_steps=1, ema=0.0, lr=lr), log=lambda m: None)
    # step 1 by hand: the run's initial weights, batch, binarisation and noise (K trajectories per image)
    torch.manual_seed(0)
    model = DRAW(cfg)
    perm = torch.randperm(128, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    x = torch.bernoulli(mnist.train[:128][perm[:32]])
    noise = torch.stack([torch.randn(32 * K, cfg.z_size) for _ in range(cfg.T)])
    out = model(x.repeat_interleave(K, 0), noise=noise)
    bound = iw_loss(out.log_w, K)
    assert float(_steps(tmp_path / "run")[0][1]) == pytest.approx(bound.item(), abs=1e-4)
    assert bound < -out.log_w.mean()  # tighter than the ELBO of the same trajectories
    bound.backward()
    # Adam's first step moves each weight by lr against the sign of its gradient: the bound's gradient
    for (name, before), after in zip(model.named_parameters(), trained.parameters()):
        clear = before.grad.abs() > 1e-4
        torch.testing.assert_close(after.detach()[clear], (before - lr * before.grad.sign()).detach()[clear],
                                   msg=name)
    with pytest.raises(DrawnetError, match="iw-samples"):
        TrainConfig(iw_samples=0)


@pytest.mark.parametrize("fast", [True, False])
def test_bfloat16_products_fall_back_to_float32_where_they_would_be_slow(tmp_path, monkeypatch, fast):
    """On a CPU without fast bfloat16 kernels, --matmul-dtype bfloat16 trains with float32 products and says so;
    the saved setting stays bfloat16, so the run uses it again where it pays."""
    seen = []
    forward = train_module.DRAW.forward

    def recording(self, x, *args, matmul_dtype=None, **kwargs):
        if self.training:
            seen.append(matmul_dtype)
        return forward(self, x, *args, matmul_dtype=matmul_dtype, **kwargs)

    monkeypatch.setattr(train_module.DRAW, "forward", recording)
    monkeypatch.setattr(train_module, "fast_bfloat16", lambda device: fast)
    messages = []
    train(DrawConfig(T=2, enc_size=16, dec_size=16, z_size=4),
          _tiny_train_config(tmp_path, max_steps=2, matmul_dtype="bfloat16"), log=messages.append)
    assert seen == [torch.bfloat16 if fast else None] * 2
    assert any("training with float32 products" in m for m in messages) != fast
    assert train_module.saved_train_config(tmp_path / "run")["matmul_dtype"] == "bfloat16"


def test_fast_bfloat16_on_gpus_and_on_cpus_with_avx512():
    assert train_module.fast_bfloat16(torch.device("cuda"))
    cpuinfo = Path("/proc/cpuinfo")
    if platform.machine() == "x86_64" and cpuinfo.is_file():
        flags = set(next(line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")).split())
        has_avx512 = {"avx512bw", "avx512vl", "avx512dq"} <= flags
        assert train_module.fast_bfloat16(torch.device("cpu")) == has_avx512
