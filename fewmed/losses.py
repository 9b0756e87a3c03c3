"""Losses for imbalanced training, shared by every fewmed estimator.

* :func:`class_weights` turns labels into per-class weights (scikit-learn's
  ``compute_class_weight`` semantics, plus ``"inverse"`` and ``"sqrt_inverse"``);
* :class:`FocalLoss` (multi-class, softmax) and :class:`BinaryFocalLoss`
  (multi-label, sigmoid) of Lin et al. (2017), class-weighted when given ``weight``;
* :func:`make_classification_loss` builds CE / weighted CE / focal / weighted
  focal (or their multi-label forms) from a name;
* :class:`ReconstructionLoss` is CDC's class-weighted L2 / L1 reconstruction loss
  ``L_r = sum_k w_k L_k`` (Xu et al., 2021, eq. 2).

All losses take logits (never probabilities) and integer class codes
``0..n_classes-1`` (multi-class) or a ``{0, 1}`` indicator matrix (multi-label).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CLASS_WEIGHT_OPTIONS",
    "LOSSES",
    "BinaryFocalLoss",
    "FocalLoss",
    "ReconstructionLoss",
    "class_weights",
    "focal_loss",
    "make_classification_loss",
    "reconstruction_loss",
]

CLASS_WEIGHT_OPTIONS = ("balanced", "inverse", "sqrt_inverse")
LOSSES = ("ce", "focal", "bce")
_REDUCTIONS = ("mean", "sum", "none")


def class_weights(
    y: Any,
    class_weight: str | Mapping | Sequence[float] | np.ndarray | None = "balanced",
    classes: Sequence | np.ndarray | None = None,
) -> np.ndarray:
    """Per-class weights from labels, larger for smaller classes.

    Parameters
    ----------
    y : array-like of shape (n_samples,) or (n_samples, n_classes)
        Class labels, or a ``{0, 1}`` indicator matrix for multi-label data (the
        counts are then the number of positives per column).
    class_weight : {"balanced", "inverse", "sqrt_inverse"}, dict, array-like or None, \
