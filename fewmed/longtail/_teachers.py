"""The teachers of relational-subsets knowledge distillation (RSKD): data, training, outputs.

:class:`fewmed.longtail.RelationalSubsetsDistiller` trains one teacher per class
subset (:func:`fewmed.longtail._subsets.build_subsets`) and distils the student
from them. This module holds the teachers, as functions of arrays and of the
fitted teachers (the estimator keeps its skorch hooks):

* :func:`teacher_datasets` builds each teacher's training set (:class:`TeacherData`):
  the subset's samples plus an "other" share drawn from the rest, with the labels
  the teacher learns and the columns of its output that stand for the subset's
  classes; :func:`teacher_params` gives a teacher the student's parameters it
  shares, and :func:`teacher_jobs` puts both together for :func:`fit_teachers`;
* :func:`fit_teachers` trains the teachers in parallel (joblib's active backend), cached,
  each by :func:`fit_teacher`, giving the cores of finished workers to the
  teachers still training (:func:`thread_plan`, :class:`ThreadSchedule`);
* their outputs, mapped back to the student's classes (probabilities for Eq. 3,
  soft targets for the distillation loss), are in
  :mod:`fewmed.longtail._teacher_outputs` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from joblib import Memory, delayed, effective_n_jobs
from skorch.callbacks import Callback

from fewmed._parallel import parallel
from fewmed.longtail._teacher_outputs import (
    teacher_class_probs,
    teacher_log_probs,
    teacher_logits,
    teacher_scores,
)
from fewmed.longtail._teacher_training import (
    TeacherValidation,
    patience_epochs,
    teacher_epochs,
)

#: The family's parameters (``LongTailClassifier._family_param_names``) that a teacher
#: does not take from its student: it learns with plain CE / BCE (no class weights),
#: with a seed of its own, silently, without a hold-out and with the "auto" output.
_STUDENT_ONLY = frozenset(
    ("loss", "gamma", "class_weight", "train_split", "predict_nonlinearity", "random_state")
    + ("verbose",)
)

__all__ = [
    "TeacherData",
    "TeacherValidation",
    "ThreadSchedule",
    "fit_teachers",
    "teacher_class_probs",
    "teacher_datasets",
    "teacher_epochs",
    "teacher_log_probs",
    "teacher_jobs",
    "teacher_logits",
    "teacher_params",
    "teacher_scores",
    "thread_plan",
]


class TeacherData(NamedTuple):
    """One teacher's training set, as built by :func:`teacher_datasets`."""

    name: str
    """The subset's name."""
    rows: np.ndarray
    """Indices of the teacher's training samples into ``X`` / ``targets``."""
    y: np.ndarray
    """The teacher's targets: codes (softmax teacher) or an indicator (multi-label)."""
    n_outputs: int
    """Outputs of the teacher's network."""
    columns: np.ndarray | None
    """Output columns of the subset's classes, in order (``None``: all of them)."""
    multilabel: bool
    """Whether the teacher is a multi-label (sigmoid) network."""
    seed: int
    """The teacher's ``random_state``."""
    valid_rows: np.ndarray | None = None
    """Indices of the teacher's validation samples into ``valid_targets`` (or ``None``)."""
    valid_y: np.ndarray | None = None
    """Their targets, as ``y`` (``None`` when the hold-out cannot validate this teacher)."""


