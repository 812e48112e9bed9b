"""The comparison: datasets x methods x seeds -> ACC/NMI/ARI (mean ± std), per-class recall on the
imbalanced sets, wall time and peak RSS, plus how often a label-free rule picks the best seed.

Methods: dvclust's own (kmeans, pca-kmeans, ae-kmeans, vae-kmeans, dec, idec, dvc; one training
loop), ablations written as METHOD[key=value,...] (e.g. "dvc[gamma=0.01]"), and ClustPy's DEC,
IDEC and VaDE with their own defaults ("clustpy-dec", "clustpy-idec", "clustpy-vade"), run in a
separate virtual environment that `--clustpy` creates on first use (bench/.venv-clustpy; or
the Python that BENCH_CLUSTPY_PYTHON names, one that imports clustpy, on a machine where
torchvision and dvclust's torch live together).

Each run is its own process (so peak RSS is that run's), `--jobs` run at once with
`--threads` torch threads each. Rows are appended to bench/results/<tag>.jsonl as they finish, and
runs already there are skipped, so an interrupted benchmark continues where it stopped. The
tables go to bench/results/<tag>.csv (generated, not committed) and to the block bench_methods:<tag> of bench/RESULTS.md.

    python bench/bench_methods.py --datasets digits retina --seeds 0 1 2 --clustpy
    python bench/bench_methods.py --datasets retina --methods "dvc[gamma=0.01]" "dvc[q_from=sample]"
    python bench/bench_methods.py --runs mnist:dvc:1 chest64:idec:0 --jobs 2   # these, in this order
"""
from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np

import harness
from harness import DATASETS, HERE, RESULTS, load, parse_setting
from results_md import write_block

CLUSTPY_VENV = HERE / ".venv-clustpy"
CLUSTPY_PYTHON = Path(os.environ.get("BENCH_CLUSTPY_PYTHON", CLUSTPY_VENV / "bin" / "python"))
OURS = ("kmeans", "pca-kmeans", "ae-kmeans", "vae-kmeans", "dec", "idec", "dvc")
CLUSTPY = ("clustpy-dec", "clustpy-idec", "clustpy-vade")
IMBALANCED = ("retina", "pneumonia", "chest64")
RULES = ("consensus", "balance", "silhouette")  # label-free choice among seeds (dvclust.select)


def parse_method(spec: str) -> tuple[str, dict]:
    """'dvc[gamma=0.01,q_from=sample]' -> ('dvc', {'gamma': 0.01, 'q_from': 'sample'})."""
    m = re.fullmatch(r"([\w-]+)(?:\[(.*)\])?", spec)
    if not m:
        raise SystemExit(f"method {spec!r}: expected NAME or NAME[key=value,...]")
    sets = [s for s in (m.group(2) or "").split(",") if s]
    return m.group(1), dict(parse_setting(s) for s in sets)


def parse_run(spec: str) -> tuple[str, str, int]:
    """'mnist:dvc[beta=1]:0' -> ('mnist', 'dvc[beta=1]', 0)."""
    dataset, _, rest = spec.partition(":")
    method, _, seed = rest.rpartition(":")
    if not (dataset and method and seed.isdigit()):
        raise SystemExit(f"--runs {spec!r}: expected DATASET:METHOD:SEED, e.g. mnist:dvc:0")
    return dataset, method, int(seed)


def labels_path(tag: str, dataset: str, method: str, seed: int) -> Path:
    safe = re.sub(r"[^\w.=-]+", "_", f"{dataset}__{method}__{seed}")
    return RESULTS / "labels" / tag / f"{safe}.npy"


