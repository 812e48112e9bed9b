"""File readers: one small interface, a registry that a user can extend, and the one helper that
imports a format's optional library (naming the extra to install when it is missing).

A reader claims a path (`can_read`) and reads it (`read(path, opts)`) into a list of
(item, image) pairs: item names a frame or slice within the file ("" for a plain image), image is
a float array in [0, 1], H x W or H x W x C. A bad file raises ValueError (the store skips and
lists it); a missing library raises DVClustError (the run stops with one line). Every image then
goes through data.preprocess, identically at fit and predict time.

    from dvclust.data.readers import Reader, register_reader

    class NpyFrames(Reader):
        name, suffixes = "npy frames", (".frames.npy",)
        def read(self, path, opts):
            return [(f"frame={i}", f) for i, f in enumerate(np.load(path))]

    register_reader(NpyFrames(), first=True)
"""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import numpy as np

from ...errors import DVClustError


class Reader:
    name: str = "?"
    suffixes: tuple[str, ...] = ()   # lower case, with the dot: (".png", ".jpg")

    def can_read(self, path: Path) -> bool:
        return path.name.lower().endswith(self.suffixes)

    def read(self, path: Path, opts) -> list[tuple[str, np.ndarray]]:
        raise NotImplementedError


def optional_import(module: str, extra: str, what: str) -> ModuleType:
    """`module`, or one line saying how to install it: reading `what` needs dvclust[extra]."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DVClustError(f"reading {what} needs {module.split('.')[0]}: "
                           f"pip install 'dvclust[{extra}]'") from None


READERS: list[Reader] = []


def register_reader(reader: Reader, first: bool = False) -> Reader:
    """Add a reader; `first=True` lets it claim paths before the built-in ones."""
    READERS.insert(0, reader) if first else READERS.append(reader)
    return reader


def reader_for(path: Path) -> Reader | None:
    return next((r for r in READERS if r.can_read(path)), None)


def known_suffixes() -> list[str]:
    return [s for r in READERS for s in r.suffixes]


from .imagefile import ImageFileReader  # noqa: E402  (the built-ins register below)
from .nifti import NiftiReader  # noqa: E402
from .dicom import DicomReader  # noqa: E402

for _r in (ImageFileReader(), NiftiReader(), DicomReader()):
    register_reader(_r)

__all__ = ["Reader", "READERS", "register_reader", "reader_for", "known_suffixes",
           "optional_import", "ImageFileReader", "NiftiReader", "DicomReader"]
