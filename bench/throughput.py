"""Training throughput of the DVC loop (images/s in each phase) on MNIST-70k or synthetic images.

    python bench/throughput.py --data mnist --epochs 3              # CPU, or the GPU if present
    python bench/throughput.py --data synthetic --size 128 --n 20000 --epochs 2

Synthetic images are smooth random blobs (uint8): only the speed is meaningful on them.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics

import numpy as np
import torch

import harness
from harness import DATASETS


def synthetic(n: int, size: int, channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, size=(n, channels, 8, 8), dtype=np.uint8)
    t = torch.from_numpy(low).float()
    return torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear").to(torch.uint8).numpy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="mnist", choices=["mnist", "synthetic"])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--precision", default="auto")
    a = ap.parse_args()
    from dvclust import DVC, load_dataset

    if a.data == "mnist":
        images = load_dataset(DATASETS["mnist"][0]).images
    else:
        images = synthetic(a.n, a.size, a.channels)
    model = DVC(10, pretrain_epochs=a.epochs, cluster_epochs=a.epochs, tol=0.0, patience=a.epochs + 1,
                batch_size=a.batch_size, precision=a.precision).fit(images)
    h = model.history_
    # the first epoch of each phase carries warm-up (cuDNN autotuning, allocator); report the rest
    pre = [r["images_per_s"] for r in h if r["phase"] == "pretrain"][1:]
    clu = [r["images_per_s"] for r in h if r["phase"] == "cluster"][1:]
    tgt = [r["seconds"] for r in h if r["phase"] == "target"]
    row = {"data": a.data, "shape": list(images.shape), "batch_size": a.batch_size,
                      "precision": a.precision,
                      "pretrain_img_s": statistics.median(pre) if pre else None,
                      "cluster_img_s": statistics.median(clu) if clu else None,
                      "target_update_s": statistics.median(tgt) if tgt else None,
                      "target_update_img_s": len(images) / statistics.median(tgt) if tgt else None,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20
                      if torch.cuda.is_available() else None,
                      "stamp": harness.stamp(model.config_.to_dict())}
    harness.append_row(harness.RESULTS / "throughput.jsonl", row)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
