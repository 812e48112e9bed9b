"""scikit-learn estimators over the training loop (dvc.py) and the pixel baselines (kmeans.py),
on one shared base (base.py)."""
from __future__ import annotations

from pathlib import Path

from ..config import SHALLOW_METHODS, Config
from ..training import checkpoint
from .base import BaseClusterer
from .dvc import DVC
from .kmeans import KMeansBaseline

__all__ = ["BaseClusterer", "DVC", "KMeansBaseline", "estimator_class", "estimator_for",
           "load_model", "make_estimator", "pretrain_only"]


def estimator_class(method: str) -> type[BaseClusterer]:
    return KMeansBaseline if method in SHALLOW_METHODS else DVC


def make_estimator(method: str = "dvc", n_clusters: int = 10, *, random_state: int = 0,
                   verbose: bool = False, **params):
    """The estimator for any method of the comparison (config.METHODS), one contract for all.
    Config keys that the method does not use (beta for k-means, say) are dropped; any other
    unknown key is refused."""
    cls = estimator_class(method)
    ignored = set(Config().to_dict()) - set(cls._get_param_names())
    return cls(n_clusters, random_state=random_state, verbose=verbose, method=method,
               **{k: v for k, v in params.items() if k not in ignored})


def estimator_for(cfg: Config, verbose: bool = False) -> BaseClusterer:
    """The estimator that fits `cfg` (its method, its parameters)."""
    return estimator_class(cfg.method).from_config(cfg, verbose)


def pretrain_only(data, cfg: Config, run_dir: Path | None = None, resume: bool = False,
                  verbose: bool = True) -> BaseClusterer:
    """Phase 1 alone (the loop stops once pretraining has ended and is checkpointed)."""
    return estimator_for(cfg, verbose).fit(data, run_dir=run_dir, resume=resume,
                                           _stop_after=lambda s: s.phase == "kmeans")


def load_model(path: str | Path, device: str | None = None):
    """A saved model or run checkpoint of any method."""
    saved = checkpoint.load(path)
    method = (saved.get("config") or {}).get("method", "dvc")
    return estimator_class(method).from_checkpoint(saved, path, device)
