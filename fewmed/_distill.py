"""The pieces of relational-subsets knowledge distillation (Ju et al., MICCAI 2021).

* :func:`build_subsets` turns the ``subsets`` parameter (``"shot"`` or user groups)
  into class subsets, validated;
* :func:`binary_log_probs` and :func:`relational_kd_loss` are Eqs. 1, 2 and 4's
  ``sum_i w_i KD_i``: one *binary* distillation term per class ``i`` (the paper's
  softmax runs over the two states ``{0, 1}`` of a class), at temperature ``T``,
  scaled by ``T**2`` as in Hinton et al. (2015);
* :func:`relational_weights` is Eq. 3, the per-class weight from the teacher-student
  performance gap;
* :func:`per_class_scores` measures per-class performance (AP or accuracy) for Eq. 3.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score

from .metrics import frequency_groups

__all__ = [
    "binary_log_probs",
    "build_subsets",
    "per_class_scores",
    "relational_kd_loss",
    "relational_weights",
]

_SHOT_NAMES = {"head": "head", "medium": "medium", "tail": "tail"}


def build_subsets(
    subsets: Any,
    classes: Sequence | np.ndarray,
    counts: Sequence[float] | np.ndarray,
    *,
    many: float = 100,
    few: float = 20,
    label_names: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Class subsets as ``{name: class indices}`` from the ``subsets`` parameter.

    Parameters
    ----------
    subsets : "shot", sequence of sequences or dict of sequences
        ``"shot"`` splits the classes by training frequency with
        :func:`fewmed.metrics.frequency_groups` into ``"many"`` (more than ``many``
        samples), ``"medium"`` and ``"few"`` (fewer than ``few``); empty groups are
        dropped. A list of groups (named ``"subset0"``, ...) or a dict
        ``{name: group}`` gives the groups explicitly; each group lists class labels
        (values of ``classes``) or names (entries of ``label_names``).
    classes : array-like of shape (n_classes,)
        The labels, in column order.
    counts : array-like of shape (n_classes,)
        Training samples (positives, for multi-label data) per class.
    many, few : float, default=100, 20
        Shot thresholds; values below 1 are fractions of the total count.
    label_names : sequence of str, default=None
        A name per class (same order as ``classes``) usable in groups.

    Returns
    -------
    dict
        Subset name -> sorted ``ndarray`` of class indices. Classes that no group
        names get no teacher (and no distillation term).

    Raises
    ------
    ValueError
        For an unknown option, an unknown class, an empty group, a class in two
        groups, or thresholds with ``few > many``.

    Examples
    --------
    >>> build_subsets("shot", ["a", "b", "c"], [500, 60, 5])
    {'many': array([0]), 'medium': array([1]), 'few': array([2])}
    >>> build_subsets({"pigmented": ["a", "c"], "other": ["b"]}, ["a", "b", "c"], [5, 5, 5])
    {'pigmented': array([0, 2]), 'other': array([1])}
    """
    classes = np.asarray(classes)
    n_classes = len(classes)
    if isinstance(subsets, str):
        if subsets != "shot":
            raise ValueError(
                f"subsets must be 'shot', a list of class groups or a dict of named groups; "
                f"got {subsets!r}."
            )
        for name, value in (("many", many), ("few", few)):
            if not isinstance(value, (int, float, np.number)) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}.")
        groups = frequency_groups(np.asarray(counts), many=many, few=few)
        return {_SHOT_NAMES[k]: np.sort(v) for k, v in groups.items() if len(v)}
    if isinstance(subsets, Mapping):
        named = [(str(k), v) for k, v in subsets.items()]
    elif isinstance(subsets, Sequence) and not isinstance(subsets, (bytes, np.ndarray)):
        named = [(f"subset{i}", v) for i, v in enumerate(subsets)]
    else:
        raise ValueError(
            f"subsets must be 'shot', a list of class groups or a dict of named groups; "
            f"got {type(subsets).__name__}."
        )
    if not named:
        raise ValueError("subsets is empty: give at least one group of classes.")
    lookup: dict[Any, int] = {}
    if label_names is not None:
        if len(label_names) != n_classes:
            raise ValueError(
                f"label_names has {len(label_names)} names but there are {n_classes} classes."
            )
        lookup.update({str(n): i for i, n in enumerate(label_names)})
    for i, c in enumerate(classes.tolist()):
        lookup[c] = i
        lookup.setdefault(str(c), i)
    out: dict[str, np.ndarray] = {}
    owner: dict[int, str] = {}
    for name, group in named:
        if isinstance(group, (str, bytes)) or not isinstance(group, Sequence | np.ndarray):
            group = [group]
        members = list(np.asarray(group, dtype=object).ravel()) if len(group) else []
        if not members:
            raise ValueError(f"subsets: group {name!r} is empty; every group needs a class.")
        idx = []
        for m in members:
            key = m.item() if isinstance(m, np.generic) else m
            if key not in lookup:
                raise ValueError(
                    f"subsets: group {name!r} names class {key!r}, which is not among the "
                    f"classes {classes.tolist()}"
                    + (f" or label_names {list(label_names)}" if label_names is not None else "")
                    + "."
                )
            k = lookup[key]
            if k in owner:
                raise ValueError(
                    f"subsets: class {classes[k].item()!r} is in both group {owner[k]!r} and "
                    f"group {name!r}; groups must not overlap."
                )
            owner[k] = name
            idx.append(k)
        out[name] = np.sort(np.asarray(idx, dtype=np.int64))
    return out


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """``sum_i w_i KD_i`` with ``KD_i = T**2 * mean_n KL(q_ni || q^_ni)`` (Eqs. 1, 2, 4).

    ``KD_i`` is the Kullback-Leibler divergence between the teacher's and the
    student's binary distributions ``(q_i, 1 - q_i)`` of class ``i`` at temperature
    ``T``, averaged over the batch, times ``T**2`` (Hinton et al., 2015: keeps the
    gradient scale independent of ``T``). It is ``KL(teacher || student)``, the
    usual direction of distillation (``torch.nn.KLDivLoss(log q^, q)``); the paper's
    Eq. 2 writes the arguments in the other order.

    Parameters
    ----------
    student_logits : Tensor of shape (n, n_classes)
    teacher_log_probs : Tensor of shape (n, n_classes, 2)
        The teacher's ``log q_i`` and ``log(1 - q_i)`` at temperature ``T`` (see
        :func:`binary_log_probs`); entries of classes without a teacher may hold
        anything finite (their weight must be 0).
    weights : Tensor of shape (n_classes,)
        ``w_i`` (Eq. 3); 0 drops class ``i``.
    temperature : float, default=10.0
    multilabel : bool, default=False
        Sigmoid (multi-label) or softmax (multi-class) student.

    Returns
    -------
    loss : Tensor
        The scalar ``sum_i w_i KD_i``.
    per_class : Tensor of shape (n_classes,)
        The unweighted ``KD_i`` (detached).

    Examples
    --------
    >>> import torch
    >>> t = torch.stack(binary_log_probs(torch.tensor([[2.0, 0.0]]), 2.0), dim=-1)
    >>> loss, kd = relational_kd_loss(torch.tensor([[2.0, 0.0]]), t, torch.ones(2), 2.0)
    >>> float(loss)
    0.0
    """
    s_log_p, s_log_not = binary_log_probs(student_logits, temperature, multilabel)
    t_log_p, t_log_not = teacher_log_probs[..., 0], teacher_log_probs[..., 1]
    t_p, t_not = t_log_p.exp(), t_log_not.exp()
    # 0 * log 0 = 0: xlogy-like guards where the teacher is certain
    kl = torch.where(t_p > 0, t_p * (t_log_p - s_log_p), torch.zeros_like(t_p)) + torch.where(
        t_not > 0, t_not * (t_log_not - s_log_not), torch.zeros_like(t_not)
    )
    per_class = kl.mean(dim=0) * temperature**2
    w = weights.to(device=per_class.device, dtype=per_class.dtype)
    active = w != 0
    loss = (w[active] * per_class[active]).sum()
    return loss, per_class.detach()


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
