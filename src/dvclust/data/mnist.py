"""Reader for MNIST's idx files (a folder holding the four idx .gz files, or unzipped ones)."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ..errors import DVClustError
from .arrays import parse_splits
from .images import ImageData

_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def is_mnist_dir(path: Path) -> bool:
    return path.is_dir() and _find(path, _FILES["test"][0]) is not None


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (folder / name).exists():
            return folder / name
    return None


def read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DVClustError(f"{path}: cannot read idx file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DVClustError(f"{path}: not an idx file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    dims = np.frombuffer(raw, ">u4", count=ndim, offset=4).astype(int)
    body = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DVClustError(f"{path}: holds {body.size} bytes, its header promises {tuple(dims)}")
    return body.reshape(dims)


def read_mnist(folder: Path, split: str | list[str] | None = "all") -> ImageData:
    images, labels, sources = [], [], []
    for s in parse_splits(split, ("train", "test"), str(folder)):
        img_stem, lab_stem = _FILES[s]
        ip, lp = _find(folder, img_stem), _find(folder, lab_stem)
        if ip is None or lp is None:
            raise DVClustError(f"{folder}: MNIST {s} split needs {img_stem}(.gz) and {lab_stem}(.gz)")
        x, y = read_idx(ip), read_idx(lp)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DVClustError(f"{folder}: MNIST {s} images {x.shape} do not match labels {y.shape}")
        images.append(x[:, None])
        labels.append(y.astype(np.int64))
        sources += [f"mnist#{s}/{i}" for i in range(len(x))]
    return ImageData(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), sources,
                     "mnist")
