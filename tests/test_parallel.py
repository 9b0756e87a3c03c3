"""joblib everywhere work is embarrassingly parallel, on the backend the user chose.

The evaluation episodes (``episode_scores(n_jobs=)``) equal the serial loop's; RSKD's
teachers follow the active ``joblib.parallel_config``; a grid search and a teacher
pool run on a ``dask.distributed.LocalCluster`` bound to 127.0.0.1.
"""

from __future__ import annotations

import os
import pickle
import threading

import numpy as np
import pytest
import torch
from joblib import parallel_config
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

from fewmed import (
    ConvFeatureExtractor,
    DAMLClassifier,
    FeatureFewShotClassifier,
    FineTuneClassifier,
    ProtoNetClassifier,
    RelationalSubsetsDistiller,
    ReptileInitializer,
)
from fewmed.longtail._teachers import fit_teachers
from fewmed.model_selection import LeaveClassesOut

TINY = dict(n_way=2, n_shot=2, n_query=3, n_filters=4, n_iterations=2, verbose=0, random_state=0)


@pytest.fixture(scope="module")
def tiny(lesions):
    X, y = lesions
    return X, y, ProtoNetClassifier(**TINY, n_score_tasks=8).fit(X, y)


@pytest.mark.parametrize("backend", ["threading", "loky"])
def test_parallel_episode_scores_equal_serial(tiny, backend):
    X, y, est = tiny
    serial = est.episode_scores(X, y, n_tasks=5)
    with parallel_config(backend):
        par = est.episode_scores(X, y, n_tasks=5, n_jobs=2)
    np.testing.assert_array_equal(par, serial)
    assert not hasattr(est, "classes_")  # the workers adapted copies


def test_daml_parallel_episode_scores_equal_serial(lesions):
    X, y = lesions
    est = DAMLClassifier(**TINY, n_inner_steps=1, n_adapt_steps=2).fit(X, y)
    serial = est.episode_scores(X, y, n_tasks=4)
    with parallel_config("threading"):
        np.testing.assert_array_equal(est.episode_scores(X, y, n_tasks=4, n_jobs=2), serial)


def test_score_uses_the_estimators_n_jobs(tiny):
    X, y, est = tiny
    serial = est.score(X, y)
    est.set_params(n_jobs=2)  # the estimator's n_jobs spreads score's episodes
    try:
        with parallel_config("threading"):
            assert est.score(X, y) == serial
    finally:
        est.set_params(n_jobs=None)


_SCORED = dict(n_way=2, n_shot=2, n_query=3, n_score_tasks=6, random_state=0)
_META = dict(**_SCORED, n_filters=4, n_iterations=2, verbose=0)


@pytest.mark.parametrize(
    "estimator",
    [
        DAMLClassifier(**_META, n_inner_steps=1, n_adapt_steps=2, augment=False),
        ProtoNetClassifier(**_META, augment=False),
        ReptileInitializer(**_META, n_train_shot=2, n_inner_steps=1, n_adapt_steps=2),
        FineTuneClassifier(**_SCORED, n_filters=4, max_epochs=1, n_adapt_steps=2),
        FeatureFewShotClassifier(
            ConvFeatureExtractor(n_filters=4, max_epochs=1, random_state=0), **_SCORED
        ),
    ],
    ids=lambda e: type(e).__name__,
)
def test_n_jobs_parameter_of_every_few_shot_estimator(lesions, estimator):
    """``n_jobs=2`` scores equal ``n_jobs=1``'s on joblib's default backend (loky
    processes); 0 or a float is refused, at fit and at score; clone and pickle keep it."""
    X, y = lesions
    common = y < 4
    Xr, yr = X[~common], y[~common]
    bad = r"'n_jobs' parameter of \w+ must be an int in the range \[1, inf\)"
    with pytest.raises(ValueError, match=bad):
        clone(estimator).set_params(n_jobs=0).fit(X[common], y[common])
    est = clone(estimator).set_params(n_jobs=1).fit(X[common], y[common])
    serial = est.score(Xr, yr)
    assert 0.0 <= serial <= 1.0
    est.set_params(n_jobs=2)
    assert est.score(Xr, yr) == serial  # to the digit
    np.testing.assert_array_equal(
        est.episode_scores(Xr, yr, n_tasks=4), est.episode_scores(Xr, yr, n_tasks=4, n_jobs=1)
    )
    assert clone(est).n_jobs == 2 and pickle.loads(pickle.dumps(est)).n_jobs == 2
    for value in (0, 1.5):
        with pytest.raises(ValueError, match=bad):
            est.set_params(n_jobs=value).score(Xr, yr)