# ----------------------------------------------------------------------------------------------
# one run, in its own process
# ----------------------------------------------------------------------------------------------
def one(dataset: str, spec: str, seed: int, tag: str, threads: int) -> dict:
    import torch

    from dvclust import make_estimator, metrics
    from dvclust.select import silhouette

    torch.set_num_threads(threads)
    data, k = load(dataset)
    method, overrides = parse_method(spec)
    out = labels_path(tag, dataset, spec, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    if method.startswith("clustpy-"):
        cache = RESULTS / "cache" / f"{dataset}.npy"
        if not cache.exists():  # written whole, then renamed: runs started together share it
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp.npy")
            np.save(tmp, np.asarray(data.images))
            os.replace(tmp, cache)
        p = subprocess.run([str(CLUSTPY_PYTHON), str(HERE / "clustpy_worker.py"),
                            str(cache), str(k), str(seed), method.split("-", 1)[1],
                            str(out.with_suffix(""))], capture_output=True, text=True,
                           env={**os.environ, "BENCH_THREADS": str(threads)})
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"ClustPy {method} failed:\n{p.stderr[-2000:]}")
        res = json.loads(line[7:])
        labels = np.load(str(out.with_suffix("")) + "_labels.npy")
        latent = np.load(str(out.with_suffix("")) + "_latent.npy")
        wall, rss, final_loss, path = res["wall_s"], res["peak_rss_mb"], None, None
        config, img_s = {"clustpy": method, "n_clusters": k, "seed": seed}, {}
        np.save(out, labels)
    else:
        t0 = time.perf_counter()
        est = make_estimator(method, k, random_state=seed, **overrides).fit(data)
        wall = time.perf_counter() - t0
        labels, latent = est.labels_, est.transform(data)
        rss = harness.peak_rss_mb()
        config = est.config_.to_dict()
        img_s = {f"{ph}_img_s": statistics.median(r["images_per_s"] for r in rs) if rs else None
                 for ph in ("pretrain", "cluster")
                 for rs in [[r for r in est.history_ if r["phase"] == ph]]}
        last = [r for r in est.history_ if r.get("loss") is not None]
        final_loss = last[-1]["loss"] if last else None
        # NMI at the k-means start and at each target update of phase 3: what self-training adds
        path = [[r["epoch"], r["nmi"]] for r in est.history_ if r.get("nmi") is not None
                and (r["phase"] == "kmeans" or (r["phase"] == "target" and r["epoch"] > 0))]
        np.save(out, labels.astype(np.int64))
    ev = metrics.evaluate(data.labels, labels, k)
    return {"dataset": dataset, "method": spec, "seed": seed, "n": len(data), "k": k,
            "acc": ev["acc"], "nmi": ev["nmi"], "ari": ev["ari"],
            "per_class_recall": ev["per_class_recall"], "cluster_sizes": ev["cluster_sizes"],
            "silhouette": silhouette(latent, labels, seed=seed), "final_loss": final_loss,
            "nmi_path": path,
            "wall_s": wall, "peak_rss_mb": rss, **img_s,
            # both dvclust (device: auto) and ClustPy train on the GPU when there is one
            "stamp": harness.stamp(config, threads)}


# ----------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------
def mean_std(vals: list[float]) -> str:
    if not vals:
        return "–"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.3f} ± {sd:.3f}"


def by_group(rows: list[dict]) -> dict[tuple, list[dict]]:
    """(dataset, method) -> its runs, in the order they first appear."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["method"]), []).append(r)
    return groups


def devices(rs: list[dict]) -> str:
    """'CPU', 'H200' or 'CPU 1, H200 2' (rows from before the device field ran on the CPU)."""
    names = [r["stamp"]["device"].replace("NVIDIA ", "").replace("cpu", "CPU") for r in rs]
    counts = {d: names.count(d) for d in dict.fromkeys(names)}
    return next(iter(counts)) if len(counts) == 1 else ", ".join(f"{d} {n}" for d, n in counts.items())


@functools.cache  # called per row when the tables are written
def is_default(spec: str) -> bool:
    """True when every override in the spelling equals today's default ('dvc[beta=0.1]')."""
    from dvclust.config import Config

    default = Config()
    return all(getattr(default, k, None) == v for k, v in parse_method(spec)[1].items())


def head_to_head(rows: list[dict]) -> list[str]:
    """Per dataset: DVC against the best other method, each in its default config (all runs of
    it, on any device), with the standard error of the difference over the seeds."""
    lines = []
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        nmi: dict[str, list[float]] = {}
        for r in rows:
            if r["dataset"] == ds and is_default(r["method"]):
                nmi.setdefault(parse_method(r["method"])[0], []).append(r["nmi"])
        others = {m: v for m, v in nmi.items() if m != "dvc"}
        if "dvc" not in nmi or not others:
            continue
        best = max(others, key=lambda m: statistics.mean(others[m]))
        a, b = nmi["dvc"], others[best]
        diff = statistics.mean(a) - statistics.mean(b)
        if len(a) > 1 and len(b) > 1:
            se = (statistics.variance(a) / len(a) + statistics.variance(b) / len(b)) ** 0.5
            se_text = f"{se:.3f}"
            verdict = "within 2 SE" if abs(diff) <= 2 * se else "ahead" if diff > 0 else "behind"
        else:
            se_text = verdict = "–"
        lines.append(f"| {ds} | {statistics.mean(a):.3f} ({len(a)}) | {best} | "
                     f"{statistics.mean(b):.3f} ({len(b)}) | {diff:+.3f} | {se_text} | {verdict} |")
    return lines


