"""Tests of fewmed.model_selection: the splitters, check_group_leak and the episode sampler."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score

from fewmed.model_selection import (
    EpisodeSampler,
    LeaveClassesOut,
    check_group_leak,
    grouped_train_test_split,
)


def test_leave_classes_out_is_class_disjoint():
    y = np.repeat(np.arange(6), 10)
    cv = LeaveClassesOut(n_test_classes=2, n_splits=4, random_state=0)
    assert cv.get_n_splits() == 4
    for tr, te in cv.split(np.zeros(len(y)), y):
        assert not set(y[tr]) & set(y[te])
        assert len(set(y[te])) == 2 and len(tr) + len(te) == len(y)
    fixed = LeaveClassesOut(test_classes=[[0, 1], [4, 5]])
    assert [sorted(set(y[te])) for _, te in fixed.split(y, y)] == [[0, 1], [4, 5]]
    with pytest.raises(ValueError, match="not in y"):
        next(LeaveClassesOut(test_classes=[9]).split(y, y))
    with pytest.raises(ValueError, match="training class"):
        next(LeaveClassesOut(n_test_classes=6).split(y, y))


def test_leave_classes_out_in_grid_search():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 30)
    X = rng.normal(size=(120, 3)) + y[:, None]
    cv = LeaveClassesOut(test_classes=[[0, 1], [2, 3]])
    # a plain classifier cannot score unseen classes, but the splitter itself plugs in
    scores = cross_val_score(LogisticRegression(), X, y % 2, groups=None, cv=cv.split(X, y))
    assert scores.shape == (2,)
    gs = GridSearchCV(LogisticRegression(), {"C": [0.1, 1.0]}, cv=list(cv.split(X, y)))
    assert gs.fit(X, y % 2).best_params_["C"] in (0.1, 1.0)


def test_grouped_split_never_leaks():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 50, 300)
    y = groups % 3
    tr, te = grouped_train_test_split(np.arange(300), groups=groups, stratify=y, random_state=0)
    check_group_leak(groups, tr, te)
    assert 0.1 < len(te) / 300 < 0.35
    tr2, te2 = grouped_train_test_split(np.arange(300), groups=groups, random_state=0)
    check_group_leak(groups, tr2, te2)
    with pytest.raises(ValueError, match="both sides"):
        check_group_leak(groups, np.arange(200), np.arange(100, 300))


def test_episode_sampler_reproducible_and_valid():
    y = np.repeat(["a", "b", "c"], 25)
    s = EpisodeSampler(n_way=2, n_shot=5, n_query=15, random_state=3)
    e1, e2 = list(s.sample(y, 5)), list(s.sample(y, 5))
    for a, b in zip(e1, e2):
        np.testing.assert_array_equal(a.support_idx, b.support_idx)
        np.testing.assert_array_equal(a.query_idx, b.query_idx)
    ep = e1[0]
    assert len(ep.support_idx) == 10 and len(ep.query_idx) == 30
    assert not set(ep.support_idx) & set(ep.query_idx)
    np.testing.assert_array_equal(y[ep.support_idx], np.repeat(ep.classes, 5))
    other = list(EpisodeSampler(2, 5, 15, random_state=4).sample(y, 5))
    assert any((a.support_idx != b.support_idx).any() for a, b in zip(e1, other))


def test_episode_sampler_errors():
    y = np.array([0] * 30 + [1] * 12)
    with pytest.raises(ValueError, match=r"n_shot \+ n_query = 5 \+ 15 = 20 images, but 1 has 12"):
        next(EpisodeSampler(2, 5, 15).sample(y))
    with pytest.raises(ValueError, match="n_way=3 needs at least 3 classes"):
        next(EpisodeSampler(3, 1, 1).sample(y))


def test_ham10000_grouped_splits_never_leak_a_lesion(ham28):
    from sklearn.model_selection import StratifiedGroupKFold

    y, groups = ham28.target, ham28.groups
    tr, te = grouped_train_test_split(
        np.arange(len(y)), groups=groups, stratify=y, test_size=0.2, random_state=0
    )
    check_group_leak(groups, tr, te)
    assert set(y[te]) == set(range(7))  # every disease on both sides
    for tr, te in StratifiedGroupKFold(5, shuffle=True, random_state=0).split(y, y, groups):
        check_group_leak(groups, tr, te)
    names = np.asarray(ham28.target_names)[y]
    cv = LeaveClassesOut(test_classes=["akiec", "vasc", "df"])
    ((tr, te),) = cv.split(ham28.images, names)
    assert set(names[tr]) == {"nv", "mel", "bkl", "bcc"} and len(te) == 327 + 142 + 115
