"""The outputs of RSKD's fitted teachers, mapped back to the student's classes.

Each teacher of :class:`fewmed.longtail.RelationalSubsetsDistiller` predicts its
subset's classes (+ "other"); its ``subset_columns_`` say which outputs stand for
them (:class:`fewmed.longtail._teachers.TeacherData`):

* :func:`teacher_logits` runs the teachers on images (evaluation mode, in chunks);
* :func:`teacher_class_probs` gives each class its teacher's probability (Eq. 3)
  and :func:`teacher_log_probs` the soft targets of the distillation loss
  (:func:`fewmed.longtail._distillation.relational_kd_loss`);
* :func:`teacher_scores` is the teachers' side of Eq. 3, and
  :func:`distillation_state` all a student needs from its teachers before its
  first epoch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from skorch.utils import to_tensor

from fewmed.longtail._distillation import binary_log_probs, per_class_scores
from fewmed.longtail._targets import indicator

__all__ = [
    "distillation_state",
    "teacher_class_probs",
    "teacher_log_probs",
    "teacher_logits",
    "teacher_scores",
]


def teacher_logits(teachers: Mapping[str, Any], X: Any, device: Any) -> dict[str, torch.Tensor]:
    """Each teacher's raw outputs on ``X`` (evaluation mode, in chunks), on ``device``."""
    Xt = to_tensor(X, device=device)
    out = {}
    for name, t in teachers.items():
        t.module_.eval()
        with torch.no_grad():
            out[name] = torch.cat(
                [t.module_(Xt[i : i + 1024].to(t.device)) for i in range(0, len(Xt), 1024)]
            ).to(Xt.device)
    return out


def teacher_class_probs(
    teachers: Mapping[str, Any],
    subsets: Mapping[str, np.ndarray],
    X: Any,
    n_classes: int,
    device: Any = "cpu",
) -> np.ndarray:
    """``(n, n_classes)``: each class's probability by its teacher (T = 1), NaN without.

    Every teacher carries ``subset_columns_``, the
    :attr:`fewmed.longtail._teachers.TeacherData.columns` of its training set.
    """
    logits = teacher_logits(teachers, X, device)
    out = np.full((len(X), n_classes), np.nan)
    for name, members in subsets.items():
        t = teachers[name]
        proba = t._get_predict_nonlinearity()(logits[name]).cpu().numpy()
        cols = t.subset_columns_
        out[:, members] = proba[:, np.arange(len(members)) if cols is None else cols]
    return out


def teacher_log_probs(
    teachers: Mapping[str, Any],
    subsets: Mapping[str, np.ndarray],
    X: Any,
    temperature: float,
    *,
    n_classes: int,
    multilabel: bool,
    y: Any = None,
    device: Any = "cpu",
) -> torch.Tensor:
    """The teachers' soft targets at ``temperature`` (see ``relational_kd_loss``).

    Multi-label: ``(n, n_classes, 2)``, ``log q_i`` and ``log(1 - q_i)``.
    Multi-class: ``(n, n_classes + 1)``, the log-probabilities of the teacher of
    each sample's class (``y``) over its subset's columns and "other" (last),
    ``-inf`` elsewhere.
    """
    logits = teacher_logits(teachers, X, device)
    n, k = len(X), n_classes
    if multilabel:
        out = torch.zeros(n, k, 2)
    else:
        out = torch.full((n, k + 1), -torch.inf)
        y = torch.as_tensor(np.asarray(y)).long().cpu()
    for name, members in subsets.items():
        t, z = teachers[name], logits[name].cpu()
        cols = t.subset_columns_
        cols = torch.arange(len(members)) if cols is None else torch.as_tensor(cols)
        m = torch.as_tensor(members)
        if multilabel:
            log_p, log_not = binary_log_probs(z, temperature, t.multilabel_)
            out[:, m, 0], out[:, m, 1] = log_p[:, cols], log_not[:, cols]
            continue
        rows = torch.isin(y, m)
        lp = torch.log_softmax(z[rows] / temperature, dim=1)
        block = torch.full((int(rows.sum()), k + 1), -torch.inf)
        block[:, m] = lp[:, cols]
        if lp.shape[1] > len(members):  # the teacher's "other" output
            block[:, k] = lp[:, -1]
        out[rows] = block
    return out


