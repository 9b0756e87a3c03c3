"""LongTailClassifier: the template of the long-tailed family (CDC and RSKD).

:class:`LongTailClassifier` is an :class:`fewmed._skorch.ImageNetClassifier`
(which declares the skorch parameters: ``optimizer``, ``lr``, ``max_epochs``,
``batch_size``, ``train_split``, ``predict_nonlinearity``, ``augment``,
``random_state``, ``device``, ``verbose``) with what
:class:`~fewmed.longtail.CDCClassifier` and
:class:`~fewmed.longtail.RelationalSubsetsDistiller` share, each written once:

* the parameters both take beyond skorch's (``n_filters``, ``loss``, ``gamma``,
  ``class_weight``, ``lr_schedule``), declared in :meth:`LongTailClassifier.__init__`;
* the learning-rate schedule (:class:`EpochFractionSchedule`: cosine, or the
  step decay of CDC's paper), a default callback when ``lr_schedule`` is set;
* their parameter constraints (``_parameter_constraints``) and what the networks are built for
  (``_signature``: shapes, classes and whether the target is multi-label);
* the backbone (``_build_modules``: ``module_`` from
  :func:`fewmed.nn.build_backbone`);
* the base loss with its class weights (``_build_criteria``; the weights from
  the training class counts, multi-class and multi-label: ``_class_weights``).

A family member declares only its own parameters,
``__init__(self, module="conv4", *, <own parameters>, **kwargs)``, passes
``**kwargs`` up, and implements its own step (CDC: the decoder, the twin and
``get_loss``; RSKD: subsets, teachers and the distillation loss). skorch's
``get_params`` reads the instance's ``__dict__``, so ``clone``, ``get_params``
and ``set_params`` see every parameter; the members' ``__init__`` signatures
(:func:`inspect.signature`) list the inherited ones too.
"""

from __future__ import annotations

import inspect
import math
from numbers import Integral, Real
from typing import Any

import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions
from skorch.callbacks import Callback

from fewmed._skorch import ImageNetClassifier
from fewmed.losses import class_weights, make_classification_loss
from fewmed.nn import build_backbone

__all__ = ["EpochFractionSchedule", "LongTailClassifier"]

_LOSSES = ("ce", "focal")
_WEIGHT_OPTIONS = ("balanced", "inverse", "sqrt_inverse")
#: a class-weight option: a name, a dict, an array or None
CLASS_WEIGHT_CONSTRAINT: list = [StrOptions(set(_WEIGHT_OPTIONS)), dict, "array-like", None]
_SCHEDULES = (None, "cosine", "step")


class EpochFractionSchedule(Callback):
    """Learning rate ``net.lr * factor(progress)``, set before every training batch.

    ``progress`` in ``[0, 1)`` is the fraction of this ``fit``'s planned training
    (``max_epochs`` epochs of the epoch's batches) done before the batch, so the
    schedule spans exactly the fit's budget whatever the data size.

    * ``"cosine"``: ``factor = (1 + cos(pi * progress)) / 2`` (from 1 to ~0);
    * ``"step"``: ``factor = 0.1`` from half of ``max_epochs`` on, 1 before (CDC's
      paper: SGD, the rate divided by 10 at epoch 100 of 200).

    The rate of every batch is recorded in the history as ``lr``.

    Parameters
    ----------
    kind : {"cosine", "step"}

    Examples
    --------
    >>> sched = EpochFractionSchedule("step")
    >>> sched.factor(0.25), sched.factor(0.5)
    (1.0, 0.1)
    """

    def __init__(self, kind: str = "cosine") -> None:
        self.kind = kind

    def factor(self, progress: float) -> float:
        if self.kind == "step":
            return 1.0 if progress < 0.5 else 0.1
        return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        self.epoch_, self.batch_, self.n_batches_ = -1, 0, 1

    def on_epoch_begin(self, net, dataset_train=None, **kwargs):
        self.epoch_ += 1
        self.batch_ = 0
        n = len(dataset_train) if dataset_train is not None else 1
        bs = int(net.batch_size) if net.batch_size and net.batch_size > 0 else n
        self.n_batches_ = max(1, -(-n // max(1, bs)))

    def on_batch_begin(self, net, batch=None, training=False, **kwargs):
        if not training:
            return
        epochs = max(1, int(net.max_epochs))
        if self.kind == "step":
            progress = self.epoch_ / epochs
        else:
            progress = (self.epoch_ + self.batch_ / self.n_batches_) / epochs
        lr = float(net.lr) * self.factor(progress)
        for group in net.optimizer_.param_groups:
            group["lr"] = lr
        net.history.record_batch("lr", lr)
        self.batch_ += 1


def _keyword_params(klass: type) -> list[inspect.Parameter]:
    """The named parameters of ``klass.__init__`` as written (not ``self``, ``**kwargs``,
    nor skorch's ``criterion``: the family builds its own in ``_build_criteria``)."""
    init = klass.__dict__["__init__"]
    params = inspect.signature(init, follow_wrapped=False).parameters.values()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p for p in params if p.kind in kinds and p.name not in ("self", "criterion")]


def _full_signature(klass: type) -> inspect.Signature:
    """``klass.__init__``'s signature with the parameters it inherits from the family.

    Own parameters first (an own default overrides an inherited one), then those of
    its bases up to :class:`ImageNetClassifier`, then ``**kwargs``.
    """
    seen: dict[str, inspect.Parameter] = {}
    for base in klass.__mro__:
        if "__init__" not in base.__dict__ or not issubclass(base, ImageNetClassifier):
            continue
        for p in _keyword_params(base):
            if p.name not in seen:
                kind = p.kind if not seen else inspect.Parameter.KEYWORD_ONLY
                seen[p.name] = p.replace(kind=kind)
    self_ = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    kwargs = inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD, annotation="Any")
    return inspect.Signature([self_, *seen.values(), kwargs])