def teacher_datasets(
    subsets: Mapping[str, np.ndarray],
    targets: np.ndarray,
    *,
    multilabel: bool,
    n_classes: int,
    seed: int,
    valid_targets: np.ndarray | None = None,
) -> Iterator[TeacherData]:
    """Each subset's teacher training set, in the order of ``subsets``.

    A teacher learns from the samples of its subset (multi-label: rows with a
    positive in it) plus an "other" share: out-of-subset samples drawn at random
    (seeded) up to the size of the subset's largest class. Multi-class teachers
    learn the subset's classes + one "other" class (last); multi-label teachers
    the subset's labels, and a one-label subset gives a binary softmax teacher.
    ``seed`` seeds the draws and each teacher's ``random_state``. With
    ``valid_targets`` (the hold-out of Eq. 3), each teacher also gets validation
    rows drawn the same way (its subset's samples + an "other" share), for its
    early stopping and its reported quality.

    Parameters
    ----------
    subsets : mapping of str to ndarray
        Subset name -> class indices (:func:`fewmed.longtail._subsets.build_subsets`).
    targets : ndarray of shape (n,) or (n, n_classes)
        Class codes or a ``{0, 1}`` indicator.
    multilabel : bool
    n_classes : int
    seed : int
    valid_targets : ndarray or None, default=None
        Targets of the validation hold-out, as ``targets``.

    Yields
    ------
    TeacherData

    Raises
    ------
    ValueError
        When a multi-class teacher would have a single class to learn.

    Examples
    --------
    >>> y = np.array([0] * 6 + [1] * 3 + [2] * 2)
    >>> subsets = {"head": np.array([0]), "tail": np.array([1, 2])}
    >>> [(t.name, t.n_outputs, np.bincount(t.y).tolist())
    ...  for t in teacher_datasets(subsets, y, multilabel=False, n_classes=3, seed=0)]
    [('head', 2, [6, 5]), ('tail', 3, [3, 2, 3])]
    """
    rng = np.random.RandomState(seed)
    valid_rng = np.random.default_rng([seed, 1])  # the training draws stay as they were
    for name, members in subsets.items():
        rows, idx_out = _subset_rows(members, targets, multilabel, rng)
        yt, ml, n_out, columns = _subset_targets(targets[rows], members, multilabel, n_classes)
        if not multilabel and len(idx_out) == 0:  # nothing outside: no "other" output
            n_out = len(members)
        if len(np.unique(yt)) < 2 and not ml:
            raise ValueError(
                f"subsets: the teacher of subset {name!r} has a single class to learn; give "
                "subsets with several classes or leave classes outside them."
            )
        valid_rows = valid_y = None
        if valid_targets is not None and len(valid_targets):
            vrows, vout = _subset_rows(members, valid_targets, multilabel, valid_rng)
            if not multilabel and n_out == len(members):  # no "other" output: inside only
                vrows = np.setdiff1d(vrows, vout)
            vy = _subset_targets(valid_targets[vrows], members, multilabel, n_classes)[0]
            if len(vrows) and (ml or len(np.unique(vy)) >= 2):
                valid_rows, valid_y = vrows, vy
        seed_t = int(rng.randint(0, 2**31 - 1))
        yield TeacherData(name, rows, yt, n_out, columns, ml, seed_t, valid_rows, valid_y)


def _subset_rows(members, targets, multilabel, rng) -> tuple[np.ndarray, np.ndarray]:
    """A subset's rows (its samples + the drawn "other" share) and the "other" ones."""
    if multilabel:
        inside = targets[:, members].any(axis=1)
        largest = int(targets[:, members].sum(axis=0).max())
    else:
        inside = np.isin(targets, members)
        largest = int(np.bincount(targets[inside]).max()) if inside.any() else 0
    idx_in, idx_out = np.flatnonzero(inside), np.flatnonzero(~inside)
    if len(idx_out) > largest:
        idx_out = np.sort(rng.choice(idx_out, size=largest, replace=False))
    return np.concatenate([idx_in, idx_out]), idx_out


def _subset_targets(targets, members, multilabel, n_classes):
    """``(y, multilabel, n_outputs, columns)`` of a teacher of ``members`` for these rows."""
    if multilabel and len(members) > 1:
        return targets[:, members].astype(np.int64), True, len(members), None
    if multilabel:  # a one-label subset: a binary softmax teacher
        return targets[:, members[0]].astype(np.int64), False, 2, np.array([1])
    position = np.full(n_classes, len(members))
    position[members] = np.arange(len(members))
    return position[targets], False, len(members) + 1, np.arange(len(members))


