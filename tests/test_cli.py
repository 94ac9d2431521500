"""The command line, end to end on tiny settings: train (and resume), eval, sample, and clean errors."""
import csv
import gzip
import json
import math
import os
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from drawnet import DRAW
from drawnet.checkpoint import load_checkpoint, save_checkpoint
from drawnet.cli import main
from drawnet.evaluate import BoundsFile, elbo, iw_bound, mean_and_stderr

TINY_MODEL = ["--T", "2", "--enc-size", "32", "--dec-size", "32", "--z-size", "8"]
TINY_RUN = ["--limit", "256", "--batch-size", "64", "--no-progress"]  # 4 steps per epoch
RUN_FILES = {"checkpoint.safetensors", "config.json", "model.safetensors", "steps.csv", "log.csv", "log.json"}


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One tiny training run (1 epoch, 4 steps), shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("cli") / "run"
    code = main(["train", *TINY_RUN, "--epochs", "1", *TINY_MODEL, "--out", str(out)])
    assert code == 0
    return out


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A private copy of the trained run that a test may modify."""
    dest = tmp_path / "run"
    shutil.copytree(trained_run, dest)
    return dest


def test_train_writes_a_complete_run(trained_run):
    assert RUN_FILES <= {p.name for p in trained_run.iterdir()}
    assert not [p.name for p in trained_run.iterdir() if p.name.endswith(".tmp")]

    config = json.loads((trained_run / "config.json").read_text())
    assert (config["T"], config["enc_size"], config["dec_size"], config["z_size"]) == (2, 32, 32, 8)
    assert config["read_attention"] and config["write_attention"]  # the mnist preset's defaults otherwise

    steps = read_csv(trained_run / "steps.csv")
    assert [int(r["step"]) for r in steps] == [1, 2, 3, 4]
    for r in steps:
        assert float(r["loss"]) == pytest.approx(float(r["L_x"]) + float(r["L_z"]), abs=1e-3)
        assert math.isfinite(float(r["grad_norm"]))
    log = read_csv(trained_run / "log.csv")
    assert len(log) == 1 and int(log[0]["epoch"]) == 1 and int(log[0]["step"]) == 4
    assert 0 < float(log[0]["valid_bound"]) < 1000
    history = json.loads((trained_run / "log.json").read_text())
    assert len(history) == 1 and history[0]["epoch"] == 1

    model = DRAW.from_pretrained(trained_run)
    assert model.config.T == 2
    tensors, meta = load_checkpoint(trained_run / "checkpoint.safetensors")
    assert meta["state"]["epoch"] == 1 and meta["state"]["step"] == 4
    assert meta["model_config"] == config
    # The exported model is the checkpoint's average of the weights over the 4 updates.
    assert meta["state"]["averaged_steps"] == 4
    for k, v in model.state_dict().items():
        assert torch.equal(tensors[f"average.{k}"], v), k
    assert any(not torch.equal(tensors[f"model.{k}"], v) for k, v in model.state_dict().items())


def test_resume_continues_the_run(run_copy, run_cli):
    # As if the process was killed after logging two more steps but before their checkpoint was written:
    # those rows must be dropped on resume (they are trained and logged again).
    with open(run_copy / "steps.csv", "a", newline="") as f:
        f.write("5,1,540.0,539.0,1.0,4.0,0.001\n6,1,539.0,538.0,1.0,4.0,0.001\n")
    code, out, err = run_cli("train", *TINY_RUN, "--epochs", "2", "--out", run_copy, "--resume")
    assert code == 0, err
    assert "resuming" in out
    log = read_csv(run_copy / "log.csv")
    assert [int(r["epoch"]) for r in log] == [1, 2]
    steps = [int(r["step"]) for r in read_csv(run_copy / "steps.csv")]
    assert steps == list(range(1, 9))  # no duplicated or missing steps
    assert [h["epoch"] for h in json.loads((run_copy / "log.json").read_text())] == [1, 2]
    _, meta = load_checkpoint(run_copy / "checkpoint.safetensors")
    assert meta["state"]["epoch"] == 2 and meta["state"]["step"] == 8
    # Resuming a finished run, or one at its --max-steps, trains no more, but writes the model directory, which
    # git does not keep (checkpoints/ holds only the checkpoints).
    exported = (run_copy / "model.safetensors").read_bytes()
    for flags in (["--epochs", "2"], ["--epochs", "3", "--max-steps", "8"]):
        (run_copy / "model.safetensors").unlink()
        code, _, err = run_cli("train", *TINY_RUN, *flags, "--out", run_copy, "--resume")
        assert code == 0, err
        assert len(read_csv(run_copy / "log.csv")) == 2 and len(read_csv(run_copy / "steps.csv")) == 8
        assert load_checkpoint(run_copy / "checkpoint.safetensors")[1]["state"]["step"] == 8
        assert (run_copy / "model.safetensors").read_bytes() == exported


def test_a_time_limit_bounds_one_invocation_not_the_resumed_run(run_copy, run_cli):
    # As if the run had been started with --max-minutes 0: each invocation stops at its first step's check.
    tensors, meta = load_checkpoint(run_copy / "checkpoint.safetensors")
    meta["train_config"]["max_minutes"] = 0.0
    save_checkpoint(run_copy / "checkpoint.safetensors", tensors, meta)
    code, out, err = run_cli("train", *TINY_RUN, "--epochs", "2", "--out", run_copy, "--resume")
    assert code == 0, err
    assert "time limit" not in out
    _, meta = load_checkpoint(run_copy / "checkpoint.safetensors")
    assert meta["state"]["epoch"] == 2 and meta["train_config"]["max_minutes"] is None
    # A limit given now still applies, and to this invocation only.
    code, out, err = run_cli("train", *TINY_RUN, "--epochs", "3", "--out", run_copy, "--resume", "--max-minutes", "0")
    assert code == 0, err
    assert "stopped (time limit) at epoch 2, step 9" in out


def test_resumed_run_equals_uninterrupted_run(run_copy, tmp_path, run_cli):
    """train.py promises that a resumed run continues exactly as the uninterrupted one."""
    code, _, err = run_cli("train", *TINY_RUN, "--epochs", "2", *TINY_MODEL, "--out", tmp_path / "straight")
    assert code == 0, err
    code, _, err = run_cli("train", *TINY_RUN, "--epochs", "2", "--out", run_copy, "--resume")
    assert code == 0, err
    assert read_csv(tmp_path / "straight" / "steps.csv") == read_csv(run_copy / "steps.csv")
    a = DRAW.from_pretrained(tmp_path / "straight").state_dict()
    b = DRAW.from_pretrained(run_copy).state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_eval_prints_a_bound(trained_run, run_cli):
    code, out, err = run_cli("eval", "--model", trained_run, "--limit", "100", "--batch-size", "50")
    assert code == 0, err
    match = re.search(r"test NLL bound \(ELBO\) on 100 images: ([0-9.]+) \+- ([0-9.]+) nats", out)
    assert match, out
    mean, stderr = float(match.group(1)), float(match.group(2))
    assert 0 < mean < 1000 and 0 < stderr < mean
    # Seeded: the same command prints the same line.
    _, again, _ = run_cli("eval", "--model", trained_run, "--limit", "100", "--batch-size", "50")
    assert again.strip().splitlines()[-1] == out.strip().splitlines()[-1]


@pytest.mark.parametrize("split, seed", [("train", 2), ("valid", 1), ("test", 0)])
def test_eval_scores_the_split_asked_for_binarised_with_its_seed(trained_run, mnist, run_cli, tmp_path, split, seed,
                                                                 one_line_error):
    code, out, err = run_cli("eval", "--model", trained_run, "--split", split, "--limit", "30", "--iw", "2",
                             "--bounds-file", tmp_path / "b.csv")
    assert code == 0, err
    elbo_line, iw_line = out.strip().splitlines()[-2:]
    model = DRAW.from_pretrained(trained_run)
    x = torch.bernoulli(getattr(mnist, split)[:30], generator=torch.Generator().manual_seed(seed))
    assert elbo_line == "{} NLL bound (ELBO) on 30 images: {:.2f} +- {:.2f} nats".format(split, *elbo(model, x))
    assert iw_line == "{} NLL bound (IW, K=2) on 30 images: {:.2f} +- {:.2f} nats".format(split,
                                                                                         *iw_bound(model, x, 2))
    # A bounds file remembers its split: another split's evaluation does not continue it.
    other = "valid" if split != "valid" else "train"
    code, _, err = run_cli("eval", "--model", trained_run, "--split", other, "--limit", "30", "--iw", "2",
                           "--bounds-file", tmp_path / "b.csv")
    one_line_error(code, err)
    assert "holds bounds for" in err


def test_eval_continues_an_iw_evaluation_from_its_bounds_file(trained_run, tmp_path, run_cli, one_line_error,
                                                              monkeypatch):
    def iw_line(limit, bounds_file, K="3"):
        code, out, err = run_cli("eval", "--model", trained_run, "--limit", limit, "--iw", K, "--batch-size", "6",
                                 "--bounds-file", bounds_file)
        assert code == 0, err
        return out.strip().splitlines()[-1]

    assert iw_line(8, tmp_path / "part.csv").startswith("test NLL bound (IW, K=3) on 8 images")
    straight, continued = iw_line(20, tmp_path / "whole.csv"), iw_line(20, tmp_path / "part.csv")
    assert continued == straight
    assert (tmp_path / "part.csv").read_text() == (tmp_path / "whole.csv").read_text()
    assert len(read_csv_after_header(tmp_path / "part.csv")) == 20
    # Ctrl-C or SIGTERM keeps the bounds written so far, and the same command continues from them.
    sigterm_handler = signal.getsignal(signal.SIGTERM)
    for stop in ("Ctrl-C", "SIGTERM"):
        appended = []
        def append_then_stop(self, first, bounds):
            appended.append(first)
            if len(appended) < 2:
                original_append(self, first, bounds)
            elif stop == "Ctrl-C":
                raise KeyboardInterrupt
            else:
                os.kill(os.getpid(), signal.SIGTERM)
        original_append = BoundsFile.append
        monkeypatch.setattr(BoundsFile, "append", append_then_stop)
        stopped = tmp_path / f"stopped-{stop}.csv"
        code, out, err = run_cli("eval", "--model", trained_run, "--limit", "20", "--iw", "3", "--batch-size", "6",
                                 "--bounds-file", stopped)
        assert code == 130 and "the same command continues" in err
        kept = [float(row["bound"]) for row in read_csv_after_header(stopped)]
        assert len(kept) == 2  # the first pass: 6 // 3 images
        # It reports the bound over the images it finished.
        mean, stderr = mean_and_stderr(torch.tensor(kept))
        assert out.strip().splitlines()[-1] == (f"test NLL bound (IW, K=3) on the first 2 of 20 images: "
                                                f"{mean:.2f} +- {stderr:.2f} nats")
        monkeypatch.undo()
        assert signal.getsignal(signal.SIGTERM) == sigterm_handler  # eval gives SIGTERM back
        assert iw_line(20, stopped) == straight
    # Other settings do not mix with the bounds already there.
    code, _, err = run_cli("eval", "--model", trained_run, "--limit", "20", "--iw", "4", "--bounds-file",
                           tmp_path / "part.csv")
    one_line_error(code, err)
    assert "holds bounds for" in err


def read_csv_after_header(path):
    with open(path, newline="") as f:
        next(f)
        return list(csv.DictReader(f))


def test_sample_writes_a_png_grid(trained_run, tmp_path, run_cli):
    path = tmp_path / "out" / "grid.png"
    code, out, err = run_cli("sample", "--model", trained_run, "--out", path, "-n", "6", "--nrow", "3")
    assert code == 0, err
    assert "wrote 6 samples" in out
    with Image.open(path) as img:
        assert img.format == "PNG"
        # 28x28 images at scale 2 with a 2-pixel border: 3 columns, 2 rows.
        assert img.size == (3 * (56 + 2) + 2, 2 * (56 + 2) + 2)


@pytest.mark.parametrize("case", [
    "eval-missing-model", "sample-missing-model", "corrupted-weights", "corrupted-checkpoint", "T=0",
    "read-n too large", "write-n too large", "existing run", "resume other model", "unknown likelihood",
    "unknown dataset", "not-json-config", "garbage-checkpoint", "wrong-architecture-checkpoint",
    "config-unknown-field", "config-invalid-field",
])
def test_bad_input_is_a_one_line_error(case, run_copy, tmp_path, run_cli, one_line_error):
    train = ["train", *TINY_RUN, "--epochs", "1", *TINY_MODEL]
    if case == "eval-missing-model":
        argv, needle = ["eval", "--model", tmp_path / "nope"], "no model found"
    elif case == "sample-missing-model":
        argv, needle = ["sample", "--model", tmp_path / "nope", "--out", tmp_path / "s.png"], "no model found"
    elif case == "corrupted-weights":
        (run_copy / "model.safetensors").write_bytes(b"\x00garbage" * 10)
        argv, needle = ["eval", "--model", run_copy, "--limit", "10"], "corrupted"
    elif case == "corrupted-checkpoint":
        raw = (run_copy / "checkpoint.safetensors").read_bytes()
        (run_copy / "checkpoint.safetensors").write_bytes(raw[: len(raw) // 3])
        argv, needle = [*train, "--out", run_copy, "--resume"], "corrupted"
    elif case == "T=0":
        argv, needle = [*train, "--out", tmp_path / "new", "--T", "0"], "T must be"
    elif case == "read-n too large":
        argv, needle = [*train, "--out", tmp_path / "new", "--read-n", "29"], "read_n=29 is larger than the image"
    elif case == "write-n too large":
        argv, needle = [*train, "--out", tmp_path / "new", "--write-n", "40"], "write_n=40"
    elif case == "existing run":
        argv, needle = [*train, "--out", run_copy], "--resume"
    elif case == "resume other model":
        argv, needle = [*train, "--out", run_copy, "--resume", "--T", "3"], "different model"
    elif case == "unknown likelihood":
        argv, needle = [*train, "--out", tmp_path / "new", "--likelihood", "gaussian"], "likelihood"
    elif case == "unknown dataset":
        argv, needle = [*train, "--out", tmp_path / "new", "--dataset", "imagenet"], "unknown data set"
    elif case == "not-json-config":
        (run_copy / "config.json").write_text("{{{")
        argv, needle = ["sample", "--model", run_copy, "--out", tmp_path / "s.png"], "not valid JSON"
    elif case == "garbage-checkpoint":
        (run_copy / "checkpoint.safetensors").write_bytes(bytes(range(256)) * 8)
        argv, needle = ["train", "--out", run_copy, "--resume", "--no-progress"], "corrupted"
    elif case == "wrong-architecture-checkpoint":  # its header describes another model than its tensors
        tensors, meta = load_checkpoint(run_copy / "checkpoint.safetensors")
        meta["model_config"]["z_size"] = 9
        save_checkpoint(run_copy / "checkpoint.safetensors", tensors, meta)
        argv = ["train", "--out", run_copy, "--resume", "--no-progress"]
        needle = "does not match this model's architecture"
    elif case in ("config-unknown-field", "config-invalid-field"):
        config = json.loads((run_copy / "config.json").read_text())
        config.update({"hidden_layers": 2} if case == "config-unknown-field" else {"T": "many"})
        (run_copy / "config.json").write_text(json.dumps(config))
        needle = "unknown field(s) hidden_layers" if case == "config-unknown-field" else "T must be an integer"
        argv = ["sample", "--model", run_copy, "--out", tmp_path / "s.png"]
    before = {p.name: p.read_bytes() for p in run_copy.iterdir()}
    code, _, err = run_cli(*argv)
    one_line_error(code, err)
    assert needle in err
    assert not (tmp_path / "s.png").exists()
    if case in ("existing run", "resume other model"):  # the refused command left the run untouched
        assert {p.name: p.read_bytes() for p in run_copy.iterdir()} == before


def test_argparse_errors_exit_with_status_2(capsys):
    assert main(["train", "--preset", "no-such-preset"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and err.startswith("drawnet: error: ") and len(err.strip().splitlines()) == 1
    assert main(["train", "--T", "two"]) == 2
    assert main(["--help"]) == 0


@pytest.mark.parametrize("case", [
    "train --batch-size 0",
    "train --dataset of the wrong shape",
    "eval --limit 0",
    "eval --iw 0",
    "eval --bounds-file without --iw",
    "sample --nrow 0",
])
def test_more_bad_input_is_a_one_line_error(case, trained_run, tmp_path, run_cli, one_line_error):
    out = tmp_path / "new"
    argv = {
        "train --batch-size 0": ["train", "--limit", "256", "--batch-size", "0", "--epochs", "1", "--no-progress",
                                 *TINY_MODEL, "--out", out],
        "train --dataset of the wrong shape": ["train", "--preset", "cifar10", "--dataset", "mnist", "--limit", "256",
                                               "--batch-size", "64", "--epochs", "1", "--no-progress", *TINY_MODEL,
                                               "--read-n", "3", "--write-n", "3", "--out", out],
        "eval --limit 0": ["eval", "--model", trained_run, "--limit", "0"],
        "eval --iw 0": ["eval", "--model", trained_run, "--limit", "5", "--iw", "0"],
        "eval --bounds-file without --iw": ["eval", "--model", trained_run, "--bounds-file", tmp_path / "b.csv"],
        "sample --nrow 0": ["sample", "--model", trained_run, "--out", tmp_path / "s.png", "--nrow", "0"],
    }[case]
    code, _, err = run_cli(*argv)
    one_line_error(code, err)


@pytest.mark.parametrize("case", ["images out of range", "wrong checksum", "unwritable output directory"])
def test_bad_data_or_output_directory_is_a_one_line_error(case, tmp_path, run_cli, one_line_error):
    data, out = tmp_path / "data", tmp_path / "run"
    data.mkdir()
    if case == "images out of range":  # a cache holding 8-bit levels where [0, 1] is expected
        levels = np.random.default_rng(0).integers(0, 256, (64, 784)).astype(np.float32)
        np.savez(data / "mnist.npz", **{f"{split}_{part}": levels if part == "x" else np.zeros(64, np.int64)
                                        for split in ("train", "valid", "test") for part in ("x", "y")})
        needle = "values in [0, 1]"
    elif case == "wrong checksum":
        (data / "mnist.pkl.gz").write_bytes(gzip.compress(b"not the MNIST pickle"))
        needle = "wrong checksum"
    else:
        if os.geteuid() == 0:
            out = Path("/proc/drawnet-run")  # not writable even for root
        else:
            (tmp_path / "read-only").mkdir(mode=0o500)
            out = tmp_path / "read-only" / "run"
        needle = "not writable"
    code, _, err = run_cli("train", *TINY_RUN, "--epochs", "1", *TINY_MODEL, "--data-dir", data, "--out", out)
    one_line_error(code, err)
    assert needle in err
    assert not (out / "checkpoint.safetensors").exists()


def test_subprocess_sample_and_clean_error(trained_run, tmp_path, run_subprocess, one_line_error):
    """The real `python -m drawnet.cli` entry point: exit codes, output files, no traceback on bad input."""
    png = tmp_path / "s.png"
    result = run_subprocess("sample", "--model", trained_run, "--out", png, "-n", "4", "--nrow", "2")
    assert result.returncode == 0, result.stderr
    assert "wrote 4 samples" in result.stdout
    with Image.open(png) as img:
        assert img.size == (2 * 58 + 2, 2 * 58 + 2)

    result = run_subprocess("eval", "--model", tmp_path / "missing")
    one_line_error(result.returncode, result.stderr)
    assert "no model found" in result.stderr


def test_demo_writes_samples_progression_and_gif(trained_run, tmp_path, run_cli):
    out = tmp_path / "demo"
    code, stdout, _ = run_cli("demo", "--model", trained_run, "--out-dir", out)
    assert code == 0
    for name in ("samples.png", "progression.png", "samples.gif"):
        assert str(out / name) in stdout
    with Image.open(out / "samples.png") as img:
        assert img.size == (8 * 58 + 2, 8 * 58 + 2)  # 8x8 grid of 28x28 images at scale 2, 2-pixel borders
    with Image.open(out / "samples.gif") as gif:
        assert gif.n_frames == 2 + 1  # T = 2 glimpses and the blank canvas


def test_curves_plots_runs_and_rejects_a_missing_log(trained_run, tmp_path, run_cli, one_line_error):
    png = tmp_path / "curves.png"
    code, stdout, _ = run_cli("curves", trained_run, "--out", png)
    assert code == 0 and str(png) in stdout
    with Image.open(png) as img:
        assert img.size == (1000, 400)
    code, _, err = run_cli("curves", tmp_path / "nowhere", "--out", png)
    one_line_error(code, err)


# --- conditional models: label and caption ---
@pytest.fixture(scope="module")
def label_run(tmp_path_factory):
    """A tiny mnist-label run started from an unconditional tiny run's weights (--init-from)."""
    root = tmp_path_factory.mktemp("label")
    assert main(["train", *TINY_RUN, "--epochs", "1", *TINY_MODEL, "--out", str(root / "plain")]) == 0
    assert main(["train", "--preset", "mnist-label", *TINY_RUN, "--epochs", "1", *TINY_MODEL,
                 "--init-from", str(root / "plain"), "--out", str(root / "label")]) == 0
    return root / "label"


