"""The review app (`dvclust serve`) on a run over many images: its start-up time, and the wall
time of the cluster grid, of one gallery page (its JSON and 100 thumbnails) and of the "Look
next" page as a browser would fetch them, over HTTP from a real uvicorn server on 127.0.0.1.
The run is a store of N synthetic 28x28 images (bench_scale's blobs) clustered by pca-kmeans
into K clusters (the app's cost does not depend on how the clusters were found), half of them
named.

    python bench/bench_serve.py --n 1000000 --clusters 50
"""
from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench_scale import synth_chunks
from bench_report import timed
import harness
from results_md import write_block

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--clusters", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    import httpx
    import uvicorn

    from dvclust.data.store import write_array_store
    from dvclust.serve import make_app

    with tempfile.TemporaryDirectory(dir=HERE) as tmp:
        store = write_array_store(Path(tmp) / "store", synth_chunks(a.n))
        run = Path(tmp) / "run"
        timed(["fit", str(store), "--clusters", str(a.clusters), "--out", str(run), "-q",
               "--method", "pca-kmeans"])
        timed(["name", str(run), *[f"{c}=name {c % 4}" for c in range(0, a.clusters, 2)]])
        t0 = time.perf_counter()
        app = make_app(run)
        startup = time.perf_counter() - t0
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port}"
        grid_json, grid, gallery, review = [], [], [], []
        with httpx.Client(base_url=base, timeout=600) as c:
            c.get("/api/review?limit=100")  # the first call builds the queue (once per change)
            t = time.perf_counter()
            c.get("/api/next?limit=40")  # k-means cells, once per change of the labels
            next_first = time.perf_counter() - t
            t = time.perf_counter()
            c.get("/api/next?limit=40")
            next_again = time.perf_counter() - t
            for r in range(a.repeats):
                t = time.perf_counter()
                doc = c.get("/api/clusters").json()
                grid_json.append(time.perf_counter() - t)
                for cl in doc["clusters"]:  # the grid's strips of typical images
                    for i in cl["typical"]:
                        c.get(f"/api/images/{i}/thumb")
                grid.append(time.perf_counter() - t)
                cid = doc["clusters"][(7 * r) % a.clusters]["id"]
                t = time.perf_counter()
                page = c.get(f"/api/clusters/{cid}/images?offset={100 * r}&limit=100").json()
                for img in page["images"]:
                    c.get(f"/api/images/{img['index']}/thumb")
                gallery.append(time.perf_counter() - t)
                t = time.perf_counter()
                c.get(f"/api/review?offset={r * 20}&limit=100")
                review.append(time.perf_counter() - t)
            thumbs = sum(len(cl["typical"]) for cl in doc["clusters"])
        server.should_exit = True
    lines = ["| what | median s | max s |", "|---|---|---|",
             f"| start-up (labels.csv, typical images, gallery order) | {startup:.1f} | |",
             f"| cluster grid, JSON: /api/clusters | {statistics.median(grid_json):.3f} | "
             f"{max(grid_json):.3f} |",
             f"| cluster grid, whole: /api/clusters + {thumbs} strip thumbnails | "
             f"{statistics.median(grid):.3f} | {max(grid):.3f} |",
             f"| gallery page: 100 images' JSON + 100 thumbnails | "
             f"{statistics.median(gallery):.3f} | {max(gallery):.3f} |",
             f"| review queue page (100 images, JSON only) | {statistics.median(review):.3f} | "
             f"{max(review):.3f} |",
             f"| look next, 40 images' JSON: computed / cached | {next_first:.2f} / "
             f"{next_again:.3f} | |"]
    text = "\n".join(lines)
    print(text)
    write_block("bench_serve",
                f"## bench_serve: the review app on {a.n:,} images, {a.clusters} clusters\n\n"
                f"Command: `{harness.command(__file__)}`  \n"
                f"{harness.stamp_line()}; sequential requests from one client over HTTP "
                f"(uvicorn on 127.0.0.1), {a.repeats} repeats.\n\n" + text)


if __name__ == "__main__":
    main()
