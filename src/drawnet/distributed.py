"""Data-parallel training over several processes started by torchrun.

`torchrun --nproc_per_node P -m drawnet.cli train ...` starts P copies of drawnet with RANK, LOCAL_RANK and
WORLD_SIZE in their environment. Every copy holds the whole model; at each step every rank runs its contiguous
shard of the global batch and DistributedDataParallel averages the gradients, so each update is the one a
single process would make on the whole batch. Rank 0 alone writes files and talks to the user.
"""
import gc
import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .errors import DrawnetError


def pick_device(name=None) -> torch.device:
    """The device to compute on: name ("cpu", "cuda", "cuda:1", ...), or by default the GPU when CUDA is
    available and the CPU otherwise."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DrawnetError(f"unknown device {name!r}; give cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DrawnetError(f"device {name} asked for, but CUDA is not available here; give --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise DrawnetError(f"device {name!r} is not supported; give cpu or cuda")
    return device


@dataclass(frozen=True)
class World:
    """This process's place among the training processes; World() is a process training alone."""

    rank: int = 0
    size: int = 1  # number of processes
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0, the one process that writes checkpoints and logs, so that every file is written once."""
        return self.rank == 0

    def shard(self, batch: int) -> slice:
        """This rank's contiguous part of a global batch (whose size the number of processes divides)."""
        per_rank = batch // self.size
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model to run training steps with: with several processes, one that averages its gradients."""
        if self.size == 1:
            return model
        return DistributedDataParallel(model, device_ids=[self.device] if self.device.type == "cuda" else None)

    def mean(self, *values: torch.Tensor) -> list:
        """The mean over ranks of each scalar: with equal shards, its value for the whole global batch."""
        stacked = torch.stack([v.detach().float() for v in values])
        if self.size > 1:
            dist.all_reduce(stacked)
            stacked /= self.size
        return stacked.tolist()

    def anywhere(self, *flags: bool) -> list:
        """Each flag, true on every rank if it is true on any. A signal or a time limit seen by one rank must
        stop all of them after the same step: a rank that stopped alone would leave the others waiting."""
        if self.size == 1:
            return list(flags)
        raised = torch.tensor(flags, dtype=torch.float32, device=self.device)
        dist.all_reduce(raised, op=dist.ReduceOp.MAX)
        return [bool(v) for v in raised.tolist()]

    @contextmanager
    def main_first(self):
        """Run the block on rank 0 before the other ranks, so that only one process downloads and caches a
        data set and the others read its cache."""
        if not self.is_main:
            dist.barrier()
        yield
        if self.is_main and self.size > 1:
            dist.barrier()


@contextmanager
def joined_world(device=None, init_method=None):
    """This process's World on `device` (pick_device). When torchrun started several (WORLD_SIZE > 1), join
    their process group for the block: NCCL on GPU number LOCAL_RANK when the device is a GPU, gloo on the
    CPU otherwise. init_method: where the processes meet (torch.distributed's URL); by default torchrun's
    MASTER_ADDR and MASTER_PORT."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        yield World(device=pick_device(device))
        return
    if pick_device(device).type == "cuda":
        device, backend = torch.device("cuda", int(os.environ["LOCAL_RANK"])), "nccl"
        torch.cuda.set_device(device)
    else:
        device, backend = torch.device("cpu"), "gloo"
    dist.init_process_group(backend, init_method=init_method, rank=int(os.environ["RANK"]), world_size=size)
    try:
        yield World(dist.get_rank(), size, device)
        # DistributedDataParallel sits in a reference cycle, so the wrapper World.wrap made outlives the block
        # until the next collection. Left to the one at interpreter shutdown, its gloo work is freed when threads
        # can no longer take the GIL, and the process aborts ("terminate called without an active exception",
        # pytorch/pytorch#179291). Free it while the group and the interpreter are up.
        gc.collect()
        # tear the group down together: a gloo rank that destroys it while a peer still talks to it can abort
        dist.barrier()
    finally:
        dist.destroy_process_group()