def summary(rows: list[dict]) -> list[dict]:
    groups = by_group(rows)
    out = []
    for (ds, method), rs in groups.items():
        rs.sort(key=lambda r: r["seed"])
        recall = {}
        for c in rs[0]["per_class_recall"]:
            recall[c] = statistics.mean(r["per_class_recall"][c] for r in rs)
        out.append({"dataset": ds, "method": method, "seeds": len(rs),
                    **{m: [r[m] for r in rs] for m in ("acc", "nmi", "ari", "wall_s", "peak_rss_mb")},
                    "recall": recall, "devices": devices(rs)})
    return out


def row_balance(row: dict) -> float:
    """dvclust.select.balance of a run, from the cluster sizes its row keeps."""
    from dvclust.select import balance

    sizes = row["cluster_sizes"]
    return balance(np.repeat(np.arange(len(sizes)), sizes), row["k"])


def selection(rows: list[dict], tag: str) -> tuple[list[str], dict]:
    """For each (dataset, method) with >= 3 seeds: the seed each label-free rule picks, against
    the seeds that labels would pick (highest ACC) and avoid (lowest ACC)."""
    from dvclust.select import consensus_scores, pick

    lines = []
    tally: dict[str, dict] = {}  # dataset -> rule -> counts
    groups = by_group(rows)
    for (ds, method), rs in groups.items():
        if len(rs) < 3:
            continue
        rs.sort(key=lambda r: r["seed"])
        acc = [r["acc"] for r in rs]
        picks = {"balance": pick(np.array([row_balance(r) for r in rs])),
                 "silhouette": pick(np.array([r["silhouette"] for r in rs]))}
        paths = [labels_path(tag, ds, method, r["seed"]) for r in rs]
        if all(p.exists() for p in paths):  # labels stay on the machine that ran them
            picks["consensus"] = pick(consensus_scores([np.load(p) for p in paths]))
        best, worst = int(np.argmax(acc)), int(np.argmin(acc))
        t = tally.setdefault(ds, {rule: {"best": 0, "worst": 0, "acc": []} for rule in RULES})
        for rule, i in picks.items():
            t[rule]["best"] += i == best
            t[rule]["worst"] += i == worst
            t[rule]["acc"].append(acc[i] - statistics.mean(acc))
        lines.append(f"| {ds} | {method} | {acc[best]:.3f} | {acc[worst]:.3f} | "
                     f"{statistics.mean(acc):.3f} | "
                     + " | ".join(f"{acc[picks[rule]]:.3f}" if rule in picks else "–"
                                  for rule in RULES) + " |")
    return lines, tally


def config_choice(rows: list[dict]) -> list[str]:
    """Per dataset, among the DVC configs run with >= 3 seeds: the config each label-free rule
    picks (highest mean score over its seeds), against the configs that labels would rank."""
    lines, all_groups = [], by_group(rows)
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        groups = {m: rs for (d, m), rs in all_groups.items()
                  if d == ds and m.split("[")[0] == "dvc" and len(rs) >= 3}
        if len(groups) < 2:
            continue
        nmi = {m: statistics.mean(r["nmi"] for r in rs) for m, rs in groups.items()}
        score = {"silhouette": {m: statistics.mean(r["silhouette"] for r in rs)
                                for m, rs in groups.items()},
                 "balance": {m: statistics.mean(row_balance(r) for r in rs) for m, rs in groups.items()}}
        best = max(nmi, key=nmi.get)
        picks = {rule: max(s, key=s.get) for rule, s in score.items()}
        lines.append(f"| {ds} | {len(groups)} | {best} ({nmi[best]:.3f}) | "
                     f"{statistics.mean(nmi.values()):.3f} | "
                     + " | ".join(f"{picks[r]} ({nmi[picks[r]]:.3f})" if r in picks else "–"
                                  for r in ("silhouette", "balance")) + " |")
    return lines


