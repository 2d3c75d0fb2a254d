"""PyTorch DDP plumbing of the training loop: joining the process group under `torchrun`, running a
step on rank 0 only, and summing small tensors over ranks (one process: all of these are no-ops)."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["dist_setup", "is_distributed", "on_rank0", "all_sum", "barrier"]


def dist_setup():
    """(rank, world_size, local_rank, initialised_here); joins the process group under torchrun, also with
    one process (`torchrun --nproc_per_node=1` runs the DDP path: NCCL on one GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
        return 0, 1, 0, False
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    here = False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
        here = True
    return dist.get_rank(), dist.get_world_size(), local_rank, here


def is_distributed(world: int) -> bool:
    """True under DDP: several processes, or one process in a process group (torchrun)."""
    return world > 1 or (dist.is_available() and dist.is_initialized())


def on_rank0(world: int, rank: int, fn):
    """Run `fn` on rank 0 only and give every rank its result; a ValueError there is raised on all ranks."""
    result, error = None, None
    if rank == 0:
        try:
            result = fn()
        except ValueError as err:
            error = err
    if is_distributed(world):
        box = [result, None if error is None else (type(error), str(error))]
        dist.broadcast_object_list(box, src=0)
        result = box[0]
        if box[1] is not None and error is None:
            error = box[1][0](box[1][1])
    if error is not None:
        raise error
    return result


def all_sum(values: torch.Tensor, world: int) -> torch.Tensor:
    """Sum a small CPU tensor over ranks (through the current GPU when the backend is NCCL)."""
    if is_distributed(world):
        nccl = dist.get_backend() == "nccl"
        t = values.to(torch.device("cuda", torch.cuda.current_device())) if nccl else values
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        values = t.cpu()
    return values


def barrier(world: int) -> None:
    """Wait for every rank (one process: nothing to wait for)."""
    if is_distributed(world):
        dist.barrier()
