"""scikit-learn-style shells over the training loop: the constructor stores arguments, fit returns
self, learned state ends in `_`, and an unfitted model raises NotFittedError."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import metrics
from .cluster import kmeans_centers, sample_rows, soft_assign
from .config import SHALLOW_METHODS, Config
from .data import ImageData, as_images, as_labels
from .errors import DVClustError, NotFittedError
from .io import load_checkpoint, save_checkpoint
from .runtime import Dist, pick_device, set_threads, versions
from .train import DVCModel, TrainState, assign_all, data_fingerprint, encode_all, train

# Keys that may differ between an interrupted run and its resumption without changing the result.
_RUNTIME_KEYS = {"device", "num_threads"}


def _as_data(X, y=None) -> ImageData:
    if isinstance(X, ImageData):
        labels = as_labels(y, len(X)) if y is not None else X.labels
        return ImageData(X.images, labels, X.sources, X.name, X.class_names)
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    images = as_images(X, "X")
    return ImageData(images, as_labels(y, len(images), "y") if y is not None else None)


class DVC:
    """Deep Variational Clustering (Soleymani et al., arXiv 2109.10777).

    A convolutional VAE is pretrained on the ELBO, k-means on the posterior means initialises K
    centres, then encoder, decoder and centres are trained jointly on the ELBO plus
    gamma * KL(P || Q), DEC's self-training loss on the Student-t soft assignments Q.

    `method="idec" | "dec" | "vae-kmeans" | "ae-kmeans"` runs a baseline in the same loop on the
    same network (see config.DEEP_METHODS); `make_estimator` also covers the pixel baselines.

    Parameters
    ----------
    n_clusters : number of clusters K.
    random_state : seed; on CPU the same seed gives the same labels.
    verbose : progress bars and a line per phase.
    **params : any key of `dvclust.config.Config` (latent_dim, beta, gamma, pretrain_epochs, ...).

    Examples
    --------
    >>> from dvclust import DVC, load_dataset
    >>> data = load_dataset("digits")
    >>> model = DVC(n_clusters=10, pretrain_epochs=2, cluster_epochs=1).fit(data)
    >>> model.labels_.shape
    (1797,)
    """

    def __init__(self, n_clusters: int = 10, *, random_state: int = 0, verbose: bool = False,
                 **params: Any):
        self.n_clusters = n_clusters
        self.random_state = random_state
        self.verbose = verbose
        self.params = params

    # --- sklearn plumbing ----------------------------------------------------------------------
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"n_clusters": self.n_clusters, "random_state": self.random_state,
                "verbose": self.verbose, **self.params}

    def _config(self) -> Config:
        return Config.from_dict({**self.params, "n_clusters": self.n_clusters,
                                 "seed": self.random_state}, source=type(self).__name__)

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit first")

    # --- training ------------------------------------------------------------------------------
    def fit(self, X, y=None, *, run_dir: str | Path | None = None, resume: bool = False,
            _stop_after=None) -> "DVC":
        """Train on images X (array N x H x W [x C], N x C x H x W, or ImageData).

        y (optional) is used only to log ACC/NMI/ARI at each target update. With `run_dir`, a
        checkpoint and history.csv are written there after every epoch; `resume=True` continues
        the run found there to the same end. (`_stop_after(state) -> bool` is a test hook that
        ends training after an epoch, as a killed process would.)
        """
        data = _as_data(X, y)
        cfg = self._config()
        if cfg.n_clusters > len(data):
            raise DVClustError(f"n_clusters={cfg.n_clusters} is larger than the number of images "
                               f"({len(data)})")
        set_threads(cfg.num_threads)
        dist = Dist.from_env(cfg.device)
        run_dir = Path(run_dir) if run_dir is not None else None
        fingerprint = data_fingerprint(data.images)
        torch.manual_seed(cfg.seed)
        model = DVCModel(data.shape, cfg)
        state, opt_state = None, None
        ckpt = run_dir / "checkpoint.pt" if run_dir is not None else None
        if resume:
            if ckpt is None or not ckpt.exists():
                raise DVClustError(f"{run_dir}: nothing to resume (no checkpoint.pt)")
            saved = load_checkpoint(ckpt)
            _check_resumable(saved, cfg, data, fingerprint, ckpt)
            _load_weights(model, saved, ckpt)
            state, opt_state = TrainState.from_dict(saved["state"]), saved["optimizer"]
        extra = {"config": cfg.to_dict(), "shape": list(data.shape), "n_samples": len(data),
                 "fingerprint": fingerprint, "versions": versions(), "method": cfg.method}
        st = train(model, data.images, cfg, dist, state, opt_state, data.labels, run_dir,
                   self.verbose, extra, _stop_after)
        self._set_fitted(model, cfg, data.shape, st.history, dist)
        if st.phase == "done":
            q, _ = assign_all(model, data.images, dist, cfg.precision)
            self.labels_ = q.argmax(1).cpu().numpy()
        return self

    def fit_predict(self, X, y=None, **kw) -> np.ndarray:
        return self.fit(X, y, **kw).labels_

    def _set_fitted(self, model: DVCModel, cfg: Config, shape, history, dist: Dist) -> None:
        self.model_ = model.eval()
        self.config_ = cfg
        self.input_shape_ = tuple(shape)
        self.history_ = history
        self.cluster_centers_ = model.head.centers.detach().cpu().numpy().copy()
        self._dist = dist

    # --- inference -----------------------------------------------------------------------------
    def _images(self, X) -> np.ndarray:
        self._check_fitted()
        images = X.images if isinstance(X, ImageData) else _as_data(X).images
        if tuple(images.shape[1:]) != self.input_shape_:
            c, h, w = self.input_shape_
            got = "x".join(map(str, images.shape[1:]))
            raise DVClustError(f"images are {got} (C x H x W) but the model was trained on "
                               f"{c}x{h}x{w}; resize them first")
        return images

    def _infer(self, X) -> tuple[np.ndarray, Dist]:
        """Checked images and a single-process Dist: inference needs no process group."""
        images = self._images(X)
        return images, Dist(0, 1, self._dist.device)

    def predict_proba(self, X) -> np.ndarray:
        """Soft assignments q (N x K): Student-t similarity of each posterior mean to each centre."""
        images, dist = self._infer(X)
        q, _ = assign_all(self.model_, images, dist, self.config_.precision)
        return q.cpu().numpy()

    def predict(self, X) -> np.ndarray:
        """Hard labels argmax_j q_ij (deterministic: the posterior mean is used, not a sample)."""
        return self.predict_proba(X).argmax(1)

    def transform(self, X) -> np.ndarray:
        """Posterior means mu(x), N x latent_dim."""
        images, dist = self._infer(X)
        return encode_all(self.model_, images, dist, precision=self.config_.precision).cpu().numpy()

    def score_samples(self, X) -> np.ndarray:
        """Per-image ELBO (higher = better explained; its negative is the outlier score), with the
        reconstruction evaluated at z = mu so that it is deterministic."""
        images, dist = self._infer(X)
        _, nelbo = encode_all(self.model_, images, dist, neg_elbo=self.config_.likelihood,
                              precision=self.config_.precision)
        return -nelbo.cpu().numpy()

    def predict_details(self, X) -> dict[str, np.ndarray]:
        """Everything per image in one encoder/decoder pass: `cluster`, `confidence` (max q),
        `outlier_score` (negative ELBO), `distance` (to the nearest centre) and `latent` (mu)."""
        images, dist = self._infer(X)
        mu, nelbo = encode_all(self.model_, images, dist, neg_elbo=self.config_.likelihood,
                               precision=self.config_.precision)
        with torch.no_grad():
            q = self.model_.head(mu)
            d = torch.cdist(mu, self.model_.head.centers).min(1).values
        q = q.cpu().numpy()
        return {"cluster": q.argmax(1), "confidence": q.max(1),
                "outlier_score": nelbo.cpu().numpy(), "distance": d.cpu().numpy(),
                "latent": mu.cpu().numpy()}

    # --- persistence ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the fitted model to one checkpoint file (atomically)."""
        self._check_fitted()
        _save_fitted(self, path, self.model_.state_dict())

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> "DVC":
        """Read a model written by `save` or a run's checkpoint.pt (safe: tensors only)."""
        saved = load_checkpoint(path)
        try:
            cfg = Config.from_dict(saved["config"], source=f"{path} (config)")
            if device is not None:
                cfg = cfg.replace(device=device)
            shape = tuple(int(s) for s in saved["shape"])
            model = DVCModel(shape, cfg)
        except (KeyError, TypeError, ValueError) as e:
            raise DVClustError(f"{path}: refused: checkpoint lacks or garbles {e}") from None
        _load_weights(model, saved, Path(path))
        est = cls(cfg.n_clusters, random_state=cfg.seed,
                  **{k: v for k, v in cfg.to_dict().items() if k not in ("n_clusters", "seed")})
        dist = Dist(0, 1, pick_device(cfg.device))
        model.to(dist.device)
        est._set_fitted(model, cfg, shape, saved["state"]["history"], dist)
        est.phase_ = saved["state"]["phase"]
        return est