def _where(params, X, y, plan):
    """A stand-in teacher fit: where it ran."""
    return {"pid": os.getpid(), "thread": threading.get_ident(), "n": len(X)}


def _jobs(n=3):
    return [(f"t{i}", {}, np.zeros((10 + i, 1)), np.zeros(10 + i), None) for i in range(n)]


class _Box(dict):
    """A fitted-teacher stand-in that takes ``subset_columns_``."""


def test_teachers_follow_the_active_backend():
    def fit(params, X, y, plan):
        return _Box(_where(params, X, y, plan))

    with parallel_config("threading"):
        out = fit_teachers(_jobs(), fit, n_jobs=2)
    assert list(out) == ["t0", "t1", "t2"]
    assert {r["pid"] for r in out.values()} == {os.getpid()}  # threads, not loky processes
    assert [r["n"] for r in out.values()] == [10, 11, 12]


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("dask.distributed")
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        worker_dashboard_address=None,
        silence_logs=40,
    )
    client = distributed.Client(cluster, timeout=60)
    try:
        yield client
    finally:
        client.close(timeout=30)
        cluster.close(timeout=30)


@pytest.mark.slow
def test_dask_grid_search_best_params_equal_serial(lesions, dask_client):
    X, y = lesions
    grid = {"meta_lr": [1e-4, 3e-2], "n_filters": [4, 8]}
    base = ProtoNetClassifier(**{**TINY, "n_iterations": 4, "n_score_tasks": 10})
    cv = LeaveClassesOut(test_classes=[[4, 5], [0, 1]])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as on the workers (threads_per_worker=1): the same sums
    try:
        serial = GridSearchCV(base, grid, cv=cv).fit(X, y)
    finally:
        torch.set_num_threads(threads)
    with parallel_config("dask"):
        on_dask = GridSearchCV(base, grid, cv=cv, n_jobs=2).fit(X, y)
    assert on_dask.best_params_ == serial.best_params_
    np.testing.assert_allclose(
        on_dask.cv_results_["mean_test_score"], serial.cv_results_["mean_test_score"], atol=1e-6
    )


@pytest.mark.slow
def test_dask_teacher_pool(toy_long_tail, dask_client):
    X, y = toy_long_tail
    params = dict(n_filters=8, max_epochs=2, batch_size=32, random_state=0, n_jobs=2)
    workers = set(dask_client.scheduler_info()["workers"])
    with parallel_config("dask"):
        on_dask = RelationalSubsetsDistiller(**params).fit(X, y)
    assert len(workers) == 2
    local = RelationalSubsetsDistiller(**params).fit(X, y)  # loky, the same plan
    np.testing.assert_allclose(on_dask.predict_proba(X), local.predict_proba(X), atol=1e-5)
    assert set(on_dask.teachers_) == set(local.teachers_)


@pytest.mark.slow
def test_dask_episodes_use_every_worker(tiny, dask_client):
    from dask.distributed import get_task_stream

    X, y, est = tiny
    serial = est.episode_scores(X, y, n_tasks=6)
    with get_task_stream(dask_client) as ts, parallel_config("dask"):
        par = est.episode_scores(X, y, n_tasks=6, n_jobs=2)
    np.testing.assert_array_equal(par, serial)
    # each chunk has its own payload, so Dask does not pin both to one worker
    assert len({t["worker"] for t in ts.data}) == 2


@pytest.mark.slow
def test_scaling_benchmark_episodes_measure_real_baselines():
    """The episodes part times one process on 1 and 2 threads and 2 Dask workers.

    A 1-worker Dask cluster would run in the calling process (joblib's Dask backend
    counts the cluster's threads), so it is not a baseline; the scores agree.
    """
    distributed = pytest.importorskip("dask.distributed")
    from types import SimpleNamespace

    from fewmed._parallel import n_workers
    from fewmed.benchmarks.scaling import _episodes

    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
        parallel_config("dask"),
    ):
        assert n_workers(2, 10) == 1  # why the benchmark has no "1 Dask worker" row
    r = _episodes(SimpleNamespace(filters=4, episodes=4))
    assert set(r["seconds"]) == {
        "1 process x 1 thread(s)",
        "1 process x 2 thread(s)",
        "2 Dask workers x 1 thread",
    }
    assert r["speedup"] > 0
    assert r["max_score_diff"]["2 Dask workers x 1 thread"] == 0.0  # 1 thread each: same sums
    assert max(r["max_score_diff"].values()) < 1e-2
