"""Image arrays as torch datasets: the data side shared by fewmed's skorch classifiers.

:class:`ArrayDataset` serves float ``(n, C, H, W)`` images and label codes a whole
batch at a time (:func:`collate_batch`); :func:`softmax` and
:func:`sigmoid` are the ``predict_nonlinearity`` of single- and multi-label models.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = [
    "ArrayDataset",
    "collate_batch",
    "is_array_dataset",
    "sigmoid",
    "softmax",
]


def softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the class axis: the ``predict_nonlinearity`` of CE / focal models.

    Examples
    --------
    >>> import torch
    >>> softmax(torch.zeros(1, 2))
    tensor([[0.5000, 0.5000]])
    """
    return torch.softmax(logits, dim=1)


def sigmoid(logits: torch.Tensor) -> torch.Tensor:
    """Element-wise sigmoid: the ``predict_nonlinearity`` of multi-label models.

    Examples
    --------
    >>> import torch
    >>> sigmoid(torch.zeros(1, 2))
    tensor([[0.5000, 0.5000]])
    """
    return torch.sigmoid(logits)


class ArrayDataset(torch.utils.data.Dataset):
    """Images (float ``(n, C, H, W)``) and optional label codes, fetched a batch at a time.

    ``__getitems__`` lets the ``DataLoader`` slice a whole batch at once instead
    of collating ``batch_size`` single images (several times faster on a CPU).

    Examples
    --------
    >>> import numpy as np
    >>> ds = ArrayDataset(np.zeros((4, 1, 2, 2), dtype=np.float32), np.arange(4))
    >>> len(ds), ds[1][1]
    (4, tensor(1))
    """

    def __init__(self, X: np.ndarray, y: np.ndarray | None = None) -> None:
        self.X = torch.from_numpy(np.ascontiguousarray(X))
        self.y = None if y is None else torch.from_numpy(np.asarray(y, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.X)

    def __getitem__(self, i):
        return self.X[i], (self.y[i] if self.y is not None else torch.zeros(()))

    def __getitems__(self, indices):
        idx = torch.as_tensor(indices)
        y = self.y[idx] if self.y is not None else torch.zeros(len(idx))
        return [(self.X[idx], y)]


def collate_batch(batch):
    """The ``collate_fn`` of :class:`ArrayDataset` loaders (its batches come stacked)."""
    if len(batch) == 1 and isinstance(batch[0], tuple) and batch[0][0].ndim == 4:
        return batch[0]
    return torch.utils.data.default_collate(batch)


def is_array_dataset(ds: Any) -> bool:
    """Whether ``ds`` is an :class:`ArrayDataset` (or a ``Subset`` of one)."""
    while isinstance(ds, torch.utils.data.Subset):
        ds = ds.dataset
    return isinstance(ds, ArrayDataset)
