"""Pinned-seed regression: every estimator predicts what it predicted before the 0.3 layout.

``tests/data/regression_predictions.json`` holds each estimator's ``predict_proba``
(or ``transform``) on a small synthetic input, recorded with the code *before*
the move to ``fewmed/fewshot`` and ``fewmed/longtail``. A refactor must not change
a single prediction; a deliberate change of behaviour (a fixed bug) re-records the
file (``python tests/test_regression.py --record``) and says so in the CHANGELOG.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from fewmed.datasets import make_synthetic_lesions

RECORDED = Path(__file__).parent / "data" / "regression_predictions.json"


def _cases() -> dict[str, np.ndarray]:
    from sklearn.neighbors import KNeighborsClassifier

    from fewmed import (
        CDCClassifier,
        ConvFeatureExtractor,
        DAMLClassifier,
        FeatureFewShotClassifier,
        FineTuneClassifier,
        ProtoNetClassifier,
        RelationalSubsetsDistiller,
        ReptileInitializer,
    )

    d = make_synthetic_lesions(n_classes=6, n_per_class=30, size=16, random_state=0)
    X, y = d.images, d.target
    common, rare = y < 4, y >= 4
    Xs, ys, Xq = X[rare][::6], y[rare][::6], X[rare][:8]
    src, tgt = y < 3, y >= 3
    imb = np.concatenate(
        [np.flatnonzero(y == 0), np.flatnonzero(y == 1)[:10], np.flatnonzero(y == 2)[:5]]
    )
    Y = np.stack(
        [y[imb] == 0, y[imb] >= 1, y[imb] == 2, (np.arange(len(imb)) % 3) == 0], axis=1
    ).astype(int)
    meta = dict(n_filters=8, n_query=5, verbose=0, random_state=0)
    rep = dict(n_way=3, n_filters=8, n_iterations=3, max_epochs=2, verbose=0, random_state=0)
    small = dict(n_filters=8, max_epochs=2, random_state=0)
    out = {}
    m = DAMLClassifier(n_iterations=4, difficulty_start=2, **meta)
    out["DAMLClassifier"] = m.fit(X[common], y[common]).adapt(Xs, ys).predict_proba(Xq)
    m = ProtoNetClassifier(n_iterations=4, **meta)
    out["ProtoNetClassifier"] = m.fit(X[common], y[common]).adapt(Xs, ys).predict_proba(Xq)
    m = ReptileInitializer(**rep).fit(X[src], y[src])
    out["ReptileInitializer"] = m.adapt(X[tgt], y[tgt]).predict_proba(X[tgt][:8])
    m = ReptileInitializer(init="supervised", **rep).fit(X[src], y[src])
    out["ReptileInitializer-supervised"] = m.adapt(X[tgt], y[tgt]).predict_proba(X[tgt][:8])
    fx = ConvFeatureExtractor(n_filters=8, max_epochs=1, random_state=0)
    out["ConvFeatureExtractor"] = fx.fit(X[common], y[common]).transform(Xq)
    m = FeatureFewShotClassifier(
        ConvFeatureExtractor(n_filters=8, max_epochs=1, random_state=0), KNeighborsClassifier(1)
    )
    out["FeatureFewShotClassifier"] = m.fit(X[common], y[common]).adapt(Xs, ys).predict_proba(Xq)
    m = FineTuneClassifier(n_filters=8, max_epochs=1, n_adapt_steps=2, random_state=0)
    out["FineTuneClassifier"] = m.fit(X[common], y[common]).adapt(Xs, ys).predict_proba(Xq)
    m = CDCClassifier(class_weight="balanced", **small)
    out["CDCClassifier"] = m.fit(X[imb], y[imb]).predict_proba(Xq)
    m = RelationalSubsetsDistiller(subsets=[[0], [1, 2]], **small)
    out["RelationalSubsetsDistiller"] = m.fit(X[imb], y[imb]).predict_proba(Xq)
    m = RelationalSubsetsDistiller(subsets=[[0, 1], [2, 3]], **small)
    out["RelationalSubsetsDistiller-multilabel"] = m.fit(X[imb], Y).predict_proba(Xq)
    return out


@pytest.fixture(scope="module")
def predictions() -> dict[str, np.ndarray]:
    return _cases()


@pytest.mark.parametrize("name", sorted(json.loads(RECORDED.read_text())))
def test_predictions_unchanged(name, predictions):
    expected = np.asarray(json.loads(RECORDED.read_text())[name])
    np.testing.assert_allclose(predictions[name], expected, atol=2e-6, rtol=0)


if __name__ == "__main__" and "--record" in sys.argv:
    got = {k: np.asarray(v, dtype=float).round(6).tolist() for k, v in _cases().items()}
    RECORDED.write_text(json.dumps(got, indent=0) + "\n")