default="balanced"
        * ``"balanced"``: ``n_samples / (n_classes * count_k)``, as
          :func:`sklearn.utils.class_weight.compute_class_weight` (mean weight over
          samples is 1);
        * ``"inverse"``: ``1 / count_k`` rescaled so the weights average 1 over classes;
        * ``"sqrt_inverse"``: ``1 / sqrt(count_k)`` rescaled the same way (milder);
        * a dict ``{label: weight}`` (missing labels get 1) or an array of one
          weight per class in the order of ``classes``;
        * ``None``: all ones.
    classes : array-like, default=None
        The classes, in the order of the returned weights; defaults to
        ``np.unique(y)`` (or ``range(n_columns)`` for an indicator matrix).
        Classes absent from ``y`` get weight 1 with a count-based option.

    Returns
    -------
    weights : ndarray of shape (n_classes,), dtype float32

    Raises
    ------
    ValueError
        For an unknown option, a weight array of the wrong length, or negative or
        non-finite weights.

    Examples
    --------
    >>> class_weights([0, 0, 0, 1])
    array([0.6666667, 2.       ], dtype=float32)
    >>> class_weights(["a", "b", "b"], {"a": 3.0})
    array([3., 1.], dtype=float32)
    >>> class_weights([0, 0, 0, 1], "inverse")
    array([0.5, 1.5], dtype=float32)
    """
    y = np.asarray(y)
    multilabel = y.ndim == 2
    if classes is None:
        classes = np.arange(y.shape[1]) if multilabel else np.unique(y)
    classes = np.asarray(classes)
    n_classes = len(classes)
    if class_weight is None:
        return np.ones(n_classes, dtype=np.float32)
    if isinstance(class_weight, str):
        if class_weight not in CLASS_WEIGHT_OPTIONS:
            raise ValueError(
                f"class_weight must be one of {CLASS_WEIGHT_OPTIONS}, a dict, an array or None; "
                f"got {class_weight!r}."
            )
        if multilabel:
            counts = y.sum(axis=0).astype(np.float64)
            n = float(y.shape[0])
        else:
            counts = np.array([np.sum(y == c) for c in classes], dtype=np.float64)
            n = float(counts.sum())
        present = counts > 0
        w = np.ones(n_classes, dtype=np.float64)
        if class_weight == "balanced":
            w[present] = n / (n_classes * counts[present])
        else:
            power = 1.0 if class_weight == "inverse" else 0.5
            raw = 1.0 / counts[present] ** power
            w[present] = raw / raw.mean()
        return w.astype(np.float32)
    if isinstance(class_weight, Mapping):
        w = np.array([float(class_weight.get(c, 1.0)) for c in classes.tolist()])
        unknown = set(class_weight) - set(classes.tolist())
        if unknown:
            raise ValueError(
                f"class_weight has labels {sorted(map(str, unknown))} that are not among the "
                f"classes {classes.tolist()}."
            )
    else:
        w = np.asarray(class_weight, dtype=np.float64).ravel()
        if len(w) != n_classes:
            raise ValueError(
                f"class_weight has {len(w)} entries but there are {n_classes} classes."
            )
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"class_weight must be finite and >= 0, got {w.tolist()}.")
    return w.astype(np.float32)


def _as_weight(weight: Any) -> torch.Tensor | None:
    if weight is None:
        return None
    return torch.as_tensor(np.asarray(weight, dtype=np.float32))


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}.")


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Multi-class focal loss ``-w_y (1 - p_y)**gamma log p_y`` from logits.

    With ``reduction="mean"`` the result is ``sum_i w_i l_i / sum_i w_i`` (the
    normalisation of :class:`torch.nn.CrossEntropyLoss`), so ``gamma=0`` equals
    (weighted) cross-entropy exactly.

    Parameters
    ----------
    logits : Tensor of shape (n, n_classes)
    target : Tensor of shape (n,), integer class codes
    gamma : float, default=2.0
        Focusing parameter (>= 0).
    weight : Tensor of shape (n_classes,), default=None
        Per-class weights.
    reduction : {"mean", "sum", "none"}, default="mean"

    Returns
    -------
    Tensor

    Examples
    --------
    >>> import torch
    >>> logits, y = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
    >>> bool(torch.isclose(focal_loss(logits, y, gamma=0.0),
    ...                    torch.nn.functional.cross_entropy(logits, y)))
    True
    """
    _check_reduction(reduction)
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}.")
    target = target.long()
    logp = F.log_softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
    loss = -logp
    if gamma != 0:
        loss = (1.0 - logp.exp()).clamp(min=0.0) ** gamma * loss
    if weight is not None:
        w = weight.to(device=logits.device, dtype=logits.dtype)[target]
        loss = loss * w
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if weight is not None:
        return loss.sum() / w.sum().clamp(min=torch.finfo(w.dtype).tiny)
    return loss.mean()


class FocalLoss(nn.Module):
    """Multi-class focal loss (Lin et al., 2017) from logits, optionally class-weighted.

    ``FL = -w_y (1 - p_y)**gamma log p_y``; the mean is weighted like
    :class:`torch.nn.CrossEntropyLoss`, so ``FocalLoss(gamma=0, weight=w)`` equals
    ``CrossEntropyLoss(weight=w)``.

    Parameters
    ----------
    gamma : float, default=2.0
        Focusing parameter; 0 gives cross-entropy.
    weight : array-like of shape (n_classes,), default=None
        Per-class weights ("WFL" in Xu et al., 2021), e.g. from :func:`class_weights`.
        Stored as a buffer so it follows ``.to(device)``.
    reduction : {"mean", "sum", "none"}, default="mean"

    Examples
    --------
    >>> import torch
    >>> loss = FocalLoss(gamma=2.0, weight=[1.0, 3.0])
    >>> round(float(loss(torch.zeros(2, 2), torch.tensor([0, 1]))), 6)  # 0.25 * log 2
    0.173287
    """

    def __init__(self, gamma: float = 2.0, weight: Any = None, reduction: str = "mean") -> None:
        super().__init__()
        _check_reduction(reduction)
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}.")
        self.gamma = float(gamma)
        self.reduction = reduction
        self.register_buffer("weight", _as_weight(weight))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return focal_loss(logits, target, self.gamma, self.weight, self.reduction)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, reduction={self.reduction!r}"


