"""Labels per human look: a simulated annotator labels a whole dataset through dvclust's own
labelling code (typical images, names, corrections, propagation), against the honest baselines.

A look is one image shown to the person. Naming a cluster from its M typical images costs M looks
and gives it the majority true label of those M; correcting an image costs one look. For a budget
of B looks per class (L = B x C looks in all), on every image of the dataset:

- `dvclust` (cluster-then-label; the rule was fixed before the full run, after one pilot on
  digits seed 0 showed that more typical images per cluster bought nothing there): one DVC fit
  with K = 5 x C clusters. If L <= K, the L largest clusters are named from their single most
  typical image and the rest is propagated. Otherwise every cluster is named from its M most
  typical images (M = 1; the variant `M3` uses M = min(3, L // K)), and the looks left over
  correct the least sure labels, in order (in ROUNDS rounds; `neighbours`: with names.json's
  labels_from: neighbours, so that each correction relabels the images around it; `next`: on
  the images `dvclust next` lists instead). `density` (TypiClust's typicality, the default of
  `dvclust typical`) and `confidence` (highest q) choose the typical images.
- `random@L` / `random@2L`: L (or 2L) random images labelled, propagated in the same latent space.
- `pca-random@L` / `pca-random@2L`: the same on the first 50 principal components of the pixels.
- `typiclust@L`: k-means with L clusters on the same latent, the densest image of each labelled,
  propagated.

Propagation is labelling.propagate everywhere (distance-weighted k-NN). Each (dataset, seed) runs
in its own process; rows go to bench/results/labelling.jsonl and the block bench_labelling of
bench/RESULTS.md, with a plot bench/results/labelling.svg.

    python bench/bench_labelling.py --datasets digits mnist-test retina pneumonia-official --seeds 0 1 2 --jobs 2
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np

import harness
from harness import RESULTS
from results_md import write_block

BUDGETS = (2, 5, 10, 20, 50)
DEFAULT = "dvclust[confidence]"   # `dvclust typical`'s default (docs/DECISIONS.md)
OVERCLUSTER = 5          # K = 5 x C
RUNS = RESULTS / "runs" / "labelling"   # run folders (not committed)


def scores(y: np.ndarray, pred) -> dict:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    pred = np.asarray([str(p) for p in pred])
    y = np.asarray([str(v) for v in y])
    return {"accuracy": accuracy_score(y, pred), "balanced_accuracy": balanced_accuracy_score(y, pred),
            "macro_f1": f1_score(y, pred, average="macro", labels=np.unique(y))}


def result_row(dataset: str, seed: int, n: int, c: int, k: int, strategy: str, budget: int,
               y: np.ndarray, pred, spent: int, variant: str = "") -> dict:
    return {"dataset": dataset, "variant": variant, "seed": seed, "n": n, "classes": c, "k": k,
            "budget_per_class": budget, "looks": budget * c, "looks_spent": spent,
            "strategy": strategy, **scores(y, pred)}


def propagated(z: np.ndarray, known: np.ndarray, known_labels, n: int, seed: int = 0) -> np.ndarray:
    """Every image's label: the `known` ones keep `known_labels`, the rest by labelling.propagate."""
    from dvclust.labelling import propagate

    pred = np.empty(n, dtype=object)
    pred[known] = known_labels
    rest = np.setdiff1d(np.arange(n), known)
    pred[rest], _ = propagate(z, known, pred[known], rest, seed)
    return pred


def run_strategy(run: Path, y: np.ndarray, looks: int, k: int, name: str) -> tuple[np.ndarray, int]:
    """cluster_then_label for a strategy named "dvclust[BY]", "dvclust[BY,M3]", "...,spread" or
    "...,neighbours" or "...,neighbours,next"."""
    by, *opts = name[len("dvclust["):-1].split(",")
    return cluster_then_label(run, y, looks, k, by, 3 if "M3" in opts else 1, "spread" in opts,
                              "neighbours" in opts, "next" in opts)


