"""What every estimator shares, on scikit-learn's base classes: parameters <-> Config, the fitted
contract (learned state ends in `_`, NotFittedError before fit), input checks, save and load.

get_params / set_params / clone / repr come from BaseEstimator, which reads the explicit
constructor parameters; `random_state` is the Config's `seed`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin

from ..config import Config
from ..data import ImageData, as_images, as_labels
from ..errors import DVClustError, NotFittedError
from ..training import checkpoint

_NOT_CONFIG = ("random_state", "verbose")


def as_data(X, y=None) -> ImageData:
    """Any accepted input (ImageData, array, tensor) as ImageData, with y as its labels if given."""
    if isinstance(X, ImageData):
        labels = as_labels(y, len(X)) if y is not None else X.labels
        return ImageData(X.images, labels, X.sources, X.name, X.class_names, X.skipped, X.items)
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    images = as_images(X, "X")
    return ImageData(images, as_labels(y, len(images), "y") if y is not None else None)


def refuse_unknown(est, unknown: dict[str, Any]) -> None:
    if unknown:
        known = sorted({f for f in Config().to_dict()} | set(type(est)._get_param_names()))
        raise DVClustError(f"{type(est).__name__}: unknown key(s) {', '.join(sorted(unknown))}; "
                           f"known keys are {', '.join(known)}")


class BaseClusterer(ClusterMixin, TransformerMixin, BaseEstimator):
    """Subclasses define fit, predict_details, transform, _weights and _restore."""

    # --- parameters ----------------------------------------------------------------------------
    def _config(self) -> Config:
        params = self.get_params(deep=False)
        d = {k: v for k, v in params.items() if k not in _NOT_CONFIG}
        return Config.from_dict({**d, "seed": params["random_state"]}, source=type(self).__name__)

    @classmethod
    def from_config(cls, cfg: Config, verbose: bool = False) -> "BaseClusterer":
        """The estimator whose parameters are cfg's (keys this estimator does not take dropped)."""
        names = set(cls._get_param_names())
        d = {k: v for k, v in cfg.to_dict().items() if k in names}
        return cls(**d, random_state=cfg.seed, verbose=verbose)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False   # images: N x H x W [x C] or N x C x H x W
        tags.input_tags.three_d_array = True
        tags.non_deterministic = False        # on CPU a seed fixes the result
        return tags

    # --- the fitted contract -------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "cluster_centers_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit first")

    def _start_fit(self, X, y) -> tuple[ImageData, Config]:
        data = as_data(X, y)
        cfg = self._config()
        if cfg.n_clusters > len(data):
            raise DVClustError(f"n_clusters={cfg.n_clusters} is larger than the number of images "
                               f"({len(data)})")
        return data, cfg

    def _images(self, X) -> np.ndarray:
        self._check_fitted()
        images = X.images if isinstance(X, ImageData) else as_data(X).images
        if tuple(images.shape[1:]) != self.input_shape_:
            c, h, w = self.input_shape_
            got = "x".join(map(str, images.shape[1:]))
            raise DVClustError(f"images are {got} (C x H x W) but the model was trained on "
                               f"{c}x{h}x{w}; resize them first")
        return images

    def fit_predict(self, X, y=None, **kw) -> np.ndarray:
        return self.fit(X, y, **kw).labels_

    # --- inference (each subclass gives predict_details and transform) -------------------------
    def predict_proba(self, X) -> np.ndarray:
        raise NotImplementedError

    def predict(self, X) -> np.ndarray:
        """Hard labels argmax_j q_ij (deterministic: the posterior mean is used, not a sample)."""
        return self.predict_proba(X).argmax(1)

    def score_samples(self, X) -> np.ndarray:
        """Per-image score, higher = better explained; its negative is the outlier score."""
        return -self.predict_details(X)["outlier_score"]

    # --- persistence ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the fitted model to one checkpoint file (atomically)."""
        self._check_fitted()
        checkpoint.save_fitted(path, self.config_, self.input_shape_, self._weights(),
                               self.history_)

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> "BaseClusterer":
        """Read a model written by `save` or a run's checkpoint.pt (safe: tensors only)."""
        return cls.from_checkpoint(checkpoint.load(path), path, device)

    @classmethod
    def from_checkpoint(cls, saved: dict, path: str | Path,
                        device: str | None = None) -> "BaseClusterer":
        cfg, shape = checkpoint.config_of(saved, path, device)
        est = cls.from_config(cfg)
        est._restore(saved, cfg, shape, Path(path))
        est.config_, est.input_shape_ = cfg, shape
        est.history_, est.phase_ = saved["state"]["history"], saved["state"]["phase"]
        return est