class BinaryFocalLoss(nn.Module):
    """Multi-label (sigmoid) focal loss from logits, optionally class-weighted.

    Per element: ``-w_k [t (1-p)**gamma log p + (1-t) p**gamma log(1-p)]`` with
    ``p = sigmoid(logit)``; ``gamma=0`` equals
    ``BCEWithLogitsLoss(weight=w)`` (the mean runs over all elements).

    Parameters
    ----------
    gamma : float, default=2.0
    weight : array-like of shape (n_classes,), default=None
        Per-class (per-column) weights.
    reduction : {"mean", "sum", "none"}, default="mean"

    Examples
    --------
    >>> import torch
    >>> loss = BinaryFocalLoss(gamma=0.0)
    >>> x, t = torch.tensor([[1.0, -2.0]]), torch.tensor([[1.0, 0.0]])
    >>> bool(torch.isclose(loss(x, t), torch.nn.functional.binary_cross_entropy_with_logits(x, t)))
    True
    """

    def __init__(self, gamma: float = 2.0, weight: Any = None, reduction: str = "mean") -> None:
        super().__init__()
        _check_reduction(reduction)
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}.")
        self.gamma = float(gamma)
        self.reduction = reduction
        self.register_buffer("weight", _as_weight(weight))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.to(logits.dtype)
        loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        if self.gamma != 0:
            p = torch.sigmoid(logits)
            p_t = p * target + (1 - p) * (1 - target)
            loss = (1 - p_t).clamp(min=0.0) ** self.gamma * loss
        if self.weight is not None:
            loss = loss * self.weight.to(logits.dtype)
        if self.reduction == "none":
            return loss
        return loss.sum() if self.reduction == "sum" else loss.mean()

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, reduction={self.reduction!r}"


