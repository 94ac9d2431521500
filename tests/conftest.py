"""Shared fixtures for the drawnet test suite.

The suite runs on small CPU machines that may be busy with other work: torch is limited to one thread
(with two threads competing for two busy cores a tiny training loop was 20x slower), and every model
here is tiny unless a test is specifically about a preset.
"""
import os
import subprocess
import sys

import pytest
import torch

torch.set_num_threads(1)

from drawnet import DrawConfig  # noqa: E402

# Small sizes that keep a forward/backward pass in the millisecond range.
TINY = dict(T=2, enc_size=16, dec_size=16, z_size=4)


def _tiny_config(preset: str = "mnist", **overrides) -> DrawConfig:
    kwargs = dict(TINY)
    kwargs.update(overrides)
    return DrawConfig.preset(preset, **kwargs)


@pytest.fixture
def tiny_config():
    """Factory: tiny_config(preset="mnist", **overrides) -> a small DrawConfig built from a preset."""
    return _tiny_config


@pytest.fixture(autouse=True)
def _fixed_seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def mnist():
    """The cached MNIST splits (float tensors [n, 1, 28, 28] in [0, 1])."""
    from drawnet.data import load_dataset

    return load_dataset("mnist")


@pytest.fixture
def run_cli(capsys):
    """Run drawnet.cli.main(argv) in-process; returns (exit code, stdout, stderr)."""
    from drawnet.cli import main

    def run(*argv):
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def run_subprocess():
    """Run `python -m drawnet.cli ARGS` in a real subprocess (one torch thread); returns CompletedProcess."""

    def run(*argv, cwd=None, timeout=120):
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        return subprocess.run([sys.executable, "-m", "drawnet.cli", *map(str, argv)], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=timeout)

    return run


def assert_one_line_error(code: int, err: str) -> None:
    """The CLI's contract for bad input: exit status 2, one line on stderr, no traceback."""
    assert code == 2, f"expected exit code 2, got {code}; stderr: {err!r}"
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected a one-line message, got {len(lines)} lines: {err!r}"
    assert lines[0].startswith("drawnet: error: "), lines[0]


@pytest.fixture
def one_line_error():
    return assert_one_line_error
