"""The skorch estimators data-parallel (and in mixed precision) through Hugging Face Accelerate.

skorch's :class:`skorch.hf.AccelerateMixin` prepares a net's module, criterion,
optimizer and data loaders with an :class:`accelerate.Accelerator`: launched with
``accelerate launch`` or ``torchrun``, every process trains on its share of each
epoch's batches and the gradients are averaged (``DistributedDataParallel``);
``Accelerator(mixed_precision="bf16")`` (or ``"fp16"``, GPU) runs the forward
pass and loss under ``torch.autocast``.

fewmed's skorch classifiers build their real networks only when ``fit`` sees the
data (``ImageNetClassifier.check_data``), after skorch's ``initialize`` has run;
:class:`AccelerateFitMixin` hands those real modules, criteria and optimizer to
the accelerator when they are built, and keeps fewmed's training step
(augmentation, the loss terms in the history) with the accelerator's
``autocast`` and ``backward``. Only training is split: validation and prediction
run whole on every process (the same network and data give every process the same
scores, so ``EarlyStopping`` stops them all at the same epoch), and the best
weights ``EarlyStopping(load_best=True)`` kept are restored into the unwrapped
network. Classes ready to use:
:class:`AcceleratedRelationalSubsetsDistiller` (data-parallel over processes; its
teachers train as usual, on joblib workers: see ``docs/scaling.md``),
:class:`AcceleratedSupervisedNet` (the fine-tuning path, data-parallel:
``fewmed._finetune.fine_tune`` / ``pretrain`` with ``accelerator=``) and
:class:`AcceleratedCDCClassifier` (one process: mixed precision only).

``device`` must be ``None`` (the accelerator places the data and modules).

Examples
--------
A script ``train.py`` launched with ``torchrun --nproc-per-node 2 train.py``::

    from accelerate import Accelerator
    from fewmed.accelerate import AcceleratedCDCClassifier
    clf = AcceleratedCDCClassifier(accelerator=Accelerator(), device=None, max_epochs=20)
    clf.fit(X, y)            # each process trains on its share of every epoch
"""

from __future__ import annotations

from numbers import Integral
from typing import Any

import torch
from skorch.callbacks import EarlyStopping, LRScheduler
from skorch.hf import AccelerateMixin
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from fewmed._finetune import SupervisedNet
from fewmed._validation import seed_int
from fewmed.longtail import CDCClassifier, RelationalSubsetsDistiller

__all__ = [
    "AccelerateFitMixin",
    "AcceleratedCDCClassifier",
    "AcceleratedRelationalSubsetsDistiller",
    "AcceleratedSupervisedNet",
]


def _silent(*args: Any, **kwargs: Any) -> None:
    """The log's sink on the processes other than the main one."""


class AccelerateFitMixin(AccelerateMixin):
    """skorch's ``AccelerateMixin`` for fewmed's ``ImageNetClassifier`` subclasses.

    Put it first in the bases: ``class MyAccelerated(AccelerateFitMixin, CDCClassifier)``.
    """

    def _initialize_callbacks(self):
        if self.callbacks__print_log__sink == "auto":  # the log on the main process only
            main = self.accelerator.is_main_process
            self.callbacks__print_log__sink = print if main else _silent
        return super()._initialize_callbacks()

    def _set_data_info(self, X: Any, Xc, targets, info: dict) -> None:
        if self._wrapped_with_accelerator:
            self._unwrap_accelerator()  # the criterion may be rebuilt on a refit
        super()._set_data_info(X, Xc, targets, info)
        self._wrapped_with_accelerator = False
        self._initialize_accelerator()  # the real networks, built from the data

    def _initialize_accelerator(self):
        """Prepare the real modules, criteria and optimizers (skorch's, minus the ones
        without trainable parameters: ``DistributedDataParallel`` refuses them)."""
        if self._wrapped_with_accelerator or getattr(self, "built_for_", None) is None:
            return self  # the placeholder before the data: wait for the real networks
        for kind, names in (("criterion", self._criteria), ("module", self._modules)):
            with self._current_init_context(kind):
                for name in names:
                    m = getattr(self, name + "_")
                    if isinstance(m, nn.Module) and any(p.requires_grad for p in m.parameters()):
                        setattr(self, name + "_", self.accelerator.prepare(m))
        with self._current_init_context("optimizer"):
            for name in self._optimizers:
                opt = getattr(self, name + "_")
                if isinstance(opt, torch.optim.Optimizer):
                    setattr(self, name + "_", self.accelerator.prepare(opt))
        for _, cb in self.callbacks_:
            if isinstance(cb, LRScheduler):
                cb.policy_ = self.accelerator.prepare(cb.policy_)
        self._wrapped_with_accelerator = True
        return self

    def get_iterator(self, dataset, training: bool = False):
        """Training batches split over the processes; validation and prediction whole
        on every process (on the accelerator's device)."""
        if training:
            return super().get_iterator(dataset, training=True)
        from accelerate.data_loader import prepare_data_loader  # the optional extra

        loader = super(AccelerateMixin, self).get_iterator(dataset, training=False)
        acc = self.accelerator
        return prepare_data_loader(
            loader, acc.device, num_processes=1, process_index=0, put_on_device=acc.device_placement
        )

    def evaluation_step(self, batch, training: bool = False):
        # every process predicted the whole data: nothing to gather
        return super(AccelerateMixin, self).evaluation_step(batch, training=training)

    def on_train_end(self, net, X=None, y=None, **kwargs):
        super().on_train_end(net, X=X, y=y, **kwargs)  # unwraps the modules
        if not self._wrapped_with_accelerator:  # EarlyStopping kept the wrapper's keys
            for _, cb in self.callbacks_:
                weights = getattr(cb, "best_model_weights_", None)
                if isinstance(cb, EarlyStopping) and weights is not None:
                    consume_prefix_in_state_dict_if_present(weights, "module.")
        return self

    def train_step_single(self, batch, **fit_params):
        # fewmed's step (augmentation, loss terms) with the hooks below, not skorch's
        return super(AccelerateMixin, self).train_step_single(batch, **fit_params)

    def _autocast(self):
        return self.accelerator.autocast()

    def _backward(self, loss) -> None:
        self.accelerator.backward(loss)


