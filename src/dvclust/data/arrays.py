"""Reader for .npy / .npz image arrays, MedMNIST's npz layout included (any flag and size).

MedMNIST files hold {train,val,test}_images and _labels; `split` picks which, default all.
Reading them needs numpy alone, so the optional `medmnist` package (which pulls torchvision) is
never imported.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..errors import DVClustError
from .images import ImageData, as_images, as_labels

MEDMNIST_SPLITS = ("train", "val", "test")
_IMAGE_KEYS = ("images", "x", "X", "data", "arr_0")
_LABEL_KEYS = ("labels", "y", "Y", "targets")


def parse_splits(split: str | list[str] | None, allowed: tuple[str, ...], source: str) -> list[str]:
    if split in (None, "all"):
        return list(allowed)
    parts = split.split(",") if isinstance(split, str) else list(split)
    parts = [p.strip() for p in parts if p.strip()]
    bad = [p for p in parts if p not in allowed]
    if bad or not parts:
        raise DVClustError(f"{source}: unknown split {','.join(bad) or split!r}; "
                           f"choose from {', '.join(allowed)} or 'all'")
    return parts


def read_npy(path: Path) -> ImageData:
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r")
    except ValueError as e:
        raise DVClustError(f"{path}: not a plain numeric .npy array ({e})") from None
    images = as_images(arr, str(path))
    return ImageData(images, None, _sources(path, len(images)), path.stem)


class _Arrays:
    """An .npz's arrays by name, loaded without pickle: an object array (the way a pickle runs
    code) is refused with one line instead of a traceback."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.z = np.load(path, allow_pickle=False)
            self.keys = list(self.z.keys())
        except (ValueError, OSError, zipfile.BadZipFile) as e:
            raise DVClustError(f"{path}: not a readable .npz file ({e})") from None

    def __getitem__(self, key: str) -> np.ndarray:
        try:
            return self.z[key]
        except ValueError as e:
            raise DVClustError(f"{self.path}[{key}]: refused: {e} (an object array; save plain "
                               "numeric arrays)") from None


def read_npz(path: Path, split: str | list[str] | None = "all") -> ImageData:
    z = _Arrays(path)
    keys = z.keys
    if any(f"{s}_images" in keys for s in MEDMNIST_SPLITS):
        present = tuple(s for s in MEDMNIST_SPLITS if f"{s}_images" in keys)
        splits = parse_splits(split, present, str(path))
        imgs = [_images_2d(z[f"{s}_images"], f"{path}[{s}_images]") for s in splits]
        if len({im.shape[1:] for im in imgs}) > 1 or len({im.dtype for im in imgs}) > 1:
            raise DVClustError(f"{path}: splits {splits} hold images of different shapes or types")
        labels = None
        if all(f"{s}_labels" in keys for s in splits):
            parts = [as_labels(z[f"{s}_labels"], len(im), f"{path}[{s}_labels]")
                     for s, im in zip(splits, imgs)]
            labels = None if any(p is None for p in parts) else np.concatenate(parts)
        sources = [f"{path.name}#{s}/{i}" for s, im in zip(splits, imgs) for i in range(len(im))]
        return ImageData(np.concatenate(imgs), labels, sources, path.stem)
    if split not in (None, "all"):
        raise DVClustError(f"{path}: has no MedMNIST splits, so split={split!r} cannot apply")
    key = next((k for k in _IMAGE_KEYS if k in keys), keys[0] if len(keys) == 1 else None)
    if key is None:
        raise DVClustError(f"{path}: no image array found; name it one of {', '.join(_IMAGE_KEYS)} "
                           f"(keys present: {', '.join(keys) or 'none'})")
    images = _images_2d(z[key], f"{path}[{key}]")
    lkey = next((k for k in _LABEL_KEYS if k in keys), None)
    labels = as_labels(z[lkey], len(images), f"{path}[{lkey}]") if lkey else None
    return ImageData(images, labels, _sources(path, len(images)), path.stem)


def _images_2d(arr: np.ndarray, source: str) -> np.ndarray:
    """MedMNIST 3-D files hold N x D x H x W volumes, which no 2-D layout explains: say so."""
    if arr.ndim == 4 and arr.shape[1] not in (1, 3) and arr.shape[-1] not in (1, 3):
        raise DVClustError(f"{source}: holds 3-D volumes ({' x '.join(map(str, arr.shape))}), and "
                           "dvclust clusters 2-D images; write the volumes as NIfTI files and read "
                           "them as slices (--axis, --slices), or pass 2-D images")
    return as_images(arr, source)


def _sources(path: Path, n: int) -> list[str]:
    return [f"{path.name}#{i}" for i in range(n)]
