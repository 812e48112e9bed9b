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

from .data.images import png_bytes
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


def data_root(source) -> Path:
    """The folder a run's `source` paths are relative to."""
    root = Path(source.path)
    return root if root.is_dir() else root.parent


def original_file(root: Path, data, src: str, i: int) -> Path | None:
    """Row i's original file (under `root`, data_root) where the run read one whole file per
    image; None where there is none (arrays such as MNIST, frames of a DICOM, slices of a NIfTI).
    Decided from what the data is (the store's items), never from a file name; kept inside root."""
    if data.items is None or data.items[i]:
        return None
    return _within(root, src)


def _image_files(run_dir: Path, lab: dict) -> tuple[object, object, list[Path | None]]:
    """The run's data source and data, and original_file of every row (None: an export writes a
    PNG of the image as the run saw it)."""
    source = run_source(run_dir)
    data = source.load(verbose=False)
    root = data_root(source)
    return source, data, [original_file(root, data, src, i) for i, src in enumerate(lab["source"])]


PNG_PARALLEL_FROM = 20_000   # fewer are written in one process (a pool starts in seconds; not tuned)
PNG_WORKERS = 8
PNG_BATCH_BYTES = 1 << 25  # rows a PNG writer reads at once, at most
_WORKER_DATA = None


class _Pngs:
    """The PNGs an export writes (images with no file of their own, as the run saw them): planned
    first, each folder made and checked to lie inside `out` once (`folder`, which the folders
    export also uses for its links), then written together, by a pool of processes where there
    are many (10^6 PNGs one at a time took minutes)."""

    def __init__(self, out: Path, source, data):
        self.out, self.source, self.data = out, source, data
        self.jobs: list[tuple[int, str]] = []
        self.checked: dict[Path, str] = {}

    def folder(self, folder: Path) -> str:
        """`folder` as a path prefix (strings: 10^6 Path joins took seconds), made and checked to
        lie inside the export the first time it is asked for."""
        prefix = self.checked.get(folder)
        if prefix is None:
            folder.mkdir(parents=True, exist_ok=True)
            _inside(self.out, folder)
            prefix = self.checked[folder] = str(folder) + os.sep
        return prefix

    def place(self, i: int, prefix: str) -> None:
        self.jobs.append((i, f"{prefix}{i:08d}.png"))

    def write(self) -> None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        workers = min(cores or 1, PNG_WORKERS)
        if len(self.jobs) < PNG_PARALLEL_FROM or workers < 2:
            _png_chunk(self.jobs, self.data)
            return
        from concurrent.futures import ProcessPoolExecutor

        chunks = [self.jobs[j:j + 5000] for j in range(0, len(self.jobs), 5000)]
        # each worker opens the run's data itself: a store is memory-mapped, not copied
        with ProcessPoolExecutor(workers, initializer=_png_worker,
                                 initargs=(self.source,)) as pool:
            for _ in pool.map(_png_chunk, chunks):
                pass


def _png_worker(source) -> None:
    global _WORKER_DATA
    _WORKER_DATA = source.load(verbose=False)


DISK_BLOCK = 4096   # bytes: the allocation unit of common filesystems (ext4, XFS, APFS, NTFS)


def file_png(img) -> bytes:
    """png_bytes for a file of its own. An image whose pixel rows fit in one disk block makes a
    file that takes the whole block anyway, so they are stored (compressing them was the largest
    cost of a PNG export, bench/RESULTS.md, bench_report); larger images take zlib's fastest level."""
    img = np.asarray(img)
    return png_bytes(img, 0 if img.size + img.shape[-2] <= DISK_BLOCK else 1)


