"""Splitters for rare-disease protocols and the episode (task) sampler.

* :class:`LeaveClassesOut` - class-disjoint splits: meta-train on the "common"
  classes, evaluate on the held-out "rare" ones; a ``cv=`` for ``GridSearchCV``.
* :func:`grouped_train_test_split` - a stratified split that never puts one
  patient / lesion on both sides; :func:`check_group_leak` verifies it.
* :class:`EpisodeSampler` - seeded N-way K-shot episodes with a query set.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold
from sklearn.model_selection._split import BaseCrossValidator
from sklearn.utils import check_random_state

if TYPE_CHECKING:
    from skorch.dataset import ValidSplit

__all__ = [
    "Episode",
    "EpisodeSampler",
    "LeaveClassesOut",
    "TaskDistribution",
    "TaskIndex",
    "check_group_leak",
    "grouped_train_test_split",
    "stratified_split",
]


class LeaveClassesOut(BaseCrossValidator):
    """Class-disjoint cross-validator: test classes never appear in training.

    Few-shot protocols meta-train on common diseases and test on rare ones that the
    model has never seen. Each split holds out a set of classes; every sample of a
    held-out class is in the test fold, every sample of the others in the training
    fold.

    Parameters
    ----------
    test_classes : sequence of labels or sequence of sequences, default=None
        The held-out classes, fixed: one sequence gives one split (e.g. HAM10000's
        ``["akiec", "vasc", "df"]``), a list of sequences gives one split each.
        ``None`` draws ``n_test_classes`` classes at random per split.
    n_test_classes : int or float, default=2
        Held-out classes per random split (a float in (0, 1) is a fraction of the
        classes). Ignored when ``test_classes`` is given.
    n_splits : int, default=5
        Number of random splits. Ignored when ``test_classes`` is given.
    random_state : int, RandomState instance or None, default=None
        Seeds the random class draws.

    Examples
    --------
    >>> import numpy as np
    >>> y = np.array(["nv", "nv", "mel", "mel", "df", "df"])
    >>> cv = LeaveClassesOut(test_classes=["df"])
    >>> [(y[tr].tolist(), y[te].tolist()) for tr, te in cv.split(np.zeros(6), y)]
    [(['nv', 'nv', 'mel', 'mel'], ['df', 'df'])]
    """

    def __init__(
        self,
        test_classes: Sequence | None = None,
        *,
        n_test_classes: int | float = 2,
        n_splits: int = 5,
        random_state: int | np.random.RandomState | None = None,
    ) -> None:
        self.test_classes = test_classes
        self.n_test_classes = n_test_classes
        self.n_splits = n_splits
        self.random_state = random_state

    def _fixed(self) -> list[list] | None:
        if self.test_classes is None:
            return None
        tc = list(self.test_classes)
        if tc and all(isinstance(t, (list, tuple, np.ndarray, set)) for t in tc):
            return [list(t) for t in tc]
        return [tc]

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        fixed = self._fixed()
        return len(fixed) if fixed is not None else int(self.n_splits)

    def _iter_test_masks(self, X=None, y=None, groups=None) -> Iterator[np.ndarray]:
        if y is None:
            raise ValueError("LeaveClassesOut needs y (the class labels) to split on classes.")
        y = np.asarray(y)
        if y.ndim != 1:
            raise ValueError(f"LeaveClassesOut needs a 1-D y of class labels, got shape {y.shape}.")
        classes = np.unique(y)
        fixed = self._fixed()
        if fixed is not None:
            for held in fixed:
                unknown = [c for c in held if c not in set(classes.tolist())]
                if unknown:
                    raise ValueError(
                        f"test_classes contains {unknown}, which are not in y; y has classes "
                        f"{classes.tolist()}."
                    )
                if len(set(held)) >= len(classes):
                    raise ValueError("test_classes holds out every class: keep some for training.")
                yield np.isin(y, held)
            return
        k = self.n_test_classes
        if isinstance(k, Real) and not isinstance(k, Integral):
            if not 0 < k < 1:
                raise ValueError(f"n_test_classes as a float must be in (0, 1), got {k}.")
            k = max(1, int(round(k * len(classes))))
        if not 1 <= k < len(classes):
            raise ValueError(
                f"n_test_classes={self.n_test_classes} must leave at least one training class; "
                f"y has {len(classes)} classes."
            )
        rng = check_random_state(self.random_state)
        for _ in range(self.n_splits):
            held = rng.choice(classes, size=k, replace=False)
            yield np.isin(y, held)

    def split(self, X, y=None, groups=None):
        """Generate (train, test) indices with disjoint class sets."""
        n = len(y) if y is not None else len(X)
        idx = np.arange(n)
        for mask in self._iter_test_masks(X, y, groups):
            yield idx[~mask], idx[mask]


def grouped_train_test_split(
    *arrays: Any,
    groups: ArrayLike,
    stratify: ArrayLike | None = None,
    test_size: float = 0.2,
    random_state: int | None = None,
) -> list:
    """Split arrays so that no group (patient, lesion) is on both sides.

    With ``stratify`` the split comes from ``StratifiedGroupKFold`` with
    ``round(1 / test_size)`` folds (class proportions kept as far as groups
    allow), else from ``GroupShuffleSplit``.

    Parameters
    ----------
    *arrays : sequence of indexables with the same length
        Arrays to split (NumPy arrays, tensors, lists, ...), indexed by sample
        along their first axis; lists are returned as arrays.
    groups : array-like of shape (n_samples,)
        Group of each sample, e.g. HAM10000's ``lesion_id``.
    stratify : array-like of shape (n_samples,), default=None
        Labels whose class proportions the split keeps as far as groups allow.
    test_size : float, default=0.2
        Share of the data in the test part, in ``(0, 1)``: the share of groups
        without ``stratify``, one fold of ``round(1 / test_size)`` with it.
    random_state : int or None, default=None
        Seed of the split.

    Returns
    -------
    list
        ``train, test`` for every array, in order, like
        :func:`sklearn.model_selection.train_test_split`.

    Raises
    ------
    ValueError
        If no array is given, an array and ``groups`` differ in length, or
        ``test_size`` is not in ``(0, 1)``.

    Examples
    --------
    >>> import numpy as np
    >>> X, y = np.arange(8), np.array([0, 0, 0, 0, 1, 1, 1, 1])
    >>> g = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    >>> Xtr, Xte = grouped_train_test_split(X, groups=g, stratify=y, test_size=0.5,
    ...                                     random_state=0)
    >>> sorted(set(g[Xtr]) & set(g[Xte]))
    []
    """
    if not arrays:
        raise ValueError("grouped_train_test_split needs at least one array.")
    groups = np.asarray(groups)
    n = len(groups)
    for a in arrays:
        if len(a) != n:
            raise ValueError(f"arrays and groups differ in length: {len(a)} != {n}.")
    if not 0 < test_size < 1:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}.")
    idx = np.arange(n)
    if stratify is not None:
        n_folds = max(2, int(round(1 / test_size)))
        cv = StratifiedGroupKFold(n_folds, shuffle=True, random_state=random_state)
        train, test = next(cv.split(idx, np.asarray(stratify), groups))
    else:
        cv = GroupShuffleSplit(1, test_size=test_size, random_state=random_state)
        train, test = next(cv.split(idx, groups=groups))
    out = []
    for a in arrays:
        a_arr = a if hasattr(a, "__getitem__") and not isinstance(a, list) else np.asarray(a)
        out += [a_arr[train], a_arr[test]]
    return out


def check_group_leak(groups: ArrayLike, train: ArrayLike, test: ArrayLike) -> None:
    """Raise ``ValueError`` if any group has samples in both ``train`` and ``test``.

    Parameters
    ----------
    groups : array-like of shape (n_samples,)
        Group of each sample (patient, lesion, ...).
    train : array-like of int or bool
        Indices of the training samples into ``groups`` (or a boolean mask of
        shape ``(n_samples,)``), e.g. the first array of a ``split`` pair.
    test : array-like of int or bool
        Indices (or a boolean mask) of the test samples.

    Returns
    -------
    None
        Returns quietly when no group is on both sides.

    Raises
    ------
    ValueError
        If a group has samples in both ``train`` and ``test``; the message
        gives their number and up to three of them.

    Examples
    --------
    >>> check_group_leak(["a", "a", "b"], [0, 1], [2])
    >>> check_group_leak(["a", "a", "b"], [0], [1, 2])
    Traceback (most recent call last):
    ...
    ValueError: 1 group(s) appear on both sides of the split, e.g. ['a'].
    """
    groups = np.asarray(groups)
    shared = np.intersect1d(groups[np.asarray(train)], groups[np.asarray(test)])
    if shared.size:
        raise ValueError(
            f"{shared.size} group(s) appear on both sides of the split, e.g. {shared[:3].tolist()}."
        )


class TaskIndex(NamedTuple):
    """The classes an :class:`EpisodeSampler` draws from and each one's sample indices.

    Built and validated once by :meth:`EpisodeSampler.index`; every
    :meth:`EpisodeSampler.draw` reads it.
    """

    classes: np.ndarray
    """The labels, sorted (or as given by the sampler's ``classes``)."""
    members: list[np.ndarray]
    """``members[j]``: indices of the samples of ``classes[j]``."""


@dataclass(frozen=True)
class Episode:
    """One N-way K-shot task: indices into the data and task-local labels.

    ``support_y`` / ``query_y`` are in ``0..n_way-1``; ``classes[j]`` is the
    original label of task class ``j``.

    Parameters
    ----------
    classes : ndarray of shape (n_way,)
        The original labels of the task's classes.
    support_idx, query_idx : ndarray of int
        Indices of the support and query images in the data sampled from.
    support_y, query_y : ndarray of int
        Their task-local labels.

    Examples
    --------
    >>> ep = next(EpisodeSampler(n_way=2, n_shot=1, n_query=1, random_state=0).sample(
    ...     [0, 0, 1, 1, 2, 2], 1))
    >>> len(ep.support_idx), sorted(ep.support_y.tolist())
    (2, [0, 1])
    """

    classes: np.ndarray
    support_idx: np.ndarray
    support_y: np.ndarray
    query_idx: np.ndarray
    query_y: np.ndarray


class EpisodeSampler:
    """Seeded sampler of N-way K-shot episodes (support + query) from labels ``y``.

    Each episode draws ``n_way`` distinct classes, then ``n_shot`` support and
    ``n_query`` query images per class without overlap. All randomness comes from
    ``random_state`` (no global RNG): the same seed gives the same episodes.

    Parameters
    ----------
    n_way : int, default=2
        Classes per episode (DAML's tasks are binary).
    n_shot : int, default=5
        Support images per class.
    n_query : int, default=15
        Query images per class.
    random_state : int, Generator or None, default=None
        An int re-seeds every call of :meth:`sample`; a ``numpy.random.Generator``
        is advanced (so successive calls give fresh episodes).
    classes : sequence, default=None
        Restrict episodes to these labels.

    Raises
    ------
    ValueError
        When fewer than ``n_way`` classes exist, or a class has fewer than
        ``n_shot + n_query`` images.

    Examples
    --------
    >>> import numpy as np
    >>> y = np.repeat([0, 1, 2], 20)
    >>> ep = next(EpisodeSampler(n_way=2, n_shot=5, n_query=10, random_state=0).sample(y))
    >>> ep.support_idx.shape, ep.query_idx.shape
    ((10,), (20,))
    """

    def __init__(
        self,
        n_way: int = 2,
        n_shot: int = 5,
        n_query: int = 15,
        *,
        random_state: int | np.random.Generator | None = None,
        classes: Sequence | None = None,
    ) -> None:
        self.n_way = n_way
        self.n_shot = n_shot
        self.n_query = n_query
        self.random_state = random_state
        self.classes = classes

    def index(self, y) -> TaskIndex:
        """Validate labels ``y`` for this task shape and index them by class.

        Parameters
        ----------
        y : array-like of shape (n_samples,)

        Returns
        -------
        TaskIndex

        Raises
        ------
        ValueError
            When fewer than ``n_way`` classes exist, or a class has fewer than
            ``n_shot + n_query`` images.

        Examples
        --------
        >>> index = EpisodeSampler(n_way=2, n_shot=1, n_query=1).index([0, 1, 1, 0])
        >>> index.classes.tolist(), [m.tolist() for m in index.members]
        ([0, 1], [[0, 3], [1, 2]])
        """
        for name in ("n_way", "n_shot"):
            v = getattr(self, name)
            if not isinstance(v, Integral) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}.")
        if not isinstance(self.n_query, Integral) or self.n_query < 0:
            raise ValueError(f"n_query must be an int >= 0, got {self.n_query!r}.")
        y = np.asarray(y)
        if y.ndim != 1:
            raise ValueError(f"y must be 1-D class labels, got shape {y.shape}.")
        classes = np.unique(y) if self.classes is None else np.asarray(list(self.classes))
        if len(classes) < self.n_way:
            raise ValueError(
                f"n_way={self.n_way} needs at least {self.n_way} classes, y has "
                f"{len(classes)}: {classes.tolist()}."
            )
        need = self.n_shot + self.n_query
        members = [np.flatnonzero(y == c) for c in classes]
        small = [(c, len(m)) for c, m in zip(classes.tolist(), members) if len(m) < need]
        if small:
            desc = ", ".join(f"{c!r} has {k}" for c, k in small)
            raise ValueError(
                f"every class needs at least n_shot + n_query = {self.n_shot} + {self.n_query} "
                f"= {need} images, but {desc}: lower n_shot/n_query or drop those classes."
            )
        return TaskIndex(classes, members)

    def _rng(self) -> np.random.Generator:
        rs = self.random_state
        if isinstance(rs, np.random.Generator):
            return rs
        if isinstance(rs, np.random.RandomState):
            return np.random.default_rng(rs.randint(2**31 - 1))
        return np.random.default_rng(rs)

    def sample(self, y, n_episodes: int | None = None) -> Iterator[Episode]:
        """Yield episodes from labels ``y`` (forever when ``n_episodes`` is None)."""
        index = self.index(y)
        rng = self._rng()
        count = 0
        while n_episodes is None or count < n_episodes:
            yield self.draw(index, rng)
            count += 1

    def draw(self, index: TaskIndex, rng: np.random.Generator) -> Episode:
        """One episode from ``index`` (:meth:`index`), all its randomness from ``rng``.

        Meta-training draws task ``t`` with ``numpy.random.default_rng([seed, t])``, so
        a task depends on its number only; :meth:`sample` draws a stream from one
        generator.

        Examples
        --------
        >>> sampler = EpisodeSampler(n_way=2, n_shot=1, n_query=1)
        >>> ep = sampler.draw(sampler.index([0, 1, 1, 0]), np.random.default_rng(0))
        >>> ep.support_y.tolist(), ep.query_y.tolist()
        ([0, 1], [0, 1])
        """
        classes, members = index
        k, q, n = self.n_shot, self.n_query, self.n_way
        chosen = rng.choice(len(classes), size=n, replace=False)
        sup, qry = [], []
        for j in chosen:
            pick = rng.choice(members[j], size=k + q, replace=False)
            sup.append(pick[:k])
            qry.append(pick[k:])
        return Episode(
            classes=classes[chosen],
            support_idx=np.concatenate(sup),
            support_y=np.repeat(np.arange(n), k),
            query_idx=np.concatenate(qry) if q else np.empty(0, dtype=np.int64),
            query_y=np.repeat(np.arange(n), q),
        )

    def check(self, y) -> None:
        """Validate that ``y`` supports this task shape (raises ``ValueError`` if not)."""
        self.index(y)


