"""From clusters to labels at the lowest human cost: the images a person should look at to name a
cluster (`typical`), names (several clusters may share one; a cluster may be marked mixed),
per-image corrections, and propagation into one label per image (`self_labels`).

Everything lives in the run folder, beside what `fit` wrote:

    names.json        {"names": {"0": "normal", "3": "normal"}, "mixed": [4], "labels_from": "cluster"}
    corrections.csv   index, source, label          (appended; a later row for an image wins)
    self_labels.csv   index, source, cluster, label, confidence, how

`how` says where each label came from: `corrected` (a person labelled this image), `cluster` (its
cluster's name), `propagated` (an image of an unnamed or mixed cluster, labelled by its nearest
labelled neighbours in latent space) or `none` (nothing named yet). `confidence` is how sure that
label is: 1 for a correction; for a cluster name, the soft assignment q summed over every cluster
that carries the name; for a propagated label, the distance-weighted vote of its neighbours.

Where labels come from is names.json's `labels_from`: `cluster` (the default: a named cluster's
images carry its name, a correction changes its own image only) or `neighbours`, for when every
cluster is named and the person goes on correcting: only each named cluster's most confident
image carries the name (`cluster`), and every image that is not corrected takes the vote of its
nearest named and corrected images (`propagated`), so that a correction also relabels the images
around it and `review` offers the images whose vote is least sure (docs/DECISIONS.md, "Looks
beyond the clusters").
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DVClustError
from .io import atomic_file, write_csv_atomic, write_json_atomic

HOW = ("corrected", "cluster", "propagated", "none")
SELF_LABELS_COLUMNS = ["index", "source", "cluster", "label", "confidence", "how"]
PROPAGATION_NEIGHBOURS = 10       # docs/DECISIONS.md, "propagation"
PROPAGATION_REFERENCE = 20_000    # labelled images kept as neighbours, at most (a seeded sample)
TYPICAL_NEIGHBOURS = 20           # TypiClust's k
TYPICAL_SAMPLE = 2_000            # members per cluster that typicality is computed among, at most
KMEANS_SAMPLE = 100_000           # latents next_looks fits its cells on, at most (as kmeans_max_samples)
TYPICAL_BY = ("density", "confidence")
LABELS_FROM = ("cluster", "neighbours")
_UNSAFE = re.compile(r"[/\\\x00-\x1f\x7f]")


# ---- names ------------------------------------------------------------------------------------
def check_name(name: str, what: str = "name") -> str:
    """A label as a person typed it, stripped; refused only where it cannot be a path component
    (exports make their own safe folder names from it)."""
    name = str(name).strip()
    if not name or name in (".", "..") or _UNSAFE.search(name) or len(name) > 120:
        raise DVClustError(f"{what} {name!r} is not safe as a folder name (it must be 1-120 "
                           "characters, without '/', '\\', control characters, and not '.' or '..')")
    return name


def safe_folder(name: str) -> str:
    """A folder name for a label on any file system: letters, digits, space, '_', '-', '.', '(',
    ')' kept, everything else '_', no leading dot."""
    return re.sub(r"[^\w .()\-]", "_", name).lstrip(".") or "_"


@dataclass
class Names:
    names: dict[int, str] = field(default_factory=dict)
    mixed: set[int] = field(default_factory=set)
    labels_from: str = "cluster"   # LABELS_FROM; the module docstring says what each does

    def of(self, cluster: int) -> str | None:
        """The label a cluster gives its images: its name, unless it is marked mixed."""
        return None if cluster in self.mixed else self.names.get(cluster)


def load_names(run_dir: Path) -> Names:
    path = Path(run_dir) / "names.json"
    if not path.exists():
        return Names()
    try:
        doc = json.loads(path.read_text())
        if "names" not in doc:  # the format before many-to-one names: {"0": "normal", ...}
            doc = {"names": doc, "mixed": []}
        names = Names({int(k): check_name(v) for k, v in doc["names"].items()},
                      {int(c) for c in doc.get("mixed", [])}, doc.get("labels_from", "cluster"))
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        raise DVClustError(f"{path}: not a names file ({e})") from None
    if names.labels_from not in LABELS_FROM:
        raise DVClustError(f"{path}: labels_from {names.labels_from!r}: use {', '.join(LABELS_FROM)}")
    return names


def save_names(run_dir: Path, names: Names) -> None:
    write_json_atomic(Path(run_dir) / "names.json",
                      {"names": {str(k): v for k, v in sorted(names.names.items())},
                       "mixed": sorted(names.mixed), "labels_from": names.labels_from})


def cluster_name(names: Names | dict, cid: int) -> str:
    """How a cluster is shown: its name, or cluster_<id>."""
    table = names.names if isinstance(names, Names) else names
    return table.get(cid, f"cluster_{cid}")


def _n_clusters(run_dir: Path) -> int:
    from .rundir import read_run_config

    return read_run_config(run_dir)[0].n_clusters


def _cluster_id(text: str, k: int, where: str) -> int:
    t = str(text).strip()
    if not t.lstrip("-").isdigit():
        raise DVClustError(f"{where}: expected a cluster id, got {text!r}")
    cid = int(t)
    if not 0 <= cid < k:
        raise DVClustError(f"{where}: unknown cluster id {cid}; this run has clusters 0..{k - 1}")
    return cid


def set_names(run_dir: Path, pairs: list[str] = (), from_csv: Path | None = None,
              mixed: list[int] = (), unmixed: list[int] = (), unname: list[int] = (),
              labels_from: str | None = None) -> Names:
    """Merge `ID=NAME` pairs, a CSV of `cluster,name` rows, mixed marks and `labels_from` into
    names.json. Several clusters may share a name; a mixed cluster's images are labelled by
    propagation."""
    k = _n_clusters(run_dir)
    names = load_names(run_dir)
    given: list[tuple[int, str]] = []
    for pair in pairs:
        cid, sep, name = pair.partition("=")
        if not sep:
            raise DVClustError(f"{pair!r}: expected CLUSTER_ID=NAME, e.g. 0=normal")
        given.append((_cluster_id(cid, k, repr(pair)), check_name(name, f"{pair!r}: name")))
    if from_csv is not None:
        for i, row in enumerate(_read_csv(Path(from_csv), ("cluster", "name")), start=2):
            where = f"{from_csv}, line {i}"
            given.append((_cluster_id(row["cluster"], k, where), check_name(row["name"], f"{where}: name")))
    for cid, name in given:
        names.names[cid] = name
    for c in unname:
        names.names.pop(_cluster_id(c, k, "--unname"), None)
    names.mixed |= {_cluster_id(c, k, "--mixed") for c in mixed}
    names.mixed -= {_cluster_id(c, k, "--unmixed") for c in unmixed}
    if labels_from is not None:
        if labels_from not in LABELS_FROM:
            raise DVClustError(f"--labels-from {labels_from!r}: use {', '.join(LABELS_FROM)}")
        names.labels_from = labels_from
    save_names(run_dir, names)
    return names


def _read_csv(path: Path, need: tuple[str, ...], any_of: tuple[str, ...] = ()) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
            header = set(rows[0]) if rows else set()
    except FileNotFoundError:
        raise DVClustError(f"{path}: no such file") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise DVClustError(f"{path}: not a readable CSV file ({e})") from None
    missing = [c for c in need if c not in header]
    if rows and (missing or (any_of and not header & set(any_of))):
        want = ", ".join(need) + (f" and one of {' / '.join(any_of)}" if any_of else "")
        raise DVClustError(f"{path}: expected columns {want}; found {', '.join(sorted(header))}")
    return rows


# ---- corrections ------------------------------------------------------------------------------
def read_corrections(run_dir: Path) -> dict[int, str]:
    """index -> label, the later of two rows for one image winning; an empty label removes it."""
    path = Path(run_dir) / "corrections.csv"
    out: dict[int, str] = {}
    if path.exists():
        for row in _read_csv(path, ("index", "label")):
            if row["label"].strip():
                out[int(row["index"])] = row["label"].strip()
            else:
                out.pop(int(row["index"]), None)
    return out


def add_corrections(run_dir: Path, rows: list[dict], where: str = "corrections") -> int:
    """Append per-image labels ({index or source, label}) to corrections.csv, atomically (the
    old rows and the new ones are written to a temporary file that replaces the old one).
    A label of "" withdraws an earlier correction. Returns how many rows were added."""
    from .rundir import read_labels

    lab = read_labels(run_dir)
    sources = {s: i for i, s in enumerate(lab["source"])}
    n = len(lab["index"])
    new = []
    for i, row in enumerate(rows, start=2):
        at = f"{where}, line {i}"
        if str(row.get("index", "")).strip() != "":
            t = str(row["index"]).strip()
            if not t.isdigit() or int(t) >= n:
                raise DVClustError(f"{at}: index {t!r} is not an image of this run (0..{n - 1})")
            idx = int(t)
        elif row.get("source") is not None:
            if row["source"] not in sources:
                raise DVClustError(f"{at}: source {row['source']!r} is not an image of this run")
            idx = sources[row["source"]]
        else:
            raise DVClustError(f"{at}: needs an index or a source")
        label = str(row.get("label") or "").strip()
        if label:
            check_name(label, f"{at}: label")
        new.append((idx, lab["source"][idx], label))
    path = Path(run_dir) / "corrections.csv"
    old = path.read_text(encoding="utf-8") if path.exists() else "index,source,label\n"
    with atomic_file(path, "w") as f:
        f.write(old)
        csv.writer(f, lineterminator="\n").writerows(new)
    return len(new)


def correct_from_csv(run_dir: Path, path: Path) -> int:
    return add_corrections(run_dir, _read_csv(Path(path), ("label",), ("index", "source")),
                           str(path))


# ---- what a person should look at -------------------------------------------------------------
def latents(run_dir: Path) -> np.ndarray:
    """The run's latent means (N x d), saved by fit; computed (and saved) for older runs."""
    path = Path(run_dir) / "latents.npy"
    if path.exists():
        return np.load(path, mmap_mode="r")
    from .rundir import load_run, run_source, write_latents

    z = load_run(run_dir).transform(run_source(run_dir).load(verbose=False))
    write_latents(run_dir, z)
    return z