def phase3(rows: list[dict]) -> list[str]:
    """Per self-training (dataset, method): mean NMI at the k-means start, at the best target update
    of phase 3 (an oracle stop: it needs the labels) and at the end, from rows that kept the path."""
    lines = []
    for (ds, method), rs in by_group([r for r in rows if len(r.get("nmi_path") or []) > 1]).items():
        start = [r["nmi_path"][0][1] for r in rs]
        best = [max(r["nmi_path"], key=lambda e: e[1]) for r in rs]
        lines.append(f"| {ds} | {method} | {len(rs)} | {statistics.mean(start):.3f} | "
                     f"{statistics.mean(b[1] for b in best):.3f} (epoch "
                     f"{statistics.median(b[0] for b in best):.0f}) | "
                     f"{statistics.mean(r['nmi'] for r in rs):.3f} | "
                     f"{sum(r['nmi'] < s for r, s in zip(rs, start))} of {len(rs)} |")
    return lines


# Each self-training method and the *-kmeans method that is its phases 1-2: same network, same
# seed, so that run's labels are the self-training run's k-means start (on the same device).
START_OF = {"dvc": "vae-kmeans", "idec": "ae-kmeans", "dec": "ae-kmeans"}


def seed_agreement(rows: list[dict], tag: str) -> list[str]:
    """Per dataset and self-training method (default spelling): how far its seeds agree (mean NMI
    between their labels, dvclust.select.agreement) at the k-means start and at the end, beside
    the mean NMI against the classes at both: does agreement tell when phase 3 helps?"""
    from dvclust.select import agreement

    lines, groups = [], by_group(rows)
    for ds, method in [(d, m) for d in dict.fromkeys(r["dataset"] for r in rows) for m in START_OF]:
        start, rs = START_OF[method], groups.get((ds, method), [])
        if (ds, start) not in groups:
            continue
        seeds = sorted({r["seed"] for r in rs} & {r["seed"] for r in groups[(ds, start)]})
        paths = {m: [labels_path(tag, ds, m, s) for s in seeds] for m in (start, method)}
        if len(seeds) < 3 or not all(p.exists() for ps in paths.values() for p in ps):
            continue
        agree = {m: agreement([np.load(p) for p in ps]) for m, ps in paths.items()}
        nmi = {m: statistics.mean(r["nmi"] for r in groups[(ds, m)] if r["seed"] in seeds)
               for m in (start, method)}
        lines.append(f"| {ds} | {method} | {start} | {len(seeds)} | {agree[start]:.2f} | "
                     f"{agree[method]:.2f} | {nmi[start]:.3f} | {nmi[method]:.3f} | "
                     f"{nmi[method] - nmi[start]:+.3f} |")
    return lines


