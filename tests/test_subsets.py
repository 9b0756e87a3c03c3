"""Tests of the class subsets of RSKD (fewmed.longtail._subsets)."""

from __future__ import annotations

import numpy as np
import pytest

from fewmed import RelationalSubsetsDistiller
from fewmed.longtail._subsets import build_subsets

SMALL = dict(n_filters=8, max_epochs=2, batch_size=32, random_state=0)


def test_shot_subsets_follow_thresholds():
    counts = [6705, 1113, 1099, 514, 327, 142, 115]  # HAM10000 sizes, largest first
    got = build_subsets("shot", np.arange(7), counts, many=2000, few=400)
    assert list(got) == ["head", "medium", "tail"]
    np.testing.assert_array_equal(got["head"], [0])
    np.testing.assert_array_equal(got["medium"], [1, 2, 3])
    np.testing.assert_array_equal(got["tail"], [4, 5, 6])
    # fractions of the total, and empty groups dropped
    frac = build_subsets("shot", list("abc"), [80, 15, 5], many=0.5, few=0.1)
    assert {k: v.tolist() for k, v in frac.items()} == {"head": [0], "medium": [1], "tail": [2]}
    only_head = build_subsets("shot", list("ab"), [500, 300], many=100, few=20)
    assert list(only_head) == ["head"]
    with pytest.raises(ValueError, match="few"):
        build_subsets("shot", list("ab"), [5, 5], many=10, few=20)


def test_user_groups_by_label_and_name():
    classes = np.array([0, 1, 2, 3])
    names = ["Atelectasis", "Effusion", "Hernia", "Mass"]
    got = build_subsets(
        {"lung": ["Atelectasis", 3], "rest": [1, "Hernia"]}, classes, [1] * 4, label_names=names
    )
    assert got["lung"].tolist() == [0, 3] and got["rest"].tolist() == [1, 2]
    # classes left out of every group are allowed (no teacher for them)
    assert build_subsets([["b"]], np.array(["a", "b"]), [1, 1]) == {"subset0": np.array([1])}


@pytest.mark.parametrize(
    "subsets, match",
    [
        ([["nv", "zz"]], "not among the classes"),
        ([["nv"], []], "is empty"),
        ({"a": ["nv", "mel"], "b": ["mel"]}, "must not overlap"),
        ([], "subsets is empty"),
        ("region", "'subsets' parameter.*'shot'"),
        (42, "'subsets' parameter.*'shot'"),
    ],
)
def test_user_groups_are_validated(toy_long_tail, subsets, match):
    X, y = toy_long_tail
    with pytest.raises(ValueError, match=match):
        RelationalSubsetsDistiller(subsets=subsets, **SMALL).fit(X, y)
