"""The one training loop, as one function per phase over one context: variational pretraining,
k-means initialisation of the centres, joint self-training.

The same code runs in one process or under torchrun (see distributed.Dist): the sampler shards the
data, gradients are synchronised by DDP, and the only extra collectives are the ones the maths
needs (cluster frequencies f_j, the label-change count, the latents gathered for k-means).
Checkpoints and logs come from rank 0.

Resume is exact: every epoch draws its shuffle order and its noise from a generator seeded with
(seed, phase, epoch), and the checkpoint written after each epoch holds everything else (weights,
optimiser, targets P, previous labels, early-stopping counters, history).
"""
from __future__ import annotations

import math
import sys
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

from .. import metrics
from ..cluster import kmeans_centers, size_prior
from ..config import NARROW_FROM_SIDE, Config
from ..data.augment import background_fraction, make_policy
from ..data.dataset import ImageDataset, collate_batch, to_float
from .. import log
from ..errors import DVClustError
from ..io import write_csv_atomic
from ..runtime import autocast
from . import checkpoint
from .checkpoint import TrainState
from .distributed import Dist
from .inference import assign_all, encode_all
from .model import DVCModel
from .objectives import batch_loss, elbo_scale

PHASES = ("pretrain", "kmeans", "cluster", "done")
HISTORY_KEYS = ("phase", "epoch", "loss", "recon", "kl", "clustering", "seconds", "images_per_s",
                "label_change", "acc", "nmi", "ari")


def epoch_generator(seed: int, phase: str, epoch: int) -> int:
    """One seed per (run seed, phase, epoch), so an epoch replays identically after a resume."""
    return (seed * 1_000_003 + PHASES.index(phase) * 10_007 + epoch) % (2**63)


def loop_config(cfg: Config, images: np.ndarray) -> tuple[Config, str | None, float | None]:
    """What the loop trains these images with: the config with lr, views and contrastive
    resolved, the augmentation policy (None = off), and the background fraction that
    `augment: auto` looked at (None when augment is not auto)."""
    background = background_fraction(images) if cfg.augment == "auto" else None
    policy = cfg.augment_for(images.shape[1:], background)
    return cfg.with_lr_resolved().with_views_for(policy), policy, background


class StopRequested(Exception):
    """Raised after a checkpoint when the test hook `stop_after` asks the run to end there."""


