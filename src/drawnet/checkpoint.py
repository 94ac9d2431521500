"""Files on disk: atomic writes, pretrained weights and training checkpoints, all safetensors + JSON."""
import dataclasses
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import DrawnetError

CHECKPOINT_NAME = "checkpoint.safetensors"


class JsonConfig:
    """A config dataclass that is written to and read from config.json as a JSON object of its fields."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        if not isinstance(d, dict):
            raise DrawnetError("config: expected a JSON object")
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise DrawnetError(f"config: unknown field(s) {', '.join(unknown)}")
        return cls(**d)


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path) then rename over path, so a kill never leaves a half-written file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as e:
        raise DrawnetError(f"cannot write to {path.parent}: {e.strerror}") from None
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_config(path: Path, config_class=None):
    """The config in a model's config.json, as config_class (default DrawConfig) built by its from_dict."""
    if config_class is None:
        from .model import DrawConfig

        config_class = DrawConfig

    path = Path(path)
    if not path.is_file():
        raise DrawnetError(f"no model found: {path} does not exist")
    try:
        return config_class.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DrawnetError(f"{path} is not valid JSON: {e}") from None
    except TypeError as e:
        raise DrawnetError(f"{path}: invalid config ({e})") from None


def _load_tensors(path: Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise DrawnetError(f"no weights found: {path} does not exist")
    try:
        return load_file(str(path), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as e:
        raise DrawnetError(f"{path} is corrupted or not a safetensors file ({e})") from None


def load_state(model: torch.nn.Module, tensors: dict, source) -> None:
    """Load a state dict, turning any mismatch into one clear error."""
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong = [k for k in own if k in tensors and tensors[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise DrawnetError(f"{source} does not match this model's architecture ({detail})")
    model.load_state_dict(tensors)


def load_weights(model: torch.nn.Module, path: Path, map_location="cpu") -> None:
    load_state(model, _load_tensors(path, map_location), path)


def save_pretrained(directory: Path, model: torch.nn.Module) -> None:
    """A model directory: config.json (model.config.to_dict()) and model.safetensors, each written atomically."""
    from .model import CONFIG_NAME, WEIGHTS_NAME

    directory = Path(directory)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(tensors, str(p)))
    text = json.dumps(model.config.to_dict(), indent=2) + "\n"
    atomic_write(directory / CONFIG_NAME, lambda p: p.write_text(text))


def save_checkpoint(path: Path, tensors: dict, metadata: dict) -> None:
    """One file holding every tensor of the training state and a JSON header for everything else."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata={"drawnet": json.dumps(metadata)}))


def tensors_under(tensors: dict, prefix: str) -> dict:
    """The checkpoint tensors whose names start with prefix (e.g. "model."), named without it."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_checkpoint(path: Path):
    """Return (tensors, metadata) of a checkpoint written by save_checkpoint."""
    from safetensors import safe_open

    path = Path(path)
    tensors = _load_tensors(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = json.loads((f.metadata() or {})["drawnet"])
    except (KeyError, json.JSONDecodeError, SafetensorError) as e:
        raise DrawnetError(f"{path} is not a drawnet training checkpoint ({e})") from None
    return tensors, metadata
