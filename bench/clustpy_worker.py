"""Runs one ClustPy method with its own defaults on a cached array; executed by bench_methods.py
inside the ClustPy virtual environment (ClustPy needs torchvision, which the dvclust environment
cannot import). Prints one RESULT line; writes the labels and the embedding next to OUT.

    python clustpy_worker.py IMAGES.npy K SEED {dec,idec,vade} OUT_PREFIX
"""
import json
import os
import resource
import sys
import time

import numpy as np
import torch


def main() -> None:
    images, k, seed, method, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    from clustpy.deep import DEC, IDEC, VaDE

    x = np.load(images)
    # the same [0, 1] pixels dvclust sees (uint8 stores and arrays; float arrays are in [0, 1])
    x = x.reshape(len(x), -1).astype(np.float32) / (255.0 if x.dtype == np.uint8 else 1.0)
    cls = {"dec": DEC, "idec": IDEC, "vade": VaDE}[method]
    t0 = time.perf_counter()
    model = cls(n_clusters=k, random_state=seed).fit(x)
    wall = time.perf_counter() - t0
    np.save(out + "_labels.npy", np.asarray(model.labels_, dtype=np.int64))
    np.save(out + "_latent.npy", np.asarray(model.transform(x), dtype=np.float32))
    import clustpy
    print("RESULT " + json.dumps({
        "wall_s": wall, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "versions": {"clustpy": getattr(clustpy, "__version__", "?"), "torch": torch.__version__}}),
        flush=True)


if __name__ == "__main__":
    main()
