"""k-means on the pixels, or on their first principal components: the floor a deep method must
clear, with the same contract as DVC."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .. import metrics
from ..cluster import kmeans_centers, sample_rows, soft_assign
from ..config import SHALLOW_METHODS, Config
from ..errors import DVClustError
from .base import BaseClusterer, refuse_unknown

_D = Config()


class KMeansBaseline(BaseClusterer):
    """k-means on the pixels (`method="kmeans"`) or on their first `latent_dim` principal
    components (`method="pca-kmeans"`). Same contract as DVC: labels_, cluster_centers_, predict,
    predict_proba (Student-t q, as DVC), transform, score_samples (minus the PCA reconstruction
    error, or minus the distance to the nearest centre for raw pixels), predict_details, save/load.
    """

    def __init__(self, n_clusters: int = _D.n_clusters, *, method: str = "kmeans",
                 latent_dim: int = _D.latent_dim, kmeans_n_init: int = _D.kmeans_n_init,
                 kmeans_max_samples: int = _D.kmeans_max_samples, alpha: float = _D.alpha,
                 random_state: int = _D.seed, verbose: bool = False, **unknown):
        refuse_unknown(self, unknown)
        self.n_clusters, self.method, self.latent_dim = n_clusters, method, latent_dim
        self.kmeans_n_init, self.kmeans_max_samples = kmeans_n_init, kmeans_max_samples
        self.alpha, self.random_state, self.verbose = alpha, random_state, verbose

    def _features(self, images: np.ndarray) -> np.ndarray:
        """Pixels, projected on the principal components when there are any."""
        if self.pca_components_ is None:
            return np.concatenate(list(_pixels(images)))
        return np.concatenate([(x - self.pca_mean_) @ self.pca_components_.T
                               for x in _pixels(images)])

    def fit(self, X, y=None, *, run_dir: str | Path | None = None, resume: bool = False,
            _stop_after=None) -> "KMeansBaseline":
        cfg = self._config()
        if cfg.method not in SHALLOW_METHODS:
            raise DVClustError(f"KMeansBaseline runs {' or '.join(SHALLOW_METHODS)}, not "
                               f"{cfg.method!r}; use DVC(method={cfg.method!r})")
        data, cfg = self._start_fit(X, y)
        t0 = time.perf_counter()
        self.pca_mean_ = self.pca_components_ = None
        if cfg.method == "pca-kmeans":
            from sklearn.decomposition import PCA

            rows = sample_rows(len(data), cfg.kmeans_max_samples, cfg.seed)
            flat = np.concatenate(list(_pixels(data.images[rows])))
            pca = PCA(n_components=min(cfg.latent_dim, *flat.shape), random_state=cfg.seed).fit(flat)
            self.pca_mean_ = pca.mean_.astype(np.float32)
            self.pca_components_ = pca.components_.astype(np.float32)
        feats = self._features(data.images)
        self.cluster_centers_ = kmeans_centers(feats, cfg.n_clusters, cfg.seed, cfg.kmeans_n_init,
                                               cfg.kmeans_max_samples)
        self.config_, self.input_shape_ = cfg, tuple(data.shape)
        self.device_ = torch.device("cpu")
        self.labels_ = self._assign(feats).argmax(1)
        row = {"phase": "kmeans", "epoch": 0, "seconds": time.perf_counter() - t0}
        if data.labels is not None:
            row.update({k: v for k, v in metrics.evaluate(data.labels, self.labels_).items()
                        if k in ("acc", "nmi", "ari")})
        self.history_, self.phase_ = [row], "done"
        if run_dir is not None:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            self.save(Path(run_dir) / "checkpoint.pt")
        return self

    def _assign(self, feats: np.ndarray) -> np.ndarray:
        return soft_assign(torch.from_numpy(feats), torch.from_numpy(self.cluster_centers_),
                           self.config_.alpha).numpy()

    def transform(self, X) -> np.ndarray:
        return self._features(self._images(X))

    def predict_proba(self, X) -> np.ndarray:
        return self._assign(self.transform(X))

    def predict_details(self, X) -> dict[str, np.ndarray]:
        images = self._images(X)
        z = self._features(images)
        q = self._assign(z)
        d = torch.cdist(torch.from_numpy(z), torch.from_numpy(self.cluster_centers_)).min(1).values.numpy()
        if self.pca_components_ is None:
            outlier = d
        else:  # squared error of the PCA reconstruction, per image
            c = self.pca_components_
            outlier = np.concatenate([((((x - self.pca_mean_) @ c.T) @ c - (x - self.pca_mean_))
                                       ** 2).sum(1) for x in _pixels(images)])
        return {"cluster": q.argmax(1), "confidence": q.max(1), "outlier_score": outlier,
                "distance": d, "latent": z}

    def _weights(self) -> dict:
        arrays = {"centers": self.cluster_centers_}
        if self.pca_components_ is not None:
            arrays.update(pca_mean=self.pca_mean_, pca_components=self.pca_components_)
        return {k: torch.from_numpy(v) for k, v in arrays.items()}

    def _restore(self, saved: dict, cfg: Config, shape, path: Path) -> None:
        try:
            w = {k: v.numpy() for k, v in saved["model"].items()}
            self.cluster_centers_ = w["centers"]
            self.pca_mean_, self.pca_components_ = w.get("pca_mean"), w.get("pca_components")
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise DVClustError(f"{path}: refused: checkpoint lacks or garbles {e}") from None
        self.device_ = torch.device("cpu")


def _pixels(images: np.ndarray, batch: int = 8192):
    """Flattened [0, 1] float32 pixels in chunks: a store-backed array is never held as floats."""
    for s in range(0, len(images), batch):
        x = np.asarray(images[s:s + batch])
        yield x.reshape(len(x), -1).astype(np.float32) / (255.0 if x.dtype == np.uint8 else 1.0)
