"""The review queue and the exports (CSV, Label Studio, an ImageFolder tree) of a run's labels
(labelling.self_labels: names, corrections, propagation). Everything reads a finished run
folder; nothing is written outside the chosen output folder."""
from __future__ import annotations

import json
import os
import shutil
from html import escape
from pathlib import Path
from urllib.parse import quote

import numpy as np

from .data.images import to_pil
from .errors import DVClustError
from .io import atomic_file, write_csv_atomic, write_text_atomic
from .labelling import cluster_name, load_names, safe_folder, self_labels
from .rundir import read_labels, run_source


# ---- review queue -----------------------------------------------------------------------------
def review_queue(run_dir: Path, n: int = 200) -> list[dict]:
    """The n least confident images and the n most outlying ones (one row each, reasons joined).
    Once clusters are named (names.json), confidence is that of each image's label
    (labelling.self_labels) and images a person corrected are left out: the least sure labels
    are what is worth a look next."""
    if n < 1:
        raise DVClustError(f"--n {n}: expected 1 or more")
    lab = read_labels(run_dir)
    conf = lab["confidence"].astype(float)
    out = lab["outlier_score"].astype(float)
    if (Path(run_dir) / "names.json").exists() or (Path(run_dir) / "corrections.csv").exists():
        s = self_labels(run_dir, lab=lab)
        conf = np.where(s["how"] == "corrected", np.inf, s["confidence"])
        out = np.where(s["how"] == "corrected", -np.inf, out)
    reasons: dict[int, list[str]] = {}
    for i in np.argsort(conf, kind="stable")[:n]:
        reasons.setdefault(int(i), []).append("low confidence")
    for i in np.argsort(-out, kind="stable")[:n]:
        reasons.setdefault(int(i), []).append("outlier")
    return [{"index": i, "source": lab["source"][i], "cluster": int(lab["cluster"][i]),
             "confidence": float(conf[i]), "outlier_score": float(out[i]),
             "reason": " + ".join(r)} for i, r in sorted(reasons.items(), key=lambda t: conf[t[0]])]


def write_review(run_dir: Path, n: int = 200) -> Path:
    rows = review_queue(run_dir, n)
    path = run_dir / "review.csv"
    keys = ["index", "source", "cluster", "confidence", "outlier_score", "reason"]
    write_csv_atomic(path, keys, ([r[k] for k in keys] for r in rows))
    return path


# ---- exports ----------------------------------------------------------------------------------
def _inside(root: Path, path: Path) -> Path:
    """The path, if it resolves inside root; an error otherwise (no writes outside the export)."""
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        raise DVClustError(f"{path}: would be written outside the export folder {root}")
    return path


def _within(root: Path, source: str) -> Path:
    """root/source, refused unless it stays inside root (a hand-edited labels.csv with
    ../../etc/hostname must not export a file from elsewhere)."""
    path = Path(os.path.normpath(root / source))
    if not path.is_relative_to(Path(os.path.normpath(root))):
        raise DVClustError(f"labels.csv: source {str(source)!r} lies outside the run's data folder {root}")
    return path


def original_file(source, data, src: str, i: int) -> Path | None:
    """Row i's original file where the run read one whole file per image; None where there is
    none (arrays such as MNIST, frames of a DICOM, slices of a NIfTI). Decided from what the data
    is (the store's items), never from a file name; kept inside the run's data folder."""
    if data.items is None or data.items[i]:
        return None
    root = Path(source.path)
    return _within(root if root.is_dir() else root.parent, src)


def _image_files(run_dir: Path, lab: dict) -> tuple[list[Path | None], object]:
    """original_file of every row (None: an export writes a PNG of the image as the run saw
    it), and the data, for the images of the None rows."""
    source = run_source(run_dir)
    data = source.load(verbose=False)
    return [original_file(source, data, src, i) for i, src in enumerate(lab["source"])], data


