"""Reader for NIfTI volumes (nibabel): 2-D slices along an axis, with a slice range/step and
intensity clipping at percentiles of the whole volume (so slices of one volume share a scale)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..preprocess import slice_from
from . import Reader, optional_import


class NiftiReader(Reader):
    name = "NIfTI"
    suffixes = (".nii", ".nii.gz")

    def read(self, path: Path, opts) -> list[tuple[str, np.ndarray]]:
        return _read(path, opts)


def _read(path: Path, opts) -> list[tuple[str, np.ndarray]]:
    nib = optional_import("nibabel", "nifti", "NIfTI")
    try:
        vol = np.asarray(nib.load(str(path)).get_fdata(dtype=np.float32))
    except Exception as e:
        raise ValueError(f"not a readable NIfTI volume ({str(e).splitlines()[0][:120]})")
    if vol.ndim == 4:
        vol = vol[..., 0]  # the first volume of a series
    if vol.ndim == 2:
        vol = vol[:, :, None]
    if vol.ndim != 3:
        raise ValueError(f"expected a 3-D volume, got shape {vol.shape}")
    finite = np.isfinite(vol)
    if not finite.any():
        raise ValueError("the volume holds no finite values (all NaN/Inf)")
    lo, hi = np.percentile(vol[finite], opts.clip)
    vol = np.where(finite, vol, lo)
    vol = np.clip((vol - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(vol)
    idx = range(vol.shape[opts.axis])[slice_from(opts.slices)]
    if len(idx) == 0:
        raise ValueError(f"slices {opts.slices!r} select nothing of {vol.shape[opts.axis]} along axis {opts.axis}")
    return [(f"slice={i}", np.take(vol, i, axis=opts.axis)) for i in idx]