def test_label_model_trains_samples_animates_and_evaluates(label_run, tmp_path, run_cli):
    assert DRAW.from_pretrained(label_run).condition == "label"
    code, out, _ = run_cli("sample", "--model", label_run, "--label", 3, "-n", 4, "--out", tmp_path / "threes.png")
    assert code == 0 and (tmp_path / "threes.png").is_file()
    code, out, _ = run_cli("animate", "--model", label_run, "-n", 3, "--out-dir", tmp_path, "--reconstruct")
    assert code == 0 and (tmp_path / "samples.gif").is_file() and (tmp_path / "reconstruction.gif").is_file()
    width = Image.open(tmp_path / "samples.gif").width
    code, out, _ = run_cli("animate", "--model", label_run, "-n", 3, "--out-dir", tmp_path / "half", "--scale", 2,
                           "--label", 5)
    assert code == 0 and Image.open(tmp_path / "half" / "samples.gif").width < width
    code, out, _ = run_cli("eval", "--model", label_run, "--limit", 20, "--iw", 2)
    assert code == 0 and "ELBO" in out and "IW, K=2" in out


def test_agreement_reports_per_label_and_per_caption_kind(label_run, tmp_path, run_cli, monkeypatch):
    import drawnet.captions as captions
    from drawnet import DrawConfig

    monkeypatch.setattr(captions, "digit_classifier", lambda: captions.DigitClassifier().eval())
    code, out, _ = run_cli("agreement", "--model", label_run, "--per", 2)
    assert code == 0 and re.search(r"label agreement over 2 images per digit: [\d.]+% \(0: \d+%", out)
    caption_model = tmp_path / "captions"
    DRAW(DrawConfig.preset("mnist-captions", T=2, enc_size=8, dec_size=8, z_size=2, caption_size=4,
                           align_size=4)).save_pretrained(caption_model)
    code, out, _ = run_cli("agreement", "--model", caption_model, "--per", 1)
    assert code == 0
    assert re.search(r"held-out captions \(45 x 1 images\): digits [\d.]+%, positions [\d.]+%, both [\d.]+%", out)
    assert "training captions (405 x 1 images)" in out
    code, out, _ = run_cli("sample", "--model", caption_model, "-n", 2, "--out", tmp_path / "c.png",
                           "--caption", "the digit 7 is at the top of the digit 5")
    assert code == 0 and (tmp_path / "c.png").is_file()


