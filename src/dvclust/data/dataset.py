"""The torch Dataset every path goes through (API, CLI, distributed).

`__getitems__` hands the DataLoader whole batches by fancy indexing, so a batch of 256 costs one
numpy gather instead of 256 item fetches and a collate: at 28x28 that is what keeps the loader
from eating the step time.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


class ImageDataset(Dataset):
    """Images (N x C x H x W, uint8 or float32) with their row indices."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.__getitems__([i])

    def __getitems__(self, idx: list[int]):
        idx = np.asarray(idx, dtype=np.int64)
        # Sorted reads are kinder to memory-mapped stores; the order inside a batch does not matter
        # to any loss here, but the index travels along so targets still line up.
        idx.sort()
        batch = np.require(self.images[idx], requirements=["C", "W"])
        return torch.from_numpy(batch), torch.from_numpy(idx)


def collate_batch(batch):
    """The dataset already returns a batch."""
    return batch


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 batches mean value/255; float batches are already in [0, 1]."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