@dataclass
class Context:
    """One training run: the model and data, where it writes, and the state it resumes from.

    `header` is stored in every checkpoint (checkpoint.header); `stop_after(state) -> bool` is a
    test hook that ends the run after any epoch, as a crash would.
    """

    model: DVCModel
    images: np.ndarray
    cfg: Config
    dist: Dist
    state: TrainState = field(default_factory=TrainState)
    optimizer_state: dict | None = None   # of the phase the run resumes in; consumed once
    y: np.ndarray | None = None           # known labels, for ACC/NMI/ARI in the history only
    run_dir: Path | None = None
    verbose: bool = True
    header: dict[str, Any] = field(default_factory=dict)
    stop_after: Callable[[TrainState], bool] | None = None

    def __post_init__(self) -> None:
        dist, images = self.dist, self.images
        # the steps read the resolved lr, views and contrastive; the checkpoint keeps the config
        # as given
        asked = self.cfg
        self.cfg, policy, background = loop_config(asked, images)
        cfg = self.cfg
        self.model.to(dist.device)
        # NHWC convolutions: faster on CUDA, and on CPU from NARROW_FROM_SIDE px (not at 28 px;
        # docs/DECISIONS.md, "base_channels")
        self.channels_last = dist.device.type == "cuda" or min(images.shape[-2:]) >= NARROW_FROM_SIDE
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.dataset = ImageDataset(images)
        self.sampler = DistributedSampler(self.dataset, num_replicas=dist.world_size,
                                          rank=dist.rank, shuffle=True, seed=0, drop_last=False)
        # batch_size is the global batch: each of W processes takes 1/W of it, so that one process
        # and many take the same optimisation steps (same learning-rate meaning, same epochs).
        self.loader = DataLoader(self.dataset, batch_size=max(1, cfg.batch_size // dist.world_size),
                                 sampler=self.sampler, collate_fn=collate_batch, num_workers=0,
                                 pin_memory=dist.device.type == "cuda")
        self.resident = on_device(images, cfg.data_on_device, dist.device)
        if self.resident is not None:
            self.log(f"data on the device: {self.resident.numel() * self.resident.element_size() / 2**20:.0f} MB")
        self.scale = elbo_scale(cfg, images.shape[1:])
        self.log(f"batch_size: {cfg.batch_size}, lr: {cfg.lr:g}")
        if asked.augment == "auto":
            self.log(f"augment: auto -> {policy or 'off'} ({background:.0%} of the pixels are "
                     f"background, {images.shape[2]}x{images.shape[3]} px)")
        if self.cfg.views == 2:
            self.log(f"views: 2, contrastive: {self.cfg.contrastive:g}")
        self.augment = make_policy(policy, images.shape[2:]) if policy else None

    @property
    def data(self) -> np.ndarray | torch.Tensor:
        """What the whole-dataset passes read: the images on the device where they are there."""
        return self.images if self.resident is None else self.resident

    def batches(self):
        """One epoch's (uint8 batch, row indices) in the sampler's order: the DataLoader, or
        batches gathered on the device from the resident tensor (the same rows, sorted within a
        batch as ImageDataset sorts them, so the same result)."""
        return self.loader if self.resident is None else self._resident_batches()

    def _resident_batches(self):
        # run_epoch's tqdm.auto bar makes two DataLoader iterators (one when it is built, one
        # when it is iterated), and each draws a base seed from the global generator: draw both,
        # so that both paths take the same noise afterwards
        torch.empty((), dtype=torch.int64).random_()
        torch.empty((), dtype=torch.int64).random_()
        order = torch.as_tensor(list(iter(self.sampler)), dtype=torch.int64, device=self.resident.device)
        for s in range(0, len(order), self.loader.batch_size):
            idx = order[s:s + self.loader.batch_size].sort().values
            yield self.resident[idx], idx

    @property
    def show(self) -> bool:
        return self.verbose and self.dist.is_main

    @property
    def bars(self) -> bool | None:
        """tqdm's `disable`: None draws bars on a terminal only (and honours TQDM_DISABLE)."""
        return None if self.show else True

    def epoch_line(self, row: dict, total: int, extra: str = "") -> None:
        """Without a terminal (a log file), one plain line per epoch instead of a bar."""
        if self.show and not sys.stderr.isatty():
            self.log(f"{row['phase']} epoch {row['epoch']}/{total}: loss {row['loss']:.5g}, "
                     f"{row['images_per_s']:.0f} img/s{extra}")

    def log(self, msg: str) -> None:
        if self.show:
            log.info(msg)

    def optimizer(self, params) -> torch.optim.Optimizer:
        opt = torch.optim.Adam(params, lr=self.cfg.lr)
        if self.optimizer_state is not None:
            opt.load_state_dict(self.optimizer_state)
            self.optimizer_state = None
        return opt

    def checkpoint(self, opt: torch.optim.Optimizer | None) -> None:
        if self.run_dir is None or not self.dist.is_main:
            return
        checkpoint.save(self.run_dir / "checkpoint.pt", self.header, self.model.state_dict(),
                        opt.state_dict() if opt is not None else None, self.state)
        write_csv_atomic(self.run_dir / "history.csv", list(HISTORY_KEYS),
                         [[_fmt(r.get(k)) for k in HISTORY_KEYS] for r in self.state.history])

    def end_epoch(self, opt: torch.optim.Optimizer | None) -> None:
        """Checkpoint, then stop here if the test hook says so."""
        self.checkpoint(opt)
        if self.stop_after and self.stop_after(self.state):
            raise StopRequested

    def evaluate(self, row: dict, labels: np.ndarray) -> None:
        if self.y is not None:
            row.update({k: v for k, v in metrics.evaluate(self.y, labels).items()
                        if k in HISTORY_KEYS})


def on_device(images, setting: bool | str, device: torch.device) -> torch.Tensor | None:
    """The images as one tensor on `device` (config.data_on_device), or None to use the loader.
    "auto": on CUDA only (on a CPU the loader already gathers from memory), for an in-memory
    array under half the free device memory."""
    if setting is False or (setting == "auto" and device.type != "cuda"):
        return None
    if not isinstance(images, np.ndarray) or isinstance(images, np.memmap):
        if setting is True:
            raise DVClustError("data_on_device: true needs the images in memory; this set is read "
                               "from a store on disk (set it to auto or false)")
        return None
    if setting == "auto" and images.nbytes > torch.cuda.mem_get_info(device)[0] / 2:
        return None
    return torch.from_numpy(np.ascontiguousarray(images)).to(device)


def run_epoch(ctx: Context, net: nn.Module, opt: torch.optim.Optimizer, phase: str,
              targets: torch.Tensor | None = None) -> dict:
    st, cfg, dist = ctx.state, ctx.cfg, ctx.dist
    g = epoch_generator(cfg.seed, phase, st.epoch)
    ctx.sampler.seed = g  # the shuffle order: a function of (seed, phase, epoch) alone
    ctx.sampler.set_epoch(0)
    torch.manual_seed(g)  # reparameterisation noise
    net.train()
    sums = torch.zeros(4, dtype=torch.float64, device=dist.device)
    t0 = time.perf_counter()
    bar = tqdm(ctx.batches(), total=len(ctx.loader), desc=f"{'pretrain' if phase == 'pretrain' else 'clustering'} epoch "
               f"{st.epoch + 1}", leave=False, disable=ctx.bars, mininterval=1.0)
    for xb, idx in bar:
        x = to_float(xb.to(dist.device, non_blocking=True))
        if ctx.augment:  # the augmented image is both the input and what is reconstructed
            x = ctx.augment(x) if cfg.views == 1 else torch.cat([ctx.augment(x), ctx.augment(x)])
        if ctx.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(dist.device, cfg.precision):
            if phase == "pretrain":
                out, mu, logvar, q = (*net(x)[:3], None)
            else:
                out, mu, logvar, q = net(x, cfg.q_from)
        p = targets[idx.to(targets.device)].repeat(cfg.views, 1) if phase == "cluster" else None
        terms = batch_loss(cfg, phase, ctx.scale, x, out, mu, logvar, q, p)
        opt.zero_grad(set_to_none=True)
        terms.loss.backward()
        opt.step()
        b = idx.shape[0]
        sums += torch.stack([t.detach() * b for t in terms]).double()
    bar.close()
    secs = time.perf_counter() - t0
    seen = torch.tensor([float(len(ctx.sampler))], dtype=torch.float64, device=dist.device)
    dist.all_reduce(sums)
    dist.all_reduce(seen)
    s = (sums / seen).tolist()
    if not all(math.isfinite(v) for v in s):
        raise DVClustError(f"{phase} epoch {st.epoch + 1}: the loss became {s[0]}; lower lr "
                           f"(now {cfg.lr}) or check the input images")
    return {"phase": phase, "epoch": st.epoch + 1, "loss": s[0], "recon": s[1], "kl": s[2],
            "clustering": s[3] if phase == "cluster" else None, "seconds": secs,
            "images_per_s": float(seen.item()) / secs}


def pretrain(ctx: Context) -> None:
    """Phase 1: the (variational) autoencoder alone, until the loss plateaus."""
    st, cfg, model = ctx.state, ctx.cfg, ctx.model
    net = DDP(model.vae) if ctx.dist.active else model.vae
    opt = ctx.optimizer(model.vae.parameters())
    with tqdm(total=cfg.pretrain_epochs, initial=st.epoch, desc="phase 1/3 pretrain",
              disable=ctx.bars) as bar:
        while st.epoch < cfg.pretrain_epochs and st.bad_epochs < cfg.patience:
            row = run_epoch(ctx, net, opt, "pretrain")
            st.epoch += 1
            if not math.isfinite(st.best_loss) or \
                    row["loss"] < st.best_loss - cfg.min_delta * abs(st.best_loss):
                st.best_loss, st.bad_epochs = row["loss"], 0
            else:
                st.bad_epochs += 1
            st.history.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['images_per_s']:.0f}")
            ctx.epoch_line(row, cfg.pretrain_epochs)
            ctx.end_epoch(opt)
    if st.bad_epochs >= cfg.patience:
        ctx.log(f"pretraining stopped early after {st.epoch} epochs (loss plateau)")
    st.phase, st.epoch = "kmeans", 0
    ctx.end_epoch(None)


