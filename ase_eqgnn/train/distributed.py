"""Several processes through ``torch.distributed`` (DDP), launched by ``torchrun``.

``torchrun --nproc_per_node K -m ase_eqgnn.cli.train ...`` (or ``torchrun ... $(which eqgnn-train)``)
sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`init_distributed` reads them and joins the
process group: ``gloo`` on CPU, ``nccl`` on CUDA (each process on ``cuda:LOCAL_RANK``). Without those
variables everything runs in one process and the helpers here are no-ops.

Every process reads the whole dataset and computes the same statistics; each takes its share of
every global batch (see :class:`~ase_eqgnn.train.data.EpochBatches`). Only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "resolve_device", "all_reduce_sum", "barrier", "shutdown"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``; checks ``cuda`` exists."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r} (use 'auto', 'cpu', 'cuda' or 'cuda:N')") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for but torch sees no CUDA device")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    if dev.type == "cuda" and dev.index >= torch.cuda.device_count():
        raise ValueError(
            f"device {dev} does not exist: torch sees {torch.cuda.device_count()} CUDA device(s); "
            f"start at most that many processes per machine (torchrun --nproc_per_node) or use "
            f"device 'cpu'")
    return dev


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group described by torchrun's environment variables (if any)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, False)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    return DistInfo(rank, world_size, local_rank, True)


def all_reduce_sum(t: torch.Tensor, info: DistInfo, device: torch.device) -> torch.Tensor:
    """Sum of ``t`` over all processes (returned on ``t``'s device); identity in one process."""
    if not info.enabled:
        return t
    buf = t.detach().to(device).clone()
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(t.device)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    """Leave the process group if this module joined it."""
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()
