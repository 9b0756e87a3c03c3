"""Randomness: every generator comes from ``random_state`` (an int or a RandomState),
nothing seeds torch's or numpy's global generators (CUDA's are never touched), the same
seed gives bit-identical predictions (in a fresh process too), and property-based
tests of the episode sampler and the splitters."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone

from fewmed.fewshot import FewShotMixin
from fewmed.model_selection import (
    EpisodeSampler,
    LeaveClassesOut,
    check_group_leak,
    grouped_train_test_split,
)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from test_common import _small_estimators  # noqa: E402

RNG = np.random.default_rng(0)
Y = np.repeat([0, 1, 2, 3], 6)
X = (RNG.random((24, 1, 8, 8)) + Y[:, None, None, None] * 0.3).astype(np.float32)


def _fit_predict(est) -> np.ndarray:
    """Fit on classes 0-1 (few-shot: adapt to 2-3) and predict every image."""
    if isinstance(est, FewShotMixin):
        est.fit(X[Y < 2], Y[Y < 2]).adapt(X[Y >= 2], Y[Y >= 2])
        return est.predict_proba(X)
    if hasattr(est, "predict_proba"):
        return est.fit(X, Y).predict_proba(X)
    return est.fit(X, Y).transform(X)


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float64).tobytes()).hexdigest()


ESTIMATORS = _small_estimators()
IDS = [type(e).__name__ for e in ESTIMATORS]


# ------------------------------------------------------------------ global state
@pytest.mark.parametrize("estimator", ESTIMATORS, ids=IDS)
def test_no_global_seeding_and_cuda_untouched(estimator, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a CUDA generator was seeded")

    torch.manual_seed(1234)  # (this one seeds CUDA too, before the trap is set)
    np.random.seed(1234)  # noqa: NPY002 (the global state this test guards)
    monkeypatch.setattr(torch.cuda, "manual_seed", refuse)
    monkeypatch.setattr(torch.cuda, "manual_seed_all", refuse)
    monkeypatch.setattr(torch, "manual_seed", refuse)
    monkeypatch.setattr(np.random, "seed", refuse)
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()  # noqa: NPY002
    _fit_predict(clone(estimator).set_params(random_state=0))
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()  # noqa: NPY002
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1])


# ------------------------------------------------------------------ same seed, same result
@pytest.mark.parametrize("estimator", ESTIMATORS, ids=IDS)
def test_random_state_instance_is_reproducible(estimator):
    a = _fit_predict(clone(estimator).set_params(random_state=np.random.RandomState(3)))
    b = _fit_predict(clone(estimator).set_params(random_state=np.random.RandomState(3)))
    np.testing.assert_array_equal(a, b)


_SCRIPT = """
import json, sys
import torch
torch.set_num_threads({threads})  # float sums depend on the thread count: the parent's
sys.path.insert(0, {tests!r})
from test_randomness import ESTIMATORS, IDS, _digest, _fit_predict
print(json.dumps({{i: _digest(_fit_predict(e)) for i, e in zip(IDS, ESTIMATORS)}}))
"""


def test_same_seed_gives_bit_identical_predictions_in_a_fresh_process():
    here = {i: _digest(_fit_predict(clone(e))) for i, e in zip(IDS, ESTIMATORS)}
    again = {i: _digest(_fit_predict(clone(e))) for i, e in zip(IDS, ESTIMATORS)}
    assert here == again
    # a fresh interpreter with the suite's thread count; thread variables that an
    # earlier test (a Dask cluster, torchrun workers) may have left in os.environ dropped
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    env["PYTHONPATH"] = str(REPO)
    script = _SCRIPT.format(tests=str(Path(__file__).parent), threads=torch.get_num_threads())
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        cwd=REPO,
    )
    fresh = json.loads(out.stdout.strip().splitlines()[-1])
    assert fresh == here


# ------------------------------------------------------------------ episode sampler
@st.composite
def _labels_and_shape(draw):
    n_classes = draw(st.integers(2, 6))
    n_way = draw(st.integers(1, n_classes))
    n_shot = draw(st.integers(1, 4))
    n_query = draw(st.integers(0, 4))
    need = n_shot + n_query
    sizes = draw(st.lists(st.integers(need, need + 5), min_size=n_classes, max_size=n_classes))
    labels = draw(st.permutations(np.repeat(np.arange(n_classes) * 7 + 3, sizes).tolist()))
    return np.asarray(labels), n_way, n_shot, n_query


@settings(max_examples=60, deadline=None)
@given(_labels_and_shape(), st.integers(0, 2**31 - 2))
def test_episode_sampler_properties(case, seed):
    y, n_way, n_shot, n_query = case
    sampler = EpisodeSampler(n_way, n_shot, n_query, random_state=seed)
    episodes = list(sampler.sample(y, 3))
    for ep in episodes:
        # exact counts
        assert len(ep.classes) == len(set(ep.classes.tolist())) == n_way
        assert len(ep.support_idx) == n_way * n_shot and len(ep.query_idx) == n_way * n_query
        assert np.bincount(ep.support_y, minlength=n_way).tolist() == [n_shot] * n_way
        if n_query:
            assert np.bincount(ep.query_y, minlength=n_way).tolist() == [n_query] * n_way
        # no leak: support and query are disjoint, and labels are right
        assert not set(ep.support_idx.tolist()) & set(ep.query_idx.tolist())
        assert len(set(ep.support_idx.tolist())) == len(ep.support_idx)
        np.testing.assert_array_equal(y[ep.support_idx], ep.classes[ep.support_y])
        np.testing.assert_array_equal(y[ep.query_idx], ep.classes[ep.query_y])
    # seeded reproducibility
    again = list(EpisodeSampler(n_way, n_shot, n_query, random_state=seed).sample(y, 3))
    for a, b in zip(episodes, again):
        np.testing.assert_array_equal(a.support_idx, b.support_idx)
        np.testing.assert_array_equal(a.query_idx, b.query_idx)


@settings(max_examples=30, deadline=None)
@given(_labels_and_shape())
def test_episode_sampler_refuses_too_small_classes(case):
    y, n_way, n_shot, n_query = case
    smallest = np.bincount(y).max(initial=0)  # more than any class holds
    with pytest.raises(ValueError, match="lower n_shot/n_query"):
        EpisodeSampler(n_way, smallest + 1, 0).index(y)


# ------------------------------------------------------------------ splitters
@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 6), min_size=3, max_size=8),
    st.integers(1, 2),
    st.integers(1, 4),
    st.integers(0, 2**31 - 2),
)
def test_leave_classes_out_properties(sizes, k, n_splits, seed):
    y = np.repeat(np.arange(len(sizes)), sizes)
    cv = LeaveClassesOut(n_test_classes=k, n_splits=n_splits, random_state=seed)
    splits = list(cv.split(np.zeros(len(y)), y))
    assert len(splits) == cv.get_n_splits() == n_splits
    for train, test in splits:
        assert not set(y[train]) & set(y[test])  # no class leak
        assert len(np.unique(y[test])) == k  # exact number of held-out classes
        assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(y)))
    again = list(
        LeaveClassesOut(n_test_classes=k, n_splits=n_splits, random_state=seed).split(
            np.zeros(len(y)), y
        )
    )
    for (a, b), (c, d) in zip(splits, again):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(1, 4), min_size=6, max_size=20),
    st.floats(0.2, 0.5),
    st.booleans(),
    st.integers(0, 2**31 - 2),
)
def test_grouped_split_properties(group_sizes, test_size, stratify, seed):
    groups = np.repeat(np.arange(len(group_sizes)), group_sizes)
    y = groups % 2
    idx = np.arange(len(groups))
    kwargs = dict(groups=groups, test_size=test_size, random_state=seed)
    if stratify:
        kwargs["stratify"] = y
    train, test = grouped_train_test_split(idx, **kwargs)
    check_group_leak(groups, train, test)  # raises on a leak
    assert not set(groups[train]) & set(groups[test])
    assert sorted(np.concatenate([train, test]).tolist()) == idx.tolist()
    again_train, again_test = grouped_train_test_split(idx, **kwargs)
    np.testing.assert_array_equal(train, again_train)
    np.testing.assert_array_equal(test, again_test)
