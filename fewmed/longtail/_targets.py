"""The targets of the long-tailed family: multi-label ``Y``, indicator rows, hold-out, sampling.

Helpers on labels as :class:`fewmed.longtail.RelationalSubsetsDistiller` receives
them (class codes ``0..n_classes-1`` or a multi-label ``{0, 1}`` indicator):

* :func:`is_multilabel` tells an indicator ``Y`` from class labels;
  :func:`multilabel_info` checks it and gives the data facts that
  ``ImageNetClassifier.check_data`` records for class labels;
* :func:`indicator` gives ``{0, 1}`` rows for either (one-hot for codes);
* :func:`validation_split` is the per-class hold-out on which Eq. 3 compares
  teacher and student and the teachers stop early (multi-label rows grouped by
  their rarest label), smaller for the rare classes;
* :func:`balanced_sample_weights` and :func:`balanced_loader` are class-balanced
  re-sampling (the RS baseline), seeded;
* :class:`BalancedSamplingMixin` and :class:`MultiLabelMixin` are an estimator's
  side of them: balanced training batches; an indicator ``Y`` in ``fit``, sigmoid
  outputs and ``{0, 1}`` predictions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.utils.multiclass import type_of_target

from fewmed._dataset import ArrayDataset, collate_batch, sigmoid, softmax
from fewmed._validation import check_raw_input

__all__ = [
    "BalancedSamplingMixin",
    "MultiLabelMixin",
    "balanced_loader",
    "balanced_sample_weights",
    "indicator",
    "is_multilabel",
    "multilabel_info",
    "validation_split",
]


def is_multilabel(y: Any) -> bool:
    """Whether ``y`` is a multi-label ``{0, 1}`` indicator matrix (several columns).

    Examples
    --------
    >>> is_multilabel(np.array([[1, 0], [1, 1]])), is_multilabel(np.array([0, 1]))
    (True, False)
    """
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    y = np.asarray(y)
    return y.ndim == 2 and y.shape[1] > 1 and type_of_target(y) == "multilabel-indicator"


def multilabel_info(Xc: np.ndarray, Y: Any, classes: Any = None) -> tuple[np.ndarray, dict]:
    """Check an indicator ``Y`` against images ``Xc``; ``Y`` as float32 and the data facts.

    The facts are those of ``ImageNetClassifier.check_data`` (``input_shape``,
    ``n_classes``, ``class_counts``: positives per label, ``in_unit_range``) plus
    ``multilabel=True`` and ``n_samples``.

    Examples
    --------
    >>> Y, info = multilabel_info(np.zeros((2, 1, 4, 4)), np.array([[1, 0], [1, 1]]))
    >>> Y.dtype, info["class_counts"].tolist(), info["n_samples"]
    (dtype('float32'), [2, 1], 2)
    """
    Y = np.asarray(Y.detach().cpu().numpy() if isinstance(Y, torch.Tensor) else Y)
    if len(Y) != len(Xc):
        raise ValueError(f"X has {len(Xc)} samples but Y has {len(Y)}: they must match.")
    n_labels = Y.shape[1]
    if classes is not None and len(classes) != n_labels:
        raise ValueError(f"classes has {len(classes)} entries but Y has {n_labels} columns.")
    Y = Y.astype(np.float32)
    info = {
        "input_shape": tuple(int(v) for v in Xc.shape[1:]),
        "n_classes": n_labels,
        "class_counts": Y.sum(axis=0).astype(np.int64),
        "in_unit_range": bool(Xc.min() >= 0.0 and Xc.max() <= 1.0),
        "multilabel": True,
        "n_samples": len(Y),
    }
    return Y, info


def indicator(targets: np.ndarray, multilabel: bool, n_classes: int) -> np.ndarray:
    """``{0, 1}`` rows ``(n, n_classes)``: the indicator itself, or one-hot codes.

    Examples
    --------
    >>> indicator(np.array([1, 0]), False, 3).tolist()
    [[0, 1, 0], [1, 0, 0]]
    """
    if multilabel:
        return np.asarray(targets).astype(np.int64)
    return np.eye(n_classes, dtype=np.int64)[np.asarray(targets)]


def validation_split(
    targets: np.ndarray, fraction: float, seed: int, multilabel: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(train, valid)`` indices: a per-class hold-out that spares the rare classes.

    The samples are grouped into strata: the class codes, or for an indicator
    ``targets`` each row's rarest positive label (rows without one form a
    stratum). A stratum of ``n_s`` samples gives
    ``round(fraction * min(1, sqrt(n_s / n_med)) * n_s)`` of them, at least 1 and
    at most ``n_s - 1`` (a single-sample stratum gives none), ``n_med`` being the
    median stratum size: strata at or above the median give ``fraction``, a
    stratum 4 times smaller than the median gives ``fraction / 2``, 16 times
    smaller ``fraction / 4``. So every class keeps a validation sample for its
    per-class score (Eq. 3) while the tail, whose every training image counts,
    keeps more of them (HAM10000's df: 4 of 86 held out instead of 9).

    Examples
    --------
    >>> train, valid = validation_split(np.repeat([0, 1], 10), 0.2, seed=0)
    >>> len(train), np.bincount(np.repeat([0, 1], 10)[valid]).tolist()
    (16, [2, 2])
    >>> y = np.repeat([0, 1, 2], [400, 100, 25])
    >>> np.bincount(y[validation_split(y, 0.1, seed=0)[1]]).tolist()
    [40, 10, 1]
    """
    targets = np.asarray(targets)
    n = len(targets)
    if multilabel:  # stratify on each row's rarest positive label
        counts = targets.sum(axis=0)
        rank = np.where(targets > 0, counts[None, :], np.inf)
        strata = np.where(targets.any(axis=1), rank.argmin(axis=1), -1)
    else:
        strata = targets
    labels, sizes = np.unique(strata, return_counts=True)
    ref = float(np.median(sizes))
    rng = np.random.RandomState(seed)
    valid = []
    for label, n_s in zip(labels, sizes):
        if n_s < 2:
            continue
        share = fraction * min(1.0, float(np.sqrt(n_s / ref)))
        k = min(int(n_s) - 1, max(1, int(round(share * n_s))))
        valid.append(rng.choice(np.flatnonzero(strata == label), k, replace=False))
    valid = np.concatenate(valid) if valid else rng.choice(n, 1, replace=False)
    mask = np.zeros(n, dtype=bool)
    mask[valid] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def balanced_sample_weights(targets: np.ndarray, multilabel: bool, n_classes: int) -> np.ndarray:
    """Class-balanced sampling weights: ``1 / count`` of a sample's class.

    A multi-label row gets the weight of its rarest positive label; rows without
    a positive share one class's worth of weight.

    Examples
    --------
    >>> balanced_sample_weights(np.array([0, 0, 0, 1]), False, 2).round(2).tolist()
    [0.33, 0.33, 0.33, 1.0]
    """
    if multilabel:
        counts = targets.sum(axis=0)
        inv = np.where(targets > 0, 1.0 / np.maximum(counts, 1)[None, :], 0.0).max(axis=1)
        none = inv == 0
        inv[none] = 1.0 / max(int(none.sum()), 1)
        return inv
    counts = np.bincount(targets, minlength=n_classes)
    return 1.0 / counts[targets]