def typicality(z: np.ndarray, k: int = TYPICAL_NEIGHBOURS) -> np.ndarray:
    """TypiClust's typicality: 1 / mean distance to the k nearest other points of the set."""
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(z) - 1)
    if k < 1:
        return np.ones(len(z))
    d, _ = NearestNeighbors(n_neighbors=k + 1).fit(z).kneighbors(z)
    return 1.0 / (d[:, 1:].mean(1) + 1e-12)


def typical(run_dir: Path, per_cluster: int = 5, how: str = "confidence",
            seed: int = 0) -> list[dict]:
    """For each cluster (largest first), the `per_cluster` images to show a person so that they
    can name it: the most confident (`confidence`, highest q; the default, docs/DECISIONS.md "From
    clusters to labels") or the densest in latent space (`density`, as TypiClust; among at most
    TYPICAL_SAMPLE of the cluster's most confident members). Rows: cluster, rank, index, source."""
    from .rundir import read_labels

    if how not in TYPICAL_BY:
        raise DVClustError(f"--by {how!r}: use {', '.join(TYPICAL_BY)}")
    if per_cluster < 1:
        raise DVClustError(f"--per-cluster {per_cluster}: expected 1 or more")
    lab = read_labels(run_dir)
    clusters = lab["cluster"].astype(int)
    conf = lab["confidence"].astype(float)
    z = latents(run_dir) if how == "density" else None
    sizes = np.bincount(clusters)
    rows = []
    for c in np.argsort(-sizes, kind="stable"):
        members = np.flatnonzero(clusters == c)
        if not len(members):
            continue
        members = members[np.argsort(-conf[members], kind="stable")]
        if how == "density":
            pool = np.sort(members[:TYPICAL_SAMPLE])
            score = typicality(np.asarray(z[pool], dtype=np.float64))
            chosen = pool[np.argsort(-score, kind="stable")[:per_cluster]]
        else:
            chosen = members[:per_cluster]
        rows += [{"cluster": int(c), "rank": r, "index": int(i), "source": lab["source"][i]}
                 for r, i in enumerate(chosen)]
    return rows


