"""The clustering maths, on inputs small enough to work out by hand."""
import math

import numpy as np
import pytest
import torch

from dvclust.cluster import kl_clustering_loss, kmeans_centers, size_prior, soft_assign, \
    target_distribution


def test_soft_assign_by_hand():
    z = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    c = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    q = soft_assign(z, c, alpha=1.0)
    # point 0: d2 = (0, 1) -> kernel (1, 1/2) -> (2/3, 1/3)
    # point 1: d2 = (2, 1) -> kernel (1/3, 1/2) -> (2/5, 3/5)
    assert torch.allclose(q, torch.tensor([[2 / 3, 1 / 3], [2 / 5, 3 / 5]]), atol=1e-6)


def test_soft_assign_alpha():
    z, c = torch.tensor([[0.0]]), torch.tensor([[0.0], [2.0]])
    q = soft_assign(z, c, alpha=2.0)
    # d2 = (0, 4); (1 + d2/2)^(-3/2) = (1, 3^-1.5)
    k = 3 ** -1.5
    assert torch.allclose(q, torch.tensor([[1 / (1 + k), k / (1 + k)]]), atol=1e-6)


def test_soft_assign_large_batch_path_matches():
    g = torch.Generator().manual_seed(0)
    z, c = torch.randn(5000, 4, generator=g), torch.randn(3, 4, generator=g)
    small = torch.cat([soft_assign(z[i:i + 1000], c) for i in range(0, 5000, 1000)])
    assert torch.allclose(soft_assign(z, c), small, atol=1e-5)


def test_target_distribution_by_hand():
    q = torch.tensor([[2 / 3, 1 / 3], [2 / 5, 3 / 5]])
    f = q.sum(0)  # (16/15, 14/15)
    w = q**2 / f
    expect = w / w.sum(1, keepdim=True)
    p = target_distribution(q)
    assert torch.allclose(p, expect)
    # worked out: row 0 -> (4/9 * 15/16, 1/9 * 15/14) normalised
    a, b = 4 / 9 * 15 / 16, 1 / 9 * 15 / 14
    assert p[0, 0].item() == pytest.approx(a / (a + b), rel=1e-6)
    # P sharpens: the larger entry of each row grows
    assert p[0, 0] > q[0, 0] and p[1, 1] > q[1, 1]


def test_target_distribution_uses_global_frequency():
    q = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    f_all = q.sum(0)
    # computing P on a slice with the global f gives the rows of the full P
    assert torch.allclose(target_distribution(q[:1], f_all), target_distribution(q)[:1])
    assert not torch.allclose(target_distribution(q[:1]), target_distribution(q)[:1])


def test_target_distribution_size_prior():
    # 80 images firmly in cluster 0, 20 near-ties leaning to 0, 20 images in cluster 1
    q = torch.tensor([[0.9, 0.1]] * 80 + [[0.52, 0.48]] * 20 + [[0.2, 0.8]] * 20)
    f = q.sum(0)
    # a uniform prior is DEC's target exactly
    assert torch.allclose(target_distribution(q, prior=torch.tensor([0.5, 0.5])), target_distribution(q))
    # by hand: p_ij proportional to q_ij^2 pi_j / f_j
    pi = torch.tensor([0.8, 0.2])
    w = q[80] ** 2 * pi / f
    assert torch.allclose(target_distribution(q, prior=pi)[80], w / w.sum())
    # DEC's equal sizes hand the near-ties to the smaller cluster; the observed sizes keep them
    assert target_distribution(q)[80].argmax() == 1
    assert target_distribution(q, prior=size_prior(q.argmax(1).numpy(), 2))[80].argmax() == 0


def test_size_prior_floors_empty_clusters():
    pi = size_prior(np.array([0, 0, 0, 2]), 3)
    assert torch.allclose(pi, torch.tensor([3 / 5, 1 / 5, 1 / 5]))  # cluster 1 empty: counted once
    assert pi.sum().item() == pytest.approx(1.0)


def test_kl_batchmean_by_hand():
    p = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    q = torch.tensor([[0.25, 0.75], [0.5, 0.5]])
    row0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    row1 = 1.0 * math.log(1.0 / 0.5)
    assert kl_clustering_loss(p, q).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    assert kl_clustering_loss(q, q).item() == pytest.approx(0.0, abs=1e-7)


def test_kmeans_centers_separated_blobs():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(m, 0.1, size=(50, 2)) for m in (-5, 0, 5)]).astype(np.float32)
    c = kmeans_centers(x, 3, seed=0, n_init=3)
    assert sorted(np.round(c[:, 0]).tolist()) == [-5, 0, 5]
    c2 = kmeans_centers(x, 3, seed=0, n_init=3, max_samples=60)  # the sampled path
    assert sorted(np.round(c2[:, 0]).tolist()) == [-5, 0, 5]


def test_nt_xent_by_hand():
    """Two images, each view equal to its image: for every anchor the positive has cosine 1 and
    the two negatives cosine 0, so each term is -log(e^(1/T) / (e^(1/T) + 2))."""
    from dvclust.losses import nt_xent

    a = torch.tensor([[1.0, 0.0], [0.0, 3.0]])  # the norm does not matter: cosine similarity
    t = 0.5
    want = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2))
    assert nt_xent(a, a.clone(), t).item() == pytest.approx(want, rel=1e-6)
    # swapping the second view's rows makes image 0's positive its negative: the loss rises
    assert nt_xent(a, a.flip(0), t).item() > want + 1
