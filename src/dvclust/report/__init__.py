"""`dvclust report RUN_DIR`: one self-contained report.html (images embedded as PNG, charts as
inline SVG). Works on runs of any size: galleries and the latent map use samples and partial
sorts, nothing quadratic in the number of images."""
from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path

import numpy as np

from ..config import METHOD_NAMES
from ..curate import review_queue
from ..data.images import png_bytes
from ..io import write_text_atomic
from ..labelling import cluster_name, load_names
from ..rundir import load_run, read_labels, read_run_config, run_source
from . import svg


GALLERIES_OPEN = 20


def _png(img: np.ndarray) -> str:
    """C x H x W (uint8 or [0,1] float) -> <img> with a data URL."""
    return (f'<img class="t" alt="" src="data:image/png;base64,'
            f'{base64.b64encode(png_bytes(img)).decode()}">')


def _rows(images, idx) -> np.ndarray:
    idx = np.asarray(idx, dtype=np.int64)
    order = np.argsort(idx)
    out = np.empty((len(idx), *images.shape[1:]), dtype=images.dtype)
    out[order] = images[idx[order]]  # sorted reads suit a store on disk
    return out


def _embed_2d(z: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    try:
        import umap  # optional
        return umap.UMAP(random_state=seed).fit_transform(z), "UMAP"
    except ImportError:
        pass
    if len(z) <= 5000:
        from sklearn.manifold import TSNE
        return TSNE(random_state=seed, init="pca", perplexity=min(30, len(z) - 1)).fit_transform(z), "t-SNE"
    from sklearn.decomposition import PCA
    return PCA(2, random_state=seed).fit_transform(z), "PCA"


def _table(rows: list[list], header: list[str]) -> str:
    h = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
    b = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{b}</table>"


def _confusion(y, pred, names) -> str:
    classes, clusters = np.unique(y), np.unique(pred)
    m = np.array([[int(np.sum((pred == c) & (y == k))) for k in classes] for c in clusters])
    top = m.max() or 1
    head = "<tr><th>cluster \\ class</th>" + "".join(f"<th>{html.escape(str(k))}</th>" for k in classes) + "</tr>"
    body = "".join(
        f"<tr><th>{html.escape(cluster_name(names, int(c)))}</th>" + "".join(
            f'<td style="background:rgba(31,119,180,{v / top:.2f})">{v}</td>' for v in row) + "</tr>"
        for c, row in zip(clusters, m))
    return f"<table class='cm'>{head}{body}</table>"


STYLE = ("body{font-family:sans-serif;margin:24px;max-width:1100px}"
         "img.t{width:56px;height:56px;image-rendering:pixelated;margin:1px;border:1px solid #ddd}"
         ".row{display:flex;gap:24px}.u img{border-color:#d62728}"
         "summary{font-weight:bold;margin:10px 0 4px;cursor:pointer}"
         "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 6px;"
         "font-size:12px}svg{margin:4px}")


def _known(run_dir: Path, lab: dict, clusters: np.ndarray, names) -> str:
    """Metrics and the confusion matrix, when the run's labels are known."""
    mpath = run_dir / "metrics.json"
    if not (mpath.exists() and "label" in lab):
        return ""
    m = json.loads(mpath.read_text())
    return ("<h2>Against the known labels</h2>" + _table(
        [[f"{m['acc']:.4f}", f"{m['nmi']:.4f}", f"{m['ari']:.4f}",
          ", ".join(f"{c}: {v:.2f}" for c, v in m["per_class_recall"].items())]],
        ["ACC", "NMI", "ARI", "per-class recall (under the ACC matching)"])
        + _confusion(lab["label"], clusters, names))


def _galleries(images, clusters: np.ndarray, conf: np.ndarray, sizes: np.ndarray, names,
               per_cluster: int) -> str:
    """Largest cluster first: its most typical (highest q) and least certain members. With many
    clusters (over-clustering) the first GALLERIES_OPEN are open, the rest fold away."""
    parts = ["<h2>Galleries</h2><p>Clusters by size. Left: the most typical images of each "
             "cluster (highest confidence). Right: its least certain ones.</p>"]
    for rank, j in enumerate(np.argsort(-sizes, kind="stable")):
        members = np.flatnonzero(clusters == j)
        if not len(members):
            continue
        c = conf[members]
        m_ = min(per_cluster, len(members))
        typical = members[np.argpartition(-c, m_ - 1)[:m_]]
        typical = typical[np.argsort(-conf[typical])]
        unsure = members[np.argpartition(c, m_ - 1)[:m_]]
        unsure = unsure[np.argsort(conf[unsure])]
        imgs_t = "".join(_png(a) for a in _rows(images, typical))
        imgs_u = "".join(_png(a) for a in _rows(images, unsure))
        title = (f"{html.escape(cluster_name(names, int(j)))}{' (mixed)' if j in names.mixed else ''}"
                 f" &middot; cluster {j} &middot; {sizes[j]:,} images &middot; mean confidence "
                 f"{c.mean():.2f}")
        parts.append(f"<details{' open' if rank < GALLERIES_OPEN else ''}><summary>{title}</summary>"
                     f"<div class='row'><div>{imgs_t}</div><div class='u'>{imgs_u}</div></div>"
                     "</details>")
    return "".join(parts)


def _latent_and_reconstructions(model, images, lab: dict, clusters: np.ndarray, names, k: int,
                                sample: int, seed: int) -> str:
    """The latent map of a sample, and reconstructions (the pixel baselines have no decoder)."""
    rng = np.random.default_rng(seed)
    n = len(clusters)
    pick = np.sort(rng.choice(n, min(sample, n), replace=False))
    imgs = _rows(images, pick)
    xy, how = _embed_2d(model.transform(imgs), seed)
    maps = svg.scatter(xy, clusters[pick], {j: cluster_name(names, j) for j in range(k)},
                       f"latent means ({how}), by cluster")
    if "label" in lab:
        classes, codes = np.unique(lab["label"], return_inverse=True)
        maps += svg.scatter(xy, codes[pick], {i: str(c) for i, c in enumerate(classes)},
                            f"latent means ({how}), by known label")
    out = f"<h2>Latent space</h2><p>{len(pick):,} sampled images.</p>{maps}"
    if hasattr(model, "reconstruct"):
        few = imgs[:8]
        out += ("<h2>Reconstructions</h2><p>Top: inputs; bottom: decoder output at z = mu.</p>"
                f"<div>{''.join(_png(a) for a in few)}</div>"
                f"<div>{''.join(_png(a) for a in model.reconstruct(few))}</div>")
    return out


def _review(run_dir: Path, names) -> str:
    queue = review_queue(run_dir, 10)
    return "<h2>Worth a look</h2>" + _table(
        [[r["source"], cluster_name(names, r["cluster"]), f"{r['confidence']:.3f}",
          f"{r['outlier_score']:.1f}", r["reason"]] for r in queue],
        ["source", "cluster", "confidence", "outlier score", "why"])


def _training(run_dir: Path) -> str:
    """Loss and label-change curves from history.csv (the pixel baselines have none)."""
    if not (run_dir / "history.csv").exists():
        return ""
    with open(run_dir / "history.csv") as f:
        hist = list(csv.DictReader(f))
    num = lambda r, key: float(r[key]) if r.get(key) else None  # noqa: E731
    pre = [r for r in hist if r["phase"] == "pretrain"]
    if not pre:
        return ""
    clu = [r for r in hist if r["phase"] == "cluster"]
    tgt = [r for r in hist if r["phase"] == "target"]
    charts = svg.lines({"pretrain": (list(range(1, len(pre) + 1)), [num(r, "loss") for r in pre]),
                        "clustering": (list(range(len(pre) + 1, len(pre) + len(clu) + 1)),
                                       [num(r, "loss") for r in clu])}, "training loss", ylabel="loss")
    if tgt:
        epochs = [int(r["epoch"]) for r in tgt]
        series = {"label change": (epochs, [num(r, "label_change") for r in tgt])}
        if tgt[0].get("acc"):
            series["ACC"] = (epochs, [num(r, "acc") for r in tgt])
            series["NMI"] = (epochs, [num(r, "nmi") for r in tgt])
        charts += svg.lines(series, "at each target update (clustering epoch)")
    return f"<h2>Training</h2>{charts}"


def build_report(run_dir: Path, out: Path | None = None, sample: int = 3000, per_cluster: int = 8,
                 seed: int = 0) -> Path:
    run_dir = Path(run_dir)
    cfg, rec = read_run_config(run_dir)
    model = load_run(run_dir)
    lab = read_labels(run_dir)
    data = run_source(run_dir).load(verbose=False)
    names = load_names(run_dir)
    clusters = lab["cluster"].astype(int)
    conf = lab["confidence"].astype(float)
    n, k = len(clusters), cfg.n_clusters
    sizes = np.bincount(clusters, minlength=k)
    if "label" in lab:  # class names (folders) as they are, class numbers as numbers
        known = lab["label"]
        lab["label"] = known.astype(int) if all(v.lstrip("-").isdigit() for v in known) else known
    parts = [
        f"<h1>dvclust report: {html.escape(run_dir.name)}</h1>",
        f"<p>{n:,} images from <code>{html.escape(str(rec['data']['source']))}</code> in {k} "
        f"clusters. Method: {html.escape(METHOD_NAMES[cfg.method])} (latent {cfg.latent_dim}, "
        f"beta {cfg.beta}, gamma {cfg.gamma}, seed {cfg.seed}).</p>",
        _known(run_dir, lab, clusters, names),
        "<h2>Clusters</h2>" + svg.bars(sizes.tolist(), [cluster_name(names, j) for j in range(k)],
                                       "images per cluster"),
        _galleries(data.images, clusters, conf, sizes, names, per_cluster),
        _latent_and_reconstructions(model, data.images, lab, clusters, names, k, sample, seed),
        _review(run_dir, names),
        _training(run_dir),
        "<h2>Configuration and versions</h2>" + _table(
            [[key, value] for key, value in cfg.to_dict().items()] +
            [[f"version: {key}", value] for key, value in (rec.get("versions") or {}).items()],
            ["key", "value"]),
    ]
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>dvclust report"
            f"</title><style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")
    out = Path(out) if out else run_dir / "report.html"
    write_text_atomic(out, page)
    return out
