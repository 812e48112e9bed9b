"""Scale: stores of 10^5 and 10^6 synthetic 28x28 images written straight into the store, one
epoch of each phase, then prediction over the whole store; epoch times and peak RSS per size.
Also k-means initialisation on 10^6 latent vectors.

    python bench/bench_scale.py --sizes 100000 1000000
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

import harness
from results_md import write_block

HERE = Path(__file__).resolve().parent


def synth_chunks(n: int, chunk: int = 16384, seed: int = 0):
    """Ten kinds of blob images, so that the clustering has something to find."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28]
    protos = np.stack([255 * np.exp(-((yy - 6 - 2 * k) ** 2 + (xx - 20 + 1.5 * k) ** 2) / 18)
                       for k in range(10)]).astype(np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        k = rng.integers(0, 10, m)
        x = protos[k] + rng.normal(0, 20, (m, 28, 28)).astype(np.float32)
        yield np.clip(x, 0, 255).astype(np.uint8)[:, None]


def one(store: str) -> dict:
    from dvclust import DVC, load_dataset

    data = load_dataset(store)
    model = DVC(10, pretrain_epochs=1, cluster_epochs=1, patience=5, tol=0.0).fit(data)
    h = model.history_
    rss_fit = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    pred = model.predict_details(data)
    t_pred = time.perf_counter() - t0
    return {"n": len(data),
            "pretrain_epoch_s": next(r["seconds"] for r in h if r["phase"] == "pretrain"),
            "kmeans_s": next(r["seconds"] for r in h if r["phase"] == "kmeans"),
            "target_update_s": next(r["seconds"] for r in h if r["phase"] == "target"),
            "cluster_epoch_s": next(r["seconds"] for r in h if r["phase"] == "cluster"),
            "predict_s": t_pred, "predicted": int(len(pred["cluster"])),
            "peak_rss_fit_mb": rss_fit, "stamp": harness.stamp(model.config_.to_dict())}


def kmeans_1m() -> dict:
    from dvclust.cluster import kmeans_centers

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 5, (10, 10))
    z = (centres[rng.integers(0, 10, 1_000_000)] + rng.normal(0, 1, (1_000_000, 10))).astype(np.float32)
    t0 = time.perf_counter()
    kmeans_centers(z, 10, seed=0, n_init=10)
    return {"kmeans_1e6_s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="+", type=int, default=[100_000, 1_000_000])
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--kmeans", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        harness.emit(one(a.one))
        return
    if a.kmeans:
        harness.emit(kmeans_1m())
        return
    from dvclust.data.store import write_array_store

    rows = []
    with tempfile.TemporaryDirectory(dir=HERE) as tmp:
        for n in a.sizes:
            t0 = time.perf_counter()
            store = write_array_store(Path(tmp) / f"s{n}", synth_chunks(n))
            write_s = time.perf_counter() - t0
            row = {**harness.run_case(__file__, ["--one", store]), "store_write_s": write_s}
            harness.append_row(harness.RESULTS / "scale.jsonl", row)
            print(row, flush=True)
            rows.append(row)
            (Path(tmp) / f"s{n}" / "images.u8").unlink()
    km = harness.run_case(__file__, ["--kmeans"])
    print(km)
    lines = ["| images | store write s | pretrain epoch s | k-means s | target update s | "
             "clustering epoch s | predict s | peak RSS fit MB | peak RSS fit+predict MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['n']:,} | {r['store_write_s']:.1f} | {r['pretrain_epoch_s']:.1f} | "
                     f"{r['kmeans_s']:.1f} | {r['target_update_s']:.1f} | {r['cluster_epoch_s']:.1f} | "
                     f"{r['predict_s']:.1f} | {r['peak_rss_fit_mb']:.0f} | {r['peak_rss_mb']:.0f} |")
    lines.append(f"\nk-means initialisation (KMeans, n_init=10, on a 10^5 sample) of 10^6 latent "
                 f"vectors (10-d): {km['kmeans_1e6_s']:.1f} s")
    write_block("bench_scale", "## bench_scale: stores of synthetic 28x28 images, one epoch per phase\n\n"
                f"Command: `python bench/bench_scale.py --sizes {' '.join(map(str, a.sizes))}`  \n"
                f"{harness.stamp_line()}\n\n" + "\n".join(lines))

if __name__ == "__main__":
    main()
