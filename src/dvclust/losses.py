"""The variational terms, per sample, as pure functions (the clustering KL lives in cluster.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def recon_nll(out: torch.Tensor, x: torch.Tensor, likelihood: str) -> torch.Tensor:
    """-log p(x|z) summed over pixels, per sample.

    Bernoulli: `out` are logits (BCE with logits). Gaussian: mean = sigmoid(out), unit variance,
    constant dropped, i.e. half the squared error.
    """
    if likelihood == "bernoulli":
        nll = F.binary_cross_entropy_with_logits(out, x, reduction="none")
    else:
        nll = 0.5 * (torch.sigmoid(out) - x).pow(2)
    return nll.flatten(1).sum(1)


def kl_prior(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)), per sample."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)


def reconstruct(out: torch.Tensor) -> torch.Tensor:
    """Decoder output -> image in [0, 1] (both likelihoods use a sigmoid mean)."""
    return torch.sigmoid(out)


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent: row i of `a` and row i of `b` (two views of one image) are a positive
    pair, every other row of both the negatives; cosine similarity over `temperature`, the mean
    cross-entropy over all 2N anchors."""
    z = F.normalize(torch.cat([a, b]), dim=1)
    sim = (z @ z.T) / temperature
    sim = sim.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), float("-inf"))
    n = len(a)
    positive = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, positive)