def balanced_loader(
    dataset: torch.utils.data.Dataset,
    weights: np.ndarray,
    batch_size: int,
    seed: int,
    collate_fn: Callable | None = None,
) -> torch.utils.data.DataLoader:
    """A seeded ``DataLoader`` drawing ``len(dataset)`` samples with ``weights``.

    ``batch_size=-1`` gives one batch of the whole epoch.
    """
    generator = torch.Generator().manual_seed(seed)
    sampler = torch.utils.data.WeightedRandomSampler(
        torch.as_tensor(weights, dtype=torch.double), len(dataset), generator=generator
    )
    batch_size = len(dataset) if batch_size == -1 else batch_size
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn
    )


class BalancedSamplingMixin:
    """Class-balanced re-sampling of a skorch classifier's training batches (``sampler``).

    With ``sampler="balanced"``, ``get_split_datasets`` stores
    ``_sample_weights_ = self._sampling_weights(targets)`` (:func:`balanced_sample_weights`)
    and ``get_iterator`` draws the training batches with them
    (:func:`balanced_loader`, seeded by the loader's seed). Used by
    :class:`fewmed.longtail.RelationalSubsetsDistiller`.
    """

    def _sampling_weights(self, targets: np.ndarray) -> np.ndarray | None:
        if self.sampler is None:
            return None
        return balanced_sample_weights(targets, self.multilabel_, len(self.classes_))

    def get_iterator(self, dataset, training: bool = False):
        """skorch's iterator; a seeded class-balanced sampler when ``sampler="balanced"``."""
        weights = getattr(self, "_sample_weights_", None)
        if not (training and weights is not None and isinstance(dataset, ArrayDataset)):
            return super().get_iterator(dataset, training=training)
        super().get_iterator(dataset, training=True)  # seeds the augmentation
        return balanced_loader(
            dataset, weights, self.batch_size, self.seeds_["loader"], collate_batch
        )


class MultiLabelMixin:
    """The multi-label side of a skorch classifier of the family (mixed in before its base).

    ``fit`` takes class labels ``y`` or a multi-label ``{0, 1}`` indicator ``Y``
    (:func:`is_multilabel`, :func:`multilabel_info`) and records which in
    ``multilabel_``; ``predict_nonlinearity="auto"`` is then a sigmoid (a softmax
    for class labels) and ``predict`` gives a ``{0, 1}`` indicator. Used by
    :class:`fewmed.longtail.RelationalSubsetsDistiller`.
    """

    def _check_data(self, X: Any, y: Any = None) -> None:
        """Validate images and labels (multi-class ``y`` or indicator ``Y``); (re)build."""
        if y is None or not is_multilabel(y):
            self.multilabel_ = False
            super()._check_data(X, y)
            self.data_info_["n_samples"] = int(self.data_info_["class_counts"].sum())
            return
        check_raw_input(X, y, estimator=type(self).__name__)
        Xc = self._as_array(X)
        Y, info = multilabel_info(Xc, y, self.classes)
        self.multilabel_ = True
        self.classes_inferred_ = np.arange(info["n_classes"])
        self._set_data_info(X, Xc, Y, info)

    def _get_predict_nonlinearity(self):
        if isinstance(self.predict_nonlinearity, str) and self.predict_nonlinearity == "auto":
            return sigmoid if getattr(self, "multilabel_", False) else softmax
        return super()._get_predict_nonlinearity()

    def predict(self, X: Any) -> np.ndarray:
        """Predicted labels, or a ``{0, 1}`` indicator (probability >= 0.5) for multi-label.

        Parameters
        ----------
        X : array-like of images

        Returns
        -------
        ndarray of shape (n_samples,) or (n_samples, n_labels)
        """
        self.check_is_fitted()
        if self.multilabel_:
            return (self.predict_proba(X) >= 0.5).astype(np.int64)
        return super().predict(X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        tags.target_tags.multi_output = True
        return tags
