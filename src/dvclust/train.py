"""The one training loop: variational pretraining, k-means initialisation, joint self-training.

The same code runs in one process or under torchrun (see runtime.Dist): the sampler shards the
data, gradients are synchronised by DDP, and the only extra collectives are the ones the maths
needs (cluster frequencies f_j, the label-change count, the latents gathered for k-means).
Checkpoints and logs come from rank 0.

Resume is exact: every epoch draws its shuffle order and its noise from a generator seeded with
(seed, phase, epoch), and the checkpoint written after each epoch holds everything else (weights,
optimiser, targets P, previous labels, early-stopping counters, history).
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from . import metrics
from .cluster import ClusterHead, cluster_frequencies, kl_clustering_loss, kmeans_centers, \
    size_prior, soft_assign, target_distribution
from .config import Config
from .data.augment import background_fraction, random_affine
from .data.dataset import ImageDataset, collate_batch, to_float
from .errors import DVClustError
from .io import save_checkpoint, write_csv_atomic
from .losses import kl_prior, recon_nll
from .nn import ConvVAE
from .runtime import Dist, autocast

PHASES = ("pretrain", "kmeans", "cluster", "done")
HISTORY_KEYS = ("phase", "epoch", "loss", "recon", "kl", "clustering", "seconds", "images_per_s",
                "label_change", "acc", "nmi", "ari")


class DVCModel(nn.Module):
    """The VAE (a plain AE for DEC/IDEC) and the cluster centres, as one module so that DDP and
    checkpoints see both."""

    def __init__(self, shape, cfg: Config):
        super().__init__()
        self.vae = ConvVAE(shape, cfg.latent_dim, cfg.base_channels, variational=cfg.variational)
        self.head = ClusterHead(cfg.n_clusters, cfg.latent_dim, cfg.alpha)

    def forward(self, x: torch.Tensor, q_from: str = "mean"):
        out, mu, logvar, z = self.vae(x)
        q = self.head(z if q_from == "sample" else mu)
        return out, mu, logvar, q


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


def epoch_generator(seed: int, phase: str, epoch: int) -> int:
    """One seed per (run seed, phase, epoch), so an epoch replays identically after a resume."""
    return (seed * 1_000_003 + PHASES.index(phase) * 10_007 + epoch) % (2**63)


# ----------------------------------------------------------------------------------------------
# passes over the whole dataset (evaluation mode, no gradients)
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def encode_all(model: DVCModel, images: np.ndarray, dist: Dist, batch_size: int = 1024,
               neg_elbo: str | None = None, precision: str = "auto"):
    """Posterior means of every image (and, if `neg_elbo` names a likelihood, the per-image
    negative ELBO with z = mu). Each rank encodes a contiguous shard; the rows are gathered."""
    was_training = model.training
    model.eval()
    rows = dist.shard(len(images))
    d = model.head.centers.shape[1]
    # Results go straight into preallocated outputs (memory: the outputs plus one batch).
    mu_out = torch.empty(len(rows), d, device=dist.device)
    ne_out = torch.empty(len(rows), device=dist.device) if neg_elbo else None
    for s in range(rows.start, rows.stop, batch_size):
        e = min(s + batch_size, rows.stop)
        # np.require copies only read-only slices (of a memory-mapped .npy), which torch rejects
        chunk = np.require(images[s:e], requirements=["C", "W"])
        x = to_float(torch.from_numpy(chunk).to(dist.device, non_blocking=True))
        with autocast(dist.device, precision):
            mu, logvar = model.vae.encode(x)
            if neg_elbo:
                out = model.vae.decoder(mu)
        mu, logvar = mu.float(), logvar.float()
        mu_out[s - rows.start:e - rows.start] = mu
        if neg_elbo:
            ne = recon_nll(out.float(), x, neg_elbo)
            if model.vae.variational:  # an AE's outlier score is its reconstruction error alone
                ne = ne + kl_prior(mu, logvar)
            ne_out[s - rows.start:e - rows.start] = ne
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


# ----------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------
def train(model: DVCModel, images: np.ndarray, cfg: Config, dist: Dist,
          state: TrainState | None = None, optimizer_state: dict | None = None,
          y: np.ndarray | None = None, run_dir: Path | None = None, verbose: bool = True,
          checkpoint_extra: dict[str, Any] | None = None,
          stop_after: Callable[[TrainState], bool] | None = None) -> TrainState:
    """Run (or resume) all three phases on `images` (N x C x H x W) and return the final state.

    `checkpoint_extra` is stored in every checkpoint (config, shape, versions, ...); `stop_after`
    is a test hook that ends the run after any epoch, as a crash would.
    """
    st = state or TrainState()
    model.to(dist.device)
    channels_last = dist.device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    log = (lambda msg: tqdm.write(msg)) if (verbose and dist.is_main) else (lambda msg: None)
    ds = ImageDataset(images)
    sampler = DistributedSampler(ds, num_replicas=dist.world_size, rank=dist.rank, shuffle=True,
                                 seed=0, drop_last=False)
    # batch_size is the global batch: each of W processes takes 1/W of it, so that one process and
    # many take the same optimisation steps (same learning-rate meaning, same epochs).
    per_rank = max(1, cfg.batch_size // dist.world_size)
    loader = DataLoader(ds, batch_size=per_rank, sampler=sampler, collate_fn=collate_batch,
                        num_workers=0, pin_memory=dist.device.type == "cuda")
    dim = images.shape[1] * images.shape[2] * images.shape[3]
    scale = 1.0 / dim if cfg.recon_reduction == "mean" else 1.0
    augment = cfg.augment
    if augment == "auto":
        background = background_fraction(images)
        augment = cfg.augment_for(images.shape[1:], background)
        log(f"augment: auto -> {'on' if augment else 'off'} ({background:.0%} of the pixels are "
            f"background, {images.shape[2]}x{images.shape[3]} px)")

    def checkpoint(opt: torch.optim.Optimizer | None) -> None:
        if run_dir is None or not dist.is_main:
            return
        save_checkpoint(run_dir / "checkpoint.pt", {
            **(checkpoint_extra or {}), "model": model.state_dict(),
            "optimizer": opt.state_dict() if opt is not None else None, "state": st.to_dict()})
        write_csv_atomic(run_dir / "history.csv", list(HISTORY_KEYS),
                         [[_fmt(r.get(k)) for k in HISTORY_KEYS] for r in st.history])

    def run_epoch(net: nn.Module, opt: torch.optim.Optimizer, phase: str, bar_desc: str,
                  targets: torch.Tensor | None = None) -> dict:
        g = epoch_generator(cfg.seed, phase, st.epoch)
        sampler.seed = g  # the shuffle order: a function of (seed, phase, epoch) alone
        sampler.set_epoch(0)
        torch.manual_seed(g)  # reparameterisation noise
        net.train()
        sums = torch.zeros(4, dtype=torch.float64, device=dist.device)
        t0 = time.perf_counter()
        bar = tqdm(loader, desc=bar_desc, leave=False, disable=not (verbose and dist.is_main),
                   mininterval=1.0)
        for xb, idx in bar:
            x = to_float(xb.to(dist.device, non_blocking=True))
            if augment:  # the jittered image is both the input and what is reconstructed
                x = random_affine(x)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(dist.device, cfg.precision):
                if phase == "pretrain":
                    out, mu, logvar, _ = net(x)
                else:
                    out, mu, logvar, q = net(x, cfg.q_from)
            zero = torch.zeros((), device=dist.device)
            rec = recon_nll(out.float(), x, cfg.likelihood).mean()
            kl = kl_prior(mu.float(), logvar.float()).mean() if cfg.variational else zero
            beta = cfg.beta if (phase == "pretrain" or cfg.prior_kl_in_clustering) else 0.0
            loss = scale * (rec + beta * kl)
            clu = zero
            if phase == "cluster":
                p = targets[idx.to(targets.device)]
                clu = kl_clustering_loss(p, q.float())
                # DEC drops the decoder once clustering starts; the others keep the ELBO / recon
                loss = (loss if cfg.recon_in_clustering else zero) + cfg.gamma * clu
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            b = x.shape[0]
            sums += torch.stack([loss.detach() * b, rec.detach() * b, kl.detach() * b,
                                 clu.detach() * b]).double()
        bar.close()
        secs = time.perf_counter() - t0
        seen = torch.tensor([float(len(sampler))], dtype=torch.float64, device=dist.device)
        dist.all_reduce(sums)
        dist.all_reduce(seen)
        s = (sums / seen).tolist()
        if not all(math.isfinite(v) for v in s):
            raise DVClustError(f"{phase} epoch {st.epoch + 1}: the loss became {s[0]}; lower lr "
                               f"(now {cfg.lr}) or check the input images")
        return {"phase": phase, "epoch": st.epoch + 1, "loss": s[0], "recon": s[1], "kl": s[2],
                "clustering": s[3] if phase == "cluster" else None, "seconds": secs,
                "images_per_s": float(seen.item()) / secs}

    # ---- phase 1: variational pretraining --------------------------------------------------
    if st.phase == "pretrain":
        net = DDP(model.vae) if dist.active else model.vae
        opt = torch.optim.Adam(model.vae.parameters(), lr=cfg.lr)
        if optimizer_state is not None:
            opt.load_state_dict(optimizer_state)
        bar = tqdm(total=cfg.pretrain_epochs, initial=st.epoch, desc="phase 1/3 pretrain",
                   disable=not (verbose and dist.is_main))
        while st.epoch < cfg.pretrain_epochs and st.bad_epochs < cfg.patience:
            row = run_epoch(net, opt, "pretrain", f"pretrain epoch {st.epoch + 1}")
            st.epoch += 1
            if not math.isfinite(st.best_loss) or \
                    row["loss"] < st.best_loss - cfg.min_delta * abs(st.best_loss):
                st.best_loss, st.bad_epochs = row["loss"], 0
            else:
                st.bad_epochs += 1
            st.history.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['images_per_s']:.0f}")
            checkpoint(opt)
            if stop_after and stop_after(st):
                bar.close()
                return st
        bar.close()
        if st.bad_epochs >= cfg.patience:
            log(f"pretraining stopped early after {st.epoch} epochs (loss plateau)")
        st.phase, st.epoch, optimizer_state = "kmeans", 0, None
        checkpoint(None)
        if stop_after and stop_after(st):
            return st

    # ---- phase 2: k-means on the posterior means -------------------------------------------
    if st.phase == "kmeans":
        t0 = time.perf_counter()
        mu = encode_all(model, images, dist, precision=cfg.precision)
        centers = torch.zeros(cfg.n_clusters, cfg.latent_dim, device=dist.device)
        if dist.is_main:  # one k-means, broadcast: every rank starts from the same centres
            centers = torch.from_numpy(kmeans_centers(
                mu.cpu().numpy(), cfg.n_clusters, cfg.seed, cfg.kmeans_n_init,
                cfg.kmeans_max_samples)).to(dist.device)
        model.head.centers.data.copy_(dist.broadcast(centers))
        row = {"phase": "kmeans", "epoch": 0, "seconds": time.perf_counter() - t0}
        labels = model.head(mu).argmax(1).cpu().numpy()
        st.prior = size_prior(labels, cfg.n_clusters) if cfg.size_prior == "kmeans" else None
        if y is not None:
            row.update({k: v for k, v in metrics.evaluate(y, labels).items() if k in HISTORY_KEYS})
        st.history.append(row)
        log(_describe(row))
        # ae-kmeans / vae-kmeans end here: the k-means labels are their result
        st.phase, st.epoch = ("cluster" if cfg.self_training else "done"), 0
        checkpoint(None)
        if stop_after and stop_after(st):
            return st

    # ---- phase 3: joint self-training ------------------------------------------------------
    if st.phase == "cluster":
        # DEC's loss leaves the decoder out: DDP must be told to expect parameters without grads
        net = DDP(model, find_unused_parameters=not cfg.recon_in_clustering) if dist.active else model
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        if optimizer_state is not None:
            opt.load_state_dict(optimizer_state)
        max_epochs = cfg.cluster_epochs_for(len(loader))
        bar = tqdm(total=max_epochs, initial=st.epoch, desc="phase 3/3 clustering",
                   disable=not (verbose and dist.is_main))
        converged, change = False, None
        targets = st.targets.to(dist.device) if st.targets is not None else None
        while st.epoch < max_epochs:
            if st.epoch % cfg.update_interval == 0 or st.targets is None:
                t0 = time.perf_counter()
                q, p = assign_all(model, images, dist, cfg.precision, st.prior)
                labels = q.argmax(1).cpu()
                change = None
                if st.prev_labels is not None:
                    change = float((labels != st.prev_labels).double().mean())
                targets, st.targets, st.prev_labels = p, p.cpu(), labels
                row = {"phase": "target", "epoch": st.epoch, "label_change": change,
                       "seconds": time.perf_counter() - t0}
                if y is not None:
                    row.update({k: v for k, v in metrics.evaluate(y, labels.numpy()).items()
                                if k in HISTORY_KEYS})
                st.history.append(row)
                if change is not None and change < cfg.tol:
                    log(f"clustering converged after {st.epoch} epochs: {change:.4%} of labels "
                        f"changed (< tol {cfg.tol:g})")
                    converged = True
                    break
            row = run_epoch(net, opt, "cluster", f"clustering epoch {st.epoch + 1}", targets)
            st.epoch += 1
            st.history.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}", changed=_fmt(change))
            checkpoint(opt)
            if stop_after and stop_after(st):
                bar.close()
                return st
        bar.close()
        if not converged:
            log(f"clustering stopped at the epoch limit ({max_epochs})")
        st.phase = "done"
        checkpoint(None)
    return st


def _fmt(v) -> str:
    if v is None:
        return ""
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _describe(row: dict) -> str:
    parts = [f"{k}={row[k]:.4f}" for k in ("acc", "nmi", "ari") if row.get(k) is not None]
    return f"k-means initialisation done in {row['seconds']:.1f}s" + (
        f" ({', '.join(parts)})" if parts else "")
