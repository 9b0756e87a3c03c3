"""Data-parallel meta-training over ``torch.distributed`` (launch with ``torchrun``).

fewmed does not run its own process engine: a script started by ``torchrun``
calls :func:`init_distributed` once, then fits a meta-learner (DAML, ProtoNet,
Reptile) as usual. While a process group of more than one rank is initialised,
every meta-batch of ``meta_batch_size`` tasks is split between the ranks: task
numbers stay global (task ``t`` is drawn from ``default_rng([seed, t])`` on
whichever rank computes it), each rank computes the meta-gradient of its share,
the shares are all-reduced (weighted by the share of the meta-batch each rank
holds), and every rank takes the same optimizer step. Rank 0's seed, network
and task stream are broadcast first, so ``random_state=None`` works too.

What equals one process: the meta-loss of DAML (MAML's mean, or Eq. 3) is a sum
over tasks and its networks keep no running statistics, so the meta-gradients
and fitted parameters of ``N`` ranks equal one process's up to the order of
floating-point sums (float64: 1e-10; float32: 1e-5 relative after a few
iterations, see ``docs/scaling.md``). Reptile's outer step is a mean over tasks
and equals one process's when the inner loop is deterministic per task
(``inner_batch_size`` at least the task's size: no mini-batch permutation is
drawn); with mini-batches the draws continue within a rank, so ranks draw other
mini-batches than one process. ProtoNet normalises a meta-batch with BatchNorm
over all its images: each rank normalises its share (as
``DistributedDataParallel`` without ``SyncBatchNorm``), so its gradients differ
from one process's by the BatchNorm statistics of the shares; the running
statistics are averaged over the ranks after every step, so all ranks keep the
same network.

Rank 0 keeps the output: on the other ranks the progress bar and log are off and
skorch ``Checkpoint`` callbacks do not write. The history is the same on every
rank: its per-iteration means (``train_loss``, ``task_loss``, ``query_acc``, ...)
are the meta-batch's, except ``effective_tasks``, which is rank 0's share.
A rank that fails (an exception, a lost process) ends the others with a
``RuntimeError`` at their next collective, at the latest after ``timeout``.

Examples
--------
>>> from fewmed.distributed import is_distributed, rank, world_size
>>> is_distributed(), rank(), world_size()  # no process group: one process
(False, 0, 1)
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = [
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "rank",
    "shutdown",
    "world_size",
]


def is_distributed() -> bool:
    """Whether a process group of more than one rank is initialised.

    Returns
    -------
    bool
        False without a process group and with a group of one rank.

    Examples
    --------
    >>> is_distributed()  # a single process, no process group
    False
    """
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group).

    Returns
    -------
    int
        In ``0..world_size() - 1``.

    Examples
    --------
    >>> rank()  # a single process, no process group
    0
    """
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of ranks (1 without a process group).

    Returns
    -------
    int
        The size of the default process group, at least 1.

    Examples
    --------
    >>> world_size()  # a single process, no process group
    1
    """
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Whether this process is rank 0 (the one that writes output).

    Returns
    -------
    bool
        True without a process group.

    Examples
    --------
    >>> is_main_process()  # a single process is the main one
    True
    """
    return rank() == 0


def init_distributed(
    backend: str | None = None,
    *,
    init_method: str | None = None,
    timeout: float = 600.0,
    rank: int | None = None,
    world_size: int | None = None,
) -> str:
    """Initialise the default process group from ``torchrun``'s environment.

    ``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
    ``MASTER_PORT``; this reads them (``init_method="env://"``). On a GPU machine
    each rank takes the GPU ``LOCAL_RANK`` (``torch.cuda.set_device``), so
    ``device="cuda"`` / ``"auto"`` puts every rank on its own GPU.

    Parameters
    ----------
    backend : {"gloo", "nccl"} or None, default=None
        ``None``: NCCL when CUDA is available, gloo otherwise.
    init_method : str or None, default=None
        ``None`` is ``"env://"``; a ``"file://..."`` URL needs no network.
    timeout : float, default=600.0
        Seconds a collective waits for the other ranks before it raises: a rank
        that dies or hangs ends the others within this time.
    rank, world_size : int or None, default=None
        Override ``RANK`` / ``WORLD_SIZE`` (needed with a ``file://`` method).

    Returns
    -------
    str
        The backend in use.

    Examples
    --------
    A script ``train.py`` run as ``torchrun --nproc-per-node 2 train.py``::

        from fewmed import DAMLClassifier
        from fewmed.distributed import init_distributed, is_main_process
        init_distributed()
        clf = DAMLClassifier(n_iterations=3000, random_state=0).fit(X, y)
        if is_main_process():
            joblib.dump(clf, "daml.joblib")
    """
    if dist.is_initialized():
        return dist.get_backend()
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    kwargs = {}
    if rank is not None:
        kwargs["rank"] = rank
    if world_size is not None:
        kwargs["world_size"] = world_size
    dist.init_process_group(
        backend,
        init_method=init_method or "env://",
        timeout=timedelta(seconds=timeout),
        **kwargs,
    )
    return backend


def shutdown() -> None:
    """Destroy the default process group (no-op without one).

    Examples
    --------
    >>> shutdown()
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
