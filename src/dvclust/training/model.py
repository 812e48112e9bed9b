"""The network every deep method trains: the VAE (a plain autoencoder for DEC/IDEC) and the
cluster centres, as one module so that DDP and checkpoints see both."""
from __future__ import annotations

import torch
from torch import nn

from ..cluster import ClusterHead
from ..config import Config
from ..nn import ConvVAE


class DVCModel(nn.Module):
    def __init__(self, shape, cfg: Config):
        super().__init__()
        self.vae = ConvVAE(shape, cfg.latent_dim, cfg.base_channels_for(shape), variational=cfg.variational)
        self.head = ClusterHead(cfg.n_clusters, cfg.latent_dim, cfg.alpha)

    def forward(self, x: torch.Tensor, q_from: str = "mean"):
        out, mu, logvar, z = self.vae(x)
        q = self.head(z if q_from == "sample" else mu)
        return out, mu, logvar, q
