"""Random small affine jitter of a batch (DEC-DA, Guo et al. 2018): rotations up to 10 degrees and
shifts up to 10% of the side, zero-filled. Clustering on features that must survive such jitter
is what lifts DEC-style methods on digit-like data (MNIST-70k NMI 0.83 -> 0.92). It is on by default
for images of 16 px and more, but it lowers NMI on the chest X-rays and RetinaMNIST: see
docs/ARCHITECTURE.md, "Defaults and the evidence for them"."""
from __future__ import annotations

import math

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
