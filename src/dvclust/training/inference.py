"""Passes over whole datasets in evaluation mode, without gradients: the one place that encodes,
assigns and reconstructs, for the loop (targets, k-means), the estimators, predict and the report.
"""
from __future__ import annotations

import numpy as np
import torch

from ..cluster import cluster_frequencies, target_distribution
from ..data.dataset import to_float
from ..losses import kl_prior, recon_nll, reconstruct
from ..runtime import autocast
from .distributed import Dist
from .model import DVCModel


def _batches(images: np.ndarray | torch.Tensor, rows: range, batch_size: int, device: torch.device):
    """Batches of rows as floats on `device`; `images` may be a tensor already there
    (config.data_on_device)."""
    for s in range(rows.start, rows.stop, batch_size):
        e = min(s + batch_size, rows.stop)
        if isinstance(images, torch.Tensor):
            chunk = images[s:e]
        else:  # np.require copies only read-only slices (of a memory-mapped .npy), which torch rejects
            chunk = torch.from_numpy(np.require(images[s:e], requirements=["C", "W"]))
        yield s - rows.start, e - rows.start, to_float(chunk.to(device, non_blocking=True))


@torch.no_grad()
def encode_all(model: DVCModel, images: np.ndarray, dist: Dist, batch_size: int = 1024,
               neg_elbo: str | None = None, precision: str = "auto"):
    """Posterior means of every image (and, if `neg_elbo` names a likelihood, the per-image
    negative ELBO with z = mu). Each rank encodes a contiguous shard with rank 0's BatchNorm
    statistics (those its checkpoint holds, so that a resumed run evaluates as the uninterrupted
    one did); the rows are gathered."""
    dist.sync_buffers(model)
    was_training = model.training
    model.eval()
    rows = dist.shard(len(images))
    d = model.head.centers.shape[1]
    # Results go straight into preallocated outputs (memory: the outputs plus one batch).
    mu_out = torch.empty(len(rows), d, device=dist.device)
    ne_out = torch.empty(len(rows), device=dist.device) if neg_elbo else None
    for s, e, x in _batches(images, rows, batch_size, dist.device):
        with autocast(dist.device, precision):
            mu, logvar = model.vae.encode(x)
            if neg_elbo:
                out = model.vae.decoder(mu)
        mu, logvar = mu.float(), logvar.float()
        mu_out[s:e] = mu
        if neg_elbo:
            ne = recon_nll(out.float(), x, neg_elbo)
            if model.vae.variational:  # an AE's outlier score is its reconstruction error alone
                ne = ne + kl_prior(mu, logvar)
            ne_out[s:e] = ne
    model.train(was_training)
    mu = dist.all_gather_rows(mu_out)
    return (mu, dist.all_gather_rows(ne_out)) if neg_elbo else mu


def assign_all(model: DVCModel, images: np.ndarray, dist: Dist, precision: str = "auto",
               prior: torch.Tensor | None = None):
    """q for every image and the target P (with cluster-size prior `prior`, None = equal sizes),
    with f_j summed over every rank's shard."""
    mu = encode_all(model, images, dist, precision=precision)
    with torch.no_grad():
        q = model.head(mu)
        # Every rank holds every row after the gather, so f is global already; the shard-local
        # form below is what makes the all-reduce explicit and keeps memory per rank bounded.
        rows = dist.shard(len(images))
        f = dist.all_reduce(cluster_frequencies(q[rows.start:rows.stop]).clone())
        p = target_distribution(q, f, None if prior is None else prior.to(q.device))
    return q, p


@torch.no_grad()
def details(model: DVCModel, images: np.ndarray, dist: Dist, likelihood: str,
            precision: str = "auto") -> dict[str, np.ndarray]:
    """Everything per image in one encoder/decoder pass: `cluster`, `confidence` (max q),
    `outlier_score` (negative ELBO), `distance` (to the nearest centre) and `latent` (mu)."""
    mu, nelbo = encode_all(model, images, dist, neg_elbo=likelihood, precision=precision)
    q = model.head(mu)
    d = torch.cdist(mu, model.head.centers).min(1).values
    q = q.cpu().numpy()
    return {"cluster": q.argmax(1), "confidence": q.max(1), "outlier_score": nelbo.cpu().numpy(),
            "distance": d.cpu().numpy(), "latent": mu.cpu().numpy()}


@torch.no_grad()
def reconstruct_all(model: DVCModel, images: np.ndarray, device: torch.device,
                    batch_size: int = 1024) -> np.ndarray:
    """The decoder's image (in [0, 1]) at z = mu for every image, N x C x H x W float32."""
    was_training = model.training
    model.eval()
    out = np.empty((len(images), *images.shape[1:]), np.float32)
    for s, e, x in _batches(images, range(len(images)), batch_size, device):
        mu, _ = model.vae.encode(x)
        out[s:e] = reconstruct(model.vae.decoder(mu)).float().cpu().numpy()
    model.train(was_training)
    return out