def write_tables(rows: list[dict], tag: str, command: str = "") -> None:
    summ = summary(rows)
    with open(RESULTS / f"{tag}.csv.tmp", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dataset", "method", "seed", "acc", "nmi", "ari", "silhouette", "wall_s",
                    "peak_rss_mb", "threads", "device", "per_class_recall"])
        for r in rows:
            w.writerow([r["dataset"], r["method"], r["seed"], f"{r['acc']:.4f}", f"{r['nmi']:.4f}",
                        f"{r['ari']:.4f}", f"{r['silhouette']:.4f}", f"{r['wall_s']:.1f}",
                        f"{r['peak_rss_mb']:.0f}", r["stamp"]["threads"], r["stamp"]["device"],
                        json.dumps(r["per_class_recall"])])
    os.replace(RESULTS / f"{tag}.csv.tmp", RESULTS / f"{tag}.csv")
    md = ["| dataset | method | seeds | ACC | NMI | ARI | per-class recall (mean) | wall s | "
          "peak RSS MB | run on |", "|---|---|---|---|---|---|---|---|---|---|"]
    for ds in dict.fromkeys(s["dataset"] for s in summ):
        group = [s for s in summ if s["dataset"] == ds]
        top = max(statistics.mean(s["nmi"]) for s in group)
        for s in group:
            nmi = mean_std(s["nmi"])
            rec = ", ".join(f"{c}: {v:.2f}" for c, v in s["recall"].items()) \
                if ds in IMBALANCED else ""
            md.append(f"| {ds} | {s['method']} | {s['seeds']} | {mean_std(s['acc'])} | "
                      + (f"**{nmi}**" if statistics.mean(s["nmi"]) == top else nmi)
                      + f" | {mean_std(s['ari'])} | {rec} | {statistics.median(s['wall_s']):.0f} | "
                      f"{max(s['peak_rss_mb']):.0f} | {s['devices']} |")
    sel, hits = selection(rows, tag)
    commands = list(dict.fromkeys(r.get("command", command) for r in rows))
    # rows relabelled when the defaults changed keep their original spelling in run_as
    relabelled = [
        "Rows with a run_as field in the jsonl ran with the method spelled as in run_as, under the "
        "defaults of the commit in their code field: 6095c36 (beta 1, 50 clustering epochs) or "
        "5760008 (today's but for `augment: auto`, which then jittered every image of 16 px or "
        "more, retina and pneumonia included). The method column spells out what differs from "
        "today's defaults: beta 0.1; cluster_epochs auto (500 on digits, 572 on retina, 200 on "
        "pneumonia, 100 on mnist-test, 174 on chest64, 50 on mnist); augment auto (on for mnist "
        "and mnist-test, off for digits, retina, pneumonia and chest64).", ""] \
        if any("run_as" in r for r in rows) else []
    body = [f"## bench_methods: {tag}", "", "Commands (run in this order; runs already in the "
            "jsonl are skipped):", "", *[f"    {c}" for c in commands], "",
            f"Run {min(r['stamp']['date'] for r in rows)} to {max(r['stamp']['date'] for r in rows)}, on the machine "
            "in the 'run on' column: CPU = 2 cores, torch threads per run as in the csv; a GPU row "
            "ran with dvclust's CUDA default (bf16 autocast) beside other runs sharing that GPU, so "
            "its wall time is not comparable with a CPU row's. Best mean NMI per dataset in bold; "
            "wall time is the median over seeds.", "", *relabelled, *md]
    if sel:
        body += ["", "Label-free choice among seeds (dvclust.select, `dvclust pick`): the ACC of the seed "
                 "each rule picks, beside the best, worst and mean ACC over the seeds.", "",
                 "| dataset | method | best seed | worst seed | mean | "
                 + " | ".join(f"{rule} pick" for rule in RULES) + " |",
                 "|---|---|---|---|---|" + "---|" * len(RULES), *sel, ""]
        body += ["Per dataset, over its (method, config) groups of 3 seeds: how often each rule "
                 "picked the best / the worst seed (a random pick: a third each), and the mean ACC "
                 "of its picks minus the mean ACC of all seeds.", "",
                 "| dataset | groups | " + " | ".join(RULES) + " |", "|---|---|" + "---|" * len(RULES)]
        for ds, t in hits.items():
            n = max(len(t[r]["acc"]) for r in RULES)
            # consensus is scored only for the groups whose labels are on this machine
            body.append(f"| {ds} | {n} | " + " | ".join(
                f"best {t[r]['best']}, worst {t[r]['worst']}, {statistics.mean(t[r]['acc']):+.3f}"
                + ("" if len(t[r]["acc"]) == n else f" ({len(t[r]['acc'])} groups)")
                if t[r]["acc"] else "–" for r in RULES) + " |")
    h2h = head_to_head(rows)
    if h2h:
        body += ["", "DVC against the best other method per dataset, both in today's default config "
                 "(the plain spelling, or one whose overrides equal the defaults, as dvc[beta=0.1]), "
                 "all their runs pooled across devices. SE is the standard error of the difference "
                 "of the two means over their runs; 'within 2 SE' means the seeds cannot tell the "
                 "two apart.", "",
                 "| dataset | DVC NMI (runs) | best other | its NMI (runs) | difference | SE | |",
                 "|---|---|---|---|---|---|---|", *h2h]
    cfg_lines = config_choice(rows)
    if cfg_lines:
        body += ["", "Label-free choice among DVC configs (the ablations): the config with the "
                 "highest mean score over its seeds, with its mean NMI, beside the config that "
                 "labels would pick and the mean over all configs.", "",
                 "| dataset | configs | best by NMI | mean | silhouette pick | balance pick |",
                 "|---|---|---|---|---|---|", *cfg_lines]
    agree = seed_agreement(rows, tag)
    if agree:
        body += ["", "Seed agreement: the mean NMI between the labels of a method's seeds, at its "
                 "k-means start (the *-kmeans run of the same seeds: the same run's start where "
                 "both ran on the same device, see 'run on' above) and at the end of phase 3, "
                 "beside the mean NMI against the classes at both. `dvclust pick` prints the "
                 "agreement of the runs it is given and warns below 0.8.", "",
                 "| dataset | method | start | seeds | agreement at start | at end | NMI at start "
                 "| at end | phase 3 adds |", "|---|---|---|---|---|---|---|---|---|", *agree]
    p3 = phase3(rows)
    if p3:
        body += ["", "What phase 3 (self-training) adds: mean NMI of the k-means start, of the best "
                 "target update along the way (median epoch; choosing it needs the labels, so it "
                 "bounds what a label-free stop rule could reach) and of the end.", "",
                 "| dataset | method | runs | NMI at start | best along phase 3 | NMI at end | "
                 "end below start |", "|---|---|---|---|---|---|---|", *p3]
    write_block(f"bench_methods:{tag}", "\n".join(body))