class AcceleratedCDCClassifier(AccelerateFitMixin, CDCClassifier):
    """:class:`~fewmed.CDCClassifier` trained through an ``accelerator``: one process only.

    Mixed precision (``Accelerator(mixed_precision=...)``) works; several processes
    do not: CDC's training step calls its backbone's ``forward_features``, the
    decoder and the twin head outside the backbone's ``forward``, and
    ``DistributedDataParallel`` synchronises gradients only through ``forward``.
    With more than one process ``fit`` raises a ``ValueError`` saying so.

    Parameters
    ----------
    accelerator : accelerate.Accelerator
        Decides the processes, devices and mixed precision.
    **kwargs
        :class:`~fewmed.CDCClassifier`'s parameters; ``device`` must be ``None``.

    Examples
    --------
    >>> from accelerate import Accelerator
    >>> from fewmed.datasets import make_synthetic_lesions
    >>> d = make_synthetic_lesions(n_classes=3, n_per_class=10, size=16, random_state=0)
    >>> clf = AcceleratedCDCClassifier(accelerator=Accelerator(cpu=True), device=None,
    ...                                n_filters=4, max_epochs=1, random_state=0)
    >>> clf.fit(d.images, d.target).predict(d.images[:3]).shape
    (3,)
    """

    def _initialize_accelerator(self):
        if self.accelerator.num_processes > 1:
            raise ValueError(
                "AcceleratedCDCClassifier runs on one process only: CDC calls its backbone's "
                "forward_features, decoder and twin head outside forward(), which "
                "DistributedDataParallel cannot synchronise. Launch one process (mixed "
                "precision works), or use AcceleratedRelationalSubsetsDistiller."
            )
        return super()._initialize_accelerator()


class AcceleratedRelationalSubsetsDistiller(AccelerateFitMixin, RelationalSubsetsDistiller):
    """:class:`~fewmed.RelationalSubsetsDistiller` whose student trains through an ``accelerator``.

    Parameters
    ----------
    accelerator : accelerate.Accelerator
    **kwargs
        :class:`~fewmed.RelationalSubsetsDistiller`'s parameters; ``device`` must be
        ``None``. The teachers train as usual, in parallel on joblib's backend.

    Examples
    --------
    >>> from accelerate import Accelerator
    >>> from fewmed.datasets import make_synthetic_lesions
    >>> d = make_synthetic_lesions(n_classes=3, n_per_class=10, size=16, random_state=0)
    >>> clf = AcceleratedRelationalSubsetsDistiller(
    ...     accelerator=Accelerator(cpu=True), device=None, n_filters=4, max_epochs=1,
    ...     random_state=0)
    >>> clf.fit(d.images, d.target).predict(d.images[:3]).shape
    (3,)
    """


class AcceleratedSupervisedNet(AccelerateFitMixin, SupervisedNet):
    """The fine-tuning path's :class:`~fewmed._finetune.SupervisedNet`, data-parallel.

    Launched with ``torchrun`` or ``accelerate launch``, every process trains on its
    share of each epoch's batches and ``DistributedDataParallel`` averages the
    gradients: ``batch_size`` is per process. Validation (a ``train_split``,
    ``EarlyStopping``) runs whole on every process, so all stop at the same epoch.
    :func:`fewmed._finetune.fine_tune` and :func:`~fewmed._finetune.pretrain` build
    one when given ``accelerator=``.

    Parameters
    ----------
    module : str, nn.Module class or instance, default="conv4"
        As in :class:`~fewmed._finetune.SupervisedNet`.
    accelerator : accelerate.Accelerator
        Decides the processes, devices and mixed precision.
    **kwargs
        :class:`~fewmed._finetune.SupervisedNet`'s parameters; ``device`` must be ``None``.

    Examples
    --------
    >>> from accelerate import Accelerator
    >>> from fewmed.datasets import make_synthetic_lesions
    >>> d = make_synthetic_lesions(n_classes=3, n_per_class=10, size=16, random_state=0)
    >>> net = AcceleratedSupervisedNet("conv4", accelerator=Accelerator(cpu=True), device=None,
    ...                                n_filters=4, max_epochs=1, random_state=0)
    >>> net.fit(d.images, d.target).predict(d.images[:3]).shape
    (3,)
    """


def _shared_seed(accelerator: Any, random_state: Any) -> Any:
    """``random_state`` as every process's seed: process 0's draw unless it is an int."""
    if accelerator.num_processes == 1 or (
        isinstance(random_state, Integral) and not isinstance(random_state, bool)
    ):
        return random_state
    from accelerate.utils import broadcast_object_list  # the optional extra

    seed = [seed_int(random_state)]
    broadcast_object_list(seed, from_process=0)
    return seed[0]
