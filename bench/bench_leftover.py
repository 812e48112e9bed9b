"""Where should the looks beyond the clusters go? bench_labelling's follow-up question.

bench_labelling found dvclust's cluster-then-label below random labelling + propagation at twice
the looks on the medical sets once the budget L (looks in all) exceeds K = 5 x C clusters: after
every cluster is named from its most confident image, the looks left over correct the least sure
labels one image at a time, and every other image keeps its cluster's name. This benchmark keeps
the first K looks (every cluster named from its single most confident image, as dvclust does)
and spends the L - K left over in other ways, on one fit per (dataset, seed):

- `dvclust`: dvclust's own files, as bench_labelling's dvclust[confidence] (least sure by
  dvclust's confidence; cluster names kept).
- `dvclust neighbours`: the same with names.json's labels_from: neighbours (bench_labelling's
  dvclust[confidence,neighbours]): dvclust's own implementation of `+knn-uncertain`.
- `dvclust next`: labels_from: neighbours, and the looks left over on the images `dvclust next`
  lists (bench_labelling's dvclust[confidence,neighbours,next]): dvclust's `+typical-cells`.
- `+knn-uncertain`: 5 rounds, each labelling the images whose k-NN vote over the looked-at images
  is least sure (uncertainty sampling); every image not looked at takes that vote.
- `+typical-cells`: k-means with L cells on the latent; the densest image of each cell holding no
  looked-at image, largest cells first (TypiClust); every image not looked at takes the vote.
- `+random`: the L - K left over at random; every image not looked at takes the vote.
- the baselines of bench_labelling in the same latent: `random@L`, `random@2L`, `typiclust@L`.
- `pca: ...`: the same in the first 50 principal components of the pixels instead of the latent
  (bench_labelling's pca-random beat random in the latent at large budgets on the medical sets):
  `pca: +knn-uncertain` (the K named images as above, the rest chosen and voted in PCA space),
  `pca: random@L`, `pca: random@2L`.

Only budgets with looks left over (B > 5 looks per class) are scored. The run folder of a case is
reused when it holds a finished fit of the same config. Rows go to bench/results/leftover.jsonl
and the block bench_leftover of bench/RESULTS.md.

    python bench/bench_leftover.py --datasets digits retina pneumonia-official --seeds 0
"""
from __future__ import annotations

import argparse
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import harness
from bench_labelling import OVERCLUSTER, ROUNDS, cluster_then_label, propagated, scores, \
    typical_of_cells
from harness import RESULTS
from results_md import write_block

BUDGETS = (10, 20, 50)
RUNS = RESULTS / "runs" / "leftover"
STRATEGIES = ("dvclust", "dvclust neighbours", "dvclust next", "+knn-uncertain", "+typical-cells",
              "+random", "random@L", "random@2L", "typiclust@L",
              "pca: +knn-uncertain", "pca: random@L", "pca: random@2L")


def fitted(dataset: str, seed: int, threads: int) -> tuple[Path, bool]:
    """The case's run folder with a finished fit of the default config at K = 5 x C, and whether
    it was reused."""
    import torch

    from dvclust import Config
    from dvclust.rundir import fit_run, read_run_config

    source, c = harness.source(dataset)
    cfg = Config(n_clusters=OVERCLUSTER * c, seed=seed)
    run = RUNS / f"{dataset}__{seed}"
    if (run / "metrics.json").exists() and read_run_config(run)[0].to_dict() == cfg.to_dict():
        return run, True
    torch.set_num_threads(threads)
    run.mkdir(parents=True, exist_ok=True)
    fit_run(source.load(verbose=False), cfg, run, source, verbose=False,
            resume=(run / "checkpoint.pt").exists())
    return run, False


def pixels_pca(data, seed: int) -> np.ndarray:
    """The first 50 principal components of the pixels, as bench_labelling's pca-random."""
    from sklearn.decomposition import PCA

    flat = np.asarray(data.images[:], dtype=np.float32).reshape(len(data), -1)
    flat /= 255 if data.images.dtype == np.uint8 else 1
    return PCA(min(50, *flat.shape), random_state=seed).fit_transform(flat).astype(np.float32)


def leftover(how: str, z: np.ndarray, y: np.ndarray, named: list[int], looks: int,
             rng: np.random.Generator, seed: int, cells: np.ndarray | None = None) -> np.ndarray:
    """Every image's label when the `named` images (one per cluster) are followed by looks - K
    more chosen `how`; each image not looked at takes the k-NN vote of the looked-at ones.
    `cells`: k-means with `looks` cells on z (for +typical-cells)."""
    from dvclust.labelling import propagate

    n = len(y)
    looked = list(named)
    left = looks - len(looked)
    if how == "+knn-uncertain":
        for r in range(ROUNDS):
            take = left // (ROUNDS - r)
            known = np.asarray(sorted(looked))
            rest = np.setdiff1d(np.arange(n), known)
            _, conf = propagate(z, known, y[known], rest, seed)
            looked += rest[np.argsort(conf, kind="stable")[:take]].tolist()
            left -= take
    elif how == "+typical-cells":
        have = set(cells[looked].tolist())
        order = [j for j in np.argsort(-np.bincount(cells, minlength=looks), kind="stable")
                 if j not in have]
        looked += typical_of_cells(z, cells, order[:left])
    elif how == "+random":
        looked += rng.choice(np.setdiff1d(np.arange(n), looked), left, replace=False).tolist()
    known = np.asarray(sorted(set(looked)))
    return propagated(z, known, y[known], n, seed)