def looked_at(run_dir: Path, lab: dict) -> np.ndarray:
    """The images a person has seen a label for: each named cluster's most confident image (what
    `typical` shows first) and every corrected one."""
    names = load_names(run_dir)
    clusters = lab["cluster"].astype(int)
    first = most_confident(clusters, lab["confidence"].astype(float))
    named = first[[names.of(int(c)) is not None for c in clusters[first]]]
    return np.union1d(named, np.fromiter(read_corrections(run_dir), dtype=np.int64))


def next_looks(run_dir: Path, n: int, seed: int = 0, lab: dict | None = None) -> list[dict]:
    """The n images to label next once the clusters are named (TypiClust's rule carried beyond
    them): k-means with as many cells as images looked at plus n on the latent means (fitted on at
    most KMEANS_SAMPLE of them), and the densest image of each of the n largest cells that hold no
    image looked at. Rows: rank, index, source, cell_size. `lab`: labels.csv, as in self_labels."""
    from sklearn.cluster import KMeans

    from .rundir import read_labels

    if n < 1:
        raise DVClustError(f"--n {n}: expected 1 or more")
    lab = read_labels(run_dir) if lab is None else lab
    z = np.asarray(latents(run_dir), dtype=np.float32)
    seen = looked_at(run_dir, lab)
    cells = min(len(z), len(seen) + n)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(z), KMEANS_SAMPLE, replace=False)) if len(z) > KMEANS_SAMPLE \
        else np.arange(len(z))
    cell = KMeans(cells, n_init=1, random_state=seed).fit(z[sample]).predict(z)
    sizes = np.bincount(cell, minlength=cells)
    covered = set(cell[seen].tolist())
    by_cell = np.argsort(cell, kind="stable")  # members of cell j: by_cell[starts[j]:starts[j + 1]]
    starts = np.r_[0, np.cumsum(sizes)]
    rows = []
    for j in np.argsort(-sizes, kind="stable"):
        if len(rows) == n or not sizes[j]:
            break
        if j in covered:
            continue
        members = by_cell[starts[j]:starts[j + 1]]
        if len(members) > TYPICAL_SAMPLE:
            members = np.sort(rng.choice(members, TYPICAL_SAMPLE, replace=False))
        i = int(members[np.argmax(typicality(z[members].astype(np.float64)))])
        rows.append({"rank": len(rows), "index": i, "source": lab["source"][i],
                     "cell_size": int(sizes[j])})
    return rows


