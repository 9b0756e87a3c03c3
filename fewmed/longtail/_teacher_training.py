"""The budget and the validation of RSKD's teachers.

* :func:`teacher_epochs` turns the student's ``teacher_max_steps`` into a
  teacher's epochs (as many optimiser steps as the student's fit, by default);
* :func:`patience_epochs` turns ``teacher_patience`` into epochs;
* :class:`TeacherValidation` scores a teacher on its share of the hold-out after
  every epoch, stops it early and keeps its best epoch.

:func:`fewmed.longtail._teachers.teacher_jobs` puts them into each teacher's job.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from skorch.callbacks import Callback

from fewmed._dataset import ArrayDataset
from fewmed.longtail._distillation import per_class_scores

__all__ = ["TeacherValidation", "patience_epochs", "teacher_epochs"]


def teacher_epochs(student: Any, n_student: int, n_teacher: int) -> int:
    """A teacher's epochs from the student's ``teacher_max_steps`` budget.

    ``"student"``: as many optimiser steps as the student's whole fit
    (``max_epochs * ceil(n_student / batch_size)``), ``int``: that many steps,
    each converted into epochs of the teacher's ``n_teacher`` samples (rounded
    up); ``None``: the student's ``max_epochs``. Early stopping
    (``teacher_patience``) may end a teacher sooner.

    Examples
    --------
    >>> from fewmed import RelationalSubsetsDistiller
    >>> student = RelationalSubsetsDistiller(max_epochs=5, batch_size=64)
    >>> teacher_epochs(student, n_student=6400, n_teacher=640)  # 500 steps, 10 per epoch
    50
    """
    budget = getattr(student, "teacher_max_steps", None)
    if budget is None:
        return int(student.max_epochs)
    bs = (student.teacher or {}).get("batch_size", student.batch_size)
    per_epoch = lambda n: max(1, -(-int(n) // int(bs))) if bs and bs > 0 else 1  # noqa: E731
    steps = int(student.max_epochs) * per_epoch(n_student) if budget == "student" else budget
    return max(1, -(-int(steps) // per_epoch(n_teacher)))


def patience_epochs(patience: float | None, max_epochs: int) -> int | None:
    """Epochs without a better validation loss before a teacher stops.

    An int is a number of epochs; a float in ``(0, 1)`` a share of the teacher's
    ``max_epochs`` (rounded up, at least 1), so a small teacher with many short
    epochs is not stopped while its BatchNorm statistics still settle (a tail
    teacher of ~300 images predicts one class in evaluation mode for its first
    ~6 epochs, then reaches 0.88 accuracy); ``None``: never.

    Examples
    --------
    >>> patience_epochs(0.25, 46), patience_epochs(0.25, 7), patience_epochs(5, 46)
    (12, 2, 5)
    """
    if patience is None:
        return None
    if isinstance(patience, float) and patience < 1:
        return max(1, math.ceil(patience * int(max_epochs)))
    return int(patience)


class TeacherValidation(Callback):
    """A teacher's validation: loss, accuracy and mAP per epoch; early stopping; best kept.

    After every epoch the teacher is scored on its share of the hold-out:
    ``teacher_valid_loss`` (its training loss, CE / BCE), ``teacher_valid_acc``
    (accuracy; multi-label: per-element accuracy at 0.5) and
    ``teacher_valid_map`` (mean average precision over the subset's classes,
    ``columns``), recorded in its history. The weights of the epoch with the
    lowest loss are restored when training ends, and training stops after
    ``patience`` epochs without a lower loss (``None``: never). The teacher then
    holds ``validation_`` (the scores of the restored epoch, ``best_epoch`` and
    ``epochs`` trained); the images are dropped.

    Parameters
    ----------
    X : ndarray of shape (n, C, H, W)
    y : ndarray of shape (n,) or (n, k)
        The teacher's targets (codes, or an indicator for a multi-label teacher).
    patience : int or None, default=None
    columns : ndarray or None, default=None
        Output columns of the subset's classes (``None``: all).
    """

    def __init__(self, X, y, patience=None, columns=None):
        self.X, self.y, self.patience, self.columns = X, y, patience, columns

    def initialize(self):
        self.best_, self.best_state_, self.best_epoch_ = None, None, 0
        if self.X is not None and not self.X.flags.writeable:  # a joblib memmap
            self.X = np.array(self.X)
        return self

    def on_epoch_end(self, net, **kwargs):
        if self.X is None:
            return
        logits = net.forward(ArrayDataset(self.X), training=False)
        multilabel = np.asarray(self.y).ndim == 2
        y = torch.as_tensor(np.asarray(self.y))
        loss = float(net.criterion_(logits, y.float() if multilabel else y.long()))
        proba = net._get_predict_nonlinearity()(logits).cpu().numpy()
        truth = np.asarray(self.y)
        if multilabel:
            acc = float(np.mean((proba >= 0.5) == truth.astype(bool)))
        else:
            acc = float(np.mean(proba.argmax(axis=1) == truth))
            truth = np.eye(proba.shape[1], dtype=np.int64)[truth]
        cols = np.arange(truth.shape[1]) if self.columns is None else np.asarray(self.columns)
        ap = per_class_scores(truth[:, cols], proba[:, cols], "ap")
        scores = {
            "loss": loss,
            "acc": acc,
            "map": float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan"),
        }
        for key, value in scores.items():
            net.history.record(f"teacher_valid_{key}", value)
        epoch = len(net.history)
        if self.best_ is None or loss < self.best_["loss"]:
            self.best_, self.best_epoch_ = scores, epoch
            self.best_state_ = {k: v.detach().clone() for k, v in net.module_.state_dict().items()}
        elif self.patience is not None and epoch - self.best_epoch_ >= self.patience:
            raise KeyboardInterrupt  # skorch ends the fit (as its EarlyStopping does)

    def on_train_end(self, net, **kwargs):
        if self.best_state_ is None:
            return
        net.module_.load_state_dict(self.best_state_)
        net.validation_ = {**self.best_, "best_epoch": self.best_epoch_, "epochs": len(net.history)}
        self.best_state_ = None
        self.X = self.y = None  # the fitted teacher does not keep the hold-out
