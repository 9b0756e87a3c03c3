"""The distillation loss of RSKD and its per-class weights (Ju et al., MICCAI 2021).

* :func:`binary_log_probs` and :func:`relational_kd_loss` are Eqs. 1, 2 and 4's
  ``sum_i w_i KD_i`` at temperature ``T``, scaled by ``T**2`` (Hinton et al., 2015):
  one *binary* term per class for multi-label students (the paper's softmax runs
  over the two states ``{0, 1}`` of a class), the KL over the subset's classes of
  the samples of class ``i`` for multi-class students;
* :func:`relational_weights` is Eq. 3, the per-class weight from the teacher-student
  performance gap, and :func:`per_class_scores` the per-class performance (AP or
  accuracy) it compares;
* :class:`EpochWeights` is the callback that recomputes the weights (Eq. 3) after
  every epoch of the student.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score
from skorch.callbacks import Callback

from fewmed._dataset import ArrayDataset

__all__ = [
    "EpochWeights",
    "binary_log_probs",
    "per_class_scores",
    "relational_kd_loss",
    "relational_weights",
]


def binary_log_probs(
    logits: torch.Tensor, temperature: float = 1.0, multilabel: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``log q`` and ``log(1 - q)`` of every output at temperature ``T`` (Eq. 1).

    Multi-label: ``q_i = sigmoid(z_i / T)`` (a softmax over the states ``{0, 1}``
    of class ``i`` with logits ``(0, z_i)``). Multi-class: ``q_i`` is the softmax
    probability of class ``i`` at temperature ``T``; ``1 - q_i`` is computed as a
    log-sum-exp over the other outputs, so neither is ever ``log 0``.

    Parameters
    ----------
    logits : Tensor of shape (n, k)
    temperature : float, default=1.0
    multilabel : bool, default=False

    Returns
    -------
    (Tensor, Tensor)
        Both of shape (n, k).

    Examples
    --------
    >>> import torch
    >>> lp, lq = binary_log_probs(torch.tensor([[0.0, 0.0]]))
    >>> torch.exp(lp), torch.exp(lq)
    (tensor([[0.5000, 0.5000]]), tensor([[0.5000, 0.5000]]))
    """
    z = logits / temperature
    if multilabel:
        return F.logsigmoid(z), F.logsigmoid(-z)
    log_p = torch.log_softmax(z, dim=1)
    k = z.shape[1]
    if k == 1:
        return log_p, torch.full_like(log_p, -torch.inf)
    eye = torch.eye(k, dtype=torch.bool, device=z.device)
    others = z[:, None, :].expand(-1, k, -1).masked_fill(eye, -torch.inf)
    log_not = torch.logsumexp(others, dim=2) - torch.logsumexp(z, dim=1, keepdim=True)
    return log_p, log_not


