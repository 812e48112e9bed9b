"""The process group, in one place: joined once, used through `Dist`'s collectives, left once.

Multi-process is a mode, not a second code path (as in nanoGPT): torchrun sets RANK/WORLD_SIZE,
`Dist.from_env` joins the group, and the training loop calls the same collectives, which are no-ops
in a single process. `process_group` is the lifecycle a command uses: join, work, wait for every
rank, leave.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from ..runtime import pick_device


def torchrun_world_size() -> int:
    """The number of processes torchrun started (1 outside torchrun), before any group exists."""
    return int(os.environ.get("WORLD_SIZE", "1")) if "RANK" in os.environ else 1


def torchrun_job() -> str | None:
    """The id of this worker's torchrun job (its --rdzv-id; a fresh one per --standalone or
    single-node launch), or None outside torchrun or for a job left at the id "none"."""
    job = os.environ.get("TORCHELASTIC_RUN_ID", "")
    return job if "RANK" in os.environ and job not in ("", "none") else None


@dataclass
class Dist:
    """Rank, world size and device, with collectives that are no-ops when world_size == 1."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, device: str = "auto") -> "Dist":
        """Join the torchrun process group when RANK is set; otherwise a single process."""
        if torchrun_world_size() == 1:
            return cls(0, 1, pick_device(device))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        dev = pick_device(device, local_rank)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        if not tdist.is_initialized():
            tdist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        return cls(tdist.get_rank(), tdist.get_world_size(), dev)

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (in place and returned)."""
        if self.active:
            tdist.all_reduce(t)
        return t

    def all_gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate each rank's rows in rank order (ranks may hold different row counts)."""
        if not self.active:
            return t
        n = torch.tensor([t.shape[0]], device=t.device)
        sizes = [torch.zeros_like(n) for _ in range(self.world_size)]
        tdist.all_gather(sizes, n)
        sizes = [int(s) for s in sizes]
        pad = t.new_zeros((max(sizes) - t.shape[0], *t.shape[1:]))
        parts = [t.new_empty((max(sizes), *t.shape[1:])) for _ in sizes]
        tdist.all_gather(parts, torch.cat([t, pad]))
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    def broadcast(self, t: torch.Tensor) -> torch.Tensor:
        if self.active:
            tdist.broadcast(t, src=0)
        return t

    def sync_buffers(self, module: torch.nn.Module) -> None:
        """Every rank takes rank 0's buffers (BatchNorm's running statistics). DDP broadcasts
        them at the start of each forward, but each rank then updates its own copy from its half
        of the batch, so after training they differ by rank; a pass in evaluation mode reads them."""
        if self.active:
            for b in module.buffers():
                tdist.broadcast(b, src=0)

    def shard(self, n: int) -> range:
        """Contiguous slice of 0..n-1 that this rank evaluates (all ranks together cover n)."""
        per = -(-n // self.world_size)
        return range(min(self.rank * per, n), min((self.rank + 1) * per, n))

    def barrier(self) -> None:
        if self.active:
            tdist.barrier()


@contextlib.contextmanager
def process_group(device: str = "auto"):
    """Join the torchrun group (if any) for the body, then leave it together: every rank waits at
    a barrier for rank 0's outputs before the group is torn down."""
    dist = Dist.from_env(device)
    try:
        yield dist
        if tdist.is_initialized():
            tdist.barrier()
    finally:  # after an error no barrier: the other ranks may never reach it
        if tdist.is_initialized():
            tdist.destroy_process_group()
