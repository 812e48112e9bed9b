"""Data in: `load_dataset(name_or_path)` picks the one reader that fits, and returns ImageData."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DVClustError
from .arrays import read_npy, read_npz
from .dataset import ImageDataset
from .images import ImageData, as_images, as_labels
from .mnist import is_mnist_dir, read_mnist
from .preprocess import ReadOptions
from .readers import Reader, reader_for, register_reader
from .store import load_store, open_store

EMBEDDED = ("digits",)

__all__ = ["ImageData", "ImageDataset", "ReadOptions", "Reader", "as_images", "as_labels",
           "load_dataset", "register_reader", "EMBEDDED"]


def _digits() -> ImageData:
    from sklearn.datasets import load_digits

    d = load_digits()
    # 8x8 images with values 0..16: scale to [0, 1] exactly.
    images = (d.images[:, None] / 16.0).astype(np.float32)
    return ImageData(images, d.target.astype(np.int64), [f"digits#{i}" for i in range(len(images))],
                     "digits")


def load_dataset(name_or_path: str | Path, split: str | list[str] | None = "all",
                 options: ReadOptions | None = None, store: str | Path | None = None,
                 workers: int | None = None, verbose: bool = False) -> ImageData:
    """Load images from an embedded name or a path.

    Parameters
    ----------
    name_or_path : "digits" (scikit-learn's 8x8 digits, embedded); a folder holding MNIST's idx
        files; a MedMNIST .npz (any flag and size) or a plain .npy / .npz image array; or a folder
        (searched recursively) or single file of PNG/JPEG/TIFF/BMP images, DICOM or NIfTI.
    split : for MedMNIST ("train", "val", "test", comma-joined) and MNIST ("train", "test");
        "all" (the default) concatenates every split present.
    options : preprocessing of image/DICOM/NIfTI collections (size, pad or crop, channels, ...).
    store : where the preprocessed store of such a collection lives (default: a folder under
        ~/.cache/dvclust named after the source and options; DVCLUST_CACHE moves it).

    Examples
    --------
    >>> data = load_dataset("digits")
    >>> data.images.shape
    (1797, 1, 8, 8)
    """
    key = str(name_or_path)
    if key in EMBEDDED and not Path(key).exists():
        return _digits()
    path = Path(key).expanduser()
    if not path.exists():
        raise DVClustError(f"{key}: no such file or folder, and not an embedded dataset name "
                           f"(embedded: {', '.join(EMBEDDED)})")
    if path.is_dir() and (path / "manifest.json").exists():  # an existing store
        return open_store(path)
    if path.is_dir() and is_mnist_dir(path):
        return read_mnist(path, split)
    suffix = path.suffix.lower()
    if path.is_file() and suffix == ".npz":
        return read_npz(path, split)
    if path.is_file() and suffix == ".npy":
        return read_npy(path)
    if path.is_dir() or reader_for(path) is not None:
        opts = options or ReadOptions()
        return load_store(path, opts, store, workers, verbose)
    raise DVClustError(f"{path}: unsupported file type {suffix or '(none)'}; expected a folder, an "
                       "image, DICOM or NIfTI file, .npz, .npy or an MNIST folder")
