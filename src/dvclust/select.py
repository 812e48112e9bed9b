"""Label-free choice among runs (seeds or configs) of the same data: users have no labels.

Three rules; none finds the best seed reliably (docs/DECISIONS.md, "dvclust pick"):

- silhouette: the run whose labels have the highest silhouette on its own latent means (sampled).
  Comparable across seeds of one config; across configs with different latent spaces it is not.
- consensus: the run whose labels agree most (mean NMI) with the other runs' labels. A seed that
  fell into a bad optimum disagrees with the rest. Needs only the labels, and >= 3 runs to mean
  anything (with 2 runs both score the same).
- balance: the run whose cluster sizes have the highest entropy. DEC-style self-training fails by
  merging clusters (one grows, another empties), which lowers it. It assumes the classes are not
  very unequal, so it is a poor rule for strongly imbalanced data.

Beside the choice, `agreement` says how far to trust any of the runs: the mean NMI between their
labels. Low agreement means the clusters are one of several equally good partitions, not the
structure of the data.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import normalized_mutual_info_score, silhouette_score

from .errors import DVClustError


def consensus_scores(labelings: list[np.ndarray]) -> np.ndarray:
    """Mean NMI of each labelling with every other one (higher = more typical)."""
    if len(labelings) < 2:
        raise DVClustError(f"choosing among runs needs at least 2 of them, got {len(labelings)}")
    n = {len(lab) for lab in labelings}
    if len(n) > 1:
        raise DVClustError(f"the runs label different numbers of images ({sorted(n)}); "
                           "compare runs of the same data only")
    m = len(labelings)
    pair = np.eye(m)
    for i in range(m):
        for j in range(i + 1, m):
            pair[i, j] = pair[j, i] = normalized_mutual_info_score(labelings[i], labelings[j])
    return (pair.sum(1) - 1.0) / (m - 1)


# Below this mean NMI between seeds, `dvclust pick` warns that the clusters depend on the seed
# (docs/DECISIONS.md, "dvclust pick").
STABLE_AGREEMENT = 0.8


def agreement(labelings: list[np.ndarray]) -> float:
    """Mean NMI over the pairs of labellings: 1 when every run found the same partition."""
    return float(consensus_scores(labelings).mean())


def silhouette(latents: np.ndarray, labels: np.ndarray, n: int = 5000, seed: int = 0) -> float:
    """Silhouette of `labels` on `latents`, on a seeded sample of n rows (it is quadratic)."""
    if len(np.unique(labels)) < 2:
        return -1.0  # everything in one cluster: the worst possible answer
    rows = np.random.default_rng(seed).permutation(len(labels))[:n]
    return float(silhouette_score(latents[rows], labels[rows]))


def balance(labels: np.ndarray, n_clusters: int | None = None) -> float:
    """Entropy of the cluster sizes over log K: 1 for equal sizes, 0 for a single cluster."""
    sizes = np.bincount(np.asarray(labels), minlength=n_clusters or 0).astype(float)
    if len(sizes) < 2:
        return 0.0
    p = sizes[sizes > 0] / sizes.sum()
    return float(-(p * np.log(p)).sum() / np.log(len(sizes)))


def pick(scores: np.ndarray) -> int:
    """Index of the best score; ties go to the earliest run."""
    return int(np.argmax(np.round(scores, 12)))


RULES = ("silhouette", "consensus", "balance")


def score_runs(run_dirs: list, rule: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """Each finished run's score under `rule` (higher = chosen), and the runs' labels."""
    from .rundir import load_run, read_labels, read_run_config, run_source

    if rule not in RULES:
        raise DVClustError(f"--rule {rule!r}: use {', '.join(RULES)}")
    labels = [read_labels(r)["cluster"].astype(int) for r in run_dirs]
    if len(labels) < 2:
        raise DVClustError(f"choosing among runs needs at least 2 of them, got {len(labels)}")
    if rule == "consensus":
        return consensus_scores(labels), labels
    if rule == "balance":
        return np.array([balance(lab, read_run_config(r)[0].n_clusters)
                         for r, lab in zip(run_dirs, labels)]), labels
    return np.array([silhouette(load_run(r).transform(run_source(r).load(verbose=False)), lab)
                     for r, lab in zip(run_dirs, labels)]), labels
