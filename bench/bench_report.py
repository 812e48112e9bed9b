"""The report, the labelling commands and the exports on a run over many images: time and peak
RSS of each command on a store of N synthetic 28x28 images (bench_scale's blobs), after a short
CLI fit into K clusters (one epoch per phase: this measures the tools after training, not
clustering quality). Half of the clusters are named (two names each shared by several), 100
images corrected, and the rest propagated, so that `labels` does every kind of work.

    python bench/bench_report.py --n 1000000
    python bench/bench_report.py --n 1000000 --method pca-kmeans   # the tools alone, no training

The last row is the disk's floor for an export that writes one file per image: N empty files
created in one folder by as many processes as the exports' PNG pool uses, with nothing encoded.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_scale import synth_chunks
import harness
from results_md import write_block

HERE = Path(__file__).resolve().parent


def timed(args: list[str]) -> tuple[float, float, str]:
    """Wall seconds and peak RSS (MB) of one dvclust command, run in a child process."""
    t0 = time.perf_counter()
    cmd = [sys.executable, "-c", "import resource, sys, runpy; sys.argv = ['dvclust'] + sys.argv[1:];"
           "\ntry:\n    runpy.run_module('dvclust', run_name='__main__')\nfinally:\n"
           "    print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)",
           *args]
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    m = re.search(r"PEAK_RSS_KB (\d+)", p.stderr)
    if p.returncode != 0 or not m:
        sys.exit(f"dvclust {' '.join(args)} failed:\n{p.stderr[-3000:]}")
    return wall, int(m.group(1)) / 1024, p.stdout


def _touch(paths: list[str]) -> None:
    for path in paths:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))


def empty_files(folder: Path, n: int) -> float:
    """Wall seconds to create n empty files in `folder` the way the exports' PNG pool does
    (chunks of 5,000 over the same number of processes), encoding nothing."""
    from concurrent.futures import ProcessPoolExecutor

    from dvclust.curate import PNG_WORKERS

    folder.mkdir()
    paths = [f"{folder}{os.sep}{i:08d}.png" for i in range(n)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(min(len(os.sched_getaffinity(0)), PNG_WORKERS)) as pool:
        list(pool.map(_touch, [paths[j:j + 5000] for j in range(0, n, 5000)]))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--method", default="dvc", help="pca-kmeans makes the run in seconds")
    ap.add_argument("--clusters", type=int, default=50)
    a = ap.parse_args()
    from dvclust.data.store import write_array_store

    rows = []
    with tempfile.TemporaryDirectory(dir=HERE) as tmp:
        store = write_array_store(Path(tmp) / "store", synth_chunks(a.n))
        run = Path(tmp) / "run"
        corrections = Path(tmp) / "corrections.csv"
        corrections.write_text("index,label\n" + "".join(f"{i * (a.n // 100)},fixed\n" for i in range(100)))
        half = [f"{c}={'even' if c % 4 == 0 else 'odd' if c % 4 == 2 else f'name {c}'}"
                for c in range(0, a.clusters, 2)]
        steps = [
            (f"fit --method {a.method} --clusters {a.clusters} (1 epoch per phase)",
             ["fit", str(store), "--clusters", str(a.clusters), "--out", str(run), "-q",
              "--method", a.method, "--set", "pretrain_epochs=1", "--set", "cluster_epochs=1"]),
            ("typical --per-cluster 5", ["typical", str(run), "--per-cluster", "5"]),
            (f"name ({len(half)} clusters)", ["name", str(run), *half]),
            ("correct (100 images)", ["correct", str(run), str(corrections)]),
            ("labels", ["labels", str(run)]),
            ("next --n 100", ["next", str(run), "--n", "100"]),
            ("report", ["report", str(run)]),
            ("review --n 200", ["review", str(run), "--n", "200"]),
            ("export csv", ["export", str(run), "--format", "csv"]),
            ("export labelstudio", ["export", str(run), "--format", "labelstudio"]),
            ("export labelstudio --image-url", ["export", str(run), "--format", "labelstudio",
                                                "--out", str(run / "export_app"),
                                                "--image-url", "http://127.0.0.1:8765"]),
            ("export folders", ["export", str(run), "--format", "folders"]),
        ]
        for name, args in steps:
            wall, rss, _ = timed(args)
            rows.append((name, wall, rss))
            print(f"{name}: {wall:.1f} s, peak RSS {rss:.0f} MB", flush=True)
        floor = empty_files(Path(tmp) / "empty", a.n)
        print(f"{a.n} empty files: {floor:.1f} s", flush=True)
        html = (run / "report.html").read_text()
        size_mb = len(html.encode()) / 2**20
        sections = [s for s in ("Galleries", "Latent space", "Reconstructions", "Worth a look",
                                "Training", "Configuration") if f"<h2>{s}" in html]
        images = html.count("<img")
    lines = ["| command | wall s | peak RSS MB |", "|---|---|---|"]
    lines += [f"| `dvclust {n}` | {w:.1f} | {r:.0f} |" for n, w, r in rows]
    lines.append(f"| the disk's floor: {a.n:,} empty files in one folder, as many processes as "
                 f"the exports' PNG pool | {floor:.1f} | |")
    lines.append(f"\nreport.html: {size_mb:.1f} MB, {images} embedded images, sections: "
                 f"{', '.join(sections)}")
    write_block(f"bench_report:{a.method}",
                f"## bench_report: report, review and exports on {a.n:,} images ({a.method})\n\n"
                f"Command: `{harness.command(__file__)}`  \n"
                f"{harness.stamp_line()}\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
