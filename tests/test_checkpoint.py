"""Loading models and checkpoints from disk: every broken input is a DrawnetError with a useful message."""
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from drawnet import DRAW, DrawnetError
from drawnet.checkpoint import atomic_write, load_checkpoint, load_state, save_checkpoint
from drawnet.model import CONFIG_NAME, WEIGHTS_NAME


@pytest.fixture
def saved(tiny_config, tmp_path):
    """A tiny saved model directory."""
    path = tmp_path / "model"
    DRAW(tiny_config("mnist")).save_pretrained(path)
    return path


def test_missing_directory(tmp_path):
    with pytest.raises(DrawnetError, match="no model found") as info:
        DRAW.from_pretrained(tmp_path / "does-not-exist")
    assert "does-not-exist" in str(info.value)


def test_missing_weights(saved):
    (saved / WEIGHTS_NAME).unlink()
    with pytest.raises(DrawnetError, match="no weights found"):
        DRAW.from_pretrained(saved)


def test_truncated_weights(saved):
    weights = saved / WEIGHTS_NAME
    raw = weights.read_bytes()
    weights.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DrawnetError, match="corrupted") as info:
        DRAW.from_pretrained(saved)
    assert WEIGHTS_NAME in str(info.value)


@pytest.mark.parametrize("content", [os.urandom(4096), b"", b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json"],
                         ids=["random", "empty", "bad-header"])
def test_garbage_weights(saved, content):
    (saved / WEIGHTS_NAME).write_bytes(content)
    with pytest.raises(DrawnetError, match="corrupted or not a safetensors file"):
        DRAW.from_pretrained(saved)


def test_pickle_weights_are_not_loaded(saved):
    # A torch.save file in place of the safetensors file is refused, never unpickled.
    torch.save(DRAW.from_pretrained(saved).state_dict(), saved / WEIGHTS_NAME)
    with pytest.raises(DrawnetError, match="not a safetensors file"):
        DRAW.from_pretrained(saved)


def test_config_with_unknown_field(saved):
    cfg = json.loads((saved / CONFIG_NAME).read_text())
    cfg["hidden_layers"] = 2
    (saved / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(DrawnetError, match="hidden_layers"):
        DRAW.from_pretrained(saved)


@pytest.mark.parametrize("text", ["{not json", "", "\xff\xfe garbage"], ids=["broken", "empty", "binary"])
def test_config_not_json(saved, text):
    (saved / CONFIG_NAME).write_bytes(text.encode("latin1"))
    with pytest.raises(DrawnetError, match="not valid JSON") as info:
        DRAW.from_pretrained(saved)
    assert CONFIG_NAME in str(info.value)


@pytest.mark.parametrize("value", [[1, 2], "mnist", 3, None], ids=["list", "string", "number", "null"])
def test_config_not_an_object(saved, value):
    (saved / CONFIG_NAME).write_text(json.dumps(value))
    with pytest.raises(DrawnetError, match="JSON object"):
        DRAW.from_pretrained(saved)


@pytest.mark.parametrize("field, value", [("T", 0), ("read_n", 100), ("likelihood", "poisson"),
                                          ("enc_size", "big"), ("likelihood", ["bernoulli"])])
def test_config_with_invalid_values(saved, field, value):
    cfg = json.loads((saved / CONFIG_NAME).read_text())
    cfg[field] = value
    (saved / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(DrawnetError):
        DRAW.from_pretrained(saved)


def test_weights_of_a_different_architecture(tiny_config, tmp_path):
    path = tmp_path / "noattn"
    DRAW(tiny_config("mnist-noattn")).save_pretrained(path)
    # Swap in the config of the attention model: same field names, different layer shapes.
    (path / CONFIG_NAME).write_text(json.dumps(tiny_config("mnist").to_dict()))
    with pytest.raises(DrawnetError, match="does not match this model's architecture") as info:
        DRAW.from_pretrained(path)
    assert "wrong shape" in str(info.value) and "encoder.weight" in str(info.value)


def test_weights_with_missing_and_extra_tensors(saved):
    from safetensors.torch import load_file

    tensors = load_file(str(saved / WEIGHTS_NAME))
    del tensors["q.bias"]
    tensors["extra.weight"] = torch.zeros(2)
    save_file(tensors, str(saved / WEIGHTS_NAME))
    with pytest.raises(DrawnetError) as info:
        DRAW.from_pretrained(saved)
    message = str(info.value)
    assert "missing: q.bias" in message and "unexpected: extra.weight" in message


def test_load_state_reports_all_mismatches(tiny_config):
    model = DRAW(tiny_config("mnist"))
    with pytest.raises(DrawnetError, match="somewhere does not match"):
        load_state(model, {}, "somewhere")


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")

    def failing(p):
        p.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, failing)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]  # no temporary file left behind
    atomic_write(path, lambda p: p.write_text("new"))
    assert path.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_atomic_write_to_unwritable_place(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DrawnetError, match="cannot write"):
        atomic_write(blocker / "sub" / "f.txt", lambda p: p.write_text("new"))


def test_training_checkpoint_round_trip(tmp_path):
    tensors = {"model.a": torch.arange(6.0).view(2, 3), "optim.0.step": torch.tensor(3.0)}
    meta = {"state": {"epoch": 2, "step": 10}, "note": "x"}
    save_checkpoint(tmp_path / "c.safetensors", tensors, meta)
    loaded, loaded_meta = load_checkpoint(tmp_path / "c.safetensors")
    assert loaded_meta == meta
    assert set(loaded) == set(tensors) and all(torch.equal(loaded[k], tensors[k]) for k in tensors)


def test_checkpoint_without_drawnet_header(tmp_path):
    save_file({"a": torch.zeros(1)}, str(tmp_path / "c.safetensors"))
    with pytest.raises(DrawnetError, match="not a drawnet training checkpoint"):
        load_checkpoint(tmp_path / "c.safetensors")
    save_file({"a": torch.zeros(1)}, str(tmp_path / "d.safetensors"), metadata={"drawnet": "{oops"})
    with pytest.raises(DrawnetError, match="not a drawnet training checkpoint"):
        load_checkpoint(tmp_path / "d.safetensors")


def test_missing_and_corrupted_checkpoint(tmp_path):
    with pytest.raises(DrawnetError, match="does not exist"):
        load_checkpoint(tmp_path / "none.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(DrawnetError, match="corrupted"):
        load_checkpoint(tmp_path / "bad.safetensors")
