"""The one fine-tuning path: pre-train, transfer minus the head, fine-tune.

Every estimator that trains a backbone as a plain classifier and then fine-tunes
it on a new set of classes goes through this module (the few-shot baselines of
``fewmed.fewshot._baselines``, :class:`~fewmed.fewshot.ReptileInitializer`'s
supervised pre-training, its adaptation and Reptile's inner loop):

* :class:`SupervisedNet` - a :class:`fewmed._skorch.ImageNetClassifier` with a
  plain cross-entropy loss that trains a backbone given by name / class (built by
  :func:`fewmed.nn.build_backbone`) or a copy of a given ``nn.Module``, with
  ``valid_qwk`` scoring next to skorch's ``valid_loss`` / ``valid_acc``;
* :func:`fine_tune` - fit a :class:`SupervisedNet`, with skorch's
  ``EarlyStopping`` (best weights restored) on validation data or a stratified
  hold-out, and an optional ``Checkpoint``; :func:`pretrain` is the same on the
  common classes, returning the trained backbone and its history;
* :func:`transfer` - a copy of a trained backbone with every weight but the head,
  a seeded new head and, optionally, BatchNorm removed (:func:`remove_batchnorm`);
* :func:`train_steps` - a few Adam steps on one small set, full-batch or in
  mini-batches (few-shot fine-tuning on a support set, Reptile's inner loop).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from skorch.callbacks import Checkpoint, EarlyStopping, EpochScoring
from skorch.helper import predefined_split
from skorch.history import History
from torch import nn

from fewmed._dataset import ArrayDataset
from fewmed._skorch import ImageNetClassifier
from fewmed._validation import check_images, resolve_device, seeded_torch
from fewmed.metrics import quadratic_weighted_kappa
from fewmed.model_selection import stratified_split
from fewmed.nn import ReferenceBatchNorm2d, build_backbone

__all__ = [
    "SupervisedNet",
    "fine_tune",
    "pretrain",
    "remove_batchnorm",
    "train_steps",
    "transfer",
]


# --------------------------------------------------------------------------- the net
def _encoded_qwk(net: Any, X: Any, y: Any) -> float:
    """QWK of argmax codes against label codes (the validation datasets hold codes)."""
    proba = net.predict_proba(X)
    return float(quadratic_weighted_kappa(np.asarray(y), proba.argmax(axis=1)))


class SupervisedNet(ImageNetClassifier):
    """skorch classifier that trains a backbone with plain cross-entropy.

    ``module`` is a backbone name or class, built for the data's shape by
    :func:`fewmed.nn.build_backbone`, or an already built ``nn.Module`` (for
    instance a :func:`transfer` of a pre-trained one); every ``fit`` starts from a
    fresh build or a fresh copy, so refitting does not continue from the last fit.
    Everything else is :class:`fewmed._skorch.ImageNetClassifier` (validation,
    seeded initialisation, loader and augmentation, ``valid_acc`` / ``valid_f1``
    in the history) plus ``valid_qwk`` (quadratic weighted kappa).

    Parameters
    ----------
    module : {"conv4", "resnet", "resnet18", "vgg"}, nn.Module class or instance, default="conv4"
        A name or class is built for the data (``n_classes`` outputs); an
        instance is copied and must have as many outputs as ``y`` has classes.
    n_filters : int or None, default=None
        Width of a backbone built from a name or class (``None``: its default).
    channels_last : bool, default=False
        Keep the network and its batches in channels-last memory layout on the
        CPU (oneDNN's convolutions are faster on it for small images).
    **kwargs
        :class:`fewmed._skorch.ImageNetClassifier`'s parameters (``lr``,
        ``max_epochs``, ``batch_size``, ``train_split``, ``callbacks``,
        ``augment``, ``random_state``, ``device``, ``module__*``, ...).

    Examples
    --------
    >>> import numpy as np
    >>> from fewmed.nn import Conv4
    >>> X = np.random.default_rng(0).integers(0, 255, (8, 28, 28, 3), dtype=np.uint8)
    >>> y = np.array([0, 1] * 4)
    >>> net = SupervisedNet(Conv4(n_classes=2, n_filters=4), max_epochs=1, random_state=0)
    >>> net.fit(X, y).predict(X[:2]).shape
    (2,)
    >>> SupervisedNet("conv4", n_filters=4, max_epochs=1).fit(X, y).module_.head.out_features
    2
    """

    def __init__(
        self,
        module: Any = "conv4",
        *,
        n_filters: int | None = None,
        channels_last: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(module, **kwargs)
        self.n_filters = n_filters
        self.channels_last = channels_last

    @property
    def _default_callbacks(self):
        cbs = list(super()._default_callbacks)
        qwk = ("valid_qwk", EpochScoring(_encoded_qwk, name="valid_qwk", lower_is_better=False))
        cbs.insert(len(cbs) - 1, qwk)
        return cbs

    def _build_modules(self, info: dict) -> None:
        n_out = getattr(self.module, "n_classes", None)
        if isinstance(self.module, nn.Module) and n_out is not None and n_out != info["n_classes"]:
            raise ValueError(
                f"the module has {n_out} outputs but y has {info['n_classes']} classes."
            )
        c, h, w = info["input_shape"]
        backbone = build_backbone(
            self.module,
            in_channels=c,
            input_shape=(h, w),
            n_classes=info["n_classes"],
            n_filters=self.n_filters,
            **self.get_params_for("module"),
        )
        self.module_ = backbone.to(self.device)

    def _wants_channels_last(self) -> bool:
        return bool(self.channels_last)


# --------------------------------------------------------------------------- fine-tuning
def _train_split(
    y: np.ndarray, X_val: Any, y_val: Any, fraction: float | None, seed: int | None
) -> Any:
    """skorch ``train_split``: the given validation set, a stratified hold-out or none."""
    if X_val is not None:
        return predefined_split(ArrayDataset(check_images(X_val, name="X_val"), y_val))
    if fraction is None:
        return None
    n_classes = len(np.unique(y))
    n_valid = int(np.ceil(fraction * len(y)))
    if n_valid < n_classes or len(y) - n_valid < n_classes:
        raise ValueError(
            f"the validation split is empty for some class: validation_fraction={fraction} "
            f"of {len(y)} images holds out {n_valid}, fewer than the {n_classes} "
            "classes. Pass X_val and y_val or raise validation_fraction (a few-shot "
            "adaptation needs no validation data)."
        )
    return stratified_split(fraction, seed)


def fine_tune(
    module: Any,
    X: Any,
    y: Any,
    *,
    X_val: Any = None,
    y_val: Any = None,
    validation_fraction: float | None = None,
    max_epochs: int = 100,
    patience: int = 10,
    monitor: str = "valid_loss",
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    batch_size: int = 32,
    augment: Any = False,
    n_filters: int | None = None,
    channels_last: bool = False,
    checkpoint: Checkpoint | None = None,
    device: Any = "cpu",
    accelerator: Any = None,
    random_state: int | None = None,
    verbose: int = 0,
) -> SupervisedNet:
    """Train ``module`` on ``(X, y)`` with Adam, early stopping on validation data.

    With validation data (``X_val, y_val``, or a stratified ``validation_fraction``
    of ``(X, y)``) skorch's ``EarlyStopping`` follows ``monitor`` and restores the
    weights of its best epoch; without, every one of ``max_epochs`` epochs runs.

    Parameters
    ----------
    module : str, nn.Module class or instance
        The :class:`SupervisedNet`'s ``module``: a backbone to build, or a network
        to fine-tune (copied; its outputs must match the classes).
    X : array-like of images
        ``(n, H, W[, C])`` uint8 or ``(n, C, H, W)`` float.
    y : array-like of shape (n,)
        Labels (any values); the net's ``classes_`` are ``unique(y)`` and those of ``y_val``.
    X_val, y_val : array-like, default=None
        Validation data (labels among ``y``'s).
    validation_fraction : float or None, default=None
        Stratified share of ``(X, y)`` held out when no ``X_val`` is given; ``None``
        (and no ``X_val``): no validation, no early stopping.
    max_epochs : int, default=100
    patience : int, default=10
        Epochs without improvement of ``monitor`` before stopping.
    monitor : {"valid_loss", "valid_qwk", "valid_acc", "valid_f1"}, default="valid_loss"
    lr : float, default=1e-3
    betas : (float, float), default=(0.9, 0.999)
        Adam's betas.
    batch_size : int, default=32
    augment : bool, dict or Augment, default=False
    n_filters : int or None, default=None
    channels_last : bool, default=False
        As in :class:`SupervisedNet`.
    checkpoint : skorch.callbacks.Checkpoint or None, default=None
        Added to the callbacks (e.g. ``Checkpoint(monitor="valid_loss_best")``).
    device : str, default="cpu"
        ``"cpu"``, ``"cuda"`` or ``"auto"``; unused with an ``accelerator``.
    accelerator : accelerate.Accelerator or None, default=None
        Train a :class:`fewmed.accelerate.AcceleratedSupervisedNet` through it:
        data-parallel under ``torchrun`` (``batch_size`` per process), mixed precision.
    random_state : int or None, default=None
        Seeds the net (initialisation, loader, augmentation) and the hold-out
        (``None`` with several processes: process 0's draw).
    verbose : int, default=0

    Returns
    -------
    SupervisedNet
        The fitted net: ``module_`` (the restored best weights with early stopping)
        and ``history``.

    Examples
    --------
    >>> import numpy as np
    >>> from fewmed.datasets import make_synthetic_lesions
    >>> d = make_synthetic_lesions(n_classes=2, n_per_class=20, size=16, random_state=0)
    >>> net = fine_tune("conv4", d.images, d.target, validation_fraction=0.2, n_filters=4,
    ...                 max_epochs=3, patience=2, random_state=0)
    >>> "valid_qwk" in net.history[-1], "early_stopping" in dict(net.callbacks_)
    (True, True)
    """
    net_class, placement = SupervisedNet, {"device": str(resolve_device(device))}
    if accelerator is not None:  # data-parallel / mixed precision (docs/scaling.md)
        from fewmed.accelerate import AcceleratedSupervisedNet, _shared_seed

        net_class, placement = AcceleratedSupervisedNet, {"accelerator": accelerator}
        random_state, placement["device"] = _shared_seed(accelerator, random_state), None
    y = np.asarray(y)
    labels = y if y_val is None else np.concatenate([y, np.asarray(y_val)])
    classes = np.unique(labels)
    if X_val is not None:
        y_val = np.searchsorted(classes, np.asarray(y_val))
    split = _train_split(y, X_val, y_val, validation_fraction, random_state)
    callbacks = []
    if split is not None:
        stop = EarlyStopping(
            monitor=monitor,
            patience=patience,
            lower_is_better=monitor == "valid_loss",
            load_best=True,
        )
        callbacks.append(("early_stopping", stop))
    if checkpoint is not None:
        callbacks.append(("checkpoint", checkpoint))
    net = net_class(
        module,
        n_filters=n_filters,
        channels_last=channels_last,
        lr=lr,
        optimizer__betas=tuple(betas),
        batch_size=batch_size,
        max_epochs=max_epochs,
        classes=classes.tolist(),
        train_split=split,
        callbacks=callbacks,
        augment=augment,
        random_state=random_state,
        verbose=verbose,
        **placement,
    )
    return net.fit(X, y)


def pretrain(module: Any, X: Any, y: Any, **kwargs: Any) -> tuple[nn.Module, History]:
    """Supervised pre-training on the common classes: the trained backbone and its history.

    Parameters
    ----------
    module : str, nn.Module class or instance
        Backbone to build (or copy) with a head for ``y``'s classes.
    X : array-like of images
    y : array-like of shape (n,)
    **kwargs
        :func:`fine_tune`'s keyword arguments (``max_epochs``, ``lr``,
        ``validation_fraction`` for early stopping, ``accelerator``, ...).

    Returns
    -------
    backbone : nn.Module
        The trained network (head for ``unique(y)``), on ``device``.
    history : skorch.history.History
        Per-epoch ``train_loss`` (and validation scores with validation data).

    Examples
    --------
    >>> from fewmed.datasets import make_synthetic_lesions
    >>> d = make_synthetic_lesions(n_classes=3, n_per_class=10, size=16, random_state=0)
    >>> backbone, history = pretrain("conv4", d.images, d.target, n_filters=4, max_epochs=2)
    >>> backbone.head.out_features, len(history)
    (3, 2)
    """
    net = fine_tune(module, X, y, **kwargs)
    return net.module_, net.history


# --------------------------------------------------------------------------- transfer
def _is_bn(m: nn.Module) -> bool:
    return isinstance(m, (nn.modules.batchnorm._BatchNorm, ReferenceBatchNorm2d))


def _fold(conv: nn.Conv2d, bn: nn.Module) -> None:
    """Fold an eval-mode BatchNorm into the convolution before it (in place)."""
    mean = getattr(bn, "running_mean", None)
    var = getattr(bn, "running_var", None)
    if mean is None or var is None:
        raise ValueError("only BatchNorm with running statistics can be folded; use 'drop'.")
    scale = bn.weight.detach() / torch.sqrt(var + bn.eps)
    with torch.no_grad():
        conv.weight.mul_(scale[:, None, None, None])
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(mean)
        new_bias = (bias - mean) * scale + bn.bias.detach()
        conv.bias = nn.Parameter(new_bias.clone())


def remove_batchnorm(module: nn.Module, mode: str = "drop") -> nn.Module:
    """Remove every BatchNorm layer of ``module`` (in place) and return it.

    Parameters
    ----------
    module : nn.Module
    mode : {"drop", "fold"}, default="drop"
        ``"drop"`` replaces each BatchNorm by an identity (Hu et al.: the
        convolutions keep their weights, the normalisation is gone). ``"fold"``
        merges a BatchNorm that follows a convolution into that convolution's
        weights and bias using its running statistics, so the network computes
        what it computed in eval mode, without a BatchNorm layer; BatchNorm
        layers with no convolution before them are dropped.

    Returns
    -------
    nn.Module

    Examples
    --------
    >>> from fewmed.nn import Conv4
    >>> net = remove_batchnorm(Conv4(n_classes=2, n_filters=4))
    >>> any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    False
    """
    if mode not in ("drop", "fold"):
        raise ValueError(f"mode must be 'drop' or 'fold', got {mode!r}.")
    for parent in list(module.modules()):
        names = list(parent._modules)
        for i, name in enumerate(names):
            child = parent._modules[name]
            if not _is_bn(child):
                continue
            if mode == "fold":
                prev = None
                if isinstance(parent, nn.Sequential) and i > 0:
                    prev = parent._modules[names[i - 1]]
                elif name.startswith("bn") and f"conv{name[2:]}" in parent._modules:
                    prev = parent._modules[f"conv{name[2:]}"]
                if isinstance(prev, nn.Conv2d) and getattr(child, "running_mean", None) is not None:
                    _fold(prev, child)
            parent._modules[name] = nn.Identity()
    return module


_remove_bn = remove_batchnorm  # transfer's keyword argument shadows the name


def transfer(
    backbone: nn.Module, n_classes: int, seed: int, *, remove_batchnorm: bool | str = False
) -> nn.Module:
    """A copy of ``backbone`` with a new, seeded head for ``n_classes``, in eval mode.

    Every weight but the head is copied (``backbone`` itself is untouched); the
    head is initialised from ``seed`` without touching torch's global RNG.

    Parameters
    ----------
    backbone : nn.Module
        A trained network with ``reset_head(n_classes)`` (fewmed's backbones).
    n_classes : int
        Outputs of the new head.
    seed : int
        Seed of the new head's initialisation.
    remove_batchnorm : bool or {"drop", "fold"}, default=False
        ``True`` or ``"drop"`` replaces BatchNorm by an identity, ``"fold"``
        merges it into the preceding convolution (:func:`remove_batchnorm`),
        ``False`` keeps it (in eval mode: its statistics stay as trained).

    Returns
    -------
    nn.Module
        The new network, in eval mode, on ``backbone``'s device.

    Examples
    --------
    >>> from fewmed.nn import Conv4
    >>> net = transfer(Conv4(n_classes=5, n_filters=4), 3, seed=0)
    >>> net.head.out_features, net.training
    (3, False)
    """
    model = copy.deepcopy(backbone)
    with seeded_torch(seed):
        model.reset_head(n_classes)
    model.eval()
    if remove_batchnorm:
        mode = "drop" if remove_batchnorm is True else remove_batchnorm
        _remove_bn(model, mode)
    return model


# --------------------------------------------------------------------------- few steps
def train_steps(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    generator: torch.Generator,
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    batch_size: int | None = None,
    augment: Callable | None = None,
) -> float:
    """``steps`` Adam steps of cross-entropy on one small set, in place; the mean loss.

    The model's training / eval mode is left as the caller set it (eval keeps
    BatchNorm's statistics, train uses the batch's).

    Parameters
    ----------
    model : nn.Module
    X : Tensor of shape (n, C, H, W)
        The set (a support set, a Reptile task), on the model's device.
    y : Tensor of shape (n,)
        Its class codes.
    steps : int
        Adam steps (a fresh optimizer: its moments start at zero).
    generator : torch.Generator
        Draws the mini-batches and the augmentation.
    lr : float
    betas : (float, float), default=(0.9, 0.999)
    batch_size : int or None, default=None
        ``None``: every step on the whole set (no permutation drawn). An int:
        mini-batches of ``batch_size`` drawn without replacement, reshuffling
        when the set is used up (Reptile's inner loop).
    augment : callable or None, default=None
        ``augment(x, generator=generator)`` applied to every batch.

    Returns
    -------
    float
        Mean training loss over the steps (NaN for ``steps=0``).

    Examples
    --------
    >>> from fewmed.nn import Conv4
    >>> net = Conv4(n_classes=2, n_filters=4)
    >>> X, y = torch.rand(6, 3, 16, 16), torch.tensor([0, 1] * 3)
    >>> loss = train_steps(net, X, y, 3, torch.Generator().manual_seed(0), lr=1e-3)
    >>> bool(loss > 0)
    True
    """
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=tuple(betas))
    n = len(X)
    bs = n if batch_size is None else min(batch_size, n)
    order, pos, losses = None, 0, []
    with torch.enable_grad():
        for _ in range(steps):
            if batch_size is None:
                xb, yb = X, y
            else:
                if order is None or pos + bs > n:
                    order, pos = torch.randperm(n, generator=generator), 0
                idx = order[pos : pos + bs].to(X.device)
                pos += bs
                xb, yb = X[idx], y[idx]
            if augment is not None:
                xb = augment(xb, generator=generator)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return float(np.mean(losses)) if losses else float("nan")