def init_centres(ctx: Context) -> None:
    """Phase 2: k-means on the posterior means (once, on rank 0, broadcast to every rank)."""
    st, cfg, dist, model = ctx.state, ctx.cfg, ctx.dist, ctx.model
    t0 = time.perf_counter()
    mu = encode_all(model, ctx.data, dist, precision=cfg.precision)
    centers = torch.zeros(cfg.n_clusters, cfg.latent_dim, device=dist.device)
    if dist.is_main:
        centers = torch.from_numpy(kmeans_centers(
            mu.cpu().numpy(), cfg.n_clusters, cfg.seed, cfg.kmeans_n_init,
            cfg.kmeans_max_samples)).to(dist.device)
    model.head.centers.data.copy_(dist.broadcast(centers))
    row = {"phase": "kmeans", "epoch": 0, "seconds": time.perf_counter() - t0}
    labels = model.head(mu).argmax(1).cpu().numpy()
    st.prior = size_prior(labels, cfg.n_clusters) if cfg.size_prior == "kmeans" else None
    ctx.evaluate(row, labels)
    st.history.append(row)
    ctx.log(_describe(row))
    # ae-kmeans / vae-kmeans end here: the k-means labels are their result
    st.phase, st.epoch = ("cluster" if cfg.self_training else "done"), 0
    ctx.end_epoch(None)