def teacher_params(student: Any, seed: int, n_outputs: int, max_epochs: int | None = None) -> dict:
    """A teacher's parameters: its student's, but for a seed and outputs of its own.

    The student's family parameters (those ``LongTailClassifier`` and
    ``ImageNetClassifier`` declare) but ``loss``, ``gamma``, ``class_weight``,
    ``train_split``, ``predict_nonlinearity``, ``random_state`` and ``verbose``,
    with its ``module__*`` parameters; ``max_epochs`` when given (the teacher's
    budget, :func:`teacher_epochs`); then the student's ``teacher`` dict; then
    ``kd=None``, ``random_state=seed``, ``verbose=0`` and ``classes=range(n_outputs)``.
    """
    names = [n for n in student._family_param_names() if n not in _STUDENT_ONLY]
    params = {name: getattr(student, name) for name in names}
    params.update({f"module__{k}": v for k, v in student.get_params_for("module").items()})
    if max_epochs is not None:
        params["max_epochs"] = int(max_epochs)
    params.update(student.teacher or {})
    params.update(kd=None, random_state=seed, verbose=0, classes=list(range(n_outputs)))
    return params


def teacher_jobs(
    student: Any,
    X: np.ndarray,
    targets: np.ndarray,
    seed: int,
    valid: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[tuple]:
    """``(name, params, X, y, columns)`` per teacher of a fitting ``student``.

    The student has its ``subsets_``, ``classes_`` and ``multilabel_``; each job is a
    :func:`teacher_datasets` entry with the teacher's :func:`teacher_params`
    (multi-label teachers without ``classes``), its budget (:func:`teacher_epochs`)
    and, given ``valid`` (the hold-out's images and targets), a
    :class:`TeacherValidation` callback on its share of the hold-out (early
    stopping after ``teacher_patience`` epochs, or that share of its epochs,
    without a better validation loss, :func:`patience_epochs`), ready for
    :func:`fit_teachers`.
    """
    jobs = []
    datasets = teacher_datasets(
        student.subsets_,
        targets,
        multilabel=student.multilabel_,
        n_classes=len(student.classes_),
        seed=seed,
        valid_targets=None if valid is None else valid[1],
    )
    for data in datasets:
        epochs = teacher_epochs(student, len(X), len(data.rows))
        params = teacher_params(student, data.seed, data.n_outputs, max_epochs=epochs)
        if data.multilabel:
            params.pop("classes")
        if data.valid_rows is not None:
            check = TeacherValidation(
                valid[0][data.valid_rows],
                data.valid_y,
                patience=patience_epochs(
                    getattr(student, "teacher_patience", None), params["max_epochs"]
                ),
                columns=data.columns,
            )
            params["callbacks"] = [*(params.get("callbacks") or []), ("teacher_valid", check)]
        jobs.append((data.name, params, X[data.rows], data.y, data.columns))
    return jobs


def _longest_first(work: Sequence[float]) -> list[int]:
    """Job indices by decreasing work (ties in job order): the order jobs are handed out."""
    return sorted(range(len(work)), key=lambda j: -work[j])


def thread_plan(work: Sequence[float], n_cores: int) -> list[list[tuple[float, int]]]:
    """Torch threads for each job over its run: idle cores go to the jobs still running.

    The jobs run longest first on ``n_cores`` workers (joblib hands them out in
    order). Once the queue is empty, a worker that finishes leaves a core idle;
    the plan gives it to the running jobs, the one with the most work left
    first. The plan is a simulation (1 unit of ``work`` per thread and time
    unit), computed before anything runs, so each job switches at a fixed point
    of its own progress and the results do not depend on timing.

    Returns
    -------
    list of list of (float, int)
        Per job (in the order of ``work``): ``(fraction of its work done, threads
        from there on)``, starting at fraction 0.

    Examples
    --------
    HAM10000's head / medium / tail teachers on two cores: the head teacher
    gets the second core once the other two are done, 47% of the way through.

    >>> [[(round(f, 3), n) for f, n in p] for p in thread_plan([7511, 2880, 682], 2)]
    [[(0.0, 1), (0.474, 2)], [(0.0, 1)], [(0.0, 1)]]
    """
    n_cores = max(1, int(n_cores))
    order = _longest_first(work)
    left = {j: float(work[j]) for j in order}
    plan: list[list[tuple[float, int]]] = [[] for _ in work]
    queue, running = list(order), []
    while queue or running:
        while queue and len(running) < n_cores:
            running.append(queue.pop(0))
        by_left = sorted(running, key=lambda j: -left[j])
        threads = {j: n_cores // len(running) for j in running}
        for j in by_left[: n_cores % len(running)]:
            threads[j] += 1
        for j in running:
            if not plan[j] or plan[j][-1][1] != threads[j]:
                done = 1.0 - left[j] / work[j] if work[j] > 0 else 0.0
                plan[j].append((done, threads[j]))
        step = min(left[j] / threads[j] for j in running)
        for j in running:
            left[j] -= step * threads[j]
        running = [j for j in running if left[j] > 1e-9 * max(1.0, work[j])]
    return plan


class ThreadSchedule(Callback):
    """Set torch's thread count from a :func:`thread_plan` entry as training progresses.

    Progress is the fraction of the planned training batches
    (``max_epochs * ceil(len(X) / batch_size)``) seen so far; the previous thread
    count is restored when training ends.
    """

    def __init__(self, plan: Sequence[tuple[float, int]]):
        self.plan = plan

    def initialize(self):
        self.seen_, self.total_, self.step_, self.previous_ = 0, 1, 0, None
        return self

    def _apply(self):
        while self.step_ < len(self.plan) and self.plan[self.step_][0] * self.total_ <= self.seen_:
            torch.set_num_threads(int(self.plan[self.step_][1]))
            self.step_ += 1

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        self.previous_ = torch.get_num_threads()
        n = len(X) if X is not None else 1
        bs = int(net.batch_size) if net.batch_size and net.batch_size > 0 else n  # -1: all
        self.total_ = max(1, int(net.max_epochs) * -(-n // max(1, bs)))
        self.seen_, self.step_ = 0, 0
        self._apply()

    def on_batch_begin(self, net, batch=None, training=False, **kwargs):
        if training:
            self._apply()
            self.seen_ += 1

    def on_train_end(self, net, X=None, y=None, **kwargs):
        if self.previous_ is not None:
            torch.set_num_threads(self.previous_)


def fit_teacher(
    params: dict,
    X: np.ndarray,
    y: np.ndarray,
    plan: Sequence[tuple[float, int]] = ((0.0, 1),),
) -> Any:
    """Fit one teacher (a ``kd=None`` distiller), its torch threads following ``plan``.

    Parameters
    ----------
    params : dict
        Keyword arguments of :class:`~fewmed.RelationalSubsetsDistiller` for the
        teacher (``kd=None``: plain training on its subset).
    X : ndarray of shape (n, C, H, W) or (n, H, W, C)
        The teacher's images (its subset's samples and its "other" share).
    y : ndarray of shape (n,) or (n, n_labels)
        Their targets (:func:`teacher_datasets`).
    plan : sequence of (float, int), default=((0.0, 1),)
        The teacher's :func:`thread_plan` entry, ``[(fraction of the epochs done,
        torch threads), ...]``; a :class:`ThreadSchedule` callback applies it
        during ``fit`` and is removed from the fitted teacher. The caller's torch
        thread count is restored afterwards.

    Returns
    -------
    RelationalSubsetsDistiller
        The fitted teacher.

    Examples
    --------
    >>> rng = np.random.RandomState(0)
    >>> X, y = rng.rand(24, 3, 8, 8).astype("float32"), np.repeat([0, 1], 12)
    >>> params = dict(kd=None, n_filters=4, max_epochs=1, verbose=0, random_state=0)
    >>> fit_teacher(params, X, y).classes_.tolist()
    [0, 1]
    """
    from fewmed.longtail._rskd import RelationalSubsetsDistiller  # a teacher is a distiller

    previous = torch.get_num_threads()
    est = RelationalSubsetsDistiller(**params)
    callbacks = est.callbacks
    est.callbacks = [*(callbacks or []), ("thread_schedule", ThreadSchedule(list(plan)))]
    try:
        est.fit(X, y)
    finally:
        torch.set_num_threads(previous)
    est.callbacks = callbacks
    est.callbacks_ = [(n, cb) for n, cb in est.callbacks_ if n != "thread_schedule"]
    return est


def fit_teachers(
    jobs: Sequence[tuple],
    fit: Callable | None = None,
    *,
    n_jobs: int | None = None,
    memory: Any = None,
) -> dict[str, Any]:
    """Fit the teachers of ``jobs`` in parallel, on the active joblib backend.

    The jobs run longest first in ``n_jobs`` workers of the active joblib
    backend (loky processes unless a :func:`joblib.parallel_config` chooses
    dask, ray, ...) with one torch thread each, and when the queue is empty the
    cores of finished workers go to the teachers still training (the work of a
    job is its number of samples; :func:`thread_plan`).

    Parameters
    ----------
    jobs : sequence of tuple
        One ``(name, params, X, y, columns)`` per teacher: ``params``, ``X`` and
        ``y`` as :func:`fit_teacher` takes them, ``columns`` the student's
        classes its outputs stand for (or ``None``).
    fit : callable or None, default=None
        ``fit(params, X, y, plan)`` fits one teacher following ``plan``, its
        :func:`thread_plan` entry (``[(fraction done, torch threads), ...]``);
        ``None``: :func:`fit_teacher`.
    n_jobs : int or None, default=None
        Workers (joblib's convention: ``None`` 1 unless a ``parallel_config``
        says otherwise, ``-1`` all cores).
    memory : str, path or joblib.Memory, default=None
        Cache of fitted teachers: a refit with the same jobs loads them.

    Returns
    -------
    dict
        Name -> fitted teacher, in the order of ``jobs``; each fitted teacher gets
        ``subset_columns_`` (its job's ``columns``).

    Examples
    --------
    >>> rng = np.random.RandomState(0)
    >>> X, y = rng.rand(24, 3, 8, 8).astype("float32"), np.repeat([0, 1], 12)
    >>> params = dict(kd=None, n_filters=4, max_epochs=1, verbose=0, random_state=0)
    >>> teachers = fit_teachers([("a", params, X, y, None), ("b", params, X, y, None)])
    >>> list(teachers), teachers["a"].subset_columns_ is None
    (['a', 'b'], True)
    """
    fit = fit_teacher if fit is None else fit
    if memory is not None:
        memory = memory if isinstance(memory, Memory) else Memory(memory, verbose=0)
        fit = memory.cache(fit, ignore=["plan"])
    work = [len(job[2]) for job in jobs]
    n_cores = max(1, effective_n_jobs(n_jobs))
    plans = thread_plan(work, n_cores)  # simulates the order below
    n_workers = min(n_cores, max(1, len(jobs)))
    order = _longest_first(work)
    fitted = parallel(n_workers)(  # the active joblib backend: loky, dask, ray, ...
        delayed(fit)(jobs[j][1], jobs[j][2], jobs[j][3], plans[j]) for j in order
    )
    teachers = {}
    for j, est in zip(order, fitted):
        est.subset_columns_ = jobs[j][4]
        teachers[jobs[j][0]] = est
    return {job[0]: teachers[job[0]] for job in jobs}
