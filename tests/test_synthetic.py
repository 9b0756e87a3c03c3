"""Tests of fewmed.datasets._synthetic: make_synthetic_lesions."""

from __future__ import annotations

import numpy as np
import pytest

from fewmed.datasets import make_synthetic_lesions

pytestmark = pytest.mark.usefixtures("isolated_data_home")


def test_synthetic_reproducible_and_described():
    state = np.random.get_state()[1].copy()  # noqa: NPY002 (checking it stays untouched)
    a = make_synthetic_lesions(n_classes=4, n_per_class=6, size=20, random_state=3)
    b = make_synthetic_lesions(n_classes=4, n_per_class=6, size=20, random_state=3)
    c = make_synthetic_lesions(n_classes=4, n_per_class=6, size=20, random_state=4)
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # noqa: NPY002
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.target, b.target)
    assert not np.array_equal(a.images, c.images)
    assert a.images.shape == (24, 20, 20, 3) and a.images.dtype == np.uint8
    assert list(a.target_names) == [f"synthetic_{k}" for k in range(4)]
    assert len(np.unique(a.groups)) == 24
    assert a.DESCR.startswith("SYNTHETIC") and "NOT real medical images" in a.DESCR
    gen = make_synthetic_lesions(n_classes=2, n_per_class=2, random_state=np.random.default_rng(1))
    assert gen.images.shape == (4, 28, 28, 3)


def test_synthetic_long_tail_and_validation():
    data = make_synthetic_lesions(n_classes=9, class_sizes=[30, 10, 5, 3, 2, 1, 1, 1, 0])
    assert np.bincount(data.target, minlength=9).tolist() == [30, 10, 5, 3, 2, 1, 1, 1, 0]
    with pytest.raises(ValueError, match="class_sizes"):
        make_synthetic_lesions(class_sizes=[3, 2])
    with pytest.raises(ValueError, match="size"):
        make_synthetic_lesions(size=2)


def test_synthetic_learnable_not_trivial():
    from sklearn.linear_model import RidgeClassifier
    from sklearn.model_selection import cross_val_score

    data = make_synthetic_lesions(n_per_class=40, random_state=0)
    pooled = data.images.reshape(-1, 7, 4, 7, 4, 3).mean(axis=(2, 4)) / 255.0  # 7x7 colour
    X = pooled.reshape(len(pooled), -1)
    score = cross_val_score(RidgeClassifier(alpha=1.0), X, data.target, cv=3).mean()
    assert 0.45 < score < 0.99  # chance is 1/7: learnable, but a linear model is not perfect
