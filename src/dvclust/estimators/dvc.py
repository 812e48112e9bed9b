"""DVC and its deep baselines (IDEC, DEC, k-means on VAE/AE codes): one estimator over the one
training loop; `method` selects the traits (config.DEEP_METHODS)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..errors import DVClustError
from ..runtime import pick_device, set_threads
from ..training import checkpoint
from ..training.distributed import Dist
from ..training.inference import assign_all, details, encode_all, reconstruct_all
from ..training.model import DVCModel
from ..training.phases import Context, train
from .base import BaseClusterer, refuse_unknown

_D = Config()  # the defaults below are Config's (tests/test_estimator.py checks that they agree)


class DVC(BaseClusterer):
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
    Every other parameter is the `dvclust.config.Config` key of the same name (its comments and
    docs/DECISIONS.md say what each does and why it defaults as it does).

    Attributes
    ----------
    labels_, cluster_centers_, history_, config_, input_shape_, device_, model_ (the torch module)

    Examples
    --------
    >>> from dvclust import DVC, load_dataset
    >>> data = load_dataset("digits")
    >>> model = DVC(n_clusters=10, pretrain_epochs=2, cluster_epochs=1).fit(data)
    >>> model.labels_.shape
    (1797,)
    """

    def __init__(self, n_clusters: int = _D.n_clusters, *, method: str = _D.method,
                 latent_dim: int = _D.latent_dim, base_channels: int | str = _D.base_channels,
                 likelihood: str = _D.likelihood, batch_size: int = _D.batch_size,
                 lr: float | str = _D.lr, beta: float = _D.beta, recon_reduction: str = _D.recon_reduction,
                 augment: bool | str = _D.augment, views: int | str = _D.views,
                 contrastive: float | str = _D.contrastive, balance: float = _D.balance,
                 pretrain_epochs: int = _D.pretrain_epochs,
                 patience: int = _D.patience, min_delta: float = _D.min_delta,
                 kmeans_n_init: int = _D.kmeans_n_init,
                 kmeans_max_samples: int = _D.kmeans_max_samples,
                 cluster_epochs: int | str = _D.cluster_epochs, gamma: float = _D.gamma,
                 size_prior: str = _D.size_prior, alpha: float = _D.alpha,
                 update_interval: int = _D.update_interval, tol: float = _D.tol,
                 prior_kl_in_clustering: bool = _D.prior_kl_in_clustering,
                 q_from: str = _D.q_from, device: str = _D.device,
                 num_threads: int = _D.num_threads, precision: str = _D.precision,
                 data_on_device: bool | str = _D.data_on_device,
                 random_state: int = _D.seed, verbose: bool = False, **unknown):
        refuse_unknown(self, unknown)
        self.n_clusters, self.method, self.latent_dim = n_clusters, method, latent_dim
        self.base_channels, self.likelihood, self.batch_size = base_channels, likelihood, batch_size
        self.lr, self.beta, self.recon_reduction, self.augment = lr, beta, recon_reduction, augment
        self.views, self.contrastive, self.balance = views, contrastive, balance
        self.pretrain_epochs, self.patience, self.min_delta = pretrain_epochs, patience, min_delta
        self.kmeans_n_init, self.kmeans_max_samples = kmeans_n_init, kmeans_max_samples
        self.cluster_epochs, self.gamma, self.size_prior = cluster_epochs, gamma, size_prior
        self.alpha, self.update_interval, self.tol = alpha, update_interval, tol
        self.prior_kl_in_clustering, self.q_from = prior_kl_in_clustering, q_from
        self.device, self.num_threads, self.precision = device, num_threads, precision
        self.data_on_device, self.random_state, self.verbose = data_on_device, random_state, verbose

    # --- training ------------------------------------------------------------------------------
    def fit(self, X, y=None, *, run_dir: str | Path | None = None, resume: bool = False,
            _stop_after=None) -> "DVC":
        """Train on images X (array N x H x W [x C], N x C x H x W, or ImageData).

        y (optional) is used only to log ACC/NMI/ARI at each target update. With `run_dir`, a
        checkpoint and history.csv are written there after every epoch; `resume=True` continues
        the run found there to the same end. (`_stop_after(state) -> bool` is a test hook that
        ends training after an epoch, as a killed process would.)
        """
        data, cfg = self._start_fit(X, y)
        set_threads(cfg.num_threads)
        dist = Dist.from_env(cfg.device)
        run_dir = Path(run_dir) if run_dir is not None else None
        fingerprint = checkpoint.data_fingerprint(data.images)
        torch.manual_seed(cfg.seed)
        model = DVCModel(data.shape, cfg)
        ctx = Context(model, data.images, cfg, dist, y=data.labels, run_dir=run_dir,
                      verbose=self.verbose, stop_after=_stop_after,
                      header=checkpoint.header(cfg, data.shape, len(data), fingerprint))
        if resume:
            ckpt = run_dir / "checkpoint.pt" if run_dir is not None else None
            if ckpt is None or not ckpt.exists():
                raise DVClustError(f"{run_dir}: nothing to resume (no checkpoint.pt)")
            saved = checkpoint.load(ckpt)
            checkpoint.check_resumable(saved, cfg, data.shape, fingerprint, ckpt)
            checkpoint.load_weights(model, saved, ckpt)
            ctx.state = checkpoint.TrainState.from_dict(saved["state"])
            ctx.optimizer_state = saved["optimizer"]
        st = train(ctx)
        self._set_fitted(model, cfg, data.shape, st.history, dist.device)
        self.phase_ = st.phase
        if st.phase == "done":
            q, _ = assign_all(model, data.images, dist, cfg.precision)
            self.labels_ = q.argmax(1).cpu().numpy()
        return self

    def _set_fitted(self, model: DVCModel, cfg: Config, shape, history, device) -> None:
        self.model_ = model.eval()
        self.config_ = cfg
        self.input_shape_ = tuple(shape)
        self.history_ = history
        self.cluster_centers_ = model.head.centers.detach().cpu().numpy().copy()
        self.device_ = device

    # --- inference: one process, whatever the training ran on ----------------------------------
    def _infer(self, X) -> tuple[np.ndarray, Dist]:
        return self._images(X), Dist(0, 1, self.device_)

    def predict_proba(self, X) -> np.ndarray:
        """Soft assignments q (N x K): Student-t similarity of each posterior mean to each centre."""
        images, dist = self._infer(X)
        q, _ = assign_all(self.model_, images, dist, self.config_.precision)
        return q.cpu().numpy()

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
        return details(self.model_, images, dist, self.config_.likelihood, self.config_.precision)

    def reconstruct(self, X) -> np.ndarray:
        """The decoder's image at z = mu, in [0, 1], N x C x H x W."""
        images, dist = self._infer(X)
        return reconstruct_all(self.model_, images, dist.device)

    # --- persistence ---------------------------------------------------------------------------
    def _weights(self) -> dict:
        return self.model_.state_dict()

    def _restore(self, saved: dict, cfg: Config, shape, path: Path) -> None:
        model = DVCModel(shape, cfg)
        checkpoint.load_weights(model, saved, path)
        dev = pick_device(cfg.device)
        model.to(dev)
        self._set_fitted(model, cfg, shape, saved["state"]["history"], dev)