@pytest.mark.parametrize("model, flags, message", [
    ("label", ["--label", "10"], "--label must be in 0..9"),
    ("label", ["--caption", "the digit 1 is at the top of the image"], "give --label"),
    ("plain", ["--label", "1"], "unconditional"),
    ("caption", [], "give --caption"),
    ("caption", ["--caption", "the digit 1 is at the middle of the image"], "middle"),
    ("caption", ["--caption", "the digit 1 is at the top of the digit 1"], ""),
])
def test_bad_label_or_caption_is_a_one_line_error(model, flags, message, label_run, tmp_path, run_cli,
                                                  one_line_error):
    from drawnet import DrawConfig

    path = {"label": label_run, "plain": label_run.parent / "plain", "caption": tmp_path / "captions"}[model]
    if model == "caption":
        DRAW(DrawConfig.preset("mnist-captions", T=2, enc_size=8, dec_size=8, z_size=2, caption_size=4,
                               align_size=4)).save_pretrained(path)
    code, _, err = run_cli("sample", "--model", path, "-n", 2, "--out", tmp_path / "s.png", *flags)
    one_line_error(code, err)
    assert message in err


def test_agreement_refuses_an_unconditional_model(label_run, run_cli, one_line_error):
    code, _, err = run_cli("agreement", "--model", label_run.parent / "plain")
    one_line_error(code, err)
    assert "label or caption model" in err
