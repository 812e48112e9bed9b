"""Where the run executes: device, threads, precision, and the process group.

Multi-process is a mode, not a second code path (as in nanoGPT): torchrun sets RANK/WORLD_SIZE,
`Dist.from_env` joins the group, and the training loop calls the same collectives, which are no-ops
in a single process.
"""
from __future__ import annotations

import contextlib
import os
import platform
import sys
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from .errors import DVClustError


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise DVClustError(f"device={name!r} is not a device name (try 'auto', 'cpu', 'cuda')") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DVClustError(f"device={name!r} asked for, but no CUDA GPU is available here")
    return dev


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CUDA by default (same range as fp32, so no loss scaling); fp32 on CPU,
    where bf16 convolutions are slower than fp32 on most processors."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


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
        if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
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

    def shard(self, n: int) -> range:
        """Contiguous slice of 0..n-1 that this rank evaluates (all ranks together cover n)."""
        per = -(-n // self.world_size)
        return range(min(self.rank * per, n), min((self.rank + 1) * per, n))

    def barrier(self) -> None:
        if self.active:
            tdist.barrier()


def versions() -> dict[str, str]:
    import numpy
    import scipy
    import sklearn

    from . import __version__

    return {"dvclust": __version__, "python": sys.version.split()[0], "torch": str(torch.__version__),
            "numpy": numpy.__version__, "scipy": scipy.__version__, "scikit-learn": sklearn.__version__,
            "platform": platform.platform()}


def set_threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)