def _write_png(data, i: int, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(data.images[i]).save(path)
    return path


def _relative(path: Path, root: str) -> str:
    """The path under the document root as Label Studio will look it up: the path as the data
    folder holds it (a link inside the root is served), else where its links lead."""
    base = Path(os.path.abspath(root))
    for candidate in (Path(os.path.abspath(path)), path.resolve()):
        for r in (base, base.resolve()):
            if candidate.is_relative_to(r):
                return candidate.relative_to(r).as_posix()
    via = f" (a link to {path.resolve()})" if path.resolve() != Path(os.path.abspath(path)) else ""
    raise DVClustError(f"{path}{via}: lies outside the Label Studio document root {root}; pass "
                       "--document-root with the LOCAL_FILES_DOCUMENT_ROOT that holds it")


def export(run_dir: Path, fmt: str, out: Path | None = None, copy: bool = False,
           document_root: str = "/") -> Path:
    """Write the run's labels (labelling.self_labels) as `csv`, `labelstudio` tasks or a
    `folders` tree. An image without a label yet goes under its cluster's name (cluster_<id>).

    Label Studio serves local files as /data/local-files/?d=PATH, PATH relative to its
    LOCAL_FILES_DOCUMENT_ROOT; pass that root as `document_root`.
    """
    if fmt not in ("csv", "labelstudio", "folders"):
        raise DVClustError(f"--format {fmt!r}: use csv, labelstudio or folders")
    lab = read_labels(run_dir)
    names = load_names(run_dir)
    s = self_labels(run_dir, lab=lab)
    out = (out or run_dir / "export").resolve()
    out.mkdir(parents=True, exist_ok=True)
    clusters = s["cluster"]
    shown = [lbl or cluster_name(names, c) for lbl, c in zip(s["label"], clusters)]
    # how sure the exported label is: the label's confidence, or q for an unlabelled image
    score = np.where(s["how"] == "none", lab["confidence"].astype(float), s["confidence"])
    if fmt == "csv":
        path = _inside(out, out / "labels_named.csv")
        write_csv_atomic(path, ["index", "source", "cluster", "name", "label", "how", "confidence",
                                "outlier_score"],
                         zip(lab["index"], lab["source"], clusters,
                             [cluster_name(names, c) for c in clusters], s["label"], s["how"],
                             (f"{c:.6f}" for c in score), lab["outlier_score"]))
        return path
    files, data = _image_files(run_dir, lab)
    if fmt == "labelstudio":
        path = _inside(out, out / "tasks.json")
        # each export writes its own PNGs (labelstudio: out/images, folders: the tree), so that
        # one never moves or replaces the files another one's output points to
        files = [p or _write_png(data, i, _inside(out, out / "images" / f"{i:08d}.png"))
                 for i, p in enumerate(files)]
        # streamed one task at a time: a list of 10^6 task dicts took 6 GB (bench_report)
        with atomic_file(path, "w") as f:
            f.write("[")
            for i, (p, src, name, conf) in enumerate(zip(files, lab["source"], shown, score)):
                task = {"id": i + 1,
                        # percent-encoded: '#', '%', spaces or newlines in a name stay in the path
                        "data": {"image": "/data/local-files/?d=" + quote(_relative(p, document_root)),
                                 "source": src},
                        "predictions": [{"model_version": "dvclust", "score": float(conf),
                                         "result": [{"from_name": "label", "to_name": "image",
                                                     "type": "choices",
                                                     "value": {"choices": [name]}}]}]}
                f.write(("," if i else "") + "\n" + json.dumps(task))
            f.write("\n]\n")
        # the labeling config whose names (label, image) the tasks' predictions use
        choices = "".join(f'\n    <Choice value="{escape(c, quote=True)}"/>' for c in sorted(set(shown)))
        write_text_atomic(_inside(out, out / "label_config.xml"),
                          '<View>\n  <Image name="image" value="$image"/>\n'
                          '  <Choices name="label" toName="image" choice="single" showInline="true">'
                          f"{choices}\n  </Choices>\n</View>\n")
        return path
    # built beside the old tree and swapped in whole: an image whose label changed since the last
    # export must not stay behind in its old folder, and an interrupted export leaves the old one
    tree = out / "folders"
    new = out / "folders.partial"
    shutil.rmtree(new, ignore_errors=True)
    for i, (p, name) in enumerate(zip(files, shown)):
        if p is None:
            _write_png(data, i, _inside(out, new / safe_folder(name) / f"{i:08d}.png"))
            continue
        target = _inside(out, new / safe_folder(name) / f"{i:08d}_{p.name}")
        target.parent.mkdir(parents=True, exist_ok=True)
        if copy:
            shutil.copyfile(p, target)
        else:
            os.symlink(p.resolve(), target)
    new.mkdir(exist_ok=True)
    if tree.exists():
        old = out / "folders.old"
        shutil.rmtree(old, ignore_errors=True)
        tree.rename(old)
        new.rename(tree)
        shutil.rmtree(old)
    else:
        new.rename(tree)
    return tree


def import_labelstudio(run_dir: Path, export_json: Path) -> int:
    """Label Studio's JSON export of reviewed tasks -> per-image corrections: each task's latest
    annotation that was not cancelled gives its image (task data `source`) the chosen label."""
    from .labelling import add_corrections

    try:
        tasks = json.loads(Path(export_json).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DVClustError(f"{export_json}: no such file") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise DVClustError(f"{export_json}: not a Label Studio JSON export ({e})") from None
    if not isinstance(tasks, list):
        raise DVClustError(f"{export_json}: expected a list of tasks (Label Studio's JSON export)")
    rows = []
    for t in tasks:
        if not isinstance(t, dict) or "source" not in (t.get("data") or {}):
            raise DVClustError(f"{export_json}: task {t.get('id') if isinstance(t, dict) else t!r} "
                               "has no data.source; export the tasks dvclust wrote")
        done = [a for a in t.get("annotations") or [] if not a.get("was_cancelled")]
        choices = [r["value"]["choices"][0] for r in (done[-1]["result"] if done else [])
                   if r.get("type") == "choices" and r.get("value", {}).get("choices")]
        if choices:
            rows.append({"source": t["data"]["source"], "label": choices[0]})
    return add_corrections(run_dir, rows, str(export_json))
