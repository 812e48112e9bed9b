"""The on-disk store: one preprocessing pass over a collection, parallel over the cores, into a
compact uint8 file that training, prediction and reports memory-map with bounded memory.

    STORE/images.u8      N x C x S x S uint8, raw (memory-mapped)
    STORE/index.csv      row -> source path (and frame/slice)
    STORE/labels.npy     class index per row, when images sit in class subfolders
    STORE/skipped.csv    files that could not be read, with the reason
    STORE/manifest.json  sources (path, size, mtime), options, shape; written last = complete

A second run on the same sources and options reuses the store; any changed, added or removed
file, or a changed option, rebuilds all of it (and says so).
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .. import log
from ..errors import DVClustError
from ..io import file_lock, write_csv_atomic, write_json_atomic
from .images import ImageData
from .preprocess import ReadOptions, preprocess
from .readers import known_suffixes, reader_for

STORE_VERSION = 1


def scan(root: Path) -> list[Path]:
    """Every readable file under root, following folder links (class folders are often links)
    but never into a folder already seen, so that a link loop ends."""
    if root.is_file():
        return [root] if reader_for(root) else []
    found, seen = [], set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(folder) / n for n in names if not n.startswith(".")
                  and (Path(folder) / n).is_file() and reader_for(Path(folder) / n)]
    return sorted(found)


def default_store(root: Path, opts: ReadOptions) -> Path:
    base = Path(os.environ.get("DVCLUST_CACHE", Path.home() / ".cache" / "dvclust")) / "stores"
    key = json.dumps([str(root.resolve()), opts.to_dict()], sort_keys=True)
    return base / f"{root.name}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def _work(args):
    path, opts = args
    reader = reader_for(path)
    try:
        return [(item, preprocess(img, opts)) for item, img in reader.read(path, opts)], None
    except DVClustError:
        raise
    except ValueError as e:
        return None, str(e)
    except Exception as e:  # a reader bug must not end a run of 10^6 files: list it and go on
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"


def _file_state(root: Path, files: list[Path]) -> list[list]:
    out = []
    for p in files:
        st = p.stat()
        out.append([str(p.relative_to(root)) if root.is_dir() else p.name, st.st_size, st.st_mtime_ns])
    return out


def _class_of(root: Path, files: list[Path], opts: ReadOptions):
    if not opts.folder_labels or root.is_file():
        return None
    rel = [p.relative_to(root) for p in files]
    if not rel or any(len(r.parts) < 2 for r in rel):
        return None  # some image sits at the top: no class structure
    names = sorted({r.parent.name for r in rel})
    return names if len(names) > 1 else None


def load_store(root: Path, opts: ReadOptions, store: Path | None = None,
               workers: int | None = None, verbose: bool = True) -> ImageData:
    """Open the store of (root, opts), building it first if it is missing or stale."""
    root = Path(root)
    if not root.exists():
        raise DVClustError(f"{root}: no such file or folder")
    store = Path(store) if store else default_store(root, opts)
    files = scan(root)
    if not files:
        raise DVClustError(f"{root}: holds no image, DICOM or NIfTI files "
                           f"(looked for {', '.join(known_suffixes())})")
    state = _file_state(root, files)
    store.mkdir(parents=True, exist_ok=True)
    # Several runs may start on the same folder at once (three seeds, say): one builds, the
    # others wait for the lock and then reuse its store instead of racing on the same files.
    # It is opened under the lock too: open_store reads the index and keeps the image file open,
    # and a rebuild replaces files instead of rewriting them, so a run that opened the store
    # keeps reading the images it started with while another run rebuilds it.
    with file_lock(store / ".lock"):
        return open_store(_reuse_or_build(root, files, state, opts, store, workers, verbose))


def _reuse_or_build(root, files, state, opts, store, workers, verbose) -> Path:
    manifest = store / "manifest.json"
    if manifest.exists():
        old = json.loads(manifest.read_text())
        if old.get("version") == STORE_VERSION and old.get("options") == opts.to_dict() \
                and old.get("files") == state:
            if verbose:
                log.info(f"reusing the preprocessed store {store} ({old['n']} images)")
            return store
        if verbose:
            why = "options changed" if old.get("options") != opts.to_dict() else \
                f"{_n_changed(old.get('files', []), state)} file(s) added, removed or changed"
            log.info(f"store {store} is stale ({why}): rebuilding all of it")
        manifest.unlink()
    _build(root, files, state, opts, store, workers, verbose)
    return store


def _n_changed(old: list, new: list) -> int:
    """Files added, removed or changed, each counted once (by path)."""
    a, b = {p: tuple(rest) for p, *rest in old}, {p: tuple(rest) for p, *rest in new}
    return len(a.keys() ^ b.keys()) + sum(a[p] != b[p] for p in a.keys() & b.keys())


def _build(root, files, state, opts, store, workers, verbose) -> None:
    store.mkdir(parents=True, exist_ok=True)
    classes = _class_of(root, files, opts)
    cls_index = {c: i for i, c in enumerate(classes or [])}
    workers = workers or os.cpu_count() or 1
    tmp = store / "images.u8.tmp"
    jobs = [(p, opts) for p in files]
    # disable=None: tqdm draws bars on a terminal only (and honours TQDM_DISABLE)
    bar = tqdm(total=len(files), desc="preprocessing", unit="file", disable=None if verbose else True,
               mininterval=1.0)
    try:
        index_rows, labels, skipped, n = _write_images(tmp, jobs, state, classes, cls_index,
                                                       workers, bar)
    except OSError as e:  # a full disk, say: no half-written store is left behind
        tmp.unlink(missing_ok=True)
        raise DVClustError(f"{store}: building the store failed: {e.strerror or e}; nothing "
                           "half-written is kept (free space, or pass --store elsewhere)") from None
    bar.close()
    write_csv_atomic(store / "skipped.csv", ["source", "reason"], skipped)
    if n == 0:
        tmp.unlink()
        raise DVClustError(f"{root}: none of its {len(files)} files could be read "
                           f"(reasons in {store / 'skipped.csv'})")
    _finish(store, tmp, index_rows, labels if classes else None, {
        "root": str(root.resolve()), "options": opts.to_dict(), "files": state, "n": n,
        "shape": [opts.channels, opts.size, opts.size], "class_names": classes,
        "n_skipped": len(skipped)})
    if verbose:
        log.info(f"preprocessed {n} images from {len(files)} files into {store}"
              + (f"; skipped {len(skipped)} unreadable file(s), listed in {store / 'skipped.csv'}"
                 if skipped else ""))


def _write_images(tmp, jobs, state, classes, cls_index, workers, bar):
    """Preprocess every file (in parallel) into tmp; returns index rows, labels, skipped, count."""
    index_rows, labels, skipped, n = [], [], [], 0
    with open(tmp, "wb") as out:
        if workers > 1 and len(jobs) >= 64:
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
            pool = ctx.Pool(workers)
            results = pool.imap(_work, jobs, chunksize=32)
        else:
            pool, results = None, map(_work, jobs)
        try:
            for (path, _), (items, err), (rel, _, _) in zip(jobs, results, state):
                bar.update(1)
                if err is not None:
                    skipped.append((rel, err))
                    continue
                for item, arr in items:
                    out.write(arr.tobytes())
                    index_rows.append((n, rel, item))
                    if classes:
                        labels.append(cls_index[path.parent.name])
                    n += 1
        finally:
            if pool is not None:
                pool.terminate()
        out.flush()
        os.fsync(out.fileno())
    return index_rows, labels, skipped, n


def _finish(store: Path, tmp: Path, index_rows, labels, manifest: dict) -> None:
    """Move the image file into place, then index and labels; the manifest last marks it whole."""
    os.replace(tmp, store / "images.u8")
    write_csv_atomic(store / "index.csv", ["row", "source", "item"], index_rows)
    if labels is not None:
        np.save(store / "labels.npy", np.asarray(labels, dtype=np.int64))
    elif (store / "labels.npy").exists():
        (store / "labels.npy").unlink()
    if not (store / "skipped.csv").exists():
        write_csv_atomic(store / "skipped.csv", ["source", "reason"], [])
    write_json_atomic(store / "manifest.json", {"version": STORE_VERSION, **manifest})


def write_array_store(store: str | Path, chunks, labels=None, name: str = "arrays") -> Path:
    """Write uint8 image chunks (each n x C x H x W) straight into a store, in bounded memory:
    for collections that already live as arrays, and for scale tests."""
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    (store / "manifest.json").unlink(missing_ok=True)
    tmp, n, shape = store / "images.u8.tmp", 0, None
    with open(tmp, "wb") as out:
        for chunk in chunks:
            chunk = np.ascontiguousarray(chunk, dtype=np.uint8)
            if shape is None:
                shape = list(chunk.shape[1:])
            elif list(chunk.shape[1:]) != shape:
                raise DVClustError(f"{store}: chunk of shape {chunk.shape} after rows of {shape}")
            out.write(chunk.tobytes())
            n += len(chunk)
    if not n:
        raise DVClustError(f"{store}: no images given")
    _finish(store, tmp, ((i, f"{name}#{i}", "") for i in range(n)), labels,
            {"root": name, "options": None, "files": [], "n": n, "shape": shape,
             "class_names": None, "n_skipped": 0})
    return store


class RowFile:
    """N x C x H x W uint8 rows of a raw file, read on demand with pread.

    Not a memory map on purpose: mapped pages count as the process's own memory (RSS, address
    space), while pread leaves the data in the kernel's page cache, so a store of any size is read
    with memory bounded by one batch.
    """

    def __init__(self, path: Path, shape: tuple[int, ...]):
        self.path, self.shape, self.dtype = Path(path), tuple(shape), np.dtype(np.uint8)
        self.row_bytes = int(np.prod(shape[1:]))
        self._fd = os.open(self.path, os.O_RDONLY)
        if os.fstat(self._fd).st_size != self.row_bytes * shape[0]:
            raise DVClustError(f"{path}: holds {os.fstat(self._fd).st_size} bytes, its manifest "
                               f"promises {shape}; delete the store to rebuild it")

    def __len__(self) -> int:
        return self.shape[0]

    def __del__(self):
        with contextlib.suppress(Exception):
            os.close(self._fd)

    def _rows(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            out = np.empty((stop - start, *self.shape[1:]), np.uint8)
        got = os.preadv(self._fd, [memoryview(out).cast("B")], start * self.row_bytes)
        if got != out.nbytes:
            raise DVClustError(f"{self.path}: short read at row {start} (file changed on disk?)")
        return out

    def __getitem__(self, key):
        if isinstance(key, tuple):  # rows first, then numpy indexing within them
            return self[key[0]][(slice(None), *key[1:])] if not isinstance(key[0], (int, np.integer)) \
                else self[key[0]][key[1:]]
        if isinstance(key, (int, np.integer)):
            i = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(key)
            return self._rows(i, i + 1)[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            rows = self._rows(start, max(start, stop))
            return rows[::step] if step != 1 else rows
        idx = np.asarray(key, dtype=np.int64)
        out = np.empty((len(idx), *self.shape[1:]), np.uint8)
        # runs of consecutive indices are read in one call
        breaks = np.flatnonzero(np.diff(idx) != 1) + 1
        pos = 0
        for run in np.split(idx, breaks):
            if len(run):
                self._rows(int(run[0]), int(run[-1]) + 1, out[pos:pos + len(run)])
                pos += len(run)
        return out


def open_store(store: Path) -> ImageData:
    m = json.loads((store / "manifest.json").read_text())
    images = RowFile(store / "images.u8", (m["n"], *m["shape"]))
    with open(store / "index.csv", newline="") as f:
        reader = csv.reader(f)  # not DictReader: a dict per row took seconds on 10^6 rows
        head = next(reader)
        at_source, at_item = head.index("source"), head.index("item")
        index = [(r[at_source], r[at_item]) for r in reader]
    sources = [src + f"#{item}" if item else src for src, item in index]
    labels = np.load(store / "labels.npy") if (store / "labels.npy").exists() else None
    with open(store / "skipped.csv") as f:
        skipped = [(r["source"], r["reason"]) for r in csv.DictReader(f)]
    from_files = m.get("options") is not None  # write_array_store records no read options
    return ImageData(images, labels, sources, Path(m["root"]).name, m["class_names"], skipped,
                     [item for _, item in index] if from_files else None)