def write_next_looks(run_dir: Path, n: int, out: Path | None = None) -> Path:
    rows = next_looks(run_dir, n)
    out = Path(out) if out else Path(run_dir) / "next.csv"
    keys = ["rank", "index", "source", "cell_size"]
    write_csv_atomic(out, keys, ([r[k] for k in keys] for r in rows))
    return out


def write_typical(run_dir: Path, per_cluster: int = 5, out: Path | None = None,
                  how: str = "confidence") -> Path:
    rows = typical(run_dir, per_cluster, how)
    out = Path(out) if out else Path(run_dir) / "typical.csv"
    keys = ["cluster", "rank", "index", "source"]
    write_csv_atomic(out, keys, ([r[k] for k in keys] for r in rows))
    return out


# ---- one label per image ----------------------------------------------------------------------
def propagate(z: np.ndarray, known: np.ndarray, labels: np.ndarray, query: np.ndarray,
              seed: int = 0, k: int = PROPAGATION_NEIGHBOURS,
              reference: int = PROPAGATION_REFERENCE) -> tuple[np.ndarray, np.ndarray]:
    """Labels and their vote shares for the rows `query` of z, from the labelled rows `known`
    (with `labels`), by a distance-weighted vote of the k nearest among at most `reference`
    labelled rows (a seeded sample): scikit-learn's KNeighborsClassifier(weights="distance"),
    with the neighbours found by scipy's kd-tree, which answered 10^6 queries twice as fast."""
    from scipy.spatial import cKDTree

    known, labels = np.asarray(known), np.asarray(labels)
    if len(known) > reference:
        keep = np.sort(np.random.default_rng(seed).choice(len(known), reference, replace=False))
        known, labels = known[keep], labels[keep]
    classes, code = np.unique(labels, return_inverse=True)
    k = min(k, len(known))
    tree = cKDTree(np.asarray(z[known], dtype=np.float32))
    out_label = np.empty(len(query), dtype=object)
    out_conf = np.empty(len(query))
    for s in range(0, len(query), 65536):  # bounded memory on 10^6 queries
        d, nb = tree.query(np.asarray(z[query[s:s + 65536]], dtype=np.float32), k, workers=-1)
        d, nb = d.reshape(len(d), k), nb.reshape(len(nb), k)
        with np.errstate(divide="ignore"):
            w = 1.0 / d
        exact = np.isinf(w)  # a labelled image at distance 0 decides alone, as in scikit-learn
        w = np.where(exact.any(1, keepdims=True), exact.astype(float), w)
        votes = np.zeros((len(d), len(classes)))
        np.add.at(votes, (np.arange(len(d))[:, None], code[nb]), w)
        proba = votes / votes.sum(1, keepdims=True)
        out_label[s:s + 65536] = classes[proba.argmax(1)]
        out_conf[s:s + 65536] = proba.max(1)
    return out_label, out_conf