def one(dataset: str, seed: int, threads: int) -> dict:
    from sklearn.cluster import KMeans

    from dvclust.labelling import latents, typical

    run, reused = fitted(dataset, seed, threads)
    data, c = harness.load(dataset)
    y = np.asarray([str(v) for v in data.labels])
    k = OVERCLUSTER * c
    z = np.asarray(latents(run), dtype=np.float32)
    named = [r["index"] for r in typical(run, 1, "confidence")]  # largest cluster first
    pca = pixels_pca(data, seed)
    rng = np.random.default_rng(seed)
    rows = []
    for b in BUDGETS:
        looks = b * c
        pred = {"dvclust": cluster_then_label(run, y, looks, k, "confidence")[0],
                "dvclust neighbours": cluster_then_label(run, y, looks, k, "confidence",
                                                         neighbours=True)[0],
                "dvclust next": cluster_then_label(run, y, looks, k, "confidence", neighbours=True,
                                                   next_looks=True)[0]}
        cells = KMeans(looks, n_init=1, random_state=seed).fit(z).labels_
        for how in ("+knn-uncertain", "+typical-cells", "+random"):
            pred[how] = leftover(how, z, y, named, looks, rng, seed, cells)
        pred["pca: +knn-uncertain"] = leftover("+knn-uncertain", pca, y, named, looks, rng, seed)
        for mult in (1, 2):
            known = np.sort(rng.choice(len(y), min(mult * looks, len(y)), replace=False))
            name = "random@L" if mult == 1 else "random@2L"
            pred[name] = propagated(z, known, y[known], len(y), seed)
            pred["pca: " + name] = propagated(pca, known, y[known], len(y), seed)
        known = np.sort(typical_of_cells(z, cells, range(looks)))
        pred["typiclust@L"] = propagated(z, known, y[known], len(y), seed)
        rows += [{"dataset": dataset, "seed": seed, "n": len(y), "classes": c, "k": k,
                  "budget_per_class": b, "looks": looks, "strategy": s, "reused_fit": reused,
                  **scores(y, pred[s])} for s in STRATEGIES]
    st = harness.stamp(threads=threads)
    return {"rows": [{**r, "stamp": st} for r in rows]}


def table(rows: list[dict]) -> str:
    out = []
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        rs = [r for r in rows if r["dataset"] == ds]
        seeds = sorted({r["seed"] for r in rs})

        def f1(s, b):
            return statistics.mean(r["macro_f1"] for r in rs if r["strategy"] == s and r["budget_per_class"] == b)

        out += [f"\n**{ds}** ({rs[0]['n']:,} images, {rs[0]['classes']} classes, K = {rs[0]['k']}; "
                f"seeds {', '.join(map(str, seeds))}): macro-F1 of all images, mean over seeds\n",
                "| looks per class (in all) | " + " | ".join(STRATEGIES) + " |",
                "|---" * (len(STRATEGIES) + 1) + "|"]
        budgets = sorted({r["budget_per_class"] for r in rs})
        out += [f"| {b} ({b * rs[0]['classes']}) | " + " | ".join(f"{f1(s, b):.3f}" for s in STRATEGIES)
                + " |" for b in budgets]
        best = [f"{b}: {max(STRATEGIES[:6], key=lambda s: f1(s, b))} "
                f"{max(f1(s, b) for s in STRATEGIES[:6]) - f1('random@2L', b):+.3f}" for b in budgets]
        pca = [f"{b}: {f1('pca: +knn-uncertain', b) - f1('pca: random@2L', b):+.3f}" for b in budgets]
        out.append(f"\nbest of the first six at L minus random@2L (macro-F1): {', '.join(best)}; "
                   f"pca: +knn-uncertain minus pca: random@2L: {', '.join(pca)}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["digits", "retina", "pneumonia-official"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per fit")
    ap.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        harness.emit(one(a.one[0], int(a.one[1]), int(a.one[2])))
        return
    log = RESULTS / "leftover.jsonl"
    rows = harness.read_rows(log)
    done = {(r["dataset"], r["seed"]) for r in rows}
    todo = [(d, s) for d in a.datasets for s in a.seeds if (d, s) not in done]
    command = harness.command(__file__)

    def run(job):
        try:
            return harness.run_case(__file__, ["--one", job[0], str(job[1]), str(a.threads)])
        except harness.CaseFailed as e:
            print(f"{job} FAILED: {e}", flush=True)
            return None

    with ThreadPoolExecutor(a.jobs) as pool:
        for res in pool.map(run, todo):
            for r in (res or {}).get("rows", []):
                r["command"] = command
                harness.append_row(log, r)
                rows.append(r)
    if rows:
        commands = list(dict.fromkeys(r["command"] for r in rows))
        commits = sorted({r["stamp"]["commit"] for r in rows})
        write_block("bench_leftover", "## bench_leftover: where the looks beyond the clusters go\n\n"
                    "Commands:\n\n" + "".join(f"    {c}\n" for c in commands)
                    + f"\nRun on this 2-core CPU at commits {', '.join(commits)}; rows and stamps in "
                    "bench/results/leftover.jsonl. Rule (bench/bench_leftover.py's docstring, fixed "
                    f"before the run): K = 5 x classes, each cluster named from its most confident "
                    f"image, the L - K looks left over spent as each column says; B = {', '.join(map(str, BUDGETS))} "
                    "looks per class.\n" + table(rows))


if __name__ == "__main__":
    main()
