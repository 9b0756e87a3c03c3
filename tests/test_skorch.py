"""Tests of the shared skorch base (fewmed._skorch.ImageNetClassifier) and of the raw-input
checks it runs (fewmed._validation.check_raw_input / check_labels), through its subclasses."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from conftest import colour_classes
from sklearn.base import clone
from sklearn.model_selection import (
    GridSearchCV,
    StratifiedGroupKFold,
    StratifiedKFold,
    cross_val_score,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from skorch.callbacks import LRScheduler

from fewmed import CDCClassifier, RelationalSubsetsDistiller
from fewmed.model_selection import stratified_split

SMALL = dict(n_filters=4, max_epochs=3, batch_size=32, lr=1e-2, random_state=0)
CDC_SMALL = dict(n_filters=4, max_epochs=2, batch_size=16, random_state=0)
ESTIMATORS = {
    "cdc": lambda **kw: CDCClassifier(**{**SMALL, **kw}),
    "rskd": lambda **kw: RelationalSubsetsDistiller(subsets=[["a"], ["b", "c"]], **{**SMALL, **kw}),
}


@pytest.fixture(scope="module")
def abc():
    """Three colour classes (40/16/12), 16 px, string labels a, b, c."""
    return colour_classes({"a": 40, "b": 16, "c": 12})


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_lr_scheduler_drives_the_optimizer_that_trains(abc, name):
    X, y = abc
    sched = LRScheduler(policy=torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.1)
    net = ESTIMATORS[name](callbacks=[("lr", sched)])
    for _ in range(2):  # a refit builds a new optimizer: the scheduler follows it
        net.fit(X, y)
        # 3 epochs, a step after each: 1e-2 -> 1e-5 in the optimizer of the trained network
        assert net.optimizer_.param_groups[0]["lr"] == pytest.approx(1e-5)
        assert sched.lr_scheduler_.optimizer is net.optimizer_
        trained = {id(p) for g in net.optimizer_.param_groups for p in g["params"]}
        assert {id(p) for p in net.module_.parameters()} <= trained
        assert net.history[:, "event_lr"] == pytest.approx([1e-2, 1e-3, 1e-4])


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_data_checked_and_networks_built_once_per_fit(abc, name, monkeypatch):
    X, y = abc
    calls = []
    net = ESTIMATORS[name](max_epochs=1)
    original = type(net)._check_data

    def counting(self, X, y=None):
        if self is net:  # not RSKD's teachers
            calls.append(len(X))
        return original(self, X, y)

    monkeypatch.setattr(type(net), "_check_data", counting)
    net.fit(X, y)
    assert calls == [len(X)]  # on_train_begin checks; fit_loop's call is skipped
    module = net.module_
    net.partial_fit(X, y)
    assert calls == [len(X)] * 2 and net.module_ is module  # partial_fit keeps the network
    net.check_data(X[::2], y[::2])  # outside a fit, check_data always checks
    assert calls == [len(X)] * 2 + [len(X[::2])]


# ---------------------------------------------------------------- seeding, pickling, defaults
def test_reproducible_and_global_rng_untouched(toy):
    X, y = toy
    state = torch.get_rng_state()
    a = CDCClassifier(augment=True, **CDC_SMALL).fit(X, y).predict_proba(X)
    assert torch.equal(torch.get_rng_state(), state)
    b = CDCClassifier(augment=True, **CDC_SMALL).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)
    c = CDCClassifier(**{**CDC_SMALL, "random_state": 1}).fit(X, y).predict_proba(X)
    assert not np.allclose(a, c)


def test_pickle_round_trip_identical(toy):
    X, y = toy
    clf = CDCClassifier(**CDC_SMALL).fit(X, y)
    clf2 = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(clf2.predict_proba(X), clf.predict_proba(X))
    np.testing.assert_array_equal(clf2.classes_, clf.classes_)


def test_default_train_split_keeps_all_data_and_explicit_split(toy):
    X, y = toy
    clf = CDCClassifier(**CDC_SMALL).fit(X, y)
    assert clf.train_split is None
    assert sum(clf.history[-1, "batches", :, "train_batch_size"]) == len(X)
    val = CDCClassifier(train_split=stratified_split(0.25), **CDC_SMALL).fit(X, y)
    assert "valid_f1" in val.history[-1] and "valid_loss" in val.history[-1]


def test_sklearn_integration(toy):
    X, y = toy
    groups = np.arange(len(y)) // 2
    scores = cross_val_score(
        CDCClassifier(**CDC_SMALL),
        X,
        y,
        groups=groups,
        cv=StratifiedGroupKFold(2),
        scoring="f1_macro",
    )
    assert scores.shape == (2,)
    grid = GridSearchCV(CDCClassifier(**CDC_SMALL), {"beta": [0.0, 0.2]}, cv=StratifiedKFold(2))
    assert grid.fit(X, y).best_params_["beta"] in (0.0, 0.2)
    pipe = make_pipeline(
        FunctionTransformer(lambda a: a.astype(np.float32).transpose(0, 3, 1, 2) / 255),
        CDCClassifier(**CDC_SMALL),
    )
    assert pipe.fit(X, y).score(X, y) >= 0
    assert clone(CDCClassifier(alpha=3)).alpha == 3


# ---------------------------------------------------------------- bad input
def test_bad_inputs_have_clear_errors(toy):
    X, y = toy
    Xf = X.transpose(0, 3, 1, 2).astype(np.float32) / 255
    bad = Xf.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        CDCClassifier(**CDC_SMALL).fit(bad, y)
    with pytest.raises(ValueError, match="single class"):
        CDCClassifier(**CDC_SMALL).fit(X, np.zeros(len(y)))
    with pytest.raises(ValueError, match="X has 64 samples but y has 63"):
        CDCClassifier(**CDC_SMALL).fit(X, y[:-1])
    with pytest.raises(ValueError, match="X is 1-D"):
        CDCClassifier(**CDC_SMALL).fit(X[:, 0, 0, 0], y)
    with pytest.raises(ValueError, match="requires y to be passed"):
        CDCClassifier(**CDC_SMALL).fit(X, None)
    with pytest.raises(ValueError, match="continuous"):
        CDCClassifier(**CDC_SMALL).fit(X, np.linspace(0, 1, len(y)))
    with pytest.raises((ValueError, RuntimeError), match="tpu"):
        CDCClassifier(**{**CDC_SMALL, "device": "tpu"}).fit(X, y)
    clf = CDCClassifier(**CDC_SMALL).fit(X, y)
    with pytest.raises(ValueError, match="fitted on"):
        clf.predict(np.zeros((2, 20, 20, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="not fitted"):
        CDCClassifier().predict(X)


def test_column_vector_y_is_raveled_with_a_warning(toy):
    from sklearn.exceptions import DataConversionWarning

    X, y = toy
    net = CDCClassifier(**CDC_SMALL).initialize()
    with pytest.warns(DataConversionWarning, match="column-vector y"):
        net.check_data(X, y[:, None])
    assert net.classes_.tolist() == ["df", "mel", "nv"]
