"""Data-parallel training under torchrun: two CPU processes (gloo) train exactly as one process does on the same
global batch, rank 0 alone writes files and logs, and a run stopped by a signal resumes under torchrun."""
import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist

from drawnet.checkpoint import load_checkpoint
from drawnet.distributed import World

if not dist.is_available():
    pytest.skip("this torch build has no torch.distributed", allow_module_level=True)

# 4 steps of 32 images per epoch; 25 epochs give a run long enough to be stopped part way
TINY = ["--T", "3", "--enc-size", "16", "--dec-size", "16", "--z-size", "4", "--limit", "128", "--batch-size", "32",
        "--epochs", "25", "--threads", "1"]
RUN_FILES = {"checkpoint.safetensors", "config.json", "model.safetensors", "steps.csv", "log.csv", "log.json"}


def _torchrun(log_dir, *argv, program=("-m", "drawnet.cli")):
    """The command line of `torchrun --nproc_per_node 2 -m drawnet.cli ARGV` (or of another program), with each
    rank's stdout and stderr in its own files under log_dir."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "--redirects", "3", "--log-dir", str(log_dir), *map(str, program), *map(str, argv)]


def _rank_output(log_dir, rank: int) -> str:
    """Everything one rank printed, stdout and stderr."""
    files = sorted(log_dir.rglob(f"attempt_0/{rank}/std*.log"))
    assert len(files) == 2, files
    return "".join(f.read_text() for f in files)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _assert_same_log(a, b, columns):
    assert len(a) == len(b)
    for row_a, row_b in zip(a, b):
        for column in columns:
            assert float(row_a[column]) == pytest.approx(float(row_b[column]), rel=1e-4), (column, row_a, row_b)


def test_two_processes_train_as_one_and_resume_after_sigterm(tmp_path, run_cli):
    code, _, err = run_cli("train", *TINY, "--no-progress", "--out", tmp_path / "single")
    assert code == 0, err

    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = tmp_path / "ddp"
    first, second = tmp_path / "logs-first", tmp_path / "logs-resumed"
    # every step is checkpointed, so the signal may come anywhere
    proc = subprocess.Popen(_torchrun(first, "train", *TINY, "--checkpoint-minutes", "0", "--out", run), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (run / "steps.csv").is_file() and len(_rows(run / "steps.csv")) >= 10:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both ranks
    proc.wait(timeout=60)
    _, meta = load_checkpoint(run / "checkpoint.safetensors")
    epoch, step = meta["state"]["epoch"], meta["state"]["step"]
    assert 10 <= step < 100
    assert f"stopped (signal) at epoch {epoch}, step {step}; checkpoint in {run}" in _rank_output(first, 0)

    resumed = subprocess.run(_torchrun(second, "train", "--out", run, "--resume", "--checkpoint-minutes", "5"),
                             env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {run} at epoch {epoch}, step {step}" in _rank_output(second, 0)
    assert "epoch 25: train" in _rank_output(second, 0) and "it/s" in _rank_output(second, 0)  # log, progress bar

    # The same per-step losses, gradient norms and validation bounds as one process on the same global batch ...
    single_steps, ddp_steps = _rows(tmp_path / "single" / "steps.csv"), _rows(run / "steps.csv")
    assert [r["step"] for r in ddp_steps] == [str(s) for s in range(1, 101)]
    _assert_same_log(ddp_steps, single_steps, ["loss", "L_x", "L_z", "grad_norm", "lr"])
    _assert_same_log(_rows(run / "log.csv"), _rows(tmp_path / "single" / "log.csv"),
                     ["epoch", "step", "train_loss", "train_L_z", "valid_bound", "lr"])
    # ... and the same weights and Adam moments at the end.
    single, _ = load_checkpoint(tmp_path / "single" / "checkpoint.safetensors")
    ddp, meta = load_checkpoint(run / "checkpoint.safetensors")
    assert meta["state"]["step"] == 100 and set(ddp) == set(single)
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-4, atol=1e-6, msg=name)

    # Rank 0 alone wrote files and logs: one set of files, every row once, nothing printed by rank 1. Before
    # joined_world freed the data-parallel model itself, rank 1 of a run stopped by SIGTERM sometimes aborted at
    # exit with libstdc++'s line below (1 in 3 full suites on 2026-12-04); it is allowed until full suites on
    # several days have shown it gone. The files checked above are whole either way.
    assert {p.name for p in run.iterdir()} == RUN_FILES
    gloo_teardown_abort = "terminate called without an active exception\n"
    assert _rank_output(first, 1).replace(gloo_teardown_abort, "") == "" and _rank_output(second, 1) == ""


def test_two_processes_train_the_importance_weighted_bound_as_one(tmp_path, run_cli):
    args = ["train", *TINY, "--iw-samples", "3", "--max-steps", "6", "--no-progress"]
    code, _, err = run_cli(*args, "--out", tmp_path / "single")
    assert code == 0, err
    result = subprocess.run(_torchrun(tmp_path / "logs", *args, "--out", tmp_path / "ddp"),
                            env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # each rank's images come with their own K trajectories' noise, so the steps are those of one process
    single, ddp = _rows(tmp_path / "single" / "steps.csv"), _rows(tmp_path / "ddp" / "steps.csv")
    assert [r["step"] for r in ddp] == [str(s) for s in range(1, 7)]
    _assert_same_log(ddp, single, ["loss", "L_x", "L_z", "grad_norm"])


def test_the_joined_world_frees_its_data_parallel_model_before_the_group_goes(tmp_path):
    # DistributedDataParallel sits in a reference cycle; with collection off, only joined_world can free it
    script = tmp_path / "wrap.py"
    script.write_text(
        "import gc, weakref, torch\n"
        "from drawnet.distributed import joined_world\n"
        "gc.disable()\n"
        "with joined_world('cpu') as world:\n"
        "    wrapped = world.wrap(torch.nn.Linear(3, 3))\n"
        "    wrapped(torch.randn(2, 3)).sum().backward()\n"
        "    alive = weakref.ref(wrapped)\n"
        "    del wrapped\n"
        "    print('held by its cycle:', alive() is not None)\n"
        "print('freed after the block:', alive() is None)\n")
    logs = tmp_path / "logs"
    result = subprocess.run(_torchrun(logs, program=[script]), env=dict(os.environ, OMP_NUM_THREADS="1"),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        assert _rank_output(logs, rank) == "held by its cycle: True\nfreed after the block: True\n"


def test_global_batch_must_divide_by_the_number_of_processes(tmp_path, one_line_error):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(_torchrun(tmp_path / "logs", "train", *TINY, "--batch-size", "33", "--out",
                                      tmp_path / "run"), env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    for rank in (0, 1):
        one_line_error(2, _rank_output(tmp_path / "logs", rank))
        assert "batch size 33 is the global batch and must divide by the number of processes (2)" in \
            _rank_output(tmp_path / "logs", rank)
    assert not (tmp_path / "run").exists()


def test_each_rank_takes_its_contiguous_shard():
    assert [World(rank, 4).shard(32) for rank in range(4)] == [slice(0, 8), slice(8, 16), slice(16, 24),
                                                                slice(24, 32)]
    alone = World()
    assert alone.is_main and alone.shard(32) == slice(0, 32)
    assert alone.mean(torch.tensor(2.5), torch.tensor(-1.0)) == [2.5, -1.0]
    assert alone.anywhere(True, False) == [True, False]