def _soft_assignments(run_dir: Path, z: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """q of the given rows, from the latents and the run's centres."""
    import torch

    from .cluster import soft_assign
    from .training import checkpoint

    saved = checkpoint.load(Path(run_dir) / "checkpoint.pt")
    centers = saved["model"].get("head.centers", saved["model"].get("centers"))
    alpha = float(saved["config"].get("alpha", 1.0))
    out = np.empty((len(rows), centers.shape[0]), np.float32)
    for s in range(0, len(rows), 65536):
        x = torch.from_numpy(np.asarray(z[rows[s:s + 65536]], dtype=np.float32))
        out[s:s + 65536] = soft_assign(x, centers.float(), alpha).numpy()
    return out


def direct_labels(clusters: np.ndarray, confidence: np.ndarray, names: Names,
                  corrections: dict[int, str], k: int,
                  rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Label and `how` of the images `rows` (default: all) before propagation: a correction,
    else the name of its cluster (unless mixed; by `neighbours`, only for the cluster's most
    confident image, by `confidence`, labels.csv's), else "" and "none"."""
    rows = np.arange(len(clusters)) if rows is None else np.asarray(rows, dtype=np.int64)
    by_cluster = np.array([names.of(c) or "" for c in range(k)], dtype=object)
    label = by_cluster[clusters[rows]]
    if names.labels_from == "neighbours":  # each named cluster speaks through one image only
        speaks = np.zeros(len(clusters), bool)
        speaks[most_confident(clusters, confidence)] = True
        label[~speaks[rows]] = ""
    how = np.where(label != "", "cluster", "none").astype(object)
    if corrections:
        fixed = np.flatnonzero(np.isin(rows, np.fromiter(corrections, dtype=np.int64)))
        label[fixed] = [corrections[int(i)] for i in rows[fixed]]
        how[fixed] = "corrected"
    return label, how


def most_confident(clusters: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """The index of each non-empty cluster's most confident image (the first of a tie)."""
    order = np.lexsort((np.arange(len(clusters)), -confidence, clusters))
    first = np.r_[True, clusters[order][1:] != clusters[order][:-1]]
    return order[first]


def self_labels(run_dir: Path, seed: int = 0, lab: dict | None = None) -> dict[str, np.ndarray]:
    """One label per image from the names, the corrections and propagation (see the module
    docstring for `how` and `confidence`). `lab`: the run's labels.csv, when the caller has read
    it already (10^6 rows take seconds to parse)."""
    from .rundir import read_labels

    run_dir = Path(run_dir)
    lab = read_labels(run_dir) if lab is None else lab
    clusters = lab["cluster"].astype(int)
    n = len(clusters)
    names = load_names(run_dir)
    corrections = read_corrections(run_dir)
    k = _n_clusters(run_dir)
    label, how = direct_labels(clusters, lab["confidence"].astype(float), names, corrections, k)
    conf = np.zeros(n)
    z = latents(run_dir) if (how != "none").any() else None
    rows = np.flatnonzero(how == "cluster")
    if len(rows):
        q = _soft_assignments(run_dir, z, rows)
        # q summed over the clusters that share the image's label: how sure it is of the label
        by_cluster = np.array([names.of(c) or "" for c in range(k)], dtype=object)
        conf[rows] = (q * (by_cluster[None, :] == label[rows][:, None])).sum(1)
    conf[how == "corrected"] = 1.0
    known = np.flatnonzero(how != "none")
    rest = np.flatnonzero(how == "none")
    if len(known) and len(rest):
        label[rest], conf[rest] = propagate(z, known, label[known], rest, seed)
        how[rest] = "propagated"
    return {"index": np.arange(n), "source": lab["source"], "cluster": clusters, "label": label,
            "confidence": conf, "how": how}


def write_self_labels(run_dir: Path, out: Path | None = None) -> tuple[Path, dict[str, int]]:
    """self_labels.csv (or `out`), and how many images each way labelled."""
    s = self_labels(run_dir)
    out = Path(out) if out else Path(run_dir) / "self_labels.csv"
    write_csv_atomic(out, SELF_LABELS_COLUMNS,
                     zip(s["index"], s["source"], s["cluster"], s["label"],
                         (f"{c:.6f}" for c in s["confidence"]), s["how"]))
    return out, summary(s)


def summary(s: dict[str, np.ndarray]) -> dict[str, int]:
    return {h: int((s["how"] == h).sum()) for h in HOW}


def label_new(run_dir: Path, clusters: np.ndarray, z_new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels for new images (predict): their cluster's name where it has one (by `cluster`),
    else the vote of their nearest labelled images of the run. Returns (label, how)."""
    names = load_names(run_dir)
    by_cluster = names.labels_from == "cluster"
    label = np.array([(names.of(int(c)) if by_cluster else None) or "" for c in clusters], dtype=object)
    how = np.where(label != "", "cluster", "none").astype(object)
    rest = np.flatnonzero(label == "")
    if len(rest) and (names.names or read_corrections(run_dir)):
        s = self_labels(run_dir)
        # by neighbours, new images vote among the run's named and corrected images, as its own do
        known = np.flatnonzero(s["how"] != "none" if by_cluster
                               else np.isin(s["how"], ("corrected", "cluster")))
        z = np.concatenate([np.asarray(latents(run_dir), dtype=np.float32),
                            np.asarray(z_new, dtype=np.float32)])
        n = len(s["label"])
        label[rest], _ = propagate(z, known, s["label"][known], n + rest)
        how[rest] = "propagated"
    return label, how
