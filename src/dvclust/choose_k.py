"""Choosing K without labels: after variational pretraining, k-means for each K in a range on a
sample of the posterior means, scored by silhouette (sampled), Calinski-Harabasz and
Davies-Bouldin. The silhouette picks K; the others say whether they agree.

`suggest_k` is `dvclust suggest-k`; `pretrain_and_choose_k` is `dvclust fit --clusters auto`."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DVClustError


def sweep_k(z: np.ndarray, k_min: int = 2, k_max: int = 15, seed: int = 0, sample: int = 10_000,
            silhouette_sample: int = 3000) -> dict:
    from sklearn.cluster import KMeans
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

    if k_min < 2 or k_max < k_min:
        raise DVClustError(f"K range {k_min}..{k_max}: expected 2 <= min <= max")
    rng = np.random.default_rng(seed)
    if len(z) > sample:
        z = z[rng.choice(len(z), sample, replace=False)]
    k_max = min(k_max, len(z) - 1)
    rows = []
    for k in range(k_min, k_max + 1):
        labels = KMeans(k, n_init=4, random_state=seed).fit_predict(z.astype(np.float64))
        rows.append({"k": k,
                     "silhouette": float(silhouette_score(z, labels, sample_size=min(silhouette_sample, len(z)),
                                                          random_state=seed)),
                     "calinski_harabasz": float(calinski_harabasz_score(z, labels)),
                     "davies_bouldin": float(davies_bouldin_score(z, labels))})
    sil = np.array([r["silhouette"] for r in rows])
    best = int(np.argmax(sil))
    runner_up = float(np.sort(sil)[-2]) if len(sil) > 1 else -1.0
    margin = (sil[best] - runner_up) / abs(sil[best]) if sil[best] else 0.0
    k_best = rows[best]["k"]
    ch_k = rows[int(np.argmax([r["calinski_harabasz"] for r in rows]))]["k"]
    db_k = rows[int(np.argmin([r["davies_bouldin"] for r in rows]))]["k"]
    agree = sum(k == k_best for k in (ch_k, db_k))
    clarity = "clear" if margin > 0.05 and agree >= 1 else ("weak" if margin > 0.01 else "unclear")
    return {"k": k_best, "rows": rows, "silhouette_margin": float(margin), "ch_k": ch_k,
            "db_k": db_k, "clarity": clarity}


def write_sweep_csv(path, res: dict) -> None:
    from .io import write_csv_atomic

    rows = res["rows"]
    write_csv_atomic(path, list(rows[0]), ([r[k] for k in r] for r in rows))


def describe(res: dict) -> str:
    return (f"suggested K = {res['k']} (silhouette {res['rows'][res['k'] - res['rows'][0]['k']]['silhouette']:.3f}, "
            f"{res['silhouette_margin']:.1%} above the next K; Calinski-Harabasz prefers "
            f"{res['ch_k']}, Davies-Bouldin {res['db_k']}): the choice is {res['clarity']}")


def write_sweep(out: Path, res: dict) -> tuple[Path, Path]:
    """suggest_k.csv and suggest_k.svg (the three scores against K) in folder `out`."""
    from .io import write_text_atomic
    from .report.svg import lines

    rows = res["rows"]
    write_sweep_csv(out / "suggest_k.csv", res)
    ks = [r["k"] for r in rows]
    ch = np.array([r["calinski_harabasz"] for r in rows])
    write_text_atomic(out / "suggest_k.svg", lines(
        {"silhouette": (ks, [r["silhouette"] for r in rows]),
         "Calinski-Harabasz (scaled to 0..1)": (ks, list((ch - ch.min()) / (np.ptp(ch) or 1))),
         "Davies-Bouldin (lower is better)": (ks, [r["davies_bouldin"] for r in rows])},
        "scores of k-means on the latent means", w=560, h=300))
    return out / "suggest_k.svg", out / "suggest_k.csv"


def pretrain_and_choose_k(data, cfg, run_dir: Path, resume: bool, k_range: tuple[int, int],
                          dist, verbose: bool = True) -> int:
    """`--clusters auto`: pretrain in run_dir, sweep K on the latent means, then give the
    checkpoint the chosen K (checkpoint.set_n_clusters), so that the normal fit resumes from
    k-means initialisation. Phase 1 does not depend on K, so a placeholder K loses nothing."""
    from .estimators import pretrain_only
    from .training import checkpoint

    ckpt = run_dir / "checkpoint.pt"
    if resume and ckpt.exists():
        saved = checkpoint.load(ckpt)
        if saved["state"]["phase"] != "pretrain":  # K was chosen before the interruption
            return int(saved["config"]["n_clusters"])
    pre = pretrain_only(data, cfg.replace(n_clusters=k_range[0]), run_dir, resume, verbose)
    res = sweep_k(pre.transform(data), *k_range, seed=cfg.seed)
    if dist.is_main:
        print(describe(res))  # a result, not progress: shown even with --quiet
        checkpoint.set_n_clusters(ckpt, res["k"])
        write_sweep_csv(run_dir / "suggest_k.csv", res)
    dist.barrier()
    return res["k"]
