"""From clusters to labels: the review queue, cluster names, and exports (CSV, Label Studio,
an ImageFolder tree). Everything reads a finished run folder; nothing is written outside the
chosen output folder."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import DVClustError
from .io import atomic_file, write_csv_atomic, write_json_atomic
from .rundir import read_labels, read_run_config, run_source

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,63}$")


# ---- review queue -----------------------------------------------------------------------------
def review_queue(run_dir: Path, n: int = 200) -> list[dict]:
    """The n least confident images and the n most outlying ones (one row each, reasons joined)."""
    lab = read_labels(run_dir)
    conf = lab["confidence"].astype(float)
    out = lab["outlier_score"].astype(float)
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


# ---- names ------------------------------------------------------------------------------------
def set_names(run_dir: Path, pairs: list[str]) -> dict[int, str]:
    """Parse `ID=NAME` pairs, check them against the run's K, merge into RUN_DIR/names.json."""
    cfg, _ = read_run_config(run_dir)
    names = load_names(run_dir)
    for pair in pairs:
        cid, sep, name = pair.partition("=")
        name = name.strip()
        if not sep or not cid.strip().lstrip("-").isdigit():
            raise DVClustError(f"{pair!r}: expected CLUSTER_ID=NAME, e.g. 0=normal")
        cid = int(cid)
        if not 0 <= cid < cfg.n_clusters:
            raise DVClustError(f"{pair!r}: unknown cluster id {cid}; this run has clusters "
                               f"0..{cfg.n_clusters - 1}")
        if not SAFE_NAME.match(name) or name in (".", ".."):
            raise DVClustError(f"{pair!r}: name {name!r} is not safe as a folder name (letters, "
                               "digits, space, '_', '-', '.'; starting with a letter or digit)")
        names[cid] = name
    seen: dict[str, int] = {}
    for cid, name in sorted(names.items()):
        if name.lower() in seen:
            raise DVClustError(f"name {name!r} given to clusters {seen[name.lower()]} and {cid}; "
                               "names must be unique")
        seen[name.lower()] = cid
    write_json_atomic(run_dir / "names.json", {str(k): v for k, v in sorted(names.items())})
    return names


def load_names(run_dir: Path) -> dict[int, str]:
    path = run_dir / "names.json"
    return {int(k): v for k, v in json.loads(path.read_text()).items()} if path.exists() else {}


def cluster_name(names: dict[int, str], cid: int) -> str:
    return names.get(cid, f"cluster_{cid}")


# ---- exports ----------------------------------------------------------------------------------
def _inside(root: Path, path: Path) -> Path:
    """The path, if it resolves inside root; an error otherwise (no writes outside the export)."""
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        raise DVClustError(f"{path}: would be written outside the export folder {root}")
    return path


def _image_files(run_dir: Path, lab: dict, out: Path) -> list[Path]:
    """A file on disk for every row: the original for file-based runs, else a PNG written into
    out/images (array datasets such as MNIST have no files of their own)."""
    source = run_source(run_dir)
    root = Path(source.path)
    if root.is_dir() and not (root / "manifest.json").exists() and "#" not in lab["source"][0]:
        return [root / s for s in lab["source"]]
    if root.is_file() and root.suffix.lower() not in (".npz", ".npy"):
        return [root.parent / s.split("#")[0] for s in lab["source"]]
    data = source.load(verbose=False)
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(len(data)):
        p = _inside(out, img_dir / f"{i:08d}.png")
        arr = np.asarray(data.images[i])
        arr = (arr * 255).round().astype(np.uint8) if arr.dtype != np.uint8 else arr
        Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)).save(p)
        paths.append(p)
    return paths


def _relative(path: Path, root: str) -> str:
    try:
        return path.resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        raise DVClustError(f"{path}: lies outside the Label Studio document root {root}; pass "
                           "--document-root with the LOCAL_FILES_DOCUMENT_ROOT that holds it") from None


def export(run_dir: Path, fmt: str, out: Path | None = None, copy: bool = False,
           document_root: str = "/") -> Path:
    """Write the run's labels, with names, as `csv`, `labelstudio` tasks or a `folders` tree.

    Label Studio serves local files as /data/local-files/?d=PATH, PATH relative to its
    LOCAL_FILES_DOCUMENT_ROOT; pass that root as `document_root`.
    """
    if fmt not in ("csv", "labelstudio", "folders"):
        raise DVClustError(f"--format {fmt!r}: use csv, labelstudio or folders")
    lab = read_labels(run_dir)
    names = load_names(run_dir)
    out = (out or run_dir / "export").resolve()
    out.mkdir(parents=True, exist_ok=True)
    clusters = lab["cluster"].astype(int)
    if fmt == "csv":
        path = _inside(out, out / "labels_named.csv")
        write_csv_atomic(path, ["index", "source", "cluster", "name", "confidence", "outlier_score"],
                         zip(lab["index"], lab["source"], clusters,
                             [cluster_name(names, c) for c in clusters], lab["confidence"],
                             lab["outlier_score"]))
        return path
    files = _image_files(run_dir, lab, out)
    if fmt == "labelstudio":
        path = _inside(out, out / "tasks.json")
        # streamed one task at a time: a list of 10^6 task dicts took 6 GB (bench_report)
        with atomic_file(path, "w") as f:
            f.write("[")
            for i, (p, src, c, conf) in enumerate(zip(files, lab["source"], clusters,
                                                      lab["confidence"].astype(float))):
                task = {"id": i + 1,
                        "data": {"image": "/data/local-files/?d=" + _relative(p, document_root),
                                 "source": src},
                        "predictions": [{"model_version": "dvclust", "score": float(conf),
                                         "result": [{"from_name": "label", "to_name": "image",
                                                     "type": "choices",
                                                     "value": {"choices": [cluster_name(names, c)]}}]}]}
                f.write(("," if i else "") + "\n" + json.dumps(task))
            f.write("\n]\n")
        return path
    tree = out / "folders"
    for i, (p, c) in enumerate(zip(files, clusters)):
        target = _inside(out, tree / cluster_name(names, c) / f"{i:08d}_{p.name}")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() or target.is_symlink():
            target.unlink()
        if p.resolve().is_relative_to(out):  # a PNG written for array data: move it in place
            os.replace(p, target)
        elif copy:
            shutil.copyfile(p, target)
        else:
            os.symlink(p.resolve(), target)
    with contextlib.suppress(OSError):
        (out / "images").rmdir()  # emptied by the moves above
    return tree