def teacher_scores(
    teachers: Mapping[str, Any],
    subsets: Mapping[str, np.ndarray],
    X_valid: np.ndarray,
    truth: np.ndarray,
    metric: str = "ap",
    device: Any = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """The teachers' side of Eq. 3: which classes have a teacher, and its score.

    Parameters
    ----------
    teachers, subsets : mappings of the subset names
    X_valid : ndarray of shape (n, C, H, W)
        The validation hold-out (may be empty).
    truth : ndarray of shape (n, n_classes)
        Its ``{0, 1}`` rows (:func:`indicator`).
    metric : {"ap", "accuracy"}, default="ap"
    device : str or torch.device, default="cpu"

    Returns
    -------
    has_teacher : ndarray of bool, shape (n_classes,)
    scores : ndarray of shape (n_classes,)
        Each class's teacher performance on the hold-out (NaN without a teacher or
        without validation data).
    """
    n_classes = truth.shape[1]
    has_teacher = np.zeros(n_classes, dtype=bool)
    for members in subsets.values():
        has_teacher[members] = True
    scores = np.full(n_classes, np.nan)
    if len(X_valid):
        proba = teacher_class_probs(teachers, subsets, X_valid, n_classes, device)
        scores[has_teacher] = per_class_scores(truth, np.nan_to_num(proba), metric)[has_teacher]
    return has_teacher, scores


def distillation_state(
    student: Any,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_valid: np.ndarray,
    y_valid: np.ndarray,
) -> tuple[np.ndarray, dict, dict]:
    """What a student's distillation needs from its fitted teachers, before its first epoch.

    The teachers' side of Eq. 3 on the hold-out (:func:`teacher_scores`), their
    quality per subset (``valid_ap_eq3``, the mean of their Eq. 3 scores over the
    subset's classes, and each teacher's own ``validation_``), and the soft targets
    of the training images at the student's ``temperature`` when they can be
    computed once (no augmentation).

    Parameters
    ----------
    student : RelationalSubsetsDistiller
        A fitting student with its ``teachers_``, ``subsets_``, ``classes_``,
        ``multilabel_``, ``weight_metric``, ``temperature`` and ``augment``.
    X_train, y_train : ndarray
        The student's training images and targets (codes or an indicator).
    X_valid, y_valid : ndarray
        The validation hold-out (may be empty).

    Returns
    -------
    scores : ndarray of shape (n_classes,)
        The student's ``teacher_scores_``.
    quality : dict of str to dict
        The student's ``teacher_quality_``.
    state : dict
        ``has_teacher``, ``valid`` (the hold-out's images and ``{0, 1}`` rows),
        ``teacher_lp`` (the precomputed soft targets, or ``None``) and
        ``quality_recorded``: the ``_kd_state_`` that the student's ``get_loss`` and
        :class:`fewmed.longtail._distillation.EpochWeights` read.
    """
    truth = indicator(y_valid, student.multilabel_, len(student.classes_))
    has_teacher, scores = teacher_scores(
        student.teachers_, student.subsets_, X_valid, truth, student.weight_metric, student.device
    )
    quality = {
        name: {
            "valid_ap_eq3": float(np.nanmean(scores[members]))
            if np.isfinite(scores[members]).any()
            else float("nan"),
            **getattr(student.teachers_[name], "validation_", {}),
        }
        for name, members in student.subsets_.items()
    }
    precomputed = None
    if not student.augment:
        precomputed = student._teacher_log_probs(X_train, float(student.temperature), y_train)
    state = {
        "has_teacher": has_teacher,
        "valid": (X_valid, truth),
        "teacher_lp": precomputed,
        "quality_recorded": False,
    }
    return scores, quality, state
