"""Tests of fewmed.metrics: QWK, scorers, confidence intervals, (group) mAP."""

import numpy as np
import pytest
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import cohen_kappa_score, make_scorer
from sklearn.model_selection import GridSearchCV

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
