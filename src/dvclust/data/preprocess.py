"""The one preprocessing every reader's output goes through, at training and prediction time alike:
float image in [0, 1] -> channels (gray or RGB) -> square (pad or centre-crop) -> size x size -> uint8.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from ..errors import DVClustError


@dataclass(frozen=True)
class ReadOptions:
    size: int = 64                 # output side in pixels
    resize: str = "pad"            # "pad" to square (keeps the whole image) or "crop" the centre
    channels: int = 1              # 1 (gray) or 3 (RGB)
    folder_labels: bool = True     # class subfolders -> known labels
    axis: int = 2                  # NIfTI: slice axis
    slices: str = "::"             # NIfTI: start:stop:step along that axis
    clip: tuple = (0.5, 99.5)      # NIfTI: intensity percentiles clipped to [0, 1]

    def __post_init__(self):
        if not isinstance(self.size, int) or not 8 <= self.size <= 1024:
            raise DVClustError(f"--size {self.size}: expected an integer from 8 to 1024")
        if self.resize not in ("pad", "crop"):
            raise DVClustError(f"--resize {self.resize!r}: use 'pad' or 'crop'")
        if self.channels not in (1, 3):
            raise DVClustError(f"--channels {self.channels}: use 1 (gray) or 3 (RGB)")
        if self.axis not in (0, 1, 2):
            raise DVClustError(f"--axis {self.axis}: use 0, 1 or 2")
        slice_from(self.slices)
        lo, hi = self.clip
        if not 0 <= lo < hi <= 100:
            raise DVClustError(f"--clip {self.clip}: expected two percentiles 0 <= low < high <= 100")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["clip"] = list(self.clip)
        return d


def slice_from(text: str) -> slice:
    try:
        parts = [int(p) if p.strip() else None for p in text.split(":")]
        if len(parts) == 1:
            parts = [parts[0], parts[0] + 1 if parts[0] is not None else None]
        return slice(*parts)
    except (ValueError, TypeError):
        raise DVClustError(f"--slices {text!r}: expected start:stop:step, e.g. 10:50:2") from None


def to_unit(arr: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] per image (flat images become 0)."""
    arr = arr.astype(np.float32, copy=False)
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def preprocess(img: np.ndarray, opts: ReadOptions) -> np.ndarray:
    """img: H x W or H x W x C float in [0, 1] -> C x size x size uint8."""
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    if img.ndim == 3 and opts.channels == 1:
        img = img[:, :, :3] @ np.array([0.299, 0.587, 0.114], np.float32)[: img.shape[2]] \
            if img.shape[2] >= 3 else img[:, :, 0]
    if img.ndim == 2 and opts.channels == 3:
        img = np.repeat(img[:, :, None], 3, axis=2)
    h, w = img.shape[:2]
    if opts.resize == "crop":
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        img = img[top:top + s, left:left + s]
    elif h != w:
        s = max(h, w)
        pad = [((s - h) // 2, s - h - (s - h) // 2), ((s - w) // 2, s - w - (s - w) // 2)]
        img = np.pad(img, pad + [(0, 0)] * (img.ndim - 2))
    chans = [img] if img.ndim == 2 else [img[:, :, c] for c in range(img.shape[2])]
    out = [np.asarray(Image.fromarray(np.ascontiguousarray(c, dtype=np.float32), mode="F")
                      .resize((opts.size, opts.size), Image.BILINEAR)) for c in chans]
    return np.clip(np.rint(np.stack(out) * 255.0), 0, 255).astype(np.uint8)
