"""Files that are never half-written: atomic writes, and checkpoints that load without pickle code.

Every write goes to a temporary file in the same folder, is flushed to disk, then renamed over the
target, so a crash or a full disk leaves the previous good file in place.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterable

import torch

from .errors import DVClustError

_UMASK = os.umask(0)
os.umask(_UMASK)
FORMAT = "dvclust-checkpoint"
FORMAT_VERSION = 1


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb"):
    """Open a temporary file beside `path`; on success it is flushed, synced and renamed over
    `path`; on any error it is removed and `path` keeps its previous content. For outputs too big
    to build in memory first (a Label Studio task list of 10^6 images, say)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise DVClustError(f"{path.parent}: cannot write output here ({e.strerror or e})") from None
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs are ordinary files
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        kept = " (the previous version is kept)" if path.exists() else ""
        raise DVClustError(f"{path}: write failed: {e.strerror or e}{kept}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def file_lock(path: str | Path, wait: bool = True, busy: str | None = None):
    """An exclusive advisory lock on `path` (created if missing) for the body. With wait=False a
    lock held by another process raises DVClustError(busy) at once instead of waiting."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock; concurrent writers are then unsafe
        yield
        return
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a")
    except OSError as e:
        raise DVClustError(f"{path.parent}: cannot write output here ({e.strerror or e})") from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise DVClustError(busy or f"{path}: locked by another process") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_csv_atomic(path: str | Path, header: list[str], rows: Iterable[Iterable[Any]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Tensors and plain Python values only, so that `load_checkpoint` can refuse pickled code."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **state}, buf)
    write_bytes_atomic(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DVClustError(f"{path}: checkpoint not found")
    try:
        # weights_only=True unpickles tensors and plain containers only; any other global
        # (the way a malicious pickle runs code) raises instead of executing.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, zipfile.BadZipFile, EOFError, ValueError,
            OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DVClustError(f"{path}: refused: not a dvclust checkpoint, damaged, or holding "
                           f"unsafe objects ({first[:160]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DVClustError(f"{path}: refused: not a dvclust checkpoint (no '{FORMAT}' marker)")
    if state.get("format_version") != FORMAT_VERSION:
        raise DVClustError(f"{path}: checkpoint format version {state.get('format_version')} is "
                           f"not supported by this dvclust (expects {FORMAT_VERSION})")
    return state

