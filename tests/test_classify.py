"""The cluttered MNIST attention classifier: the model, its data, training (it learns, it resumes exactly) and
the `drawnet classify` commands end to end on tiny settings."""
import csv
import json
import re
import shutil

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from drawnet.checkpoint import load_checkpoint, save_checkpoint
from drawnet.classify import (CHUNK, AttentionClassifier, ClassifierConfig, ClassifyTrainConfig, error_rate,
                              fixed_set, train_classifier)
from drawnet.cli import main
from drawnet.errors import DrawnetError

TINY = dict(height=40, width=40, T=3, read_n=5, hidden_size=16)
QUIET = dict(threads=1, progress=False)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_shapes():
    model = AttentionClassifier(ClassifierConfig(**TINY))
    out = model(torch.rand(4, 1, 40, 40))
    assert out.logits.shape == (4, 10)
    assert all(field.shape == (3, 4) for field in out.windows)
    assert out.glimpses.shape == (3, 4, 1, 5, 5)


def test_first_window_is_the_centred_grid():
    """h_0 = 0, so the first window is the bias: centred, delta = max(A, B) / N, sigma = delta / 2, gamma = 1,
    whatever the image; later windows depend on what was read."""
    model = AttentionClassifier(ClassifierConfig(**dict(TINY, height=30)))  # A = 40 wide, B = 30 high
    out = model(torch.rand(2, 1, 30, 40))
    first = {name: getattr(out.windows, name)[0] for name in ("gx", "gy", "delta", "sigma2", "gamma")}
    expected = {"gx": 20.5, "gy": 15.5, "delta": 8.0, "sigma2": 16.0, "gamma": 1.0}
    for name, value in expected.items():
        torch.testing.assert_close(first[name], torch.full((2,), value), msg=name)
    assert not torch.equal(out.windows.gx[1, 0], out.windows.gx[1, 1])


def test_gradients_reach_every_parameter():
    model = AttentionClassifier(ClassifierConfig(**TINY))
    F.cross_entropy(model(torch.rand(4, 1, 40, 40)).logits, torch.tensor([0, 1, 2, 3])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_save_and_load_give_identical_logits(tmp_path):
    model = AttentionClassifier(ClassifierConfig(**TINY))
    model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text()) == ClassifierConfig(**TINY).to_dict()
    loaded = AttentionClassifier.from_pretrained(tmp_path / "m")
    x = torch.rand(3, 1, 40, 40)
    assert loaded.config == model.config
    assert torch.equal(loaded(x).logits, model(x).logits)


def test_bad_configs_and_images_are_refused(tmp_path):
    for bad in (dict(T=0), dict(read_n=50), dict(classes=1), dict(hidden_size=2.5)):
        with pytest.raises(DrawnetError, match="config"):
            ClassifierConfig(**dict(TINY, **bad))
    with pytest.raises(DrawnetError, match="unknown field"):
        ClassifierConfig.from_dict(dict(TINY, z_size=3))
    model = AttentionClassifier(ClassifierConfig(**TINY))
    with pytest.raises(DrawnetError, match="shape"):
        model(torch.rand(2, 1, 28, 28))
    with pytest.raises(DrawnetError, match=r"\[0, 1\]"):
        model(torch.full((2, 1, 40, 40), 2.0))
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(DrawnetError, match="not valid JSON"):
        AttentionClassifier.from_pretrained(tmp_path)


def test_fixed_sets_are_seeded_and_canvas_i_does_not_depend_on_n():
    (few, few_labels), = fixed_set("test", 5, 40)
    chunks = list(fixed_set("test", CHUNK + 200, 40))
    assert [len(y) for _, y in chunks] == [CHUNK, 200]
    assert torch.equal(few, chunks[0][0][:5]) and torch.equal(few_labels, chunks[0][1][:5])
    (valid, _), = fixed_set("valid", 5, 40)
    assert few.shape == (5, 1, 40, 40) and not torch.equal(few, valid)


def test_classifier_learns_above_chance_quickly(tmp_path):
    """160 steps on 28x28 cluttered canvases (the digit fills the canvas, with 8 fragments of clutter): the
    validation error falls far below chance (90 %); measured about 40 % with seeds 0, 1 and 2."""
    config = ClassifierConfig(height=28, width=28, T=2, read_n=8, hidden_size=64)
    tcfg = ClassifyTrainConfig(out_dir=str(tmp_path / "run"), batch_size=50, epochs=4, limit=2000, lr=3e-3, **QUIET)
    model = train_classifier(config, tcfg, log=lambda message: None)
    assert error_rate(model, "valid", 1000) < 0.7
    log = read_csv(tmp_path / "run" / "log.csv")
    assert [int(r["step"]) for r in log] == [40, 80, 120, 160]
    assert float(log[-1]["train_loss"]) < float(log[0]["train_loss"])


