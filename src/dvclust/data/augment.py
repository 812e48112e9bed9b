"""Augmentation of a batch on its device, one named policy per kind of image.

`digits`: DEC-DA's small affine jitter (Guo et al. 2018), rotations up to 10 degrees and shifts up
to 10% of the side, zero-filled: neutral only on an empty background, and `augment: auto` chooses
it only there (docs/DECISIONS.md, "augment").
The medical policies never fill with black: a random resized crop (60-100% of the area), a small
rotation and shift with reflected borders, brightness/contrast/gamma jitter, mild blur and noise
(kornia, on CPU and GPU). `xray` has no flips (left and right differ in a chest X-ray); `photo`
(fundus, dermoscopy) flips both ways; `micro` (cells, tissue) also turns by any angle. All draw
from torch's global generator, which the loop seeds per (seed, phase, epoch).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def random_affine(x: torch.Tensor, max_degrees: float = 10.0, max_shift: float = 0.1) -> torch.Tensor:
    n = x.shape[0]
    u = torch.rand(n, 3, device=x.device) * 2 - 1  # uses the global generator: seeded per epoch
    ang = u[:, 0] * math.radians(max_degrees)
    cos, sin = torch.cos(ang), torch.sin(ang)
    # affine_grid works in [-1, 1] coordinates, so a shift of s * side is 2 * s there.
    theta = torch.stack([torch.stack([cos, -sin, u[:, 1] * 2 * max_shift], 1),
                         torch.stack([sin, cos, u[:, 2] * 2 * max_shift], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


POLICIES = ("digits", "xray", "photo", "micro")


def make_policy(name: str, side: tuple[int, int]):
    """The augmentation `name` for images of `side` (H, W): a function of a float batch in [0, 1]
    to a batch of the same shape, still in [0, 1]."""
    if name == "digits":
        return random_affine
    import kornia.augmentation as K

    degrees, flips = {"xray": (7.0, ()), "photo": (15.0, ("h", "v")), "micro": (180.0, ("h", "v"))}[name]
    steps = [K.RandomResizedCrop(tuple(side), scale=(0.6, 1.0), ratio=(0.9, 1.1)),
             K.RandomAffine(degrees, translate=(0.05, 0.05), padding_mode="reflection", p=0.8),
             *([K.RandomHorizontalFlip()] if "h" in flips else []),
             *([K.RandomVerticalFlip()] if "v" in flips else []),
             K.ColorJitter(brightness=0.15, contrast=0.15, p=0.8),
             K.RandomGamma((0.8, 1.25), p=0.5),
             K.RandomGaussianBlur(3, (0.1, 0.8), p=0.2),
             K.RandomGaussianNoise(std=0.02, p=0.2)]
    seq = K.AugmentationSequential(*steps)

    def apply(x: torch.Tensor) -> torch.Tensor:
        return seq(x).clamp_(0.0, 1.0)
    return apply


def background_fraction(images, n: int = 2000, level: float = 0.05) -> float:
    """Fraction of the pixels below `level` (on the [0, 1] scale) in up to n evenly spaced images:
    near 0.8 for MNIST, 0.3 or less for X-rays and fundus photographs. Deterministic, so that a
    resumed run and every rank of a distributed one decide alike."""
    rows = np.unique(np.linspace(0, len(images) - 1, min(n, len(images))).astype(np.int64))
    x = np.asarray(images[rows])
    return float(np.mean(x < level * 255 if x.dtype == np.uint8 else x < level))