def _save_fitted(est, path: str | Path, weights: dict) -> None:
    """One checkpoint layout for a fitted model of any method (what load_model reads)."""
    save_checkpoint(path, {"config": est.config_.to_dict(), "shape": list(est.input_shape_),
                           "versions": versions(), "method": est.config_.method,
                           "model": weights, "optimizer": None,
                           "state": TrainState(phase="done", history=est.history_).to_dict()})


def _load_weights(model: DVCModel, saved: dict, path: Path) -> None:
    try:
        model.load_state_dict(saved["model"], strict=True)
    except (KeyError, RuntimeError) as e:
        first = str(e).splitlines()[0]
        raise DVClustError(f"{path}: refused: weights do not fit this model ({first[:200]})") from None


def _check_resumable(saved: dict, cfg: Config, data: ImageData, fingerprint: str, path: Path) -> None:
    # a key the checkpoint lacks came after it was written: its default is the old behaviour
    old = {**Config().to_dict(), **saved.get("config", {})}
    diff = sorted(k for k, v in cfg.to_dict().items() if k not in _RUNTIME_KEYS and old.get(k) != v)
    if diff:
        raise DVClustError(f"{path}: cannot resume with a different config "
                           f"({', '.join(f'{k}: {old.get(k)!r} -> {getattr(cfg, k)!r}' for k in diff)})")
    if saved.get("fingerprint") != fingerprint or list(saved.get("shape", [])) != list(data.shape):
        raise DVClustError(f"{path}: cannot resume on different data (the checkpoint was trained "
                           f"on {saved.get('n_samples')} images of {saved.get('shape')})")


