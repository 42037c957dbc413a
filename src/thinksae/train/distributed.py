"""Data-parallel training under torchrun: process group set-up and the few collectives we need.

Every rank holds the whole SAE and trains on its slice of each global batch; gradients are
summed across ranks, so N ranks with B/N tokens each take the same step as one process with B.
With one process every collective is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import ThinksaeError
from ..models.loading import resolve_device


@dataclass
class Ranks:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    owns_group: bool = False
    """True when :func:`setup` created the process group (and :meth:`close` destroys it)."""

    @property
    def is_main(self) -> bool:
        """Only the main rank writes files and logs."""
        return self.rank == 0

    def all_reduce(self, tensor: Tensor, op: str = "sum") -> Tensor:
        """Reduce ``tensor`` in place across ranks (sum or max) and return it."""
        if self.world_size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return tensor

    def all_gather(self, tensor: Tensor) -> Tensor:
        """Concatenate every rank's ``tensor`` along dim 0, in rank order."""
        if self.world_size == 1:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def broadcast(self, tensor: Tensor) -> Tensor:
        """Overwrite ``tensor`` with rank 0's copy."""
        if self.world_size > 1:
            dist.broadcast(tensor, src=0)
        return tensor

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        """Destroy the process group if :func:`setup` created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def setup(device: str) -> tuple[Ranks, torch.device]:
    """Join the torchrun job described by the environment (``WORLD_SIZE`` > 1), if any.

    Uses NCCL with one GPU per rank (``cuda:LOCAL_RANK``) on CUDA and gloo on CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 and not dist.is_initialized():
        return Ranks(), resolve_device(device)
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    owns = False
    if not dist.is_initialized():
        try:
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        except (RuntimeError, ValueError) as e:
            raise ThinksaeError(f"cannot join the torchrun job: {e}") from None
        owns = True
    return Ranks(dist.get_rank(), dist.get_world_size(), owns), dev
