"""Meta-batches split over the ranks of a ``torch.distributed`` process group.

The mechanism behind :mod:`fewmed.distributed` for :class:`~fewmed.fewshot._meta_net.MetaNet`
(see that module for what equals one process). :class:`~fewmed.fewshot._meta_net.MetaNet`
calls these hooks; each is a no-op without a process group of more than one rank:

* :func:`before_fit` / :func:`after_initialize` (from ``fit_meta_net``): rank 0's
  seeds, network and optimizer state go to every rank; output and checkpoints
  stay on rank 0.
* :func:`loader_kwargs` (``get_iterator``): rank ``r`` of ``W`` loads tasks
  ``[r*m//W, (r+1)*m//W)`` of every meta-batch of ``m`` tasks; task numbers stay
  global, so the tasks of a run do not depend on ``W``.
* :func:`reduce_gradients` (``on_grad_computed``): each rank's meta-gradient, a
  mean over its share, is weighted by the share's size and summed over the ranks:
  the mean over the whole meta-batch.
* :func:`reduce_after_step` (``on_batch_end``): floating-point buffers (running
  statistics) and the iteration's history values are averaged the same way.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from skorch.callbacks import Callback, Checkpoint, TrainEndCheckpoint

from fewmed.distributed import is_distributed

__all__ = [
    "ShardBatchSampler",
    "after_initialize",
    "before_fit",
    "loader_kwargs",
    "reduce_after_step",
    "reduce_gradients",
]

#: history values that are not means over the meta-batch's tasks (left as they are)
_NOT_MEANS = frozenset({"lr", "epsilon", "effective_tasks", "difficulty", "train_batch_size"})


class ShardBatchSampler:
    """Batches of this rank's share of every meta-batch of ``batch_size`` consecutive tasks.

    Parameters
    ----------
    n : int
        Tasks in the dataset (this epoch).
    batch_size : int
        Tasks per meta-batch (all ranks together).
    rank, world_size : int
        This rank and the number of ranks.

    Examples
    --------
    >>> list(ShardBatchSampler(6, 3, rank=1, world_size=2))
    [[1, 2], [4, 5]]
    """

    def __init__(self, n: int, batch_size: int, rank: int, world_size: int) -> None:
        self.n, self.batch_size = int(n), int(batch_size)
        self.rank, self.world_size = int(rank), int(world_size)

    def __iter__(self):
        for start in range(0, self.n, self.batch_size):
            m = min(self.batch_size, self.n - start)
            lo, hi = self.rank * m // self.world_size, (self.rank + 1) * m // self.world_size
            if hi == lo:
                raise ValueError(
                    f"a meta-batch of {m} tasks cannot be split over {self.world_size} ranks "
                    "(each rank needs at least one task): use meta_batch_size >= the number "
                    "of ranks."
                )
            yield list(range(start + lo, start + hi))

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)


def _collective_error(where: str, err: Exception) -> RuntimeError:
    return RuntimeError(
        f"rank {dist.get_rank()} of {dist.get_world_size()}: distributed meta-training "
        f"stopped {where} because another rank failed, exited or timed out (its own error "
        f"is in its output): {err}"
    )


def _where(net) -> str:
    """The meta-iteration under way (``n_iter_`` is counted up inside the step)."""
    return f"at meta-iteration {max(getattr(net, 'n_iter_', 1) - 1, 0)}"


def _all_reduce(t: torch.Tensor, where: str) -> torch.Tensor:
    try:
        dist.all_reduce(t)
    except Exception as err:  # gloo / NCCL raise RuntimeError subclasses
        raise _collective_error(where, err) from err
    return t


def _broadcast(t: torch.Tensor, where: str = "before meta-training") -> torch.Tensor:
    try:
        dist.broadcast(t, 0)
    except Exception as err:
        raise _collective_error(where, err) from err
    return t


def before_fit(net, train, valid) -> None:
    """Rank 0's seeds for every rank; output only on rank 0; check the meta-batch fits."""
    if not is_distributed():
        return
    world = dist.get_world_size()
    if net.batch_size < world:
        raise ValueError(
            f"meta_batch_size={net.batch_size} is smaller than the {world} ranks; each rank "
            "needs at least one task of every meta-batch: raise meta_batch_size or use fewer "
            "ranks."
        )
    seeds = torch.tensor(
        [net.seed, train.seed, valid.seed if valid is not None else 0, train.n_tasks, len(train.X)],
        dtype=torch.int64,
    )
    mine = seeds.clone()
    _broadcast(seeds)
    if (mine[3:] != seeds[3:]).any():
        raise ValueError(
            f"rank {dist.get_rank()} has {int(mine[4])} images / {int(mine[3])} tasks where rank "
            f"0 has {int(seeds[4])} / {int(seeds[3])}: every rank must fit on the same data "
            "with the same parameters."
        )
    net.seed, train.seed = int(seeds[0]), int(seeds[1])
    if valid is not None:
        valid.seed = int(seeds[2])
    if dist.get_rank() != 0:
        net.verbose = 0