def test_a_resumed_run_continues_exactly(tmp_path):
    config = ClassifierConfig(height=28, width=28, T=2, read_n=4, hidden_size=8)
    settings = dict(batch_size=32, limit=64, **QUIET)  # 2 steps per epoch
    train_classifier(config, ClassifyTrainConfig(out_dir=str(tmp_path / "straight"), epochs=3, **settings),
                     log=lambda message: None)
    train_classifier(config, ClassifyTrainConfig(out_dir=str(tmp_path / "resumed"), epochs=1, **settings),
                     log=lambda message: None)
    train_classifier(None, ClassifyTrainConfig(out_dir=str(tmp_path / "resumed"), epochs=3, **settings),
                     resume=True, log=lambda message: None)
    straight, resumed = (load_file(str(tmp_path / run / "model.safetensors")) for run in ("straight", "resumed"))
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    logs = [[{k: v for k, v in row.items() if k != "wall_time_s"} for row in read_csv(tmp_path / run / "log.csv")]
            for run in ("straight", "resumed")]
    assert logs[0] == logs[1] and len(logs[0]) == 3


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """`drawnet classify train` on tiny settings: 40x40 canvases, 2 glimpses, one epoch of 2 steps."""
    out = tmp_path_factory.mktemp("classify") / "run"
    code = main(["classify", "train", "--out", str(out), "--size", "40", "--glimpses", "2", "--limit", "64",
                 "--batch-size", "32", "--epochs", "1", "--threads", "1", "--no-progress"])
    assert code == 0
    return out


def test_cli_train_writes_a_run(cli_run):
    files = {p.name for p in cli_run.iterdir()}
    assert {"config.json", "model.safetensors", "checkpoint.safetensors", "log.csv"} <= files
    config = json.loads((cli_run / "config.json").read_text())
    assert (config["height"], config["width"], config["T"], config["read_n"]) == (40, 40, 2, 12)
    (row,) = read_csv(cli_run / "log.csv")
    assert (row["epoch"], row["step"]) == ("1", "2") and 0 <= float(row["valid_error"]) <= 1


def test_cli_resume_drops_the_last_invocations_time_limit(cli_run, run_cli, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(cli_run, run)
    tensors, meta = load_checkpoint(run / "checkpoint.safetensors")
    meta["train_config"]["max_minutes"] = 0.0  # as if started with --max-minutes 0
    save_checkpoint(run / "checkpoint.safetensors", tensors, meta)
    code, out, err = run_cli("classify", "train", "--out", run, "--resume", "--epochs", "2", "--no-progress")
    assert code == 0, err
    assert "time limit" not in out
    assert [row["epoch"] for row in read_csv(run / "log.csv")] == ["1", "2"]


def test_cli_test_prints_the_error_in_percent(cli_run, run_cli):
    code, out, _ = run_cli("classify", "test", "--model", cli_run, "--limit", "50")
    assert code == 0
    error = float(re.search(r"test error on 50 cluttered MNIST canvases, 2 glimpses: ([\d.]+) %", out).group(1))
    assert 0 <= error <= 100


def test_cli_figure_writes_a_png(cli_run, run_cli, tmp_path):
    code, out, _ = run_cli("classify", "figure", "--model", cli_run, "--out", tmp_path / "g.png", "-n", "3")
    assert code == 0 and "g.png" in out
    with Image.open(tmp_path / "g.png") as image:
        width, height = image.size
    assert width > 2 * 80 and height > 3 * 2 * 80  # 2 glimpses across; 3 canvases, each over its patches


@pytest.mark.parametrize("argv, message", [
    (["classify", "test", "--model", "no/such/dir"], "no model found"),
    (["classify", "train", "--batch-size", "0"], "batch-size must be >= 1"),
    (["classify", "train", "--limit", "1", "--batch-size", "1", "--no-progress"], "at least two digits"),
    (["classify", "train", "--glimpses", "0"], "must be >= 1"),
    (["classify"], "required"),
])
def test_cli_bad_input_gives_a_one_line_error(argv, message, run_cli, one_line_error, tmp_path):
    code, _, err = run_cli(*argv, *(["--out", tmp_path / "run"] if argv[1:2] == ["train"] else []))
    one_line_error(code, err)
    assert message in err


def test_cli_refuses_to_overwrite_a_run(cli_run, run_cli, one_line_error):
    code, _, err = run_cli("classify", "train", "--out", cli_run, "--size", "40", "--limit", "64")
    one_line_error(code, err)
    assert "--resume" in err
