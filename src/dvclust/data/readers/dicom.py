"""Reader for DICOM files (pydicom): modality LUT (rescale slope/intercept), then the VOI LUT or
window, MONOCHROME1 inverted so that bright always means dense; one image per frame."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..preprocess import to_unit
from . import Reader, optional_import


class DicomReader(Reader):
    name = "DICOM"
    suffixes = (".dcm", ".dicom")

    def can_read(self, path: Path) -> bool:
        # DICOM files often have no suffix at all: then the magic bytes decide
        return super().can_read(path) or ("." not in path.name and is_dicom(path))

    def read(self, path: Path, opts) -> list[tuple[str, np.ndarray]]:
        return _read(path, opts)


def is_dicom(path: Path) -> bool:
    """DICOM Part 10 files carry 'DICM' at byte 128, whatever their name."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _read(path: Path, opts) -> list[tuple[str, np.ndarray]]:
    pydicom = optional_import("pydicom", "dicom", "DICOM")
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except Exception as e:  # pydicom raises many types for bad files and unsupported syntaxes
        msg = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise ValueError(f"DICOM pixel data not readable ({msg})")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    color = int(getattr(ds, "SamplesPerPixel", 1)) > 1
    if frames == 1:
        pixels = pixels[None]
    out = []
    for i, frame in enumerate(pixels):
        if color:
            arr = to_unit(frame)
        else:
            arr = apply_modality_lut(frame, ds)
            arr = apply_voi_lut(arr, ds, index=0) if "WindowCenter" in ds or "VOILUTSequence" in ds else arr
            arr = to_unit(np.asarray(arr, dtype=np.float32))
            if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
                arr = 1.0 - arr
        if not np.isfinite(arr).all():
            raise ValueError(f"frame {i} holds NaN or Inf values")
        out.append((f"frame={i}" if frames > 1 else "", arr))
    return out