class _Silenced(Callback):
    """A rank-0-only callback (a checkpoint) on another rank: does nothing."""


def after_initialize(net) -> None:
    """Rank 0's network and optimizer state on every rank; checkpoints written by rank 0 only."""
    if not is_distributed():
        return
    with torch.no_grad():
        for t in net.module_.state_dict().values():
            _broadcast(t)
    if dist.get_rank() != 0:
        net.callbacks_ = [
            (name, _Silenced() if isinstance(cb, (Checkpoint, TrainEndCheckpoint)) else cb)
            for name, cb in net.callbacks_
        ]


def loader_kwargs(kwargs: dict, dataset) -> dict:
    """``DataLoader`` arguments loading this rank's share of every meta-batch."""
    if not is_distributed():
        return kwargs
    kwargs = dict(kwargs)
    batch_size = kwargs.pop("batch_size")
    kwargs["batch_sampler"] = ShardBatchSampler(
        len(dataset), batch_size, dist.get_rank(), dist.get_world_size()
    )
    return kwargs


def _n_tasks(batch) -> int:
    _, yq = batch
    return len(yq)


def reduce_gradients(net, batch) -> None:
    """Sum over the ranks of each rank's meta-gradient weighted by its share of the meta-batch."""
    if not is_distributed():
        return
    params = [p for p in net.module_.parameters() if p.grad is not None]
    n_local = _n_tasks(batch)
    dtype = params[0].grad.dtype if params else torch.float64
    flat = torch.cat([p.grad.reshape(-1) for p in params] + [torch.ones(1, dtype=dtype)])
    flat.mul_(n_local)
    _all_reduce(flat, _where(net))
    n_total = flat[-1].item()
    flat = flat[:-1] / n_total
    net.dist_share_ = n_local / n_total
    offset = 0
    for p in params:
        k = p.grad.numel()
        p.grad.copy_(flat[offset : offset + k].view_as(p.grad))
        offset += k


def reduce_after_step(net) -> None:
    """Average float buffers and the iteration's history means over the ranks (by share)."""
    if not is_distributed():
        return
    share = getattr(net, "dist_share_", 1.0 / dist.get_world_size())
    buffers = [b for b in net.module_.buffers() if torch.is_floating_point(b)]
    row = net.history[-1]["batches"][-1]
    keys = sorted(
        k
        for k, v in row.items()
        if k not in _NOT_MEANS and isinstance(v, (int, float)) and not isinstance(v, bool)
    )
    parts = [b.detach().reshape(-1).double() for b in buffers]
    parts.append(torch.tensor([float(row[k]) for k in keys] + [1.0], dtype=torch.float64))
    flat = torch.cat(parts) * share
    _all_reduce(flat, _where(net))
    offset = 0
    with torch.no_grad():
        for b in buffers:
            k = b.numel()
            b.copy_(flat[offset : offset + k].view_as(b))
            offset += k
    values = flat[offset:-1].tolist()
    for k, v in zip(keys, values):
        row[k] = v
    if "train_batch_size" in row:
        row["train_batch_size"] = int(round(row["train_batch_size"] / share))
