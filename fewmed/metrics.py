"""Metrics of the four papers, all usable through :func:`sklearn.metrics.make_scorer`.

* episodic AUC as mean and 95% confidence interval over tasks (DAML), and the
  paired interval of two methods scored on the same tasks,
* quadratic weighted kappa (diabetic-retinopathy grading, Reptile paper),
* macro F1 / precision / recall (CDC),
* mean average precision overall and per head / medium / tail group (RSKD).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    f1_score,
    make_scorer,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.preprocessing import label_binarize

__all__ = [
    "per_class_average_precision",
    "ConfidenceInterval",
    "mean_confidence_interval",
    "paired_confidence_interval",
    "episodic_auc",
    "task_aucs",
    "quadratic_weighted_kappa",
    "macro_f1",
    "macro_precision",
    "macro_recall",
    "mean_average_precision",
    "frequency_groups",
    "group_mean_average_precision",
    "qwk_scorer",
    "macro_f1_scorer",
    "map_scorer",
]


class ConfidenceInterval(NamedTuple):
    """Mean of per-task scores with its ``confidence`` interval (Student t)."""

    mean: float
    half_width: float
    low: float
    high: float
    std: float
    n: int

    def __str__(self) -> str:
        return f"{100 * self.mean:.1f} +- {100 * self.half_width:.1f}"


def mean_confidence_interval(
    values: Sequence[float], confidence: float = 0.95
) -> ConfidenceInterval:
    """Mean and Student-t confidence interval of per-task scores.

    The half-width is ``t * std / sqrt(n)`` with ``std`` the sample standard
    deviation (``ddof=1``) and ``t`` the ``(1 + confidence) / 2`` quantile of
    Student's t with ``n - 1`` degrees of freedom. NaN values (e.g. tasks whose
    query set holds one class, see :func:`task_aucs`) are left out.

    Parameters
    ----------
    values : sequence of float
        Per-task scores; NaN values are ignored.
    confidence : float, default=0.95
        Coverage of the interval, in ``(0, 1)``.

    Returns
    -------
    ConfidenceInterval
        ``mean``, ``half_width``, ``low``, ``high``, ``std`` and ``n`` (the number
        of non-NaN values). With a single value, ``half_width``, ``low`` and
        ``high`` are NaN and ``std`` is 0.

    Raises
    ------
    ValueError
        If ``values`` holds no non-NaN value.

    Examples
    --------
    >>> ci = mean_confidence_interval([0.7, 0.8, 0.9])
    >>> round(ci.mean, 3), round(ci.half_width, 3)
    (0.8, 0.248)
    >>> mean_confidence_interval([0.7, float("nan"), 0.9]).n
    2
    """
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if v.size == 0:
        raise ValueError("mean_confidence_interval needs at least one non-NaN value.")
    mean = float(v.mean())
    if v.size == 1:
        return ConfidenceInterval(mean, float("nan"), float("nan"), float("nan"), 0.0, 1)
    std = float(v.std(ddof=1))
    h = float(stats.t.ppf(0.5 + confidence / 2, v.size - 1) * std / np.sqrt(v.size))
    return ConfidenceInterval(mean, h, mean - h, mean + h, std, int(v.size))


def paired_confidence_interval(
    scores_a: Sequence[float], scores_b: Sequence[float], confidence: float = 0.95
) -> ConfidenceInterval:
    """Mean and Student-t interval of ``a - b`` over tasks both methods were scored on.

    When two methods are scored on the same tasks (same support and query
    images, e.g. :meth:`DAMLClassifier.episode_scores` with the same
    ``random_state``), the per-task differences remove the variation between
    easy and hard tasks, which dominates each method's own interval. An
    interval that excludes 0 says the difference is larger than the test tasks'
    sampling noise; it says nothing about the variation between training runs.
    Tasks where either score is NaN are left out.

    Parameters
    ----------
    scores_a, scores_b : sequence of float
        Per-task scores of the two methods, in the same task order.
    confidence : float, default=0.95

    Returns
    -------
    ConfidenceInterval
        Of the differences ``a - b``.

    Examples
    --------
    >>> ci = paired_confidence_interval([0.8, 0.7, 0.9], [0.7, 0.65, 0.8])
    >>> round(ci.mean, 3), ci.n
    (0.083, 3)
    """
    a = np.asarray(scores_a, dtype=float)
    b = np.asarray(scores_b, dtype=float)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(
            f"scores_a and scores_b must be 1-D per-task scores of the same tasks; got shapes "
            f"{a.shape} and {b.shape}. Score both methods on the same tasks (same n_tasks, "
            "n_shot and random_state)."
        )
    both = ~(np.isnan(a) | np.isnan(b))
    return mean_confidence_interval(a[both] - b[both], confidence)


def _task_auc(y_true, y_score) -> float:
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=float)
    if np.unique(y_true).size < 2:
        return float("nan")
    if y_score.ndim == 2:
        if y_score.shape[1] == 2:
            return float(roc_auc_score(y_true, y_score[:, 1]))
        return float(roc_auc_score(y_true, y_score, multi_class="ovr", average="macro"))
    return float(roc_auc_score(y_true, y_score))


def episodic_auc(
    y_true_tasks: Sequence, y_score_tasks: Sequence, confidence: float = 0.95
) -> ConfidenceInterval:
    """AUC per task, summarised as mean and confidence interval over tasks.

    Parameters
    ----------
    y_true_tasks : sequence of array-like
        Query labels of each task (task-local or original labels).
    y_score_tasks : sequence of array-like
        Scores of each task: positive-class scores ``(n,)``, or probabilities
        ``(n, n_way)`` (one-vs-rest macro AUC for more than 2 classes).
    confidence : float, default=0.95

    Returns
    -------
    ConfidenceInterval
        ``mean``, ``half_width``, ``low``, ``high``, ``std``, ``n`` (tasks).

    Examples
    --------
    >>> ci = episodic_auc([[0, 1, 1], [0, 0, 1]], [[0.1, 0.8, 0.6], [0.3, 0.6, 0.5]])
    >>> round(ci.mean, 3)
    0.75
    """
    return mean_confidence_interval(task_aucs(y_true_tasks, y_score_tasks), confidence)


def task_aucs(y_true_tasks: Sequence, y_score_tasks: Sequence) -> np.ndarray:
    """AUC of every task (NaN for a task whose query set holds one class).

    The per-task values behind :func:`episodic_auc`; pass two methods' values to
    :func:`paired_confidence_interval`.

    Parameters
    ----------
    y_true_tasks : sequence of array-like of shape (n_query,)
        Query labels of each task (task-local or original labels).
    y_score_tasks : sequence of array-like of shape (n_query,) or (n_query, n_way)
        Scores of each task, in the order of ``y_true_tasks``: positive-class
        scores ``(n_query,)``, or probabilities ``(n_query, n_way)`` (column 1 is
        the positive class for two columns; one-vs-rest macro AUC for more).

    Returns
    -------
    ndarray of shape (n_tasks,)
        AUC of each task, NaN where the query labels hold a single class.

    Raises
    ------
    ValueError
        If ``y_true_tasks`` and ``y_score_tasks`` hold different numbers of tasks.

    Examples
    --------
    >>> task_aucs([[0, 1, 1], [0, 0, 1]], [[0.1, 0.8, 0.6], [0.3, 0.6, 0.5]])
    array([1. , 0.5])
    """
    if len(y_true_tasks) != len(y_score_tasks):
        raise ValueError("y_true_tasks and y_score_tasks must have the same number of tasks.")
    return np.array([_task_auc(t, s) for t, s in zip(y_true_tasks, y_score_tasks)], dtype=float)


def quadratic_weighted_kappa(
    y_true: ArrayLike, y_pred: ArrayLike, *, labels: Sequence | None = None
) -> float:
    """Cohen's kappa with quadratic weights, the diabetic-retinopathy grading metric.

    ``kappa = 1 - sum(W * O) / sum(W * E)`` with ``W_ij = (i - j)^2 / (K - 1)^2``,
    ``O`` the confusion matrix and ``E`` the outer product of its marginals scaled
    to the same total. Equals ``cohen_kappa_score(weights="quadratic")``.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True ordinal grades.
    y_pred : array-like of shape (n_samples,)
        Predicted grades.
    labels : sequence, default=None
        The ``K`` grades in their order; the distance between grades ``i`` and
        ``j`` is their position difference. ``None``: the sorted values found in
        ``y_true`` and ``y_pred``.

    Returns
    -------
    float
        The kappa: 1 for perfect agreement, 0 for chance-level agreement,
        negative below chance. With fewer than two grades it is 1.0 if
        ``y_true`` equals ``y_pred`` and 0.0 otherwise; 1.0 when the expected
        disagreement is zero.

    Examples
    --------
    >>> quadratic_weighted_kappa([0, 1, 2, 3], [0, 1, 2, 3])
    1.0
    >>> round(quadratic_weighted_kappa([0, 1, 2, 3], [0, 2, 1, 3]), 3)
    0.8
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if labels is None:
        labels = np.unique(np.concatenate([y_true, y_pred]))
    labels = np.asarray(labels)
    k = len(labels)
    if k < 2:
        return 1.0 if np.array_equal(y_true, y_pred) else 0.0
    observed = confusion_matrix(y_true, y_pred, labels=labels).astype(float)
    i, j = np.indices((k, k))
    weights = (i - j) ** 2 / (k - 1) ** 2
    expected = np.outer(observed.sum(1), observed.sum(0)) / observed.sum()
    denom = (weights * expected).sum()
    if denom == 0:
        return 1.0
    return float(1.0 - (weights * observed).sum() / denom)


