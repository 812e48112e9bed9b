"""Random small affine jitter of a batch (DEC-DA, Guo et al. 2018): rotations up to 10 degrees and
shifts up to 10% of the side, zero-filled. Clustering on features that must survive such jitter
lifts DEC-style methods on digit-like data; on images that fill the frame (X-rays, fundus
photographs) it lowers NMI, so `augment: auto` asks background_fraction first
(docs/DECISIONS.md, "augment")."""
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


def background_fraction(images, n: int = 2000, level: float = 0.05) -> float:
    """Fraction of the pixels below `level` (on the [0, 1] scale) in up to n evenly spaced images:
    near 0.8 for MNIST, 0.3 or less for X-rays and fundus photographs. Deterministic, so that a
    resumed run and every rank of a distributed one decide alike."""
    rows = np.unique(np.linspace(0, len(images) - 1, min(n, len(images))).astype(np.int64))
    x = np.asarray(images[rows])
    return float(np.mean(x < level * 255 if x.dtype == np.uint8 else x < level))