# ----------------------------------------------------------------------------------------------
def ensure_clustpy() -> None:
    """The ClustPy environment: its own torch (with torchvision), never dvclust's."""
    py = CLUSTPY_PYTHON
    if py.exists() and subprocess.run([str(py), "-c", "import clustpy"]).returncode == 0:
        return
    if "BENCH_CLUSTPY_PYTHON" in os.environ:
        raise SystemExit(f"BENCH_CLUSTPY_PYTHON={py}: cannot import clustpy")
    print(f"creating {CLUSTPY_VENV} (torch 2.14.1 + torchvision 0.29.1 + clustpy) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(CLUSTPY_VENV)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["torch==2.14.1", "torchvision==0.29.1"], check=True)
    subprocess.run(pip + ["clustpy"], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), help=", ".join(DATASETS))
    ap.add_argument("--methods", nargs="+", default=list(OURS))
    ap.add_argument("--clustpy", action="store_true", help="add ClustPy's DEC, IDEC and VaDE")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=1, help="runs at once")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per run (default: cores/jobs)")
    ap.add_argument("--runs", nargs="+", metavar="DATASET:METHOD:SEED",
                    help="run exactly these, in this order (instead of datasets x methods x seeds)")
    ap.add_argument("--tag", default="methods")
    ap.add_argument("--tables-only", action="store_true", help="rewrite the tables from the jsonl")
    ap.add_argument("--one", nargs=3, metavar=("DATASET", "METHOD", "SEED"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    threads = a.threads or max(1, (os.cpu_count() or 1) // a.jobs)
    if a.one:
        harness.emit(one(a.one[0], a.one[1], int(a.one[2]), a.tag, threads))
        return
    log = RESULTS / f"{a.tag}.jsonl"
    rows = harness.read_rows(log)
    command = harness.command(__file__)
    methods = a.methods + (list(CLUSTPY) if a.clustpy else [])
    if a.runs:
        plan = [parse_run(r) for r in a.runs]
    else:
        plan = [(d, m, s) for d in a.datasets for m in methods for s in a.seeds]
    if a.clustpy or any(m.startswith("clustpy-") for _, m, _ in plan):
        ensure_clustpy()
    done = {(r["dataset"], r["method"], r["seed"]) for r in rows}
    todo = [job for job in plan if job not in done]

    def run(job):
        d, m, s = job
        try:
            return harness.run_case(__file__, ["--tag", a.tag, "--threads", threads, "--one", d, m, s])
        except harness.CaseFailed as e:
            print(f"{d} {m} seed {s} FAILED: {e}", flush=True)
            return None

    if not a.tables_only:
        with ThreadPoolExecutor(a.jobs) as pool:  # each row is saved as soon as its run ends
            for row in (fut.result() for fut in as_completed([pool.submit(run, job) for job in todo])):
                if row is None:
                    continue
                row["command"] = command
                rows.append(row)
                harness.append_row(log, row)
                print(f"{row['dataset']} {row['method']} seed {row['seed']}: ACC {row['acc']:.4f} "
                      f"NMI {row['nmi']:.4f} ARI {row['ari']:.4f} {row['wall_s']:.0f}s "
                      f"RSS {row['peak_rss_mb']:.0f} MB", flush=True)
                write_tables(rows, a.tag, command)
    if rows:
        write_tables(rows, a.tag, command)


if __name__ == "__main__":
    main()