def self_train(ctx: Context) -> None:
    """Phase 3: encoder, decoder and centres on the ELBO + gamma KL(P || Q), P recomputed every
    `update_interval` epochs, until fewer than `tol` of the labels change between two updates."""
    st, cfg, dist, model = ctx.state, ctx.cfg, ctx.dist, ctx.model
    # DEC's loss leaves the decoder out: DDP must be told to expect parameters without grads
    net = DDP(model, find_unused_parameters=not cfg.recon_in_clustering) if dist.active else model
    opt = ctx.optimizer(model.parameters())
    max_epochs = cfg.cluster_epochs_for(len(ctx.loader))
    converged, change = False, None
    targets = st.targets.to(dist.device) if st.targets is not None else None
    with tqdm(total=max_epochs, initial=st.epoch, desc="phase 3/3 clustering",
              disable=ctx.bars) as bar:
        while st.epoch < max_epochs:
            if st.epoch % cfg.update_interval == 0 or st.targets is None:
                targets, change = update_targets(ctx)
                if change is not None and change < cfg.tol:
                    ctx.log(f"clustering converged after {st.epoch} epochs: {change:.4%} of "
                            f"labels changed (< tol {cfg.tol:g})")
                    converged = True
                    break
            row = run_epoch(ctx, net, opt, "cluster", targets)
            st.epoch += 1
            st.history.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}", changed=_fmt(change))
            ctx.epoch_line(row, max_epochs, "" if change is None else f", {change:.3%} of labels changed")
            ctx.end_epoch(opt)
    if not converged:
        ctx.log(f"clustering stopped at the epoch limit ({max_epochs})")
    st.phase = "done"
    ctx.checkpoint(None)


def update_targets(ctx: Context) -> tuple[torch.Tensor, float | None]:
    """Recompute P over every image; returns it and the fraction of labels that changed."""
    st = ctx.state
    t0 = time.perf_counter()
    q, p = assign_all(ctx.model, ctx.data, ctx.dist, ctx.cfg.precision, st.prior)
    labels = q.argmax(1).cpu()
    change = None
    if st.prev_labels is not None:
        change = float((labels != st.prev_labels).double().mean())
    st.targets, st.prev_labels = p.cpu(), labels
    row = {"phase": "target", "epoch": st.epoch, "label_change": change,
           "seconds": time.perf_counter() - t0}
    ctx.evaluate(row, labels.numpy())
    st.history.append(row)
    return p, change


STEPS = (("pretrain", pretrain), ("kmeans", init_centres), ("cluster", self_train))


def train(ctx: Context) -> TrainState:
    """Run (or resume) every phase from the one the state is in; returns the final state."""
    try:
        for phase, step in STEPS:
            if ctx.state.phase == phase:
                step(ctx)
    except StopRequested:
        pass
    return ctx.state


def _fmt(v) -> str:
    if v is None:
        return ""
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _describe(row: dict) -> str:
    parts = [f"{k}={row[k]:.4f}" for k in ("acc", "nmi", "ari") if row.get(k) is not None]
    return f"k-means initialisation done in {row['seconds']:.1f}s" + (
        f" ({', '.join(parts)})" if parts else "")
