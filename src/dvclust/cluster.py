"""The clustering head (DEC/IDEC on the variational latent space), in three layers:
pure functions for q, P and the loss; a module that owns the centres; k-means initialisation.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def soft_assign(z: torch.Tensor, centers: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Student's t similarity of each row of z to each centre, rows normalised (DEC's q_ij)."""
    d2 = torch.cdist(z, centers).pow(2) if z.shape[0] > 4096 else \
        (z.unsqueeze(1) - centers.unsqueeze(0)).pow(2).sum(-1)
    q = (1.0 + d2 / alpha).pow(-(alpha + 1.0) / 2.0)
    return q / q.sum(dim=1, keepdim=True)


def cluster_frequencies(q: torch.Tensor) -> torch.Tensor:
    """f_j = sum_i q_ij; in a multi-process run the caller all-reduces this over every rank."""
    return q.sum(dim=0)


def target_distribution(q: torch.Tensor, f: torch.Tensor | None = None,
                        prior: torch.Tensor | None = None) -> torch.Tensor:
    """DEC's target p_ij = (q_ij^2 pi_j / f_j) / sum_j' (q_ij'^2 pi_j' / f_j').

    pi_j / f_j favours clusters whose soft size f_j is below pi_j N. DEC's pi is uniform
    (`prior=None`), a pull toward equal sizes: it mends a k-means start that merged two balanced
    classes, but splits the majority class of an imbalanced set. With pi = the k-means
    proportions (`size_prior`) that pull is gone and the sizes follow the data
    (docs/DECISIONS.md, "size_prior").
    `f` must be the frequency over the whole dataset; it defaults to q's own column sums, which is
    right only when q covers every image.
    """
    f = cluster_frequencies(q) if f is None else f
    w = q.pow(2) / f
    if prior is not None:
        w = w * prior
    return w / w.sum(dim=1, keepdim=True)


def size_prior(labels: np.ndarray, n_clusters: int) -> torch.Tensor:
    """Cluster proportions of hard labels, floored at one image so that an empty cluster can still
    gain images."""
    counts = np.bincount(labels, minlength=n_clusters).astype(np.float64)
    counts = np.maximum(counts, 1.0)
    return torch.from_numpy(counts / counts.sum()).float()


def kl_clustering_loss(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) summed over clusters and averaged over samples ('batchmean')."""
    return F.kl_div(q.clamp_min(1e-12).log(), p, reduction="batchmean")


class ClusterHead(nn.Module):
    """Owns the K trainable centres in latent space."""

    def __init__(self, n_clusters: int, latent_dim: int, alpha: float = 1.0):
        super().__init__()
        self.alpha = alpha
        self.centers = nn.Parameter(torch.zeros(n_clusters, latent_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return soft_assign(z, self.centers, self.alpha)


def sample_rows(n: int, max_samples: int, seed: int) -> np.ndarray:
    """All row indices up to `max_samples` rows, else a seeded sorted random sample of them."""
    if n <= max_samples:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_samples, replace=False))


def kmeans_centers(latents: np.ndarray, n_clusters: int, seed: int, n_init: int = 10,
                   max_samples: int = 100_000) -> np.ndarray:
    """k-means on the posterior means; above `max_samples` rows it runs on a seeded random sample
    (centres of 10^5 points in a 10-d space are as good as those of 10^7, at 1% of the cost)."""
    from sklearn.cluster import KMeans

    x = latents
    if len(x) > max_samples:  # index only then: a full-size fancy index would copy every row
        x = x[sample_rows(len(x), max_samples, seed)]
    km = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed).fit(x.astype(np.float64))
    return km.cluster_centers_.astype(np.float32)
