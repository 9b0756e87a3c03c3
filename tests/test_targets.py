"""Tests of the helpers on RSKD's targets (fewmed.longtail._targets)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fewmed._dataset import ArrayDataset, collate_batch
from fewmed.longtail._targets import (
    balanced_loader,
    balanced_sample_weights,
    indicator,
    is_multilabel,
    multilabel_info,
    validation_split,
)


def test_multilabel_is_told_from_labels_and_checked():
    Y = np.array([[1, 0, 1], [0, 1, 1]])
    assert is_multilabel(Y) and is_multilabel(torch.as_tensor(Y))
    assert not is_multilabel(np.array([0, 1, 2])) and not is_multilabel(Y[:, :1])
    assert not is_multilabel(np.array([[0, 2], [1, 0]]))  # not an indicator
    X = np.zeros((2, 1, 4, 4), dtype=np.float32)
    Yf, info = multilabel_info(X, Y)
    assert Yf.dtype == np.float32 and info["class_counts"].tolist() == [1, 1, 2]
    assert info["multilabel"] and info["n_classes"] == 3 and info["in_unit_range"]
    with pytest.raises(ValueError, match="X has 3 samples but Y has 2"):
        multilabel_info(np.zeros((3, 1, 4, 4)), Y)
    with pytest.raises(ValueError, match="classes has 2 entries but Y has 3 columns"):
        multilabel_info(X, Y, classes=[0, 1])


def test_indicator_rows():
    assert indicator(np.array([2, 0]), False, 3).tolist() == [[0, 0, 1], [1, 0, 0]]
    Y = np.array([[1.0, 0.0], [1.0, 1.0]], dtype=np.float32)
    out = indicator(Y, True, 2)
    assert out.dtype == np.int64 and out.tolist() == [[1, 0], [1, 1]]


def test_validation_split_is_per_class_seeded_and_spares_the_tail():
    y = np.repeat([0, 1, 2], [40, 16, 4])
    train, valid = validation_split(y, 0.25, seed=0)
    assert len(valid) == 15 and len(train) == 45 and not set(train) & set(valid)
    assert np.bincount(y[valid]).tolist() == [10, 4, 1]  # every class held out
    again = validation_split(y, 0.25, seed=0)
    np.testing.assert_array_equal(again[1], valid)
    # a class of one sample keeps it for training
    lone = np.array([0] * 9 + [1])
    train, valid = validation_split(lone, 0.2, seed=0)
    assert len(valid) == 2 and len(train) == 8 and 9 in train
    # classes below the median size give a smaller share (fraction * sqrt(n / median))
    y = np.repeat([0, 1, 2, 3], [1000, 400, 100, 25])
    held = np.bincount(y[validation_split(y, 0.1, seed=1)[1]]).tolist()
    assert held == [100, 40, 6, 1]  # a stratified 10% takes 10 and 2-3 of the last two
    # multi-label rows are stratified by their rarest positive label
    Y = np.zeros((40, 3), dtype=int)
    Y[:30, 0] = 1
    Y[30:, 1] = 1
    Y[::4, 2] = 1  # 10 rows carry the rare label 2 (and another one)
    train, valid = validation_split(Y, 0.2, seed=0, multilabel=True)
    # strata 22 (label 0), 8 (label 1), 10 (label 2): 4, 1 (8 < median 10) and 2 rows
    assert len(valid) == 7 and Y[valid, 2].sum() == 2


def test_balanced_sample_weights():
    np.testing.assert_allclose(
        balanced_sample_weights(np.array([0, 0, 0, 1]), False, 2), [1 / 3] * 3 + [1.0]
    )
    Y = np.array([[1, 0], [1, 1], [1, 0], [0, 0]])
    w = balanced_sample_weights(Y, True, 2)
    # the rarest positive label counts: 1/3 for label 0, 1 for label 1; no positive: 1/1
    np.testing.assert_allclose(w, [1 / 3, 1.0, 1 / 3, 1.0])


def test_balanced_loader_is_seeded_and_balanced():
    y = np.repeat([0, 1], [90, 10])
    data = ArrayDataset(np.zeros((100, 1, 1, 1), dtype=np.float32), np.arange(100))
    weights = balanced_sample_weights(y, False, 2)

    def drawn(seed, batch_size=16):
        loader = balanced_loader(data, weights, batch_size, seed, collate_batch)
        return np.concatenate([yb.numpy() for _, yb in loader])

    a = drawn(0)
    assert len(a) == 100 and 0.3 < np.mean(y[a] == 1) < 0.7
    np.testing.assert_array_equal(a, drawn(0))
    assert not np.array_equal(a, drawn(1))
    assert len(balanced_loader(data, weights, -1, 0)) == 1  # -1: one batch