class LongTailClassifier(ImageNetClassifier):
    """Base class of the long-tailed classifiers: a backbone and a class-weighted base loss.

    Not used directly: :class:`~fewmed.longtail.CDCClassifier` and
    :class:`~fewmed.longtail.RelationalSubsetsDistiller` subclass it (see the
    module docstring for what it holds and what a subclass adds).

    Parameters
    ----------
    module : {"conv4", "resnet", "resnet18", "vgg"}, nn.Module class or instance, default="conv4"
        The backbone (:func:`fewmed.nn.build_backbone`). Further arguments:
        ``module__<name>``.
    n_filters : int or None, default=None
        Width of the default backbones (``None``: the backbone's default).
    loss : {"ce", "focal"}, default="ce"
        The base loss: cross-entropy (BCE for multi-label targets) or focal loss.
    gamma : float, default=2.0
        Focal loss focusing parameter (``loss="focal"`` only).
    class_weight : {"balanced", "inverse", "sqrt_inverse"}, dict, array or None, \
default=None
        Per-class weights of the base loss, from the training class counts;
        see :func:`fewmed.losses.class_weights`.
    lr_schedule : {"cosine", "step"} or None, default=None
        Learning-rate schedule over the fit's ``max_epochs``
        (:class:`EpochFractionSchedule`): ``"cosine"`` decays per batch to 0,
        ``"step"`` divides the rate by 10 at half of ``max_epochs`` (CDC's paper,
        with ``optimizer=torch.optim.SGD, optimizer__momentum=0.9``); ``None``
        keeps ``lr``.
    **kwargs
        The parameters of :class:`fewmed._skorch.ImageNetClassifier` (``optimizer``,
        ``lr``, ``max_epochs``, ``batch_size``, ``train_split``,
        ``predict_nonlinearity``, ``augment``, ``random_state``, ``device``,
        ``verbose``) and any further skorch parameter.
    """

    def __init__(
        self,
        module: Any = "conv4",
        *,
        n_filters: int | None = None,
        loss: str = "ce",
        gamma: float = 2.0,
        class_weight: Any = None,
        lr_schedule: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(module, **kwargs)
        self.n_filters = n_filters
        self.loss = loss
        self.gamma = gamma
        self.class_weight = class_weight
        self.lr_schedule = lr_schedule

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:  # show the inherited parameters in the signature
            cls.__init__.__signature__ = _full_signature(cls)

    @classmethod
    def _family_param_names(cls) -> list[str]:
        """Names of the parameters declared by the family's ``__init__`` (this class and
        :class:`ImageNetClassifier`), in signature order; what teachers may inherit."""
        names = [p.name for p in _keyword_params(LongTailClassifier)]
        return names + [p.name for p in _keyword_params(ImageNetClassifier) if p.name not in names]

    # ------------------------------------------------------------------ params
    _parameter_constraints: dict = {
        **ImageNetClassifier._parameter_constraints,
        "n_filters": [Interval(Integral, 1, None, closed="left"), None],
        "loss": [StrOptions(set(_LOSSES))],
        "gamma": [Interval(Real, 0, None, closed="left")],
        "class_weight": CLASS_WEIGHT_CONSTRAINT,
        "lr_schedule": [StrOptions({"cosine", "step"}), None],
    }
    @property
    def _default_callbacks(self):
        cbs = list(super()._default_callbacks)
        if self.lr_schedule is not None:  # before print_log
            cbs.insert(len(cbs) - 1, ("lr_schedule", EpochFractionSchedule(self.lr_schedule)))
        return cbs

    # ------------------------------------------------------------------ building
    @staticmethod
    def _signature(info: dict) -> tuple:
        """What the networks are built for: a change of it rebuilds them (and the
        optimizer); a multi-label target is part of it."""
        return (
            tuple(info["input_shape"]),
            int(info["n_classes"]),
            bool(info["in_unit_range"]),
            bool(info.get("multilabel", False)),
        )

    def _build_modules(self, info: dict) -> None:
        """``module_``: the backbone for the data's ``(C, H, W)`` and classes."""
        c, h, w = info["input_shape"]
        self.module_ = build_backbone(
            self.module,
            in_channels=c,
            input_shape=(h, w),
            n_classes=info["n_classes"],
            n_filters=self.n_filters,
            **self.get_params_for("module"),
        )

    def _class_weights(self, option: Any, info: dict | None) -> np.ndarray | None:
        """Per-class weights for ``option`` from the training counts in ``info``.

        ``None`` for ``option=None`` or before data; multi-label ``info`` (positives
        per label) weighs each label's positives (:func:`fewmed.losses.class_weights`
        of an indicator).
        """
        if option is None or info is None:
            return None
        counts = np.asarray(info["class_counts"])
        if info.get("multilabel"):
            y_like = (np.arange(info["n_samples"])[:, None] < counts[None, :]).astype(int)
            return class_weights(y_like, option)
        y_like = np.repeat(np.asarray(self.classes_), counts)
        return class_weights(y_like, option, classes=self.classes_)

    def _build_criteria(self, info: dict | None) -> None:
        """``criterion_``: the base loss (``loss``, ``gamma``) with its class weights."""
        self.criterion_ = make_classification_loss(
            self.loss,
            weight=self._class_weights(self.class_weight, info),
            gamma=self.gamma,
            multilabel=bool(info and info.get("multilabel")),
        )