class KMeansBaseline:
    """k-means on the pixels (`method="kmeans"`) or on their first `latent_dim` principal
    components (`method="pca-kmeans"`): the floor a deep method must clear. Same contract as DVC:
    labels_, cluster_centers_, predict, predict_proba (Student-t q, as DVC), transform,
    score_samples (minus the PCA reconstruction error, or minus the distance to the nearest centre
    for raw pixels), predict_details, save/load."""

    def __init__(self, n_clusters: int = 10, *, random_state: int = 0, verbose: bool = False,
                 **params: Any):
        self.n_clusters = n_clusters
        self.random_state = random_state
        self.verbose = verbose
        self.params = {"method": "kmeans", **params}

    get_params = DVC.get_params
    _config = DVC._config
    _images = DVC._images

    def _check_fitted(self) -> None:
        if not hasattr(self, "cluster_centers_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit first")

    def _features(self, images: np.ndarray) -> np.ndarray:
        """Pixels, projected on the principal components when there are any."""
        if self.pca_components_ is None:
            return np.concatenate(list(_pixels(images)))
        return np.concatenate([(x - self.pca_mean_) @ self.pca_components_.T
                               for x in _pixels(images)])

    def fit(self, X, y=None, *, run_dir: str | Path | None = None, resume: bool = False,
            _stop_after=None) -> "KMeansBaseline":
        data = _as_data(X, y)
        cfg = self._config()
        if cfg.method not in SHALLOW_METHODS:
            raise DVClustError(f"KMeansBaseline runs {' or '.join(SHALLOW_METHODS)}, not "
                               f"{cfg.method!r}; use DVC(method={cfg.method!r})")
        if cfg.n_clusters > len(data):
            raise DVClustError(f"n_clusters={cfg.n_clusters} is larger than the number of images "
                               f"({len(data)})")
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
        self._dist = Dist(0, 1, torch.device("cpu"))
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

    fit_predict = DVC.fit_predict

    def _assign(self, feats: np.ndarray) -> np.ndarray:
        return soft_assign(torch.from_numpy(feats), torch.from_numpy(self.cluster_centers_),
                           self.config_.alpha).numpy()

    def transform(self, X) -> np.ndarray:
        return self._features(self._images(X))

    def predict_proba(self, X) -> np.ndarray:
        return self._assign(self.transform(X))

    def predict(self, X) -> np.ndarray:
        return self.predict_proba(X).argmax(1)

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

    def score_samples(self, X) -> np.ndarray:
        return -self.predict_details(X)["outlier_score"]

    def save(self, path: str | Path) -> None:
        self._check_fitted()
        arrays = {"centers": self.cluster_centers_}
        if self.pca_components_ is not None:
            arrays.update(pca_mean=self.pca_mean_, pca_components=self.pca_components_)
        _save_fitted(self, path, {k: torch.from_numpy(v) for k, v in arrays.items()})

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> "KMeansBaseline":
        saved = load_checkpoint(path)
        try:
            cfg = Config.from_dict(saved["config"], source=f"{path} (config)")
            w = {k: v.numpy() for k, v in saved["model"].items()}
            est = cls(cfg.n_clusters, random_state=cfg.seed,
                      **{k: v for k, v in cfg.to_dict().items() if k not in ("n_clusters", "seed")})
            est.cluster_centers_ = w["centers"]
            est.pca_mean_, est.pca_components_ = w.get("pca_mean"), w.get("pca_components")
            est.input_shape_ = tuple(int(s) for s in saved["shape"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise DVClustError(f"{path}: refused: checkpoint lacks or garbles {e}") from None
        est.config_, est._dist = cfg, Dist(0, 1, torch.device("cpu"))
        est.history_, est.phase_ = saved["state"]["history"], "done"
        return est


def _pixels(images: np.ndarray, batch: int = 8192):
    """Flattened [0, 1] float32 pixels in chunks: a store-backed array is never held as floats."""
    for s in range(0, len(images), batch):
        x = np.asarray(images[s:s + batch])
        yield x.reshape(len(x), -1).astype(np.float32) / (255.0 if x.dtype == np.uint8 else 1.0)


def make_estimator(method: str = "dvc", n_clusters: int = 10, *, random_state: int = 0,
                   verbose: bool = False, **params: Any):
    """The estimator for any method of the comparison (config.METHODS), one contract for all."""
    cls = KMeansBaseline if method in SHALLOW_METHODS else DVC
    return cls(n_clusters, random_state=random_state, verbose=verbose, method=method, **params)


def load_model(path: str | Path, device: str | None = None):
    """A saved model or run checkpoint of any method."""
    saved = load_checkpoint(path)
    method = (saved.get("config") or {}).get("method", "dvc")
    return (KMeansBaseline if method in SHALLOW_METHODS else DVC).load(path, device)
