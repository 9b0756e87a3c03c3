"""Tests of RelationalSubsetsDistiller (fewmed.longtail._rskd).

Its pieces have their own files: test_subsets.py, test_teachers.py,
test_distillation.py, test_targets.py; the shared template: test_longtail_base.py.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import StratifiedGroupKFold

from fewmed import RelationalSubsetsDistiller
from fewmed.longtail._distillation import relational_kd_loss
from fewmed.metrics import group_mean_average_precision

SMALL = dict(n_filters=8, max_epochs=2, batch_size=32, random_state=0)
#: Tail-AP margin of the real-data test: two standard deviations of RSKD minus ERM tail AP
#: over seeds 0-2 of its setting (+0.049, -0.007, -0.094: sd 0.072; measured with n_jobs=2).
MARGIN = 0.14


@pytest.fixture(scope="module")
def toy_multilabel():
    """Four labels (50% .. 5% prevalence); each of the first three brightens one channel."""
    rng = np.random.default_rng(1)
    Y = (rng.random((200, 4)) < [0.5, 0.3, 0.15, 0.08]).astype(np.int64)
    X = rng.random((200, 3, 16, 16)) * 0.3
    X[:, :3] += Y[:, :3, None, None] * 0.5
    X[:, 0, :4, :4] += Y[:, 3, None, None] * 0.2
    return X.astype(np.float32), Y


# ---------------------------------------------------------------- the estimator
def test_fitted_shot_subsets(toy_long_tail):
    X, y = toy_long_tail
    clf = RelationalSubsetsDistiller(many=100, few=20, **SMALL).fit(X, y)
    names = {k: clf.classes_[v].tolist() for k, v in clf.subsets_.items()}
    assert names == {"head": ["nv"], "medium": ["bkl", "mel"], "tail": ["df"]}
    assert set(clf.teachers_) == set(names)


def test_multiclass_shapes_and_fitted_attributes(toy_long_tail):
    X, y = toy_long_tail
    clf = RelationalSubsetsDistiller(
        subsets={"pig": ["nv", "mel"], "rest": ["bkl", "df"]}, **SMALL
    ).fit(X, y)
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 4)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    assert set(clf.predict(X)) <= set(y) and not clf.multilabel_
    assert clf.kd_weights_history_.shape == (2, 4)
    assert clf.student_scores_history_.shape == (2, 4)
    np.testing.assert_array_equal(clf.kd_weights_history_[0], 1.0)
    assert np.all((clf.kd_weights_ >= 0) & (clf.kd_weights_ <= 1))
    # teachers: the subset's classes + "other"
    assert [len(t.classes_) for t in clf.teachers_.values()] == [3, 3]
    assert len(clf.history[-1, "kd_weights"]) == 4


def test_training_loss_is_base_plus_weighted_kd(toy_long_tail):
    X, y = toy_long_tail
    clf = RelationalSubsetsDistiller(kd="plain", temperature=4.0, **SMALL).fit(X, y)
    xb = torch.as_tensor(X[:16].transpose(0, 3, 1, 2) / 255.0, dtype=torch.float32)
    codes = torch.as_tensor(np.searchsorted(clf.classes_, y[:16]))
    clf.module_.eval()
    with torch.no_grad():
        logits = clf.module_(xb)
        teacher = clf._teacher_log_probs(xb, 4.0, codes)
        clf._kd_state_ = {"teacher_lp": None}
        got = clf.get_loss(logits, codes, X=xb, training=True)
    base = torch.nn.functional.cross_entropy(logits, codes)
    kd, _ = relational_kd_loss(logits, teacher, torch.ones(4), 4.0, y=codes)
    assert kd.item() > 0
    assert got.item() == pytest.approx((base + kd).item(), rel=1e-5)


def test_multilabel_shapes_and_sigmoid(toy_multilabel):
    X, Y = toy_multilabel
    clf = RelationalSubsetsDistiller(subsets="shot", many=50, few=20, **SMALL).fit(X, Y)
    assert clf.multilabel_ and clf.classes_.tolist() == [0, 1, 2, 3]
    proba = clf.predict_proba(X)
    assert proba.shape == (200, 4) and np.all((proba > 0) & (proba < 1))
    assert not np.allclose(proba.sum(1), 1.0)  # independent sigmoids
    pred = clf.predict(X)
    assert pred.shape == (200, 4) and set(np.unique(pred)) <= {0, 1}
    assert clf.kd_weights_history_.shape == (2, 4)
    assert isinstance(clf.criterion_, torch.nn.BCEWithLogitsLoss)
    # a one-label subset gets a binary teacher; names usable in groups
    named = RelationalSubsetsDistiller(
        subsets={"a": ["A", "B"], "d": ["D"]}, label_names=list("ABCD"), **SMALL
    ).fit(X, Y)
    assert named.subsets_["d"].tolist() == [3] and np.isnan(named.teacher_scores_[2])
    assert named.kd_weights_history_[:, 2].tolist() == [0.0, 0.0]  # class C has no teacher


def test_baselines(toy_long_tail):
    X, y = toy_long_tail
    erm = RelationalSubsetsDistiller(kd=None, **SMALL).fit(X, y)
    assert erm.teachers_ == {} and erm.kd_weights_history_.shape == (0, 4)
    assert sum(erm.history[-1, "batches", :, "train_batch_size"]) == len(X)  # no hold-out
    rw = RelationalSubsetsDistiller(kd=None, class_weight="balanced", **SMALL).fit(X, y)
    w = rw.criterion_.weight.numpy()
    assert w.argmax() == list(rw.classes_).index("df")
    focal = RelationalSubsetsDistiller(kd=None, loss="focal", **SMALL).fit(X, y)
    assert type(focal.criterion_).__name__ == "FocalLoss"
    assert np.allclose(focal.predict_proba(X).sum(1), 1.0, rtol=1e-5)
    rs = RelationalSubsetsDistiller(kd=None, sampler="balanced", **SMALL)
    rs.fit(X, y)
    rs._sample_weights_ = rs._sampling_weights(np.searchsorted(rs.classes_, y))
    from fewmed._dataset import ArrayDataset

    loader = rs.get_iterator(
        ArrayDataset(X[:, None, :1, :1, 0].astype(np.float32), np.arange(len(y))), training=True
    )
    drawn = np.concatenate([yb.numpy() for _, yb in loader])
    share = np.bincount(np.searchsorted(rs.classes_, y)[drawn], minlength=4) / len(drawn)
    assert share.min() > 0.15  # ~ balanced although df is 6% of the data
    again = np.concatenate([yb.numpy() for _, yb in rs.get_iterator(loader.dataset, True)])
    np.testing.assert_array_equal(drawn, again)  # seeded


def test_reproducible_pickle_and_clone(toy_long_tail):
    X, y = toy_long_tail
    a = RelationalSubsetsDistiller(**SMALL).fit(X, y)
    b = RelationalSubsetsDistiller(**SMALL).fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    c = pickle.loads(pickle.dumps(a))
    np.testing.assert_array_equal(c.predict_proba(X), a.predict_proba(X))
    np.testing.assert_array_equal(c.kd_weights_history_, a.kd_weights_history_)
    assert "_kd_state_" not in c.__dict__ or c._kd_state_ is None
    params = clone(a).get_params()
    assert params["subsets"] == "shot" and params["delta"] == 0.6


@pytest.mark.parametrize(
    "params, match",
    [
        ({"kd": "soft"}, "'kd' parameter"),
        ({"temperature": 0}, "'temperature' parameter.*range \\(0"),
        ({"delta": 2.0}, "'delta' parameter"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
        ({"sampler": "over"}, "'sampler' parameter"),
        ({"weight_metric": "auc"}, "weight_metric"),
        ({"teacher": 3}, "'teacher' parameter"),
        ({"train_split": lambda *a: a}, "'train_split' parameter.*None"),
        ({"teacher_max_steps": "twice"}, "'teacher_max_steps' parameter"),
        ({"teacher_max_steps": 0}, "'teacher_max_steps' parameter"),
        ({"teacher_patience": 0}, "'teacher_patience' parameter"),
        ({"lr_schedule": "linear"}, "'lr_schedule' parameter"),
    ],
)
def test_bad_parameters(toy_long_tail, params, match):
    X, y = toy_long_tail
    with pytest.raises(ValueError, match=match):
        RelationalSubsetsDistiller(**{**SMALL, **params}).fit(X, y)


# ---------------------------------------------------------------- scikit-learn checks
# in tests/test_common.py (every public estimator, one EXPECTED_FAILED dict)


# ---------------------------------------------------------------- real data
@pytest.mark.slow
@pytest.mark.realdata
def test_short_run_on_ham10000_beats_chance_in_tail_map(ham28):
    X, y, groups = ham28.images, ham28.target, ham28.groups
    rng = np.random.default_rng(0)
    keep = np.concatenate([rng.permutation(np.flatnonzero(y == k))[:800] for k in np.unique(y)])
    X, y, groups = X[keep], y[keep], groups[keep]
    train, test = next(StratifiedGroupKFold(4, shuffle=True, random_state=0).split(X, y, groups))
    counts = np.bincount(y[train], minlength=7)
    clf = RelationalSubsetsDistiller(
        n_filters=16, max_epochs=8, batch_size=64, lr=2e-3, many=0.2, few=0.06, random_state=0
    ).fit(X[train], y[train])
    proba = clf.predict_proba(X[test])
    got = group_mean_average_precision(y[test], proba, counts, many=0.2, few=0.06)
    tail = clf.subsets_["tail"]
    chance = np.mean([np.mean(y[test] == k) for k in tail])  # AP of random scores
    assert got["tail"] > chance + 0.05, (got, chance)


@pytest.mark.slow
@pytest.mark.realdata
def test_short_run_on_ham10000_tail_ap_not_below_erm_beyond_noise(ham28):
    # one lesion-grouped fold of HAM10000 capped at 800 images per class, seed 0, 6
    # epochs: the fixed KD grouping no longer collapses the tail (on the benchmark it
    # lost 10.5 tail mAP points to ERM before). MARGIN: two standard deviations of
    # the RSKD-minus-ERM tail AP over seeds 0-2 of this very setting; seed 0 gives
    # +0.05. One fold of a capped HAM10000 is noisy: the test catches a collapse,
    # not a small loss.
    X, y, groups = ham28.images, ham28.target, ham28.groups
    rng = np.random.default_rng(0)
    keep = np.concatenate([rng.permutation(np.flatnonzero(y == k))[:800] for k in np.unique(y)])
    X, y, groups = X[keep], y[keep], groups[keep]
    train, test = next(StratifiedGroupKFold(4, shuffle=True, random_state=0).split(X, y, groups))
    counts = np.bincount(y[train], minlength=7)
    common = dict(n_filters=16, max_epochs=6, batch_size=64, lr=2e-3, lr_schedule="cosine")
    common.update(many=0.2, few=0.06, random_state=0)
    tails = {}
    for kd in (None, "relational"):
        clf = RelationalSubsetsDistiller(kd=kd, **common).fit(X[train], y[train])
        got = group_mean_average_precision(
            y[test], clf.predict_proba(X[test]), counts, many=0.2, few=0.06
        )
        tails[kd] = got["tail"]
    assert tails["relational"] >= tails[None] - MARGIN, tails


@pytest.mark.slow
def test_rskd_benchmark_smoke_on_synthetic(capsys, tmp_path):
    import json

    from fewmed.cli import main

    args = ["benchmark", "rskd", "--quick", "--synthetic", "--size", "12", "--epochs", "1"]
    args += ["--filters", "4", "--folds", "2", "--methods", "ERM", "RSKD shot"]
    args += ["--no-multilabel", "--out", str(tmp_path), "-v", "0"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out and "one thread per teacher" in out
    payload = json.loads((tmp_path / "rskd.json").read_text())
    speed = payload["teacher_speedup"]
    assert speed["ham_shot_subsets"]["speedup"] > 0
    assert len(speed["ham_shot_subsets"]["all_seconds"]["n_jobs_2"]) == 2
    assert (tmp_path / "rskd.png").stat().st_size > 1000
    # every method minus ERM fold by fold, with its interval; the teachers' quality
    assert "minus ERM, fold by fold" in out and "Teachers (mean over folds)" in out
    ham = payload["ham10000"]
    d = ham["paired_vs_erm"]["RSKD shot"]["tail"]
    rskd, erm = ham["folds"]["RSKD shot"], ham["folds"]["ERM"]
    per_fold = [100 * (a["tail"] - b["tail"]) for a, b in zip(rskd, erm)]
    assert np.allclose(d["per_fold"], per_fold) and np.isfinite(d["ci95"])
    assert ham["paired_vs_erm"]["RSKD shot"]["fit_time_ratio"] > 0
    quality = rskd[0]["teacher_quality"]
    assert all({"acc", "map", "valid_ap_eq3", "epochs"} <= set(q) for q in quality.values())