def make_classification_loss(
    loss: str = "ce",
    weight: Any = None,
    gamma: float = 2.0,
    multilabel: bool = False,
    reduction: str = "mean",
) -> nn.Module:
    """Build a classification loss from a name: CE, weighted CE, focal or weighted focal.

    Parameters
    ----------
    loss : {"ce", "focal", "bce"}, default="ce"
        ``"ce"``: cross-entropy (binary cross-entropy when ``multilabel``);
        ``"focal"``: :class:`FocalLoss` (:class:`BinaryFocalLoss` when
        ``multilabel``); ``"bce"`` is an alias of ``"ce"`` with ``multilabel=True``.
    weight : array-like of shape (n_classes,), default=None
        Per-class weights (the "W" of WCE / WFL).
    gamma : float, default=2.0
        Focal loss focusing parameter (ignored for CE).
    multilabel : bool, default=False
        Sigmoid losses on an indicator matrix instead of softmax on class codes.
    reduction : {"mean", "sum", "none"}, default="mean"

    Returns
    -------
    nn.Module
        Called as ``loss(logits, target)``.

    Examples
    --------
    >>> make_classification_loss("focal", weight=[1.0, 2.0], gamma=1.0)
    FocalLoss(gamma=1.0, reduction='mean')
    >>> make_classification_loss("ce")
    CrossEntropyLoss()
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}.")
    _check_reduction(reduction)
    if loss == "bce":
        multilabel = True
    w = _as_weight(weight)
    if loss == "focal":
        cls = BinaryFocalLoss if multilabel else FocalLoss
        return cls(gamma=gamma, weight=w, reduction=reduction)
    if multilabel:
        return nn.BCEWithLogitsLoss(weight=w, reduction=reduction)
    return nn.CrossEntropyLoss(weight=w, reduction=reduction)


def reconstruction_loss(
    recon: torch.Tensor,
    target: torch.Tensor,
    y: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    kind: str = "l2",
    reduction: str = "mean",
) -> torch.Tensor:
    """Class-weighted reconstruction loss ``L_r = sum_k w_k L_k`` (CDC, eq. 2).

    Each image's error ``l_i`` is the mean squared (``"l2"``) or absolute
    (``"l1"``) pixel difference; ``L_k = (1/n) sum_{i: y_i = k} l_i`` is class
    ``k``'s share of the batch, so ``L_r = (1/n) sum_i w_{y_i} l_i``. With
    ``"balanced"`` weights this is, in expectation, the unweighted mean over
    classes of each class's mean error: small classes count as much as large
    ones. Without weights it is the plain MSE / L1.

    Parameters
    ----------
    recon, target : Tensor of shape (n, C, H, W)
        Reconstruction and the input it should reproduce.
    y : Tensor of shape (n,), default=None
        Integer class codes (needed when ``weight`` is given). For multi-label
        indicator ``y`` of shape (n, n_classes), a sample's weight is the mean
        weight of its positive classes (1 when it has none).
    weight : Tensor of shape (n_classes,), default=None
    kind : {"l2", "l1"}, default="l2"
    reduction : {"mean", "sum", "none"}, default="mean"
        ``"none"`` returns the weighted per-image errors ``w_{y_i} l_i``.

    Returns
    -------
    Tensor

    Examples
    --------
    >>> import torch
    >>> x = torch.zeros(2, 1, 2, 2)
    >>> r = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 2.0)])
    >>> float(reconstruction_loss(r, x, torch.tensor([0, 1]), torch.tensor([1.0, 0.5])))
    1.5
    """
    _check_reduction(reduction)
    if kind not in ("l2", "l1"):
        raise ValueError(f"reconstruction must be 'l2' or 'l1', got {kind!r}.")
    if recon.shape != target.shape:
        raise ValueError(
            f"reconstruction shape {tuple(recon.shape)} differs from the input's "
            f"{tuple(target.shape)}."
        )
    diff = recon - target
    err = diff.pow(2) if kind == "l2" else diff.abs()
    per_image = err.flatten(1).mean(dim=1)
    if weight is not None:
        if y is None:
            raise ValueError("reconstruction_loss needs y when weight is given.")
        w = weight.to(device=recon.device, dtype=recon.dtype)
        if y.ndim == 2:
            yf = y.to(recon.dtype)
            npos = yf.sum(dim=1)
            wi = torch.where(npos > 0, (yf * w).sum(dim=1) / npos.clamp(min=1), 1.0)
        else:
            wi = w[y.long()]
        per_image = per_image * wi
    if reduction == "none":
        return per_image
    return per_image.sum() if reduction == "sum" else per_image.mean()


class ReconstructionLoss(nn.Module):
    """Module form of :func:`reconstruction_loss` (class weights kept as a buffer).

    Parameters
    ----------
    kind : {"l2", "l1"}, default="l2"
    weight : array-like of shape (n_classes,), default=None
        Per-class weights ``w_k``, e.g. ``class_weights(y, "balanced")``.
    reduction : {"mean", "sum", "none"}, default="mean"

    Examples
    --------
    >>> import torch
    >>> loss = ReconstructionLoss("l1", weight=[2.0, 1.0])
    >>> float(loss(torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2), torch.tensor([0, 1])))
    1.5
    """

    def __init__(self, kind: str = "l2", weight: Any = None, reduction: str = "mean") -> None:
        super().__init__()
        if kind not in ("l2", "l1"):
            raise ValueError(f"reconstruction must be 'l2' or 'l1', got {kind!r}.")
        _check_reduction(reduction)
        self.kind = kind
        self.reduction = reduction
        self.register_buffer("weight", _as_weight(weight))

    def forward(
        self, recon: torch.Tensor, target: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        return reconstruction_loss(recon, target, y, self.weight, self.kind, self.reduction)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, reduction={self.reduction!r}"