ROUNDS = 5   # the person corrects in rounds, `dvclust labels` between them


def cluster_then_label(run: Path, y: np.ndarray, looks: int, k: int, by: str,
                       max_m: int = 1, spread: bool = False, neighbours: bool = False,
                       next_looks: bool = False) -> tuple[np.ndarray, int]:
    """The simulated annotator through dvclust's own files; returns the labels and looks spent.
    The looks left over after naming go to the least sure labels, in ROUNDS rounds, or with
    `next_looks` to the images `dvclust next` lists. `neighbours`: names.json's labels_from:
    neighbours. `spread` (a what-if, not in dvclust): afterwards every image not looked at takes
    the k-NN vote of the looked-at ones (each typical image with the name its cluster got, each
    corrected one with its correction) instead of its cluster's name."""
    from dvclust.labelling import add_corrections, latents, next_looks as coverage, self_labels, \
        set_names, typical

    for f in ("names.json", "corrections.csv"):
        (run / f).unlink(missing_ok=True)
    m = 1 if looks <= k else min(max_m, looks // k)
    rows = typical(run, m, by)        # largest cluster first
    chosen: dict[int, list[int]] = {}
    for r in rows:
        chosen.setdefault(r["cluster"], []).append(r["index"])
    clusters = list(chosen)[:looks] if looks <= k else list(chosen)
    pairs = [f"{c}={Counter(str(y[i]) for i in chosen[c]).most_common(1)[0][0]}" for c in clusters]
    spent = sum(len(chosen[c]) for c in clusters)
    set_names(run, pairs, labels_from="neighbours" if neighbours else None)
    seen = {i for c in clusters for i in chosen[c]}
    left = looks - spent
    fix = []
    if next_looks and left > 0:
        fix = [r["index"] for r in coverage(run, left)]
        add_corrections(run, [{"index": i, "label": str(y[i])} for i in fix])
        left = 0
    for r in range(ROUNDS if left > 0 else 0):
        take = left // (ROUNDS - r)
        if not take:
            continue
        s = self_labels(run)
        order = np.argsort(s["confidence"], kind="stable")
        new = [int(i) for i in order if s["how"][i] != "corrected" and i not in seen][:take]
        add_corrections(run, [{"index": i, "label": str(y[i])} for i in new])
        fix += new
        seen.update(new)
        left -= take
    spent += len(fix)
    labels = self_labels(run)["label"]
    if spread:
        looked = {i: p.split("=", 1)[1] for c, p in zip(clusters, pairs) for i in chosen[c]}
        looked.update({i: str(y[i]) for i in fix})
        known = np.asarray(sorted(looked))
        labels = propagated(latents(run), known, [looked[i] for i in known], len(y))
    return labels, spent


def typical_of_cells(z: np.ndarray, cells: np.ndarray, which) -> list[int]:
    """The densest member (TypiClust's typicality) of each non-empty cell in `which`."""
    from dvclust.labelling import typicality

    out = []
    for j in which:
        m = np.flatnonzero(cells == j)
        if len(m):
            out.append(int(m[np.argmax(typicality(z[m].astype(np.float64)))]))
    return out


def budgets() -> tuple[int, ...]:
    """The budgets a case scores (--budgets, passed to its process in BENCH_BUDGETS)."""
    got = os.environ.get("BENCH_BUDGETS")
    return tuple(map(int, got.split(","))) if got else BUDGETS


def variant_name(settings: list[str]) -> str:
    """The config settings a case changes from the defaults, as the rows and run folders name them."""
    return " ".join(sorted(settings))


def run_folder(dataset: str, seed: int, variant: str = "") -> Path:
    return RUNS / (f"{dataset}__{seed}" + (f"__{variant.replace(' ', '__')}" if variant else ""))


def one(dataset: str, seed: int, settings: list[str]) -> dict:
    import torch
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    from dvclust import Config
    from dvclust.rundir import fit_run

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    source, c = harness.source(dataset)
    data = source.load(verbose=False)
    y = data.labels
    k = OVERCLUSTER * c
    variant = variant_name(settings)
    run = run_folder(dataset, seed, variant)
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    cfg = Config(n_clusters=k, seed=seed, **dict(harness.parse_setting(x) for x in settings))
    t0 = time.perf_counter()
    fit_run(data, cfg, run, source, verbose=False)
    fit_s = time.perf_counter() - t0
    fitted = json.loads((run / "metrics.json").read_text())
    fit = {"fit_nmi": fitted.get("nmi"), "fit_acc": fitted.get("acc"),
           "clusters_used": sum(1 for n in fitted["cluster_sizes"] if n)}
    z = np.load(run / "latents.npy")
    rng = np.random.default_rng(seed)
    flat = np.asarray(data.images[:], dtype=np.float32).reshape(len(data), -1)
    pca = PCA(min(50, *flat.shape), random_state=seed).fit_transform(flat / (255 if data.images.dtype == np.uint8 else 1))
    rows = []

    def add(strategy, budget, looks, pred, spent):
        rows.append(result_row(dataset, seed, len(data), c, k, strategy, budget, y, pred, spent,
                               variant))

    def random_prop(space, n_looks):
        known = np.sort(rng.choice(len(y), min(n_looks, len(y)), replace=False))
        return propagated(space, known, [str(v) for v in y[known]], len(y), seed)

    for b in budgets():
        looks = b * c
        for name in ("dvclust[density]", "dvclust[confidence]", "dvclust[density,M3]",
                     "dvclust[confidence,neighbours]", "dvclust[confidence,neighbours,next]"):
            add(name, b, looks, *run_strategy(run, y, looks, k, name))
        for mult in (1, 2):
            add(f"random@{mult}L", b, looks, random_prop(z, mult * looks), mult * looks)
            add(f"pca-random@{mult}L", b, looks, random_prop(pca, mult * looks), mult * looks)
        km = KMeans(min(looks, len(y)), n_init=1, random_state=seed).fit(z)
        known = np.sort(np.asarray(typical_of_cells(z, km.labels_, range(km.n_clusters))))
        add("typiclust@L", b, looks, propagated(z, known, [str(v) for v in y[known]], len(y), seed),
            len(known))
    st = harness.stamp(cfg.to_dict())
    return {"rows": [{**r, "fit_s": fit_s, **fit, "stamp": st} for r in rows]}


def rescore(dataset: str, seed: int, strategies: list[str]) -> dict:
    """Only the cluster-then-label `strategies` (run_strategy's names) on the run
    folder an earlier full case kept: a new way of choosing the images, same representation."""
    data, c = harness.load(dataset)
    run = run_folder(dataset, seed)
    k = OVERCLUSTER * c
    rows = [{**result_row(dataset, seed, len(data), c, k, name, b, data.labels,
                          *run_strategy(run, data.labels, b * c, k, name)), "rescored": True}
            for name in strategies for b in budgets()]
    st = harness.stamp()
    return {"rows": [{**r, "stamp": st} for r in rows]}


def table(rows: list[dict]) -> str:
    out = []
    for ds, variant in dict.fromkeys((r["dataset"], r.get("variant", "")) for r in rows):
        rs = [r for r in rows if r["dataset"] == ds and r.get("variant", "") == variant]
        strategies = list(dict.fromkeys(r["strategy"] for r in rs))
        seeds = sorted({r["seed"] for r in rs})
        fits = {r["seed"]: r for r in rs if r.get("clusters_used")}
        # rows from before the fit's scores were recorded have none: say whose these are
        whose = "" if sorted(fits) == seeds else f" (seed {', '.join(map(str, sorted(fits)))})"
        fitted = (f"; the fit's NMI{whose} {statistics.mean(r['fit_nmi'] for r in fits.values()):.3f}, "
                  f"clusters used {', '.join(str(r['clusters_used']) for r in fits.values())}"
                  if fits else "")
        out += [f"\n**{ds}**{f' with `{variant}`' if variant else ''} ({rs[0]['n']:,} images, "
                f"{rs[0]['classes']} classes, K = {rs[0]['k']}; seeds {', '.join(map(str, seeds))}"
                f"{fitted}): macro-F1 of all images, mean over seeds "
                f"(accuracy / balanced accuracy in brackets for {DEFAULT}, dvclust's default)\n",
                "| looks per class (in all) | " + " | ".join(
                    s + ("" if (got := sorted({r["seed"] for r in rs if r["strategy"] == s})) == seeds
                         else f" (seeds {', '.join(map(str, got))})") for s in strategies) + " |",
                "|---" * (len(strategies) + 1) + "|"]
        measured = sorted({r["budget_per_class"] for r in rs})
        for b in measured:
            cells = []
            for s in strategies:
                g = [r for r in rs if r["strategy"] == s and r["budget_per_class"] == b]
                cell = f"{statistics.mean(r['macro_f1'] for r in g):.3f}" if g else "-"
                if s == DEFAULT and g:
                    cell += (f" ({statistics.mean(r['accuracy'] for r in g):.3f} / "
                             f"{statistics.mean(r['balanced_accuracy'] for r in g):.3f})")
                cells.append(cell)
            looks = next((r["looks"] for r in rs if r["budget_per_class"] == b), b)
            # a budget measured on fewer seeds than the rest says which
            got = sorted({r["seed"] for r in rs if r["budget_per_class"] == b})
            which = "" if got == seeds else f"; seeds {', '.join(map(str, got))}"
            out.append(f"| {b} ({looks}{which}) | " + " | ".join(cells) + " |")
        def f1(rows_, strategy, b):
            g = [r["macro_f1"] for r in rows_ if r["strategy"] == strategy and r["budget_per_class"] == b]
            return statistics.mean(g) if g else None

        # the target: dvclust at L against random propagation at 2L
        wins = [f"{b}: {f1(rs, DEFAULT, b) - f1(rs, 'random@2L', b):+.3f}" for b in measured
                if f1(rs, DEFAULT, b) is not None and f1(rs, "random@2L", b) is not None]
        out.append(f"\n{DEFAULT} at L minus random@2L (macro-F1): {', '.join(wins)}")
        if variant:  # against the default config's fits of the same seeds
            base = [r for r in rows if r["dataset"] == ds and not r.get("variant") and r["seed"] in seeds]
            diffs = [f"{b}: {f1(rs, DEFAULT, b) - f1(base, DEFAULT, b):+.3f}" for b in measured
                     if f1(base, DEFAULT, b) is not None]
            out.append(f"\n{DEFAULT} with `{variant}` minus the default config, same seeds "
                       f"(macro-F1): {', '.join(diffs)}")
    return "\n".join(out)


def plot(rows: list[dict]) -> None:
    from dvclust.io import write_text_atomic
    from dvclust.report.svg import lines

    rows = [r for r in rows if not r.get("variant")]   # the defaults only
    parts = []
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        series = {}
        for s in (DEFAULT, "random@1L", "typiclust@L", "pca-random@1L"):
            pts = [(b, statistics.mean(r["macro_f1"] for r in rows if r["dataset"] == ds and
                                       r["strategy"] == s and r["budget_per_class"] == b))
                   for b in sorted({r["budget_per_class"] for r in rows}) if any(r["dataset"] == ds and r["strategy"] == s and
                                           r["budget_per_class"] == b for r in rows)]
            if pts:
                series[s] = ([p[0] for p in pts], [p[1] for p in pts])
        parts.append(lines(series, f"{ds}: macro-F1 against looks per class", w=420, h=260))
    write_text_atomic(RESULTS / "labelling.svg",
                      f"<svg xmlns='http://www.w3.org/2000/svg' width='{430 * len(parts)}' height='280'>" +
                      "".join(f"<g transform='translate({430 * i},0)'>{p}</g>" for i, p in enumerate(parts))
                      + "</svg>")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["digits", "mnist-test", "retina", "pneumonia-official"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per case")
    ap.add_argument("--budgets", nargs="+", type=int, default=list(BUDGETS),
                    help="looks per class to score; a case is skipped when its jsonl rows hold every one")
    ap.add_argument("--tables-only", action="store_true")
    ap.add_argument("--rescore", nargs="+", metavar="STRATEGY",
                    help="only these dvclust[...] strategies, on the run folders kept by earlier cases")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config setting of the DVC fit (repeatable): a variant beside the defaults")
    ap.add_argument("--one", nargs="+", metavar="DATASET SEED [KEY=VALUE ...]", help=argparse.SUPPRESS)
    ap.add_argument("--rescore-one", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        harness.emit(one(a.one[0], int(a.one[1]), a.one[2:]))
        return
    if a.rescore_one:
        harness.emit(rescore(a.rescore_one[0], int(a.rescore_one[1]), a.rescore_one[2:]))
        return
    log = RESULTS / "labelling.jsonl"
    rows = harness.read_rows(log)
    command = harness.command(__file__)
    variant = variant_name(a.set)
    scored = {(r["dataset"], r["seed"], r["budget_per_class"]) for r in rows
              if r.get("variant", "") == variant}
    done = {(d, s) for d, s, _ in scored if all((d, s, b) in scored for b in a.budgets)}
    todo = [(d, s) for d in a.datasets for s in a.seeds if (d, s) not in done]
    if a.rescore:
        if variant:
            raise SystemExit("--rescore works on the default runs' folders; drop --set")
        have = {(r["dataset"], r["seed"], r["strategy"]) for r in rows if not r.get("variant")}
        todo = [(d, s) for d, s in sorted(done) if d in a.datasets and s in a.seeds
                and (run_folder(d, s) / "latents.npy").exists()
                and any((d, s, x) not in have for x in a.rescore)]

    def run(job):
        args = (["--rescore-one", job[0], str(job[1]), *a.rescore] if a.rescore
                else ["--one", job[0], str(job[1]), *a.set])
        try:
            return harness.run_case(__file__, args, env={"BENCH_THREADS": str(a.threads),
                                                         "BENCH_BUDGETS": ",".join(map(str, a.budgets))})
        except harness.CaseFailed as e:
            print(f"{job} FAILED: {e}", flush=True)
            return None

    if not a.tables_only:
        with ThreadPoolExecutor(a.jobs) as pool:
            for res in (f.result() for f in as_completed([pool.submit(run, j) for j in todo])):
                if res is None:
                    continue
                for r in res["rows"]:
                    r["command"] = command
                    harness.append_row(log, r)
                rows += res["rows"]
                r0 = res["rows"][0]
                print(f"{r0['dataset']} seed {r0['seed']} done"
                      + (f" ({r0['fit_s']:.0f}s fit)" if "fit_s" in r0 else " (rescored)"), flush=True)
    if rows:
        plot(rows)
        commands = list(dict.fromkeys(r["command"] for r in rows if r.get("command")))
        commits = sorted({r["stamp"]["commit"] for r in rows})
        write_block("bench_labelling", "## bench_labelling: labels per human look\n\n"
                    "Commands (rows already in the jsonl are skipped; `--rescore` rows reuse the "
                    "run folders of the full cases):\n\n" + "".join(f"    {c}\n" for c in commands)
                    + f"\nRun on this 2-core CPU (torch threads per case: each command's --threads, default 1), at commits {', '.join(commits)}; "
                    "each row's stamp (commit, config, device, threads, date) is in "
                    "bench/results/labelling.jsonl; plot bench/results/labelling.svg\n\n"
                    "Rule (fixed before the run; bench/bench_labelling.py's docstring): K = 5 x "
                    "classes; each cluster named from its M = 1 most typical image (only the L "
                    "largest clusters when L <= K; `M3`: M = min(3, L // K)); the looks left "
                    "over correct the least sure labels."
                    "\n" + table(rows))


if __name__ == "__main__":
    main()
