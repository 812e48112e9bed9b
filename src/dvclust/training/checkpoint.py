"""The one owner of the checkpoint: what it holds, how it is written and read, whether a run may
resume from it, and the K change that `--clusters auto` makes after pretraining.

    format, format_version   marker and schema version (io.py)
    config                   the resolved Config as a dict
    method, shape, n_samples, fingerprint, versions
    model                    the state_dict (tensors only)
    optimizer                the optimiser's state_dict, or None between phases / once fitted
    state                    TrainState.to_dict(): phase, epoch, early stopping, P, labels, history

Every file is written atomically and read with `weights_only=True` (io.py), so a tampered or
foreign file is refused instead of executing code.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import BEFORE_KEY, Config, resolved_lr
from ..errors import DVClustError
from ..io import load_checkpoint, save_checkpoint
from ..runtime import versions

# Keys that may differ between an interrupted run and its resumption without changing the result.
RUNTIME_KEYS = {"device", "num_threads", "data_on_device"}


@dataclass
class TrainState:
    """Everything a resumed run needs beyond the weights."""

    phase: str = "pretrain"
    epoch: int = 0                      # epochs completed in the current phase
    best_loss: float = math.inf
    bad_epochs: int = 0
    targets: torch.Tensor | None = None  # P, N x K, from the last target update
    prev_labels: torch.Tensor | None = None
    prior: torch.Tensor | None = None    # cluster sizes for P (size_prior: kmeans); None = equal
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "epoch": self.epoch, "best_loss": self.best_loss,
                "bad_epochs": self.bad_epochs, "targets": self.targets,
                "prev_labels": self.prev_labels, "prior": self.prior, "history": self.history}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainState":
        return cls(**{k: d[k] for k in cls().to_dict() if k in d})  # older checkpoints lack some


def data_fingerprint(images: np.ndarray) -> str:
    """Cheap identity of a dataset (shape, dtype and a strided sample of rows), checked on resume."""
    h = hashlib.sha256(f"{images.shape}{images.dtype}".encode())
    for i in np.unique(np.linspace(0, len(images) - 1, num=min(len(images), 257)).astype(int)):
        h.update(np.ascontiguousarray(images[i]).tobytes())
    return h.hexdigest()[:16]


def header(cfg: Config, shape, n_samples: int | None = None, fingerprint: str | None = None) -> dict:
    """What every checkpoint records besides weights and state. Training runs record the data's
    size and fingerprint (checked on resume); a saved fitted model need not."""
    h = {"config": cfg.to_dict(), "shape": list(shape), "versions": versions(), "method": cfg.method}
    if n_samples is not None:
        h.update(n_samples=n_samples, fingerprint=fingerprint)
    return h


def save(path: str | Path, head: dict, weights: dict, optimizer: dict | None,
         state: TrainState) -> None:
    save_checkpoint(path, {**head, "model": weights, "optimizer": optimizer,
                           "state": state.to_dict()})


def save_fitted(path: str | Path, cfg: Config, shape, weights: dict, history: list) -> None:
    """A fitted model of any method (what estimators.load_model reads)."""
    save(path, header(cfg, shape), weights, None, TrainState(phase="done", history=history))


load = load_checkpoint


def config_of(saved: dict, path: str | Path, device: str | None = None) -> tuple[Config, tuple]:
    """The checkpoint's config (with another device, if given) and input shape."""
    try:
        cfg = Config.from_saved(saved["config"], source=f"{path} (config)")
        if device is not None:
            cfg = cfg.replace(device=device)
        return cfg, tuple(int(s) for s in saved["shape"])
    except (KeyError, TypeError, ValueError) as e:
        raise DVClustError(f"{path}: refused: checkpoint lacks or garbles {e}") from None


def load_weights(model: nn.Module, saved: dict, path: str | Path) -> None:
    try:
        model.load_state_dict(saved["model"], strict=True)
    except (KeyError, RuntimeError) as e:
        first = str(e).splitlines()[0]
        raise DVClustError(f"{path}: refused: weights do not fit this model ({first[:200]})") from None


def check_resumable(saved: dict, cfg: Config, shape, fingerprint: str, path: str | Path) -> None:
    # a key the checkpoint lacks came after it was written (Config.from_saved); lr is compared as
    # the number it trains with, so a run written when lr was a plain 1e-3 resumes under `auto`
    old = {**Config().to_dict(), **BEFORE_KEY, **saved.get("config", {})}
    new = cfg.to_dict()
    for d in (old, new):
        d["lr"] = resolved_lr(d["lr"], d["batch_size"])
    diff = sorted(k for k, v in new.items() if k not in RUNTIME_KEYS and old.get(k) != v)
    if diff:
        raise DVClustError(f"{path}: cannot resume with a different config "
                           f"({', '.join(f'{k}: {old.get(k)!r} -> {new[k]!r}' for k in diff)})")
    if saved.get("fingerprint") != fingerprint or list(saved.get("shape", [])) != list(shape):
        raise DVClustError(f"{path}: cannot resume on different data (the checkpoint was trained "
                           f"on {saved.get('n_samples')} images of {saved.get('shape')})")


def set_n_clusters(path: str | Path, k: int) -> None:
    """Give a checkpoint taken after pretraining K clusters (`--clusters auto`): phase 1 does not
    depend on K, so the run then resumes at k-means initialisation as if K had been given."""
    saved = load(path)
    saved["config"]["n_clusters"] = k
    saved["model"]["head.centers"] = torch.zeros(k, saved["model"]["head.centers"].shape[1])
    save_checkpoint(path, {k_: v for k_, v in saved.items() if k_ not in ("format", "format_version")})
