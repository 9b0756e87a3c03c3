"""Splitters, the episode sampler and the metrics."""

import numpy as np
import pytest
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import cohen_kappa_score, make_scorer
from sklearn.model_selection import GridSearchCV, cross_val_score

from fewmed.metrics import (
    episodic_auc,
    frequency_groups,
    group_mean_average_precision,
    macro_f1,
    map_scorer,
    mean_average_precision,
    mean_confidence_interval,
    paired_confidence_interval,
    quadratic_weighted_kappa,
    qwk_scorer,
    task_aucs,
)
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


def test_qwk_equals_sklearn():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.integers(0, 5, 80), rng.integers(0, 5, 80)
        assert np.isclose(
            quadratic_weighted_kappa(a, b), cohen_kappa_score(a, b, weights="quadratic")
        )


def test_scorers_work_in_grid_search():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40)
    X = rng.normal(size=(120, 2)) + y[:, None]
    for scoring in [qwk_scorer, make_scorer(macro_f1), map_scorer]:
        gs = GridSearchCV(LogisticRegression(), {"C": [0.1, 1]}, cv=3, scoring=scoring)
        assert 0.3 < gs.fit(X, y).best_score_ <= 1.0


def test_confidence_interval_and_episodic_auc():
    ci = mean_confidence_interval([0.6, 0.7, 0.8, 0.9])
    assert np.isclose(ci.mean, 0.75) and ci.low < 0.75 < ci.high
    assert np.isclose(ci.half_width, 3.182446 * np.std([0.6, 0.7, 0.8, 0.9], ddof=1) / 2, atol=1e-5)
    res = episodic_auc([[0, 1], [0, 1]], [[[0.9, 0.1], [0.2, 0.8]], [[0.3, 0.7], [0.6, 0.4]]])
    assert res.n == 2 and np.isclose(res.mean, 0.5)


def test_paired_confidence_interval_is_the_paired_t_interval():
    rng = np.random.default_rng(0)
    hard = rng.uniform(0.5, 1.0, 40)  # task difficulty, shared by both methods
    a, b = hard + rng.normal(0.02, 0.01, 40), hard
    ci = paired_confidence_interval(a, b)
    low, high = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert np.isclose(ci.low, low) and np.isclose(ci.high, high) and ci.n == 40
    # the shared difficulty cancels: far tighter than the unpaired intervals
    assert ci.low > 0 and ci.half_width < 0.2 * mean_confidence_interval(a).half_width
    # a task that either method could not score (NaN) is left out of both
    a[3], b[7] = np.nan, np.nan
    assert paired_confidence_interval(a, b).n == 38
    with pytest.raises(ValueError, match="same tasks"):
        paired_confidence_interval([0.5, 0.6], [0.5, 0.6, 0.7])
    aucs = task_aucs([[0, 1, 1], [0, 0, 0]], [[0.1, 0.8, 0.6], [0.3, 0.6, 0.5]])
    assert aucs[0] == 1.0 and np.isnan(aucs[1])  # one-class query set: NaN


def test_map_and_frequency_groups():
    counts = [6705, 1113, 1099, 514, 327, 142, 115]
    g = frequency_groups(counts, many=2000, few=400)
    assert g["head"].tolist() == [0] and g["tail"].tolist() == [4, 5, 6]
    assert frequency_groups([10, 5, 1], many=0.5, few=0.1)["head"].tolist() == [0]
    y = np.array([0, 1, 2, 2])
    s = np.eye(3)[y] * 0.8 + 0.05
    assert mean_average_precision(y, s) == 1.0
    res = group_mean_average_precision(y, s, [100, 30, 5], many=50, few=10)
    assert res == {"head": 1.0, "medium": 1.0, "tail": 1.0, "total": 1.0}
    Y = np.array([[1, 0], [0, 1], [1, 1]])
    assert mean_average_precision(Y, np.array([[0.9, 0.1], [0.1, 0.9], [0.8, 0.7]])) == 1.0


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