def relational_kd_loss(
    student_logits: torch.Tensor,
    teacher_log_probs: torch.Tensor,
    weights: torch.Tensor,
    temperature: float = 10.0,
    multilabel: bool = False,
    y: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``sum_i w_i KD_i`` at temperature ``T``, scaled by ``T**2`` (Eqs. 1, 2, 4).

    ``T**2`` (Hinton et al., 2015) keeps the gradients' scale independent of ``T``.
    Every KL is ``KL(teacher || student)``, the usual direction of distillation
    (``torch.nn.KLDivLoss(log q^, q)``); the paper's Eq. 2 writes the arguments in
    the other order.

    * Multi-label (``multilabel=True``, the paper's setting): one *binary* term per
      class, ``KD_i = T**2 * mean_n KL((q_ni, 1 - q_ni) || (q^_ni, 1 - q^_ni))`` with
      ``q = sigmoid(z / T)`` of the teacher of class ``i``'s subset and ``q^`` of the
      student, over every sample. ``teacher_log_probs`` is ``(n, K, 2)``:
      ``log q`` and ``log(1 - q)`` (see :func:`binary_log_probs`). The loss is
      ``(1 / K) sum_i w_i KD_i``: a mean over the ``n * K`` (sample, label)
      elements, like the student's BCE (``BCEWithLogitsLoss``' mean), so that
      each element's KD term weighs against its BCE term as in the paper's
      Eq. 4, ``L = sum_i (L_BCE,i + w_i KD_i)`` with both terms summed over the
      labels; summing ``K`` KD means against one BCE mean would weigh KD ``K``
      times more per element.
    * Multi-class: binary terms of different teachers would ask one softmax for
      inconsistent marginals, so ``KD_i`` distils the samples *of class i*: the KL
      between the teacher's softmax over its subset's classes (+ its "other"
      output) and the student's softmax grouped the same way, as in LFME (Xiang
      et al., 2020, the paper's ref. [13]). The student's "other" logit is
      ``logsumexp(z_outside) / T``: the outside classes are grouped at ``T = 1``
      (their total probability) and then tempered like the teacher's one "other"
      logit, so at every ``T`` the minimiser gives the student the teacher's
      ``T = 1`` "other" probability (grouping *tempered* probabilities instead
      would drive it to 0 as ``T`` grows):
      ``KD_i = T**2 / n * sum_{n: y_n = i} KL_n``, so ``sum_i KD_i`` is a batch mean.
      ``teacher_log_probs`` is ``(n, K + 1)``: per sample, the teacher's log-probs
      at ``T`` of the subset's classes (columns of those classes), of "other"
      (last column), and ``-inf`` elsewhere (all ``-inf``: no teacher).

    Parameters
    ----------
    student_logits : Tensor of shape (n, K)
    teacher_log_probs : Tensor of shape (n, K, 2) or (n, K + 1)
    weights : Tensor of shape (K,)
        ``w_i`` (Eq. 3); 0 drops class ``i``.
    temperature : float, default=10.0
    multilabel : bool, default=False
    y : Tensor of shape (n,), default=None
        Class codes (multi-class only).

    Returns
    -------
    loss : Tensor
        The scalar ``sum_i w_i KD_i`` (multi-label: divided by ``K``).
    per_class : Tensor of shape (K,)
        The unweighted ``KD_i`` (detached).

    Examples
    --------
    >>> import torch
    >>> t = torch.stack(binary_log_probs(torch.tensor([[2.0, 0.0]]), 2.0, True), dim=-1)
    >>> loss, kd = relational_kd_loss(torch.tensor([[2.0, 0.0]]), t, torch.ones(2), 2.0, True)
    >>> float(loss)
    0.0
    """
    w = weights.to(device=student_logits.device, dtype=student_logits.dtype)
    T2 = temperature**2
    if multilabel:
        k_labels = student_logits.shape[1]
        s_log_p, s_log_not = binary_log_probs(student_logits, temperature, True)
        t_log_p, t_log_not = teacher_log_probs[..., 0], teacher_log_probs[..., 1]
        kl = _xlogx_diff(t_log_p, s_log_p) + _xlogx_diff(t_log_not, s_log_not)
        per_class = kl.mean(dim=0) * T2
        active = w != 0
        # a per-element mean, as BCE's: (1 / K) sum_i w_i KD_i (see the docstring)
        return (w[active] * per_class[active]).sum() / k_labels, per_class.detach()
    if y is None:
        raise ValueError("relational_kd_loss needs the class codes y for a multi-class student.")
    n, k = student_logits.shape
    t_lp = teacher_log_probs.to(student_logits.dtype)
    in_subset = torch.isfinite(t_lp[:, :k])
    z = student_logits / temperature
    # the student's "other" groups the outside classes at T = 1 and is then tempered,
    # as the teacher's "other" is one logit divided by T: log sum_j exp(z_j) / T
    outside = torch.where(in_subset, torch.full_like(z, -torch.inf), student_logits)
    other = torch.logsumexp(outside, dim=1, keepdim=True) / temperature
    has_other = torch.isfinite(t_lp[:, k:])
    z_ext = torch.cat(
        [
            torch.where(in_subset, z, torch.full_like(z, -torch.inf)),
            torch.where(has_other, other, torch.full_like(other, -torch.inf)),
        ],
        dim=1,
    )
    taught = torch.isfinite(z_ext).any(dim=1)
    z_ext = torch.where(taught[:, None], z_ext, torch.zeros_like(z_ext))  # rows without teacher
    s_lp = torch.log_softmax(z_ext, dim=1)
    kl = _xlogx_diff(t_lp, s_lp).sum(dim=1) * taught
    y = y.to(student_logits.device).long()
    per_class = torch.zeros(k, dtype=kl.dtype, device=kl.device).index_add(0, y, kl) * T2 / n
    return (w[y] * kl).sum() * T2 / n, per_class.detach()


def _xlogx_diff(t_log: torch.Tensor, s_log: torch.Tensor) -> torch.Tensor:
    """``p_t * (log p_t - log p_s)`` with ``0 log 0 = 0`` (and no NaN gradients)."""
    t_p = t_log.exp()
    safe = t_p > 0
    diff = torch.where(safe, t_log, torch.zeros_like(t_log)) - torch.where(
        safe, s_log, torch.zeros_like(s_log)
    )
    return torch.where(safe, t_p * diff, torch.zeros_like(t_p))


def relational_weights(
    teacher_scores: Sequence[float] | np.ndarray,
    student_scores: Sequence[float] | np.ndarray,
    delta: float = 0.6,
) -> np.ndarray:
    """Eq. 3: per-class KD weights from the teacher-student performance gap.

    ``w_i = 1`` while ``delta * Acc_T,i >= Acc_S,i``; otherwise
    ``w_i = (Acc_T,i - Acc_S,i) / (Acc_T,i * (1 - delta))``, which falls linearly
    from 1 (student at ``delta`` times the teacher) to 0 (student as good as the
    teacher). A student *better* than its teacher would get a negative weight
    from the formula (the paper does not say); it gets 0: no distillation from a
    worse teacher. A class with a NaN score (no teacher, or no validation
    sample) gets 0 when the teacher score is NaN, and 1 when only the student's is.

    Parameters
    ----------
    teacher_scores, student_scores : array-like of shape (n_classes,)
        Per-class performance of the teachers (fixed) and of the student at the
        current epoch, higher is better (AP or accuracy, in ``[0, 1]``).
    delta : float, default=0.6
        In ``[0, 1]``; the share of the teacher's performance under which the
        student is distilled at full weight.

    Returns
    -------
    ndarray of shape (n_classes,), values in ``[0, 1]``

    Examples
    --------
    >>> relational_weights([0.8, 0.8, 0.8, 0.8], [0.4, 0.64, 0.8, 0.9], delta=0.6)
    array([1. , 0.5, 0. , 0. ])
    """
    if not (isinstance(delta, (int, float, np.number)) and 0 <= delta <= 1):
        raise ValueError(f"delta must be a number in [0, 1], got {delta!r}.")
    t = np.asarray(teacher_scores, dtype=np.float64)
    s = np.asarray(student_scores, dtype=np.float64)
    if t.shape != s.shape:
        raise ValueError(f"teacher_scores {t.shape} and student_scores {s.shape} differ.")
    w = np.ones_like(t)
    gap_case = ~(delta * t >= s)  # NaN comparisons fall here, handled below
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = (t - s) / (t * (1.0 - delta))
    w[gap_case] = np.clip(np.nan_to_num(gap[gap_case], nan=0.0, posinf=0.0, neginf=0.0), 0, 1)
    w[np.isnan(s) & ~np.isnan(t)] = 1.0
    w[np.isnan(t)] = 0.0
    return w


def per_class_scores(y_true: np.ndarray, scores: np.ndarray, metric: str = "ap") -> np.ndarray:
    """Per-class performance for Eq. 3: average precision or accuracy.

    Parameters
    ----------
    y_true : ndarray of shape (n, n_classes)
        ``{0, 1}`` indicator (one-hot for multi-class).
    scores : ndarray of shape (n, n_classes)
        Probabilities.
    metric : {"ap", "accuracy"}, default="ap"
        ``"ap"``: average precision of each column (NaN for a class without a
        positive); ``"accuracy"``: recall of each class under the arg-max
        (multi-class, one-hot ``y_true``) or binary accuracy at 0.5 (multi-label).

    Returns
    -------
    ndarray of shape (n_classes,)

    Examples
    --------
    >>> per_class_scores(np.array([[1, 0], [0, 1]]), np.array([[0.9, 0.1], [0.3, 0.7]]))
    array([1., 1.])
    """
    y_true = np.asarray(y_true)
    scores = np.asarray(scores, dtype=np.float64)
    out = np.full(y_true.shape[1], np.nan)
    if metric == "ap":
        for c in range(y_true.shape[1]):
            if y_true[:, c].any():
                out[c] = average_precision_score(y_true[:, c], scores[:, c])
        return out
    if metric != "accuracy":
        raise ValueError(f"weight_metric must be 'ap' or 'accuracy', got {metric!r}.")
    onehot = np.all(y_true.sum(axis=1) == 1)
    if onehot:
        pred = scores.argmax(axis=1)
        truth = y_true.argmax(axis=1)
        for c in range(y_true.shape[1]):
            if (truth == c).any():
                out[c] = float(np.mean(pred[truth == c] == c))
        return out
    return np.mean((scores >= 0.5) == y_true.astype(bool), axis=0).astype(np.float64)


class EpochWeights(Callback):
    """Records the epoch's KD weights and recomputes them (Eq. 3) after the epoch.

    The ``"kd_weights"`` callback of :class:`fewmed.longtail._rskd.RelationalSubsetsDistiller`.
    At every ``on_epoch_end`` of a distilling fit it appends the weights used to
    ``kd_weights_history_``, scores the student per class on the validation
    hold-out (``student_scores_history_``) and, for ``kd="relational"``, sets
    ``kd_weights_`` by :func:`relational_weights` (0 for classes
    without a teacher); both go to the history (``kd_weights``,
    ``valid_class_scores``), and the teachers' quality (``teacher_quality_``)
    to the fit's first epoch (``teacher_quality``).
    """

    def on_epoch_end(self, net, **kwargs):
        state = getattr(net, "_kd_state_", None)
        if net.kd is None or state is None:
            return
        used = np.asarray(net.kd_weights_, dtype=np.float64)
        net.kd_weights_history_ = np.vstack([net.kd_weights_history_, used])
        X_valid, truth = state["valid"]
        scores = np.full(len(net.classes_), np.nan)
        if len(X_valid):
            logits = net.forward(ArrayDataset(X_valid), training=False)
            proba = net._get_predict_nonlinearity()(logits).cpu().numpy()
            scores = per_class_scores(truth, proba, net.weight_metric)
        net.student_scores_history_ = np.vstack([net.student_scores_history_, scores])
        if net.kd == "relational":
            new = relational_weights(net.teacher_scores_, scores, net.delta)
            new[~state["has_teacher"]] = 0.0
            net.kd_weights_ = new
        if not state.get("quality_recorded", True):  # the teachers, once per fit
            net.history.record("teacher_quality", getattr(net, "teacher_quality_", {}))
            state["quality_recorded"] = True
        net.history.record("kd_weights", used.tolist())
        net.history.record("valid_class_scores", scores.tolist())
