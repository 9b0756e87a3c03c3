"""Which classes go together: the class subsets of relational-subsets distillation (RSKD).

:func:`build_subsets` turns the ``subsets`` parameter of
:class:`fewmed.longtail.RelationalSubsetsDistiller` into validated groups of class
indices: ``"shot"`` splits the classes by training frequency into head / medium /
tail (Ju et al., MICCAI 2021, "shot-based"), a list or dict of groups gives
region- or feature-based subsets. Each subset gets a teacher
(:mod:`fewmed.longtail._teachers`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fewmed.metrics import frequency_groups

__all__ = ["build_subsets"]

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
        :func:`fewmed.metrics.frequency_groups` into ``"head"`` (more than ``many``
        samples), ``"medium"`` and ``"tail"`` (fewer than ``few``); empty groups are
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
    {'head': array([0]), 'medium': array([1]), 'tail': array([2])}
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
