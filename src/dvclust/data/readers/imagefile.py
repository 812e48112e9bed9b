"""Reader for ordinary image files (PNG, JPEG, TIFF, BMP), 8- and 16-bit, gray, RGB or RGBA."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import Reader


class ImageFileReader(Reader):
    name = "image file"
    suffixes = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

    def read(self, path: Path, opts) -> list[tuple[str, np.ndarray]]:
        return _read(path, opts)


def _read(path: Path, opts) -> list[tuple[str, np.ndarray]]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                # 16/32-bit medical exports: scale by the image's own range
                from ..preprocess import to_unit
                arr = to_unit(np.asarray(im, dtype=np.float32))
            else:
                target = "L" if mode in ("1", "L", "P", "LA") and opts.channels == 1 else "RGB"
                if mode == "RGBA":  # composite on black rather than dropping alpha blindly
                    bg = Image.new("RGBA", im.size, (0, 0, 0, 255))
                    im = Image.alpha_composite(bg, im)
                arr = np.asarray(im.convert(target), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"not a readable image ({str(e).splitlines()[0][:120] or type(e).__name__})")
    return [("", arr)]
