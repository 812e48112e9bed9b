"""DVC on real data, several seeds: ACC/NMI/ARI, wall time, training images/s, peak RSS.

Each (dataset, seed) fit runs in its own process so that peak RSS is that fit's alone. Results go
to bench/results/<tag>.jsonl and to a table in bench/RESULTS.md (a block per tag, with the command).

    python bench/bench_dvc.py --datasets mnist retina --seeds 0 1 2
    python bench/bench_dvc.py --datasets mnist --seeds 0 --set augment=false --tag no-augment
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from results_md import write_block

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("DVCLUST_DATA", HERE.parent.parent / "shared" / "data"))
DATASETS = {  # name -> (path or embedded name, K, split, read options for image folders)
    "mnist": (DATA / "mnist", 10, "all", None),
    "mnist-test": (DATA / "mnist", 10, "test", None),
    "retina": (DATA / "medmnist" / "retinamnist.npz", 5, "all", None),
    "pneumonia": (DATA / "medmnist_derived" / "pneumoniamnist_subset_varun19424.npz", 2, "all", None),
    "chest64": (DATA / "images" / "chest_xray_kermany_224", 2, "all", {"size": 64}),
    "digits": ("digits", 10, "all", None),
}


def dataset_spec(name: str):
    """A name above, or PATH:K for any path load_dataset reads (a store folder, say)."""
    if name in DATASETS:
        return DATASETS[name]
    path, _, k = name.rpartition(":")
    return Path(path), int(k), "all", None


def parse_value(v: str):
    import yaml
    return yaml.safe_load(v)


def one(dataset: str, seed: int, overrides: dict) -> dict:
    from dvclust import DVC, load_dataset, metrics

    src, k, split, opts = dataset_spec(dataset)
    if opts:  # image folders only: read options
        from dvclust.data import ReadOptions
        data = load_dataset(src, split=split, options=ReadOptions(**opts))
    else:
        data = load_dataset(src, split=split)
    t0 = time.perf_counter()
    model = DVC(k, random_state=seed, **overrides).fit(data)
    wall = time.perf_counter() - t0
    h = model.history_
    km = next(r for r in h if r["phase"] == "kmeans")
    pre = [r for r in h if r["phase"] == "pretrain"]
    clu = [r for r in h if r["phase"] == "cluster"]
    tgt = [r for r in h if r["phase"] == "target"]
    ev = metrics.evaluate(data.labels, model.labels_)
    n = len(data)
    return {
        "dataset": Path(dataset).name if dataset not in DATASETS else dataset, "seed": seed, "n": n, "k": k, "overrides": overrides,
        "acc": ev["acc"], "nmi": ev["nmi"], "ari": ev["ari"], "per_class_recall": ev["per_class_recall"],
        "kmeans_acc": km.get("acc"), "kmeans_nmi": km.get("nmi"),
        "pretrain_epochs": len(pre), "cluster_epochs": len(clu), "wall_s": wall,
        "pretrain_img_s": statistics.median(r["images_per_s"] for r in pre) if pre else None,
        "cluster_img_s": statistics.median(r["images_per_s"] for r in clu) if clu else None,
        # phase 3 including the full-dataset target updates
        "cluster_img_s_with_targets": (n * len(clu) / (sum(r["seconds"] for r in clu + tgt)))
        if clu else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device": model.config_.device, "threads": __import__("torch").get_num_threads(),
    }


def med(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else float("nan")


def table(rows: list[dict]) -> str:
    out = ["| dataset | seed | ACC | NMI | ARI | k-means init ACC | epochs (pre/clu) | wall s | "
           "img/s pretrain | img/s clustering (with target updates) | peak RSS MB |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        rs = [r for r in rows if r["dataset"] == ds]
        for r in rs:
            out.append(f"| {ds} | {r['seed']} | {r['acc']:.4f} | {r['nmi']:.4f} | {r['ari']:.4f} | "
                       f"{r['kmeans_acc']:.4f} | {r['pretrain_epochs']}/{r['cluster_epochs']} | "
                       f"{r['wall_s']:.0f} | {r['pretrain_img_s']:.0f} | {r['cluster_img_s']:.0f} "
                       f"({r['cluster_img_s_with_targets']:.0f}) | {r['peak_rss_mb']:.0f} |")
        out.append(f"| **{ds} median** | | **{med(rs, 'acc'):.4f}** | **{med(rs, 'nmi'):.4f}** | "
                   f"**{med(rs, 'ari'):.4f}** | {med(rs, 'kmeans_acc'):.4f} | | {med(rs, 'wall_s'):.0f} | "
                   f"{med(rs, 'pretrain_img_s'):.0f} | {med(rs, 'cluster_img_s'):.0f} | "
                   f"{med(rs, 'peak_rss_mb'):.0f} |")
        rec = [r for r in rs if len(r["per_class_recall"]) <= 5]
        for r in rec:
            out.append(f"|  | seed {r['seed']} per-class recall | "
                       + ", ".join(f"{c}: {v:.2f}" for c, v in r["per_class_recall"].items())
                       + " | | | | | | | | |")
    return "\n".join(out)


def write_results(tag: str, command: str, rows: list[dict]) -> None:
    env = f"{rows[0]['device']}, {rows[0]['threads']} torch threads" if rows else ""
    write_block(f"bench_dvc:{tag}", f"## bench_dvc: {tag}\n\nCommand: `{command}`  \n"
                f"Run on: {time.strftime('%Y-%m-%d')}, {env}\n\n{table(rows)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["mnist", "retina"],
                    help=f"names ({', '.join(DATASETS)}) or PATH:K")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides, e.g. gamma=0.1 augment=false")
    ap.add_argument("--tag", default="default")
    ap.add_argument("--no-md", action="store_true", help="do not touch bench/RESULTS.md")
    ap.add_argument("--one", nargs=2, metavar=("DATASET", "SEED"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    overrides = {k: parse_value(v) for k, v in (s.split("=", 1) for s in a.set)}
    if a.one:
        print("RESULT " + json.dumps(one(a.one[0], int(a.one[1]), overrides)), flush=True)
        return
    command = "python bench/bench_dvc.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    (HERE / "results").mkdir(exist_ok=True)
    rows = []
    for ds in a.datasets:
        for seed in a.seeds:
            cmd = [sys.executable, __file__, "--one", ds, str(seed), "--set", *a.set]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{ds} seed {seed} failed:\n{proc.stderr[-3000:]}")
            row = json.loads(line[7:])
            rows.append(row)
            with open(HERE / "results" / f"{a.tag}.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{ds} seed {seed}: ACC {row['acc']:.4f} NMI {row['nmi']:.4f} ARI {row['ari']:.4f} "
                  f"(k-means {row['kmeans_acc']:.4f}) {row['wall_s']:.0f}s "
                  f"{row['pretrain_img_s']:.0f}/{row['cluster_img_s']:.0f} img/s "
                  f"RSS {row['peak_rss_mb']:.0f} MB", flush=True)
            if not a.no_md:
                write_results(a.tag, command, rows)


if __name__ == "__main__":
    main()
