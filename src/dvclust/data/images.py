"""The in-memory image collection every reader returns, and the checks that make arrays images."""
from __future__ import annotations

import functools
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from ..errors import DVClustError


@dataclass
class ImageData:
    """Images as N x C x H x W, uint8 (meaning value/255) or float32 in [0, 1].

    uint8 is kept as is because it is 4x smaller in memory and on the wire to a GPU; the training
    loop scales batches to float on the device.
    """

    images: np.ndarray
    labels: np.ndarray | None = None      # known classes, for evaluation only
    sources: list[str] | None = None      # one string per image (path, or "file#index")
    name: str = "array"
    class_names: list[str] | None = field(default=None)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, reason) not read
    # per image, for collections read from files: "" when the image is its whole file, else the
    # part of it ("frame=3", "slice=12"); None for arrays, which have no files of their own
    items: list[str] | None = None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def source_of(self, i: int) -> str:
        return self.sources[i] if self.sources is not None else str(i)


def as_images(arr, source: str = "array") -> np.ndarray:
    """Validate an array of images and bring it to N x C x H x W, uint8 or float32 in [0, 1].

    Accepted layouts: N x H x W (gray), N x H x W x C (channels last, as MedMNIST), and
    N x C x H x W (channels first), with C in {1, 3}. uint8 keeps its 0..255 meaning; float data
    already inside [0, 1] is kept; other numeric data is min-max scaled over the whole array.
    """
    try:
        arr = np.asarray(arr)
    except Exception as e:  # ragged lists and the like
        raise DVClustError(f"{source}: cannot be read as an array of images ({e})") from None
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise DVClustError(f"{source}: expected real numeric pixel values, got dtype {arr.dtype}")
    if arr.ndim not in (3, 4):
        raise DVClustError(f"{source}: expected images shaped N x H x W or N x H x W x C "
                           f"(or N x C x H x W), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise DVClustError(f"{source}: contains no images (shape {arr.shape})")
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.shape[-1] in (1, 3) and arr.shape[1] not in (1, 3):
        arr = np.moveaxis(arr, -1, 1)
    elif arr.shape[1] not in (1, 3):
        raise DVClustError(f"{source}: cannot tell the channel axis of shape {arr.shape}; "
                           "expected 1 or 3 channels first or last")
    h, w = arr.shape[2:]
    if min(h, w) < 8 or max(h, w) > 1024:
        raise DVClustError(f"{source}: image size {h}x{w} is outside 8..1024 pixels per side")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).reshape(len(arr), -1).any(1).sum())
        raise DVClustError(f"{source}: {bad} image(s) contain NaN or Inf values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    return np.ascontiguousarray(arr, dtype=np.float32)


def as_labels(y, n: int, source: str = "labels") -> np.ndarray | None:
    if y is None:
        return None
    y = np.asarray(y).reshape(len(y), -1) if np.ndim(y) > 1 else np.asarray(y)
    if y.ndim == 2:
        if y.shape[1] != 1:  # multi-label (e.g. ChestMNIST): no single class to score against
            return None
        y = y[:, 0]
    if len(y) != n:
        raise DVClustError(f"{source}: {len(y)} labels for {n} images")
    return y


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.lru_cache(maxsize=32)
def _png_head(c: int, h: int, w: int) -> bytes:
    colour = {1: 0, 3: 2}[c]  # PNG colour types: gray, RGB
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0))


_PNG_END = _chunk(b"IEND", b"")


def png_bytes(img, level: int = 6) -> bytes:
    """One image as the run saw it (C x H x W, 1 channel gray or 3 RGB; uint8 or float in [0, 1])
    as a PNG file's bytes, compressed at zlib `level` (0: stored). Written with zlib directly:
    PIL's save took two to four times as long per small image, most of it outside the
    compression, and exports write 10^6 of them."""
    a = np.asarray(img)
    a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8) if a.dtype != np.uint8 else a
    c, h, w = a.shape
    rows = np.zeros((h, w * c + 1), np.uint8)  # each row: filter type 0 (none), then its bytes
    rows[:, 1:] = a.transpose(1, 2, 0).reshape(h, w * c)
    return _png_head(c, h, w) + _chunk(b"IDAT", zlib.compress(rows, level)) + _PNG_END
