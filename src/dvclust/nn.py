"""Convolutional encoder/decoder for any image size from 8x8 to 1024x1024, 1 or 3 channels.

The encoder halves the image with [Conv k4 s2 p1 -> BatchNorm -> ReLU] blocks until the smaller
side is at most 7 pixels; the decoder mirrors it with transposed convolutions. Each transposed
conv gets output_padding = (input side is odd), which gives back exactly the side the matching
encoder block saw, so the reconstruction is H x W for every H, W (28x28 included).
"""
from __future__ import annotations

import torch
from torch import nn


def block_sizes(h: int, w: int) -> list[tuple[int, int]]:
    """Spatial sizes entering each encoder block, then the final feature map size."""
    sizes = [(h, w)]
    while min(sizes[-1]) > 7 or len(sizes) == 1:
        sh, sw = sizes[-1]
        sizes.append((sh // 2, sw // 2))
    return sizes


def widths(n_blocks: int, base: int) -> list[int]:
    return [min(base * 2**i, 8 * base) for i in range(n_blocks)]


class ConvEncoder(nn.Module):
    """x -> (mu, logvar), each N x latent_dim."""

    def __init__(self, shape: tuple[int, int, int], latent_dim: int, base_channels: int = 32):
        super().__init__()
        c, h, w = shape
        sizes = block_sizes(h, w)
        chans = widths(len(sizes) - 1, base_channels)
        layers, cin = [], c
        for cout in chans:
            layers += [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            cin = cout
        self.features = nn.Sequential(*layers)
        fh, fw = sizes[-1]
        self.head = nn.Linear(cin * fh * fw, 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.features(x).flatten(1)).chunk(2, dim=1)
        return mu, logvar


class ConvDecoder(nn.Module):
    """z -> logits (Bernoulli) or means (Gaussian) of shape N x C x H x W."""

    def __init__(self, shape: tuple[int, int, int], latent_dim: int, base_channels: int = 32):
        super().__init__()
        c, h, w = shape
        sizes = block_sizes(h, w)
        chans = widths(len(sizes) - 1, base_channels)
        self.feature_shape = (chans[-1], *sizes[-1])
        self.fc = nn.Linear(latent_dim, chans[-1] * sizes[-1][0] * sizes[-1][1])
        layers = [nn.ReLU(inplace=True)]
        outs = chans[::-1][1:] + [c]
        for i, (cin, cout) in enumerate(zip(chans[::-1], outs)):
            th, tw = sizes[len(sizes) - 2 - i]  # the size this block must give back
            pad = (th % 2, tw % 2)
            last = i == len(outs) - 1
            layers.append(nn.ConvTranspose2d(cin, cout, 4, 2, 1, output_padding=pad, bias=last))
            if not last:
                layers += [nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(z).view(-1, *self.feature_shape))


class ConvVAE(nn.Module):
    """q(z|x) = N(mu, diag(exp(logvar))) and p(x|z); `variational=False` gives a plain AE."""

    def __init__(self, shape: tuple[int, int, int], latent_dim: int = 10, base_channels: int = 32,
                 variational: bool = True):
        super().__init__()
        self.shape = tuple(shape)
        self.variational = variational
        self.encoder = ConvEncoder(shape, latent_dim, base_channels)
        self.decoder = ConvDecoder(shape, latent_dim, base_channels)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    def sample(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.variational):
            return mu
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def forward(self, x: torch.Tensor):
        mu, logvar = self.encode(x)
        z = self.sample(mu, logvar)
        return self.decoder(z), mu, logvar, z
