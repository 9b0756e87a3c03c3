"""Reptile's meta-training: the outer update and the skorch net that runs it.

Nichol and Schulman, *On First-Order Meta-Learning Algorithms* (2018), as used by
Hu, Tomczak and Welling (MIDL 2018). For every task of a meta-batch, a few
first-order Adam steps from the initialization ``phi`` give ``phi_i``
(:func:`fewmed._finetune.train_steps`, mini-batches); then

    phi <- phi + epsilon * mean_i(phi_i - phi)

(:func:`reptile_update`). :class:`ReptileNet` is the
:class:`~fewmed.fewshot._meta_net.MetaNet` that performs one such outer step per
meta-batch; :class:`~fewmed.fewshot.ReptileInitializer` drives it.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fewmed._finetune import train_steps
from fewmed.fewshot._meta_net import MetaNet

__all__ = ["ReptileNet", "reptile_update"]


def reptile_update(
    phi: dict[str, torch.Tensor], task_states: list[dict[str, torch.Tensor]], epsilon: float
) -> dict[str, torch.Tensor]:
    """The Reptile outer step ``phi + epsilon * mean_i(phi_i - phi)``.

    Parameters
    ----------
    phi : dict of str to Tensor
        Current initialization (a ``state_dict``).
    task_states : list of dict
        Weights after the inner loop of every task of the meta-batch.
    epsilon : float
        Outer step size (1 moves ``phi`` to the mean of the task weights).

    Returns
    -------
    dict of str to Tensor
        The new initialization. Integer entries (BatchNorm's batch counter) are
        taken from the last task.

    Examples
    --------
    >>> import torch
    >>> new = reptile_update({"w": torch.zeros(2)}, [{"w": torch.ones(2)}], 0.5)
    >>> new["w"].tolist()
    [0.5, 0.5]
    """
    if not task_states:
        raise ValueError("reptile_update needs at least one task state.")
    out = {}
    for k, v in phi.items():
        if not torch.is_floating_point(v):
            out[k] = task_states[-1][k].clone()
            continue
        mean = torch.stack([s[k] for s in task_states]).mean(0)
        out[k] = v + epsilon * (mean - v)
    return out


class ReptileNet(MetaNet):
    """The skorch net under :class:`~fewmed.fewshot.ReptileInitializer`: a Reptile step per batch.

    Each batch of a :class:`~fewmed.fewshot._meta_net.TaskDataset` is a meta-batch of
    tasks. ``train_step_single`` trains a copy of the network on every task
    (``n_inner_steps`` Adam steps, :func:`fewmed._finetune.train_steps`) and sets each
    parameter's gradient to ``phi - mean_i(phi_i)``, so that the net's SGD
    optimizer, whose learning rate is ``epsilon``, performs
    ``phi + epsilon * mean_i(phi_i - phi)``; BatchNorm's running statistics are
    interpolated the same way. ``validation_step`` trains on a validation task's
    support set for ``n_eval_steps`` and returns the query loss (BatchNorm in
    training mode, as in Reptile's transductive evaluation). Per iteration the
    history's batches hold ``train_loss`` and ``task_loss`` (the mean inner-loop
    loss), ``epsilon`` and ``lr``.

    The net's optimizer (SGD) performs the outer step; its ``lr`` is ``epsilon``.
    The inner loop's settings are read from the ``estimator``, a
    :class:`~fewmed.fewshot.ReptileInitializer`: ``inner_lr`` and ``inner_beta1``
    (Adam), ``n_inner_steps`` per training task, ``inner_batch_size`` images per
    step and ``n_adapt_steps`` on a validation task's support set.

    Examples
    --------
    >>> from fewmed import ReptileInitializer
    >>> from fewmed.datasets import make_synthetic_lesions
    >>> d = make_synthetic_lesions(n_classes=3, n_per_class=10, size=16, random_state=0)
    >>> rep = ReptileInitializer(n_way=3, n_shot=2, n_train_shot=None, n_filters=4,
    ...                          n_iterations=2, verbose=0)
    >>> net = rep.fit(d.images, d.target).meta_net_
    >>> type(net).__name__, net.n_iter_
    ('ReptileNet', 2)
    """

    def _inner_loop(
        self,
        worker: nn.Module,
        xs: torch.Tensor,
        ys: torch.Tensor,
        steps: int,
        generator: torch.Generator,
    ) -> float:
        """``steps`` Adam steps (``inner_lr``, ``inner_beta1``) on mini-batches of a task."""
        est = self.estimator
        return train_steps(
            worker,
            xs,
            ys,
            steps,
            generator,
            lr=est.inner_lr,
            betas=(est.inner_beta1, 0.999),
            batch_size=est.inner_batch_size,
        )

    def _task_weights(
        self, XS: list, YS: list, steps: int, generator: torch.Generator
    ) -> tuple[list[dict], list[float]]:
        phi = self.module_.state_dict()
        worker = copy.deepcopy(self.module_)
        states, losses = [], []
        for xs, ys in zip(XS, YS):
            worker.load_state_dict(phi)
            worker.train()
            loss = self._inner_loop(worker, xs, ys, steps, generator)
            losses.append(loss)
            states.append({k: v.detach().clone() for k, v in worker.state_dict().items()})
        return states, losses

    def train_step_single(self, batch: Any, **fit_params: Any) -> dict:
        self._set_training(True)
        XS, YS, _, _ = self.unpack_tasks(batch)  # noqa: N806
        seed = int(np.random.default_rng([self.seed, self.n_iter_]).integers(2**62))
        states, losses = self._task_weights(XS, YS, self.estimator.n_inner_steps, _generator(seed))
        epsilon = self.optimizer_.param_groups[0]["lr"]
        phi = {k: v.detach().clone() for k, v in self.module_.state_dict().items()}
        mean = reptile_update(phi, states, 1.0)
        buffers = reptile_update(phi, states, epsilon)
        loss = torch.tensor(float(np.mean(losses)))
        self.check_finite(loss, "Lower inner_lr or meta_step_size.")
        with torch.no_grad():
            for name, p in self.module_.named_parameters():
                p.grad = phi[name] - mean[name]
            for name, b in self.module_.named_buffers():
                b.copy_(buffers[name])
        self.record(task_loss=loss.item(), epsilon=epsilon)
        self.n_iter_ += 1
        return {"loss": loss, "y_pred": None}

    def validation_step(self, batch: Any, **fit_params: Any) -> dict:
        XS, YS, XQ, YQ = self.unpack_tasks(batch)  # noqa: N806
        phi = {k: v.detach().clone() for k, v in self.module_.state_dict().items()}
        gen = _generator(self.seed + 1)
        worker = copy.deepcopy(self.module_)
        losses, accs = [], []
        for xs, ys, xq, yq in zip(XS, YS, XQ, YQ):
            worker.load_state_dict(phi)
            worker.train()
            self._inner_loop(worker, xs, ys, self.estimator.n_adapt_steps, gen)
            with torch.no_grad():
                logits = worker(xq)
            losses.append(F.cross_entropy(logits, yq).item())
            accs.append((logits.argmax(1) == yq).float().mean().item())
        self.record(valid_acc=float(np.mean(accs)))
        return {"loss": torch.tensor(float(np.mean(losses))), "y_pred": None}


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
