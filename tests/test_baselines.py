"""The few-shot baselines: conv features + KNN / SVM, fine-tuning, a shared extractor."""

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.svm import LinearSVC

from fewmed.fewshot._baselines import (
    ConvFeatureExtractor,
    FeatureFewShotClassifier,
    FineTuneClassifier,
)


def test_feature_baselines_pipeline(lesions):
    X, y = lesions
    common = y < 3
    fx = ConvFeatureExtractor(n_filters=8, max_epochs=2, random_state=0)
    knn = FeatureFewShotClassifier(fx, n_query=5, n_score_tasks=5).fit(X[common], y[common])
    svm = FeatureFewShotClassifier(fx, LinearSVC(), n_query=5).fit(X[common], y[common])
    sup = np.flatnonzero(~common)
    sup = np.r_[sup[y[sup] == 3][:5], sup[y[sup] == 4][:5]]
    p = svm.adapt(X[sup], y[sup]).predict_proba(X[~common])
    assert p.shape == (int((~common).sum()), 2) and np.allclose(p.sum(1), 1)
    assert svm.pipeline_.steps[0][1].estimator is svm.features_  # frozen, not refitted
    assert 0 <= knn.score(X[~common], y[~common]) <= 1


def test_finetune_baseline_reproducible(lesions):
    X, y = lesions
    sup = np.r_[np.flatnonzero(y == 3)[:5], np.flatnonzero(y == 4)[:5]]
    kw = dict(n_filters=8, max_epochs=1, n_adapt_steps=3, random_state=0)
    a = FineTuneClassifier(**kw).fit(X[y < 3], y[y < 3]).adapt(X[sup], y[sup])
    b = FineTuneClassifier(**kw).fit(X[y < 3], y[y < 3]).adapt(X[sup], y[sup])
    np.testing.assert_allclose(a.predict_proba(X[:8]), b.predict_proba(X[:8]), atol=1e-6)
    assert list(a.classes_) == [3, 4]
    # adapting to another task in between changes nothing: the same support set gives the
    # same model, so a task's score does not depend on what was scored before it
    first = a.predict_proba(X[:8])
    other = np.r_[np.flatnonzero(y == 0)[:5], np.flatnonzero(y == 4)[:5]]
    a.adapt(X[other], y[other]).adapt(X[sup], y[sup])
    np.testing.assert_array_equal(a.predict_proba(X[:8]), first)
    kw = dict(n_tasks=4, n_shot=2, random_state=0)
    np.testing.assert_array_equal(a.episode_scores(X, y, **kw), a.episode_scores(X, y, **kw))


def test_finetune_reuses_a_fitted_extractor(lesions, monkeypatch):
    import fewmed.fewshot._baselines as baselines

    X, y = lesions
    common = y < 3
    sup = np.r_[np.flatnonzero(y == 3)[:5], np.flatnonzero(y == 4)[:5]]
    pre = dict(n_filters=8, max_epochs=1, random_state=0)
    own = FineTuneClassifier(**pre, n_adapt_steps=3).fit(X[common], y[common])
    fx = ConvFeatureExtractor(**pre).fit(X[common], y[common])
    before = {k: v.clone() for k, v in fx.backbone_.state_dict().items()}
    calls = []
    real = baselines._pretrain
    monkeypatch.setattr(baselines, "_pretrain", lambda *a: calls.append(1) or real(*a))
    shared = FineTuneClassifier(extractor=fx, n_adapt_steps=3, random_state=0)
    shared.fit(X[common], y[common])
    assert calls == [] and shared.backbone_ is fx.backbone_ and shared.history_ is fx.history_
    # the same pre-training settings give the same backbone: sharing changes no prediction
    p_own = own.adapt(X[sup], y[sup]).predict_proba(X[:8])
    p_shared = shared.adapt(X[sup], y[sup]).predict_proba(X[:8])
    np.testing.assert_allclose(p_shared, p_own, atol=1e-6)
    after = fx.backbone_.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # fine-tuning used a copy
    # clone: parameters unchanged, a fitted extractor becomes an unfitted copy that is fitted
    c = clone(shared)
    assert c.get_params()["extractor"] is not fx and not hasattr(c.extractor, "backbone_")
    c.fit(X[common], y[common])
    assert len(calls) == 1 and c.backbone_ is not fx.backbone_
    assert c.extractor.get_params() == fx.get_params() and not hasattr(c.extractor, "backbone_")
    # a FrozenEstimator keeps the fitted extractor through clone
    frozen = clone(FineTuneClassifier(extractor=FrozenEstimator(fx), n_adapt_steps=3))
    assert frozen.fit(X[common], y[common]).backbone_ is fx.backbone_ and len(calls) == 1


def test_finetune_extractor_errors(lesions):
    X, y = lesions
    fx = ConvFeatureExtractor(n_filters=8, max_epochs=1, random_state=0).fit(X, y)
    with pytest.raises(ValueError, match="shape"):
        FineTuneClassifier(extractor=fx).fit(X[:, :8, :8], y)
    with pytest.raises(TypeError, match="'extractor' parameter.*transform"):
        FineTuneClassifier(extractor=LinearSVC()).fit(X, y)


def test_finetune_keeps_batchnorm_statistics_and_pretraining_history(lesions):
    X, y = lesions
    sup = np.r_[np.flatnonzero(y == 3)[:5], np.flatnonzero(y == 4)[:5]]
    ft = FineTuneClassifier(n_filters=8, max_epochs=2, n_adapt_steps=3, random_state=0)
    ft.fit(X[y < 3], y[y < 3]).adapt(X[sup], y[sup])
    assert len(ft.history_) == 2 and np.isfinite(ft.history_[-1, "train_loss"])
    stats = [k for k in ft.backbone_.state_dict() if "running" in k]
    assert stats  # Conv4 has BatchNorm, adapted in eval mode: statistics as pre-trained
    adapted, pre = ft.adapted_module_.state_dict(), ft.backbone_.state_dict()
    assert all(torch.equal(adapted[k], pre[k]) for k in stats)
    assert ft.adapted_module_.head.out_features == 2 and ft.backbone_.head.out_features == 3


def test_refit_forgets_the_previous_adaptation(lesions):
    """The fit template drops what adapt set: it belonged to the previous backbone."""
    X, y = lesions
    common = y < 3
    sup = np.r_[np.flatnonzero(y == 3)[:5], np.flatnonzero(y == 4)[:5]]
    ft = FineTuneClassifier(n_filters=4, max_epochs=1, n_adapt_steps=1, random_state=0)
    ft.fit(X[common], y[common]).adapt(X[sup], y[sup])
    assert hasattr(ft, "adapted_module_")
    ft.fit(X[common], y[common])
    assert not hasattr(ft, "adapted_module_") and not hasattr(ft, "classes_")
    with pytest.raises(NotFittedError, match="adapt"):
        ft.predict(X[:2])
