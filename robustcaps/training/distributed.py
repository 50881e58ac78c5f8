"""Data-parallel training under torchrun (DDP: NCCL on GPU, gloo on CPU).

Every rank draws the same global batch order and the same augmentation (same seeds), augments the whole
global batch and keeps its own contiguous slice. DDP averages the ranks' gradients of their batch-mean
losses, which is the gradient of the mean over the global batch: N processes with batch B/N each take
the same steps as one process with batch B (up to floating-point summation order).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from robustcaps.errors import RobustcapsError


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_world(device_type: str) -> World:
    """Join the torchrun process group when launched by torchrun (WORLD_SIZE > 1); else one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return World()
    world = World(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if device_type == "cuda":
        torch.cuda.set_device(world.local_rank)  # NCCL collectives (all_gather_object too) use this device
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return world


def local_slice(world: World, global_batch: int) -> slice:
    """This rank's contiguous share of a global batch."""
    if global_batch % world.world_size:
        raise RobustcapsError(
            f"--batch-size {global_batch} does not divide among {world.world_size} processes; "
            "choose a multiple of --nproc-per-node"
        )
    share = global_batch // world.world_size
    return slice(world.rank * share, (world.rank + 1) * share)


def wrap(model: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    if not world.distributed:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def all_sum(values: torch.Tensor, world: World) -> torch.Tensor:
    """Sum a tensor over ranks (the training loss and error counters)."""
    if world.distributed:
        values = values.clone()
        dist.all_reduce(values)
    return values


def all_gather(obj: Any, world: World) -> list[Any]:
    """Every rank's `obj`, in rank order (the per-rank RNG states for a checkpoint)."""
    if not world.distributed:
        return [obj]
    gathered: list[Any] = [None] * world.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_flag(flag: bool, world: World) -> bool:
    """Rank 0's decision (stop or go on), so that no rank is left waiting in a collective."""
    if not world.distributed:
        return flag
    box = [flag]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def shutdown(world: World) -> None:
    """Leave the process group together: a gloo rank that destroys it while the other still finishes its
    last collective can abort ("terminate called without an active exception", seen in 1 of 4 CI runs)."""
    if world.distributed and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()