class TaskDistribution:
    """A labelled image set plus a task shape: what a meta-learner's ``fit`` samples from.

    ``DAMLClassifier().fit(TaskDistribution(X, y, n_shot=5))`` meta-trains on
    episodes of this shape; any value left ``None`` falls back to the estimator's
    own parameter.

    Parameters
    ----------
    X : array-like of images
    y : array-like of shape (n_samples,)
    n_way, n_shot, n_query : int or None, default=None

    Examples
    --------
    >>> import numpy as np
    >>> tasks = TaskDistribution(np.zeros((40, 8, 8), dtype=np.uint8), np.repeat([0, 1], 20),
    ...                          n_shot=1)
    >>> len(tasks), tasks.n_shot
    (40, 1)
    """

    def __init__(self, X, y, *, n_way=None, n_shot=None, n_query=None) -> None:
        if len(X) != len(y):
            raise ValueError(f"X and y differ in length: {len(X)} != {len(y)}.")
        self.X = X
        self.y = y
        self.n_way = n_way
        self.n_shot = n_shot
        self.n_query = n_query

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        return (
            f"TaskDistribution(n_samples={len(self)}, n_way={self.n_way}, "
            f"n_shot={self.n_shot}, n_query={self.n_query})"
        )


def stratified_split(fraction: float = 0.1, random_state: int | None = 0) -> ValidSplit:
    """An explicit, stratified validation hold-out for a skorch ``train_split``.

    Parameters
    ----------
    fraction : float, default=0.1
        Share of every class held out for validation (``valid_loss``,
        ``valid_acc`` and ``valid_f1`` in the history).
    random_state : int or None, default=0

    Returns
    -------
    skorch.dataset.ValidSplit

    Examples
    --------
    >>> stratified_split(0.2).stratified
    True
    """
    from skorch.dataset import ValidSplit

    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}.")
    return ValidSplit(fraction, stratified=True, random_state=random_state)
