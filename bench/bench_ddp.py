"""One process vs N gloo processes (torchrun) on the same data and config: same cluster quality?

    python bench/bench_ddp.py --nproc 2 --set pretrain_epochs=20 cluster_epochs=20

Runs `dvclust fit` on the MNIST test set (10,000 images) once plainly and once under
`torchrun --nproc-per-node N`, and writes ACC/NMI/ARI and wall time of both to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import DATASETS
import harness
from results_md import write_block

def fit(prefix: list[str], out: Path, sets: list[str], threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [*prefix, "-m", "dvclust", "fit", str(DATASETS["mnist"][0]), "--split", "test", "-k", "10",
           "--out", str(out), "-q"] + [a for s in sets for a in ("--set", s)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(p.stderr[-3000:])
    m = json.loads((out / "metrics.json").read_text())
    return {"acc": m["acc"], "nmi": m["nmi"], "ari": m["ari"], "wall_s": time.perf_counter() - t0,
            "command": " ".join(cmd[cmd.index("-m"):])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--set", nargs="*", default=[])
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = fit([sys.executable], Path(tmp) / "one", a.set, threads=2)
        many = fit([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(a.nproc)],
                   Path(tmp) / "many", a.set, threads=max(1, 2 // a.nproc))
    print(json.dumps({"one": one, "many": many}, indent=1))
    rows = "\n".join(f"| {name} | {r['acc']:.4f} | {r['nmi']:.4f} | {r['ari']:.4f} | {r['wall_s']:.0f} |"
                     for name, r in (("1 process (2 threads)", one),
                                     (f"torchrun, {a.nproc} gloo processes", many)))
    write_block("bench_ddp", f"## bench_ddp: one process vs {a.nproc} (gloo, CPU), MNIST test set (10,000)\n\n"
                f"Command: `python bench/bench_ddp.py --nproc {a.nproc} --set {' '.join(a.set)}`  \n"
                f"{harness.stamp_line()}\n\n"
                "| run | ACC | NMI | ARI | wall s |\n|---|---|---|---|---|\n" + rows +
                f"\n\nACC difference: {abs(one['acc'] - many['acc']):.4f}")

if __name__ == "__main__":
    main()
