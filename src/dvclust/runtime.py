"""Where the run executes: device, threads, precision, and the versions recorded with every run.
(The process group is training/distributed.py's.)"""
from __future__ import annotations

import contextlib
import platform
import sys

import torch

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
