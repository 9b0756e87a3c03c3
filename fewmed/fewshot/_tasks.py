"""Few-shot tasks as a torch dataset: the one task stream of meta-training and validation.

:class:`TaskDataset` turns a labelled image set into episodes drawn by
:class:`fewmed.model_selection.EpisodeSampler` (its public ``index`` / ``draw``):
item ``i`` is one task, a dict of support images / labels and query images, with
the query labels as target. Task ``t`` is drawn with
``numpy.random.default_rng([seed, t])`` from its global number, not from the epoch,
so a run that is split (``warm_start``) or has other epoch boundaries sees exactly
the same tasks as one that is not. Scoring (``FewShotMixin.episode_scores``) draws
from the same sampler with :meth:`~fewmed.model_selection.EpisodeSampler.sample`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from fewmed.model_selection import EpisodeSampler

__all__ = ["TaskDataset"]


class TaskDataset(torch.utils.data.Dataset):
    """Seeded few-shot episodes of ``(X, y)`` as a map-style dataset.

    Parameters
    ----------
    X : Tensor (n, C, H, W)
        Images (float).
    y : array-like of shape (n,)
        Labels.
    n_way, n_shot, n_query : int
        Task shape.
    seed : int
        Task ``t`` is drawn with ``numpy.random.default_rng([seed, t])``.
    n_tasks : int
        Tasks in the whole run (the last task number is ``n_tasks - 1``).
    tasks_per_epoch : int or None, default=None
        Tasks per pass; ``None`` is all of them. Epoch boundaries fall on
        multiples of it, so an epoch that starts mid-way (a resumed run) is short.
    augment : callable or None, default=None
        Applied to a task's support and query images, seeded by the task.

    Examples
    --------
    >>> import numpy as np, torch
    >>> ds = TaskDataset(torch.zeros(40, 1, 8, 8), np.repeat([0, 1], 20), n_way=2, n_shot=1,
    ...                  n_query=3, seed=0, n_tasks=4)
    >>> task, yq = ds[0]
    >>> task["xs"].shape, task["ys"].tolist(), yq.tolist(), len(ds)
    (torch.Size([2, 1, 8, 8]), [0, 1], [0, 0, 0, 1, 1, 1], 4)
    """

    def __init__(
        self,
        X: torch.Tensor,
        y: Any,
        *,
        n_way: int,
        n_shot: int,
        n_query: int,
        seed: int,
        n_tasks: int,
        tasks_per_epoch: int | None = None,
        augment: Callable | None = None,
    ) -> None:
        self.X = X
        self.sampler = EpisodeSampler(n_way, n_shot, n_query)
        self.index = self.sampler.index(np.asarray(y))
        self.seed = int(seed)
        self.n_tasks = int(n_tasks)
        self.tasks_per_epoch = tasks_per_epoch
        self.augment = augment
        self.start = 0

    def __len__(self) -> int:
        left = self.n_tasks - self.start
        if self.tasks_per_epoch is None:
            return max(left, 0)
        return max(min(self.tasks_per_epoch - self.start % self.tasks_per_epoch, left), 0)

    def __getitem__(self, i: int):
        rng = np.random.default_rng([self.seed, self.start + int(i)])
        ep = self.sampler.draw(self.index, rng)
        xs, xq = self.X[ep.support_idx], self.X[ep.query_idx]
        if self.augment is not None:
            gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
            xs = self.augment(xs, generator=gen)
            if len(xq):
                xq = self.augment(xq, generator=gen)
        task = {"xs": xs, "ys": torch.as_tensor(ep.support_y), "xq": xq}
        return task, torch.as_tensor(ep.query_y)

    def n_epochs(self, start_task: int) -> int:
        """Epochs from task ``start_task`` to the end (short first and last ones count)."""
        n, t = 0, start_task
        while t < self.n_tasks:
            step = self.n_tasks - t
            if self.tasks_per_epoch is not None:
                step = min(step, self.tasks_per_epoch - t % self.tasks_per_epoch)
            t += step
            n += 1
        return n
