"""The skorch machinery the meta-learners share: meta-batches of tasks as skorch batches.

The batches of a :class:`fewmed.fewshot._tasks.TaskDataset` (``batch_size =
meta_batch_size``) are meta-batches, and
:class:`MetaNet`, a skorch ``NeuralNet``, runs one meta-update per batch in
``train_step_single``. Everything else is skorch's own loop, so its callbacks
work unchanged: learning-rate schedules, ``Checkpoint``, ``EarlyStopping`` on
validation tasks, ``ProgressBar``, ``PrintLog``, and ``history`` with one row per
"epoch" of ``iterations_per_epoch`` meta-updates whose ``batches`` hold the
per-iteration values (``train_loss`` is the meta-loss).

A :class:`MetaNet` holds a reference to the estimator it serves (``estimator``) and
reads that estimator's hyper-parameters (``inner_lr``, ``eta``, ...) when it needs
them: each parameter and its default is declared once, on the estimator.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from skorch import NeuralNet
from skorch.callbacks import Callback, PassthroughScoring, ProgressBar
from skorch.dataset import unpack_data
from skorch.utils import to_device

from fewmed.fewshot import _distributed
from fewmed.fewshot._tasks import TaskDataset

__all__ = ["MetaNet", "IterationSchedule", "step_decay", "linear_anneal"]


def step_decay(step_size: int | None, gamma: float = 0.1) -> Callable[[int], float]:
    """Learning-rate factor ``gamma ** (iteration // step_size)`` (constant if ``None``)."""
    return _StepDecay(step_size, gamma)


def linear_anneal(start: float, end: float, n_iterations: int) -> Callable[[int], float]:
    """Value annealed linearly from ``start`` (iteration 0) to ``end`` (``n_iterations``)."""
    return _Linear(start, end, n_iterations)


class _StepDecay:  # classes, not closures: the net must pickle
    def __init__(self, step_size, gamma):
        self.step_size, self.gamma = step_size, gamma

    def __call__(self, it: int) -> float:
        return 1.0 if self.step_size is None else self.gamma ** (it // self.step_size)


class _Linear:
    def __init__(self, start, end, n):
        self.start, self.end, self.n = start, end, n

    def __call__(self, it: int) -> float:
        frac = it / max(self.n, 1)
        return frac * self.end + (1 - frac) * self.start


class IterationSchedule(Callback):
    """Sets the learning rate before every meta-update from its global iteration.

    ``lr = schedule(net.n_iter_)`` if ``absolute`` else ``net.lr * schedule(...)``.
    Unlike an epoch-counted scheduler it resumes exactly after ``warm_start``. The
    rate used is recorded per batch as ``lr``.
    """

    def __init__(self, schedule: Callable[[int], float], absolute: bool = False) -> None:
        self.schedule = schedule
        self.absolute = absolute

    def on_batch_begin(self, net, batch=None, training=None, **kwargs):
        if not training:
            return
        factor = self.schedule(net.n_iter_)
        lr = factor if self.absolute else net.lr * factor
        for group in net.optimizer_.param_groups:
            group["lr"] = lr
        net.history.record_batch("lr", lr)


class MetaNet(NeuralNet):
    """skorch ``NeuralNet`` whose batches are meta-batches of :class:`TaskDataset` tasks.

    Subclasses implement ``train_step_single`` (one meta-update: compute the
    meta-loss and its gradient) and may override ``validation_step`` (a
    validation task's query loss after adaptation). ``n_iter_`` counts the
    meta-updates; ``record`` adds a per-iteration value to the history.

    Parameters
    ----------
    module : nn.Module
        The (built) network whose parameters are meta-learned.
    estimator : estimator or None, default=None
        The estimator this net trains for; subclasses read its hyper-parameters
        (``self.estimator.inner_lr``, ...) instead of keeping copies.
    seed : int, default=0
        Seed of the subclass's own randomness (inner-loop batches).
    **kwargs
        Anything ``skorch.NeuralNet`` takes; ``train_split`` defaults to ``None``
        (the task stream has no hold-out: pass validation tasks through
        ``skorch.helper.predefined_split``).
    """

    def __init__(
        self,
        module,
        *args,
        criterion=torch.nn.CrossEntropyLoss,
        train_split=None,
        estimator=None,
        seed=0,
        **kwargs,
    ):
        super().__init__(module, *args, criterion=criterion, train_split=train_split, **kwargs)
        self.estimator = estimator
        self.seed = seed

    @property
    def _default_callbacks(self):
        cbs = list(super()._default_callbacks)
        cbs.insert(-1, ("valid_acc", PassthroughScoring(name="valid_acc")))
        if self.verbose:
            cbs.append(("progress_bar", ProgressBar(postfix_keys=["train_loss", "task_loss"])))
        return cbs

    def initialize(self):
        super().initialize()
        self.n_iter_ = 0
        return self

    def on_epoch_begin(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        super().on_epoch_begin(net, dataset_train=dataset_train, dataset_valid=dataset_valid)
        if isinstance(dataset_train, TaskDataset):
            dataset_train.start = self.n_iter_ * self.batch_size

    def get_iterator(self, dataset, training: bool = False):
        """skorch's ``DataLoader`` over tasks, in order, with a private generator.

        The tasks are already random; the generator only stops the loader from
        drawing its base seed from torch's global RNG.
        """
        prefix = "iterator_train" if training else "iterator_valid"
        kwargs = self.get_params_for(prefix)
        kwargs.setdefault("batch_size", self.batch_size)
        kwargs.setdefault("generator", torch.Generator())
        if training:  # under torch.distributed: this rank's share of every meta-batch
            kwargs = _distributed.loader_kwargs(kwargs, dataset)
        iterator = self.iterator_train if training else self.iterator_valid
        return iterator(dataset, **kwargs)

    def on_grad_computed(self, net, named_parameters, batch=None, **kwargs):
        super().on_grad_computed(net, named_parameters, batch=batch, **kwargs)
        _distributed.reduce_gradients(self, batch)  # no-op in one process

    def on_batch_end(self, net, batch=None, training=None, **kwargs):
        super().on_batch_end(net, batch=batch, training=training, **kwargs)
        if training:
            _distributed.reduce_after_step(self)  # no-op in one process

    # ------------------------------------------------------------ helpers
    def unpack_tasks(self, batch) -> tuple[torch.Tensor, ...]:
        """``XS, YS, XQ, YQ`` of a meta-batch, on the net's device."""
        task, yq = unpack_data(batch)
        task = to_device(task, self.device)
        return task["xs"], task["ys"].long(), task["xq"], to_device(yq, self.device).long()

    def record(self, **values: float) -> None:
        """Add per-iteration values to the current batch of the history."""
        for k, v in values.items():
            self.history.record_batch(k, v)

    def check_finite(self, loss: torch.Tensor, hint: str) -> None:
        """Raise ``FloatingPointError`` naming the iteration when ``loss`` is not finite."""
        if not torch.isfinite(loss).all():
            raise FloatingPointError(
                f"meta-training diverged at iteration {self.n_iter_}: the meta-loss is "
                f"{loss.detach().cpu().numpy()}. {hint}"
            )

    def iteration_records(self) -> list[dict]:
        """The per-iteration values of every training batch, in order, with ``iteration``."""
        rows = []
        for epoch in self.history:
            for b in epoch["batches"]:
                if "train_loss" in b:
                    rows.append({"iteration": len(rows), **b})
        return rows


def fit_meta_net(
    net: MetaNet, train: TaskDataset, valid: TaskDataset | None = None, *, resume: bool = False
) -> MetaNet:
    """Meta-train ``net`` on ``train``'s tasks up to its last one.

    A fresh net is initialised first; with ``resume`` it continues from
    ``net.n_iter_`` (``warm_start``). ``valid`` tasks become the validation set
    (``valid_loss`` / ``valid_acc`` per epoch). The number of epochs is what the
    remaining tasks need, so ``max_epochs`` is set here.
    """
    from skorch.helper import predefined_split

    net.train_split = None if valid is None else predefined_split(valid)
    _distributed.before_fit(net, train, valid)  # torch.distributed: rank 0's seeds
    if not resume or not net.initialized_:
        net.initialize()
    _distributed.after_initialize(net)  # torch.distributed: rank 0's network
    net.max_epochs = train.n_epochs(net.n_iter_ * net.batch_size)
    if net.max_epochs:
        net.partial_fit(train, None)
    return net