def _png_chunk(jobs, data=None) -> None:
    images = (data if data is not None else _WORKER_DATA).images
    # read a batch of rows at once (one pread per run of consecutive rows, not one per image),
    # at most PNG_BATCH_BYTES of them
    per_batch = max(1, PNG_BATCH_BYTES // max(1, int(np.prod(images.shape[1:]))))
    for s in range(0, len(jobs), per_batch):
        batch = jobs[s:s + per_batch]
        for img, (_, path) in zip(images[np.array([i for i, _ in batch])], batch):
            _write(path, file_png(img))


def _write(path: str, data: bytes) -> None:
    """`data` as the file `path`: os calls, a quarter faster than open() on 10^6 small files."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _relative_to(root: str):
    """A function path -> the path under the document root as Label Studio will look it up: the
    path as the data folder holds it (a link inside the root is served), else where its links
    lead. String prefixes first: 10^6 Path.resolve() calls took minutes."""
    bases = [os.path.abspath(root), str(Path(root).resolve())]
    bases = [b.rstrip(os.sep) + os.sep for b in bases]

    def rel(path: Path) -> str:
        plain = os.path.abspath(path)
        for candidate in (plain, str(path.resolve())):
            for base in bases:
                if candidate.startswith(base):
                    return Path(candidate[len(base):]).as_posix()
        via = f" (a link to {path.resolve()})" if str(path.resolve()) != plain else ""
        raise DVClustError(f"{path}{via}: lies outside the Label Studio document root {root}; "
                           "pass --document-root with the LOCAL_FILES_DOCUMENT_ROOT that holds it")
    return rel


def export(run_dir: Path, fmt: str, out: Path | None = None, copy: bool = False,
           document_root: str = "/", image_url: str | None = None) -> Path:
    """Write the run's labels (labelling.self_labels) as `csv`, `labelstudio` tasks or a
    `folders` tree. An image without a label yet goes under its cluster's name (cluster_<id>).

    Label Studio serves local files as /data/local-files/?d=PATH, PATH relative to its
    LOCAL_FILES_DOCUMENT_ROOT; pass that root as `document_root`. Or its tasks point at the
    review app (`dvclust serve`) at `image_url`, which serves every image by its row: no files
    are written, and Label Studio needs no local-files set-up.
    """
    if fmt not in ("csv", "labelstudio", "folders"):
        raise DVClustError(f"--format {fmt!r}: use csv, labelstudio or folders")
    if image_url is not None and (fmt != "labelstudio"
                                  or not image_url.startswith(("http://", "https://"))):
        raise DVClustError(f"--image-url {image_url!r}: expected the http(s):// address of "
                           "`dvclust serve` for --format labelstudio")
    lab = read_labels(run_dir)
    names = load_names(run_dir)
    s = self_labels(run_dir, lab=lab)
    out = (out or run_dir / "export").resolve()
    out.mkdir(parents=True, exist_ok=True)
    shown = [lbl or cluster_name(names, c) for lbl, c in zip(s["label"], s["cluster"])]
    # how sure the exported label is: the label's confidence, or q for an unlabelled image
    score = np.where(s["how"] == "none", lab["confidence"].astype(float), s["confidence"])
    if fmt == "csv":
        path = _inside(out, out / "labels_named.csv")
        write_csv_atomic(path, ["index", "source", "cluster", "name", "label", "how", "confidence",
                                "outlier_score"],
                         zip(lab["index"], lab["source"], s["cluster"],
                             [cluster_name(names, c) for c in s["cluster"]], s["label"], s["how"],
                             (f"{c:.6f}" for c in score), lab["outlier_score"]))
        return path
    if image_url is not None:
        base = image_url.rstrip("/")
        return _labelstudio(out, lab["source"], shown, score,
                            (f"{base}/api/images/{i}/full" for i in range(len(shown))))
    source, data, files = _image_files(run_dir, lab)
    # each export writes its own PNGs (labelstudio: out/images, folders: the tree), so that one
    # never moves or replaces the files another one's output points to
    pngs = _Pngs(out, source, data)
    if fmt == "labelstudio":
        return _labelstudio(out, lab["source"], shown, score,
                            _local_files(out, files, pngs, document_root))
    return _folders(out, files, pngs, shown, copy)


def _local_files(out: Path, files, pngs: _Pngs, document_root: str) -> list[str]:
    """Each image's URL in Label Studio's local-files storage: its own file, or a PNG written to
    out/images."""
    rel = _relative_to(document_root)
    prefix = None
    for i, p in enumerate(files):
        if p is None:
            if prefix is None:  # once, and only where PNGs are written
                images, prefix = pngs.folder(out / "images"), rel(out / "images") + "/"
            pngs.place(i, images)
    pngs.write()
    # percent-encoded: '#', '%', spaces or newlines in a name stay in the path
    return ["/data/local-files/?d=" + quote(rel(p) if p is not None else f"{prefix}{i:08d}.png")
            for i, p in enumerate(files)]


def _labelstudio(out: Path, sources, shown, score, urls) -> Path:
    path = _inside(out, out / "tasks.json")
    # Streamed one task at a time (a list of 10^6 task dicts took 6 GB), each task a template
    # around its few json-encoded strings: json.dumps of a whole task dict per image was the
    # largest part of the export once no PNGs are written.
    choice = {name: json.dumps(name) for name in set(shown)}
    with atomic_file(path, "w") as f:
        f.write("[")
        for i, (url, src, name, conf) in enumerate(zip(urls, sources, shown, score)):
            f.write(f'{"," if i else ""}\n{{"id": {i + 1}, "data": {{"image": {json.dumps(url)}, '
                    f'"source": {json.dumps(src)}}}, "predictions": [{{"model_version": '
                    f'"dvclust", "score": {float(conf)!r}, "result": [{{"from_name": "label", '
                    f'"to_name": "image", "type": "choices", "value": {{"choices": '
                    f'[{choice[name]}]}}}}]}}]}}')
        f.write("\n]\n")
    # the labeling config whose names (label, image) the tasks' predictions use
    choices = "".join(f'\n    <Choice value="{escape(c, quote=True)}"/>' for c in sorted(choice))
    write_text_atomic(_inside(out, out / "label_config.xml"),
                      '<View>\n  <Image name="image" value="$image"/>\n'
                      '  <Choices name="label" toName="image" choice="single" showInline="true">'
                      f"{choices}\n  </Choices>\n</View>\n")
    return path


def _folders(out: Path, files, pngs: _Pngs, shown, copy: bool) -> Path:
    """Built beside the old tree and swapped in whole: an image whose label changed since the
    last export must not stay behind in its old folder, and an interrupted export leaves the old
    one."""
    tree = out / "folders"
    new = out / "folders.partial"
    shutil.rmtree(new, ignore_errors=True)
    folders: dict[str, str] = {}
    for i, (p, name) in enumerate(zip(files, shown)):
        if name not in folders:
            folders[name] = pngs.folder(new / safe_folder(name))
        if p is None:
            pngs.place(i, folders[name])
            continue
        target = f"{folders[name]}{i:08d}_{p.name}"
        if copy:
            shutil.copyfile(p, target)
        else:
            os.symlink(os.path.realpath(p), target)
    pngs.write()
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
