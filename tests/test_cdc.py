"""Tests of CDCClassifier and the shared skorch plumbing (fewmed._skorch)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.base import clone
from sklearn.model_selection import (
    GridSearchCV,
    StratifiedGroupKFold,
    StratifiedKFold,
    cross_val_score,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils.estimator_checks import parametrize_with_checks

from fewmed import CDCClassifier
from fewmed.metrics import macro_f1
from fewmed.model_selection import stratified_split

SMALL = dict(n_filters=4, max_epochs=2, batch_size=16, random_state=0)


@pytest.fixture(scope="module")
def toy():
    """Two separable colour classes plus a rare one, 16 px, string labels."""
    rng = np.random.default_rng(0)
    n = {"nv": 40, "mel": 16, "df": 8}
    X, y = [], []
    for k, (name, count) in enumerate(n.items()):
        img = rng.normal(0.25 + 0.25 * k, 0.05, size=(count, 16, 16, 3))
        X.append(np.clip(img * 255, 0, 255).astype(np.uint8))
        y += [name] * count
    return np.concatenate(X), np.array(y)


# ---------------------------------------------------------------- loss terms
def test_loss_terms_match_hand_computation(toy):
    X, y = toy
    clf = CDCClassifier(alpha=3.0, beta=0.5, class_weight="balanced", **SMALL).fit(X, y)
    codes = np.searchsorted(clf.classes_, y)
    counts = np.bincount(codes)
    w = len(y) / (3 * counts)  # "balanced" weights, classes_ order
    xb = torch.as_tensor(X[:10].transpose(0, 3, 1, 2) / 255.0, dtype=torch.float32)
    yb = torch.as_tensor(codes[:10])
    clf.module_.train(), clf.decoder_.train()
    torch.manual_seed(0)
    logits, recon, twin = clf.infer(xb)
    got = clf.get_loss((logits, recon, twin), yb, X=xb, training=True)
    wt = torch.tensor(w, dtype=torch.float32)
    lc = F.cross_entropy(logits, yb, weight=wt)
    per_image = ((recon - xb) ** 2).flatten(1).mean(1)
    lr = (wt[yb] * per_image).mean()
    lt = F.cross_entropy(twin, yb, weight=wt)
    assert torch.allclose(got, lc + 3.0 * lr + 0.5 * lt, rtol=1e-5)
    assert clf.last_terms_["train_loss_rec"] == pytest.approx(lr.item(), rel=1e-5)
    assert clf.last_terms_["train_loss_twin"] == pytest.approx(lt.item(), rel=1e-5)
    # the twin is the classifier applied to the reconstruction
    clf.module_.eval()
    assert torch.allclose(twin, twin)  # finite
    with torch.no_grad():
        assert clf.module_(recon).shape == twin.shape


def test_reconstruction_weights_per_class(toy):
    X, y = toy
    clf = CDCClassifier(reconstruction_weight={"df": 7.0}, **SMALL).fit(X, y)
    assert clf.reconstruction_criterion_.weight.tolist() == [7.0, 1.0, 1.0]  # df, mel, nv
    clf = CDCClassifier(**SMALL).fit(X, y)  # default "balanced": rarest class heaviest
    wr = clf.reconstruction_criterion_.weight
    assert wr[0] > wr[1] > wr[2]
    assert clf.criterion_.weight is None  # class_weight=None: plain CE


def test_alpha_beta_zero_equals_base_loss(toy):
    X, y = toy
    base = CDCClassifier(decoder=False, **SMALL).fit(X, y)
    cdc = CDCClassifier(alpha=0.0, beta=0.0, **SMALL).fit(X, y)
    np.testing.assert_allclose(cdc.predict_proba(X), base.predict_proba(X), atol=1e-6)
    np.testing.assert_allclose(
        cdc.history[:, "train_loss"], base.history[:, "train_loss"], rtol=1e-5
    )


def test_twin_shares_the_classifier_parameters(toy):
    X, y = toy
    clf = CDCClassifier(**SMALL).fit(X, y)
    opt_params = {id(p) for g in clf.optimizer_.param_groups for p in g["params"]}
    own = {id(p) for p in clf.module_.parameters()} | {id(p) for p in clf.decoder_.parameters()}
    assert opt_params == own  # no separate twin classifier anywhere
    # the twin loss alone sends gradients into the classifier head
    clf.module_.train(), clf.decoder_.train()
    xb = torch.as_tensor(X[:8].transpose(0, 3, 1, 2) / 255.0, dtype=torch.float32)
    clf.module_.zero_grad()
    _, recon, twin = clf.infer(xb)
    F.cross_entropy(twin, torch.zeros(8, dtype=torch.long)).backward()
    assert clf.module_.head.weight.grad.abs().sum() > 0
    # the twin pass does not move BatchNorm running statistics
    bn = next(m for m in clf.module_.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    with torch.no_grad():
        clf.infer(xb)  # real pass (updates) + twin pass (must not)
    after_real = bn.running_mean.clone()
    clf.twin = False
    bn.running_mean.copy_(before)
    with torch.no_grad():
        clf.infer(xb)
    assert torch.allclose(bn.running_mean, after_real)


def test_history_records_three_terms(toy):
    X, y = toy
    clf = CDCClassifier(**SMALL).fit(X, y)
    for key in ("train_loss", "train_loss_cls", "train_loss_rec", "train_loss_twin", "dur"):
        assert len(clf.history[:, key]) == 2
    cd = CDCClassifier(twin=False, **SMALL).fit(X, y)
    assert "train_loss_twin" not in cd.history[-1] and "train_loss_rec" in cd.history[-1]
    plain = CDCClassifier(decoder=False, **SMALL).fit(X, y)
    assert not hasattr(plain, "decoder_") and "train_loss_rec" not in plain.history[-1]


# ---------------------------------------------------------------- predictions & contract
@pytest.mark.parametrize("loss", ["ce", "focal"])
def test_predict_proba_is_probability_for_any_loss(toy, loss):
    X, y = toy
    clf = CDCClassifier(loss=loss, class_weight="balanced", **SMALL).fit(X, y)
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 3) and np.all(proba >= 0)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert set(clf.predict(X)) <= set(y)


def test_reproducible_and_global_rng_untouched(toy):
    X, y = toy
    state = torch.get_rng_state()
    a = CDCClassifier(augment=True, **SMALL).fit(X, y).predict_proba(X)
    assert torch.equal(torch.get_rng_state(), state)
    b = CDCClassifier(augment=True, **SMALL).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)
    c = CDCClassifier(**{**SMALL, "random_state": 1}).fit(X, y).predict_proba(X)
    assert not np.allclose(a, c)


def test_pickle_round_trip_identical(toy):
    X, y = toy
    clf = CDCClassifier(**SMALL).fit(X, y)
    clf2 = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(clf2.predict_proba(X), clf.predict_proba(X))
    np.testing.assert_array_equal(clf2.classes_, clf.classes_)


def test_default_train_split_keeps_all_data_and_explicit_split(toy):
    X, y = toy
    clf = CDCClassifier(**SMALL).fit(X, y)
    assert clf.train_split is None
    assert sum(clf.history[-1, "batches", :, "train_batch_size"]) == len(X)
    val = CDCClassifier(train_split=stratified_split(0.25), **SMALL).fit(X, y)
    assert "valid_f1" in val.history[-1] and "valid_loss" in val.history[-1]


def test_sklearn_integration(toy):
    X, y = toy
    groups = np.arange(len(y)) // 2
    scores = cross_val_score(
        CDCClassifier(**SMALL), X, y, groups=groups, cv=StratifiedGroupKFold(2), scoring="f1_macro"
    )
    assert scores.shape == (2,)
    grid = GridSearchCV(CDCClassifier(**SMALL), {"beta": [0.0, 0.2]}, cv=StratifiedKFold(2))
    assert grid.fit(X, y).best_params_["beta"] in (0.0, 0.2)
    pipe = make_pipeline(
        FunctionTransformer(lambda a: a.astype(np.float32).transpose(0, 3, 1, 2) / 255),
        CDCClassifier(**SMALL),
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
        CDCClassifier(**SMALL).fit(bad, y)
    with pytest.raises(ValueError, match="single class"):
        CDCClassifier(**SMALL).fit(X, np.zeros(len(y)))
    with pytest.raises(ValueError, match="X has 64 samples but y has 63"):
        CDCClassifier(**SMALL).fit(X, y[:-1])
    for params, match in [
        ({"loss": "hinge"}, "loss must be"),
        ({"reconstruction": "huber"}, "reconstruction must be"),
        ({"alpha": -1.0}, "alpha must be >= 0"),
        ({"class_weight": "bogus"}, "class_weight must be"),
        ({"decoder_filters": 0}, "decoder_filters must be"),
        ({"device": "tpu"}, "tpu"),
    ]:
        with pytest.raises((ValueError, RuntimeError), match=match):
            CDCClassifier(**{**SMALL, **params}).fit(X, y)
    clf = CDCClassifier(**SMALL).fit(X, y)
    with pytest.raises(ValueError, match="fitted on"):
        clf.predict(np.zeros((2, 20, 20, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="not fitted"):
        CDCClassifier().predict(X)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda(toy):
    X, y = toy
    clf = CDCClassifier(device="cuda", **SMALL).fit(X, y)
    assert clf.predict_proba(X).shape == (len(X), 3)


# ---------------------------------------------------------------- scikit-learn checks
EXPECTED_FAILED = {
    "check_no_attributes_set_in_init": (
        "skorch's NeuralNet.__init__ sets history_, initialized_ and virtual_params_ itself"
    ),
}


@pytest.mark.slow
@parametrize_with_checks(
    [CDCClassifier(n_filters=8, max_epochs=15, batch_size=32, lr=0.01, random_state=0)],
    expected_failed_checks=lambda est: EXPECTED_FAILED,
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# ---------------------------------------------------------------- real data
@pytest.mark.slow
@pytest.mark.realdata
def test_short_run_on_ham10000_beats_majority(ham28):
    X, y, groups = ham28.images, ham28.target, ham28.groups
    rng = np.random.default_rng(0)
    keep = np.concatenate(
        [rng.permutation(np.flatnonzero(y == k))[:300] for k in np.unique(y)]
    )  # <= 300 per class: 1,857 images, the rare classes whole
    X, y, groups = X[keep], y[keep], groups[keep]
    train, test = next(StratifiedGroupKFold(4, shuffle=True, random_state=0).split(X, y, groups))
    clf = CDCClassifier(n_filters=16, max_epochs=4, batch_size=64, random_state=0)
    clf.fit(X[train], y[train])
    mf1 = macro_f1(y[test], clf.predict(X[test]))
    majority = macro_f1(y[test], np.full(len(test), np.bincount(y[train]).argmax()))
    assert mf1 > majority + 0.1, (mf1, majority)


# ---------------------------------------------------------------- speed / benchmark plumbing
def test_channels_last_on_cpu_gives_the_same_predictions(toy, monkeypatch):
    import fewmed.longtail._cdc as cdc_module

    X, y = toy
    fast = CDCClassifier(**SMALL).fit(X, y)
    conv = next(m for m in fast.module_.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(cdc_module, "_CHANNELS_LAST_ON_CPU", False)
    plain = CDCClassifier(**SMALL).fit(X, y)
    np.testing.assert_allclose(fast.predict_proba(X), plain.predict_proba(X), atol=1e-3)


def test_cosine_schedule_callback_and_training_only_cap():
    from fewmed.benchmarks.cdc import _callbacks, _cap_largest

    assert _callbacks("none", 5, 100, 10) == []
    (name, sched) = _callbacks("cosine", 3, 95, 10)[0]
    assert name == "lr_scheduler" and sched.kwargs["T_max"] == 30
    y = np.array([0] * 50 + [1] * 10 + [2] * 5)
    train = np.arange(65)
    kept = _cap_largest(train, y, 20, seed=0)
    assert np.bincount(y[kept]).tolist() == [20, 10, 5]
    assert set(kept) <= set(train)
    np.testing.assert_array_equal(_cap_largest(train, y, None, seed=0), train)


def test_lr_scheduler_callback_decays_the_learning_rate(toy):
    from skorch.callbacks import LRScheduler
    from torch.optim.lr_scheduler import CosineAnnealingLR

    X, y = toy
    sched = LRScheduler(CosineAnnealingLR, T_max=8, step_every="batch")
    clf = CDCClassifier(callbacks=[("lr_scheduler", sched)], **SMALL).fit(X, y)
    # the scheduler drives the optimizer that trains the network (built before callbacks start)
    assert clf.optimizer_.param_groups[0]["lr"] < 1e-6  # 2 epochs x 4 batches = T_max
    assert sched.lr_scheduler_.optimizer is clf.optimizer_
    narrow = CDCClassifier(decoder_filters=3, **SMALL).fit(X, y)
    convs = [m for m in narrow.decoder_.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [3, 3, 3]
