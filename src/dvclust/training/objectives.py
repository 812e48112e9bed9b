"""The training objective of one batch, as a pure function of the network's outputs.

Phase 1 minimises the (per-pixel scaled) negative ELBO; phase 3 adds gamma * KL(P || Q), or for
DEC keeps that term alone. A second objective (a consistency term between augmented views, say)
is one more function here that returns its term, and one config key that weighs it in `batch_loss`.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ..cluster import kl_clustering_loss
from ..config import Config
from ..losses import kl_prior, nt_xent, recon_nll


CONTRASTIVE_TEMPERATURE = 0.5  # SimCLR's value for small images; not tuned here


class Terms(NamedTuple):
    loss: torch.Tensor     # what is minimised
    recon: torch.Tensor    # mean -log p(x|z) per image (summed over pixels)
    kl: torch.Tensor       # mean KL(q(z|x) || N(0, I)) per image (0 for an autoencoder)
    clustering: torch.Tensor  # KL(P || Q), batchmean (0 outside phase 3)


def elbo_scale(cfg: Config, shape) -> float:
    """With recon_reduction 'mean' the ELBO is divided by C*H*W, so that gamma weighs KL(P||Q)
    against a per-pixel reconstruction as IDEC does (decisions: "gamma and the ELBO's scale")."""
    c, h, w = shape
    return 1.0 / (c * h * w) if cfg.recon_reduction == "mean" else 1.0


def batch_loss(cfg: Config, phase: str, scale: float, x: torch.Tensor, out: torch.Tensor,
               mu: torch.Tensor, logvar: torch.Tensor, q: torch.Tensor | None = None,
               p: torch.Tensor | None = None) -> Terms:
    zero = torch.zeros((), device=x.device)
    rec = recon_nll(out.float(), x, cfg.likelihood).mean()
    kl = kl_prior(mu.float(), logvar.float()).mean() if cfg.variational else zero
    beta = cfg.beta if (phase == "pretrain" or cfg.prior_kl_in_clustering) else 0.0
    loss = scale * (rec + beta * kl)
    if cfg.contrastive and (phase == "pretrain" or cfg.recon_in_clustering):
        # the two views' posterior means (the batch is [view 1; view 2]): the same image close,
        # the batch's other images apart
        loss = loss + cfg.contrastive * nt_xent(*mu.float().chunk(2), CONTRASTIVE_TEMPERATURE)
    clu = zero
    if phase == "cluster":
        clu = kl_clustering_loss(p, q.float())
        # DEC drops the decoder once clustering starts; the others keep the ELBO / recon
        loss = (loss if cfg.recon_in_clustering else zero) + cfg.gamma * clu
        if cfg.balance:  # minus the entropy of the batch's mean assignment: no cluster empties
            mean_q = q.float().mean(0)
            loss = loss + cfg.balance * (mean_q * torch.log(mean_q + 1e-12)).sum()
    return Terms(loss, rec, kl, clu)