def macro_f1(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Macro-averaged F1 (``zero_division=0``): CDC's main metric (MF1).

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True labels.
    y_pred : array-like of shape (n_samples,)
        Predicted labels.

    Returns
    -------
    float
        The unweighted mean over the classes found in ``y_true`` and ``y_pred``
        of the per-class F1 (0 for a class that is never predicted or never true).

    Examples
    --------
    >>> macro_f1([0, 1, 1], [0, 1, 0])
    0.6666666666666666
    """
    return float(f1_score(y_true, y_pred, average="macro", zero_division=0))


def macro_precision(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Macro-averaged precision (``zero_division=0``).

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True labels.
    y_pred : array-like of shape (n_samples,)
        Predicted labels.

    Returns
    -------
    float
        The unweighted mean over the classes found in ``y_true`` and ``y_pred``
        of the per-class precision (0 for a class that is never predicted).

    Examples
    --------
    >>> macro_precision([0, 1, 1], [0, 1, 1])
    1.0
    """
    return float(precision_score(y_true, y_pred, average="macro", zero_division=0))


def macro_recall(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Macro-averaged recall (balanced accuracy for single-label problems).

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True labels.
    y_pred : array-like of shape (n_samples,)
        Predicted labels.

    Returns
    -------
    float
        The unweighted mean over the classes found in ``y_true`` and ``y_pred``
        of the per-class recall (0 for a class absent from ``y_true``).

    Examples
    --------
    >>> macro_recall([0, 1, 1], [0, 1, 0])
    0.75
    """
    return float(recall_score(y_true, y_pred, average="macro", zero_division=0))


def _indicator(y_true, n_classes: int, labels=None) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim == 2:
        return y.astype(int)
    labels = np.arange(n_classes) if labels is None else np.asarray(labels)
    Y = label_binarize(y, classes=labels)  # noqa: N806
    if n_classes == 2 and Y.shape[1] == 1:
        Y = np.hstack([1 - Y, Y])  # noqa: N806
    return Y


def per_class_average_precision(
    y_true: ArrayLike, y_score: ArrayLike, labels: ArrayLike | None = None
) -> np.ndarray:
    """Average precision of each class (one-vs-rest; NaN for a class without positives).

    Parameters
    ----------
    y_true : array-like of shape (n,) or (n, n_classes)
        Labels (codes ``0..n_classes-1`` or ``labels``) or a ``{0, 1}`` indicator.
    y_score : array-like of shape (n, n_classes)
        Scores per class.
    labels : array-like, default=None
        The label of each column of ``y_score`` when ``y_true`` holds labels.

    Returns
    -------
    ndarray of shape (n_classes,)
        Average precision of each score column, NaN where ``y_true`` has no
        positive of that class.

    Raises
    ------
    ValueError
        If ``y_score`` is not 2-D or ``y_true`` gives another number of classes.

    Examples
    --------
    >>> per_class_average_precision([0, 1, 1], [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]).tolist()
    [1.0, 1.0]
    """
    scores = np.asarray(y_score, dtype=float)
    if scores.ndim != 2:
        raise ValueError(f"y_score must be (n_samples, n_classes), got shape {scores.shape}.")
    Y = _indicator(y_true, scores.shape[1], labels)  # noqa: N806
    if Y.shape != scores.shape:
        raise ValueError(
            f"y_true gives {Y.shape[1]} label columns but y_score has {scores.shape[1]}."
        )
    ap = np.full(Y.shape[1], np.nan)
    for c in range(Y.shape[1]):
        if Y[:, c].any():
            ap[c] = average_precision_score(Y[:, c], scores[:, c])
    return ap


def mean_average_precision(
    y_true: ArrayLike, y_score: ArrayLike, *, labels: Sequence | None = None
) -> float:
    """Mean over classes of the average precision (classes absent from ``y_true`` skipped).

    Parameters
    ----------
    y_true : array-like of shape (n,) or (n, n_classes)
        Labels (codes ``0..n_classes-1`` or ``labels``) or a ``{0, 1}`` indicator.
    y_score : array-like of shape (n, n_classes)
        Probabilities or scores per class.
    labels : sequence, default=None
        Label of each score column for a 1-D ``y_true`` (default ``0..n_classes-1``).

    Returns
    -------
    float
        The mean of :func:`per_class_average_precision` over the classes with
        a positive in ``y_true``.

    Raises
    ------
    ValueError
        If ``y_score`` is not 2-D or ``y_true`` gives another number of classes.

    Examples
    --------
    >>> mean_average_precision([0, 1, 1], [[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]])
    1.0
    """
    return float(np.nanmean(per_class_average_precision(y_true, y_score, labels)))


def frequency_groups(
    counts: ArrayLike, *, many: int | float = 100, few: int | float = 20
) -> dict[str, np.ndarray]:
    """Split classes into head ("many"), medium and tail ("few") groups by frequency.

    A class with more than ``many`` samples is head, fewer than ``few`` is tail,
    the rest medium. Thresholds below 1 are read as fractions of the total count.

    Parameters
    ----------
    counts : array-like of shape (n_classes,)
        Training samples per class (positives per label for multi-label data).
    many, few : int or float

    Returns
    -------
    dict
        ``{"head": idx, "medium": idx, "tail": idx}`` arrays of class indices.

    Examples
    --------
    >>> frequency_groups([6705, 1113, 1099, 514, 327, 142, 115], many=2000, few=400)
    {'head': array([0]), 'medium': array([1, 2, 3]), 'tail': array([4, 5, 6])}
    """
    c = np.asarray(counts, dtype=float)
    total = c.sum()
    hi = many * total if many < 1 else many
    lo = few * total if few < 1 else few
    if lo > hi:
        raise ValueError(f"few ({few}) must not exceed many ({many}).")
    idx = np.arange(c.size)
    return {"head": idx[c > hi], "medium": idx[(c <= hi) & (c >= lo)], "tail": idx[c < lo]}


def group_mean_average_precision(
    y_true: ArrayLike,
    y_score: ArrayLike,
    counts: ArrayLike,
    *,
    many: int | float = 100,
    few: int | float = 20,
) -> dict[str, float]:
    """mAP per head / medium / tail group and in total (RSKD's Table 3 columns).

    ``counts`` are the *training* frequencies that define the groups (see
    :func:`frequency_groups`); each group's mAP is the mean of its classes'
    average precisions (:func:`per_class_average_precision`), leaving out
    classes without a positive in ``y_true``.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,) or (n_samples, n_classes)
        Class codes ``0..n_classes-1``, or a ``{0, 1}`` indicator matrix
        (multi-label).
    y_score : array-like of shape (n_samples, n_classes)
        Probabilities or scores per class.
    counts : array-like of shape (n_classes,)
        Training samples per class (positives per label for multi-label data).
    many : int or float, default=100
        A class with more than ``many`` training samples is head; below 1 it is
        a fraction of the total count.
    few : int or float, default=20
        A class with fewer than ``few`` training samples is tail; below 1 it is
        a fraction of the total count.

    Returns
    -------
    dict of str to float
        ``{"head": ..., "medium": ..., "tail": ..., "total": ...}``; a group
        without classes, or whose classes have no positives, is NaN.

    Raises
    ------
    ValueError
        If ``few`` exceeds ``many``, ``y_score`` is not 2-D, or ``y_true`` and
        ``y_score`` give different numbers of classes.

    Examples
    --------
    >>> y = [0, 0, 1, 2]
    >>> s = [[.9, .05, .05], [.8, .1, .1], [.1, .8, .1], [.2, .2, .6]]
    >>> group_mean_average_precision(y, s, [100, 30, 5], many=50, few=10)["tail"]
    1.0
    """
    ap = per_class_average_precision(y_true, y_score)
    groups = frequency_groups(counts, many=many, few=few)
    out = {}
    for name, idx in groups.items():
        vals = ap[idx]
        out[name] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
    out["total"] = float(np.nanmean(ap))
    return out


qwk_scorer = make_scorer(quadratic_weighted_kappa)
macro_f1_scorer = make_scorer(macro_f1)


def map_scorer(estimator: Any, X: Any, y: ArrayLike) -> float:
    """Scorer (``scoring=map_scorer``) of mean average precision from ``predict_proba``.

    Uses ``estimator.classes_`` to match the score columns to the labels in ``y``,
    so string labels work (a plain ``make_scorer`` cannot know the column order).

    Parameters
    ----------
    estimator : classifier
        A fitted classifier with ``predict_proba``; its ``classes_`` (when
        present) label the probability columns.
    X : array-like or torch.Tensor
        The samples to score, as ``estimator.predict_proba`` takes them.
    y : array-like of shape (n_samples,) or (n_samples, n_classes)
        True labels, or a ``{0, 1}`` indicator matrix in the column order of
        ``predict_proba``.

    Returns
    -------
    float
        Mean average precision (:func:`mean_average_precision`).

    Raises
    ------
    ValueError
        If the labels give another number of columns than ``predict_proba``.

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> X, y = [[0.0], [1.0], [2.0], [3.0]], ["a", "a", "b", "b"]
    >>> map_scorer(LogisticRegression().fit(X, y), X, y)
    1.0
    """
    proba = estimator.predict_proba(X)
    y = np.asarray(y)
    labels = None if y.ndim == 2 else getattr(estimator, "classes_", None)
    return mean_average_precision(y, proba, labels=labels)
