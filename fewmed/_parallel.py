"""Embarrassingly parallel work on joblib, on the backend the user chose.

fewmed never names a joblib backend: :func:`parallel` returns a
:class:`joblib.Parallel` that follows the active :func:`joblib.parallel_config`
(loky processes by default; ``parallel_config("dask")`` for a
``dask.distributed`` cluster, ``ray.util.joblib``'s ``"ray"``, or ``"threading"``),
so a grid search, the evaluation episodes of ``score`` and RSKD's teachers run
where the user's setting sends them (``docs/scaling.md``).

:func:`episode_outputs` is the evaluation of few-shot episodes: the episodes are
cut into ``n_jobs`` contiguous chunks and each chunk adapts its own copy of the
fitted estimator, so the outputs equal the serial loop's (the adaptation of an
episode does not depend on the episodes before it). :data:`N_JOBS_CONSTRAINT` is
the constraint of every ``n_jobs`` parameter (joblib's values: a positive int,
``-1`` for every core, ``-2`` for all but one, ..., or ``None``).
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from numbers import Integral
from typing import Any

import numpy as np
import torch
from joblib import Parallel, delayed, effective_n_jobs
from sklearn.utils._param_validation import Interval, validate_parameter_constraints

__all__ = ["N_JOBS_CONSTRAINT", "check_n_jobs", "episode_outputs", "n_workers", "parallel"]

#: ``n_jobs``: joblib's values (0 and non-integers are refused).
N_JOBS_CONSTRAINT: list = [
    Interval(Integral, 1, None, closed="left"),
    Interval(Integral, None, -1, closed="right"),
    None,
]


def check_n_jobs(n_jobs: int | None, caller: str) -> None:
    """Refuse an ``n_jobs`` joblib cannot take (scikit-learn's ``InvalidParameterError``).

    Examples
    --------
    >>> check_n_jobs(-1, "f")
    >>> check_n_jobs(0, "f")
    Traceback (most recent call last):
    ...
    sklearn.utils._param_validation.InvalidParameterError: The 'n_jobs' parameter of f must be ...
    """
    validate_parameter_constraints(
        {"n_jobs": N_JOBS_CONSTRAINT}, {"n_jobs": n_jobs}, caller_name=caller
    )


def n_workers(n_jobs: int | None, n_tasks: int) -> int:
    """Workers worth starting for ``n_tasks`` under the active backend (at least 1).

    Examples
    --------
    >>> n_workers(None, 10), n_workers(4, 3)
    (1, 3)
    """
    return max(1, min(effective_n_jobs(n_jobs), n_tasks))


def parallel(n_jobs: int | None, **kwargs: Any) -> Parallel:
    """``joblib.Parallel(n_jobs)`` on the active backend (never a hard-coded one).

    Examples
    --------
    >>> from joblib import delayed
    >>> parallel(None)(delayed(abs)(i) for i in (-1, -2))
    [1, 2]
    """
    return Parallel(n_jobs=n_jobs, **kwargs)


def _outputs(est, Xt: torch.Tensor, episodes: Sequence) -> list:
    out = []
    for ep in episodes:
        est.classes_ = ep.classes
        est._adapt(Xt[ep.support_idx], torch.as_tensor(ep.support_y))
        logits = torch.as_tensor(est._predict_logits(Xt[ep.query_idx]))
        out.append((ep.query_y, torch.softmax(logits.double(), 1).numpy()))
    return out


def _run_chunk(payload: bytearray, episodes: Sequence, threads: int) -> list:
    """Adapt a copy of the pickled ``(est, X)`` to each episode; ``(query_y, proba)`` each."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        est, X = pickle.loads(payload)  # a copy of its own, also on a threading backend
        return _outputs(est, torch.from_numpy(X), episodes)
    finally:
        torch.set_num_threads(previous)


def episode_outputs(est, X: np.ndarray, episodes: Sequence, n_jobs: int | None = None) -> list:
    """``(query_y, probabilities)`` of every episode, the episodes spread over ``n_jobs``.

    Parameters
    ----------
    est : fitted few-shot estimator
        Implements ``_adapt``, ``_predict_logits`` and ``_save_adapted`` /
        ``_restore_adapted``; it is left as it was (each worker adapts a copy).
    X : ndarray of shape (n, C, H, W)
        Validated float images the episodes index.
    episodes : sequence of Episode
        From :meth:`fewmed.model_selection.EpisodeSampler.sample`.
    n_jobs : int or None, default=None
        Workers of the active joblib backend (``None``: 1 unless a
        ``parallel_config`` says otherwise, ``-1``: all). With more than one,
        each worker runs one torch thread. ``0`` or a non-integer raises
        scikit-learn's ``InvalidParameterError`` (a ``ValueError``).

    Returns
    -------
    list of (ndarray, ndarray)
        In the order of ``episodes``.
    """
    check_n_jobs(n_jobs, type(est).__name__)
    episodes = list(episodes)
    k = n_workers(n_jobs, len(episodes))
    if k == 1:  # in this process, on the estimator itself, left as it was
        saved = est._save_adapted()
        try:
            return _outputs(est, torch.from_numpy(X), episodes)
        finally:
            est._restore_adapted(saved)
    chunks = [c for c in np.array_split(np.arange(len(episodes)), k) if len(c)]
    payload = pickle.dumps((est, X), protocol=pickle.HIGHEST_PROTOCOL)
    # one payload object per chunk: joblib's Dask backend scatters a large argument
    # once, and Dask then runs every task that needs it on the worker holding it
    parts = parallel(k)(
        delayed(_run_chunk)(bytearray(payload), [episodes[i] for i in c], 1) for c in chunks
    )
    return [o for part in parts for o in part]
