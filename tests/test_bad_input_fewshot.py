"""The few-shot family's bad-input wall: each malformed input is refused with a
scikit-learn-typed error that names the parameter (or argument) and what to do, and
a diverging run stops with an error naming the setting to change, leaving the
estimator as it was before that fit."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.exceptions import NotFittedError

from fewmed import DAMLClassifier, FeatureFewShotClassifier, FineTuneClassifier, ProtoNetClassifier
from fewmed.model_selection import TaskDistribution

RNG = np.random.default_rng(0)
Y = np.repeat([0, 1, 2, 3], 6)
X = (RNG.random((24, 1, 8, 8)) + Y[:, None, None, None] * 0.3).astype(np.float32)
SMALL = dict(
    n_filters=4,
    n_way=2,
    n_shot=1,
    n_query=1,
    meta_batch_size=1,
    n_iterations=2,
    augment=False,
    n_score_tasks=2,
    verbose=0,
    random_state=0,
)


def proto(**params):
    return ProtoNetClassifier(**{**SMALL, **params})


@pytest.fixture(scope="module")
def fitted():
    return proto().fit(X[Y < 2], Y[Y < 2])


def _nan(a):
    a = a.copy()
    a[0, 0, 0, 0] = np.nan
    return a


def _inf(a):
    a = a.copy()
    a[1, 0, 2, 2] = np.inf
    return a


# (id, what raises, exception type, a regex naming the parameter and what to do)
FIT_CASES = [
    ("n_way=1", lambda: proto(n_way=1).fit(X, Y), ValueError, r"'n_way'.*range \[2"),
    ("n_way=str", lambda: proto(n_way="2").fit(X, Y), TypeError, r"'n_way'.*int"),
    ("n_shot=0", lambda: proto(n_shot=0).fit(X, Y), ValueError, r"'n_shot'.*range \[1"),
    ("n_query=-1", lambda: proto(n_query=-1).fit(X, Y), ValueError, r"'n_query'"),
    ("meta_lr=0", lambda: proto(meta_lr=0.0).fit(X, Y), ValueError, r"'meta_lr'.*\(0"),
    ("meta_lr=-1", lambda: proto(meta_lr=-1.0).fit(X, Y), ValueError, r"'meta_lr'"),
    ("n_filters=0", lambda: proto(n_filters=0).fit(X, Y), ValueError, r"'n_filters'"),
    ("n_iterations=-5", lambda: proto(n_iterations=-5).fit(X, Y), ValueError, "'n_iterations'"),
    (
        "meta_batch_size=0",
        lambda: proto(meta_batch_size=0).fit(X, Y),
        ValueError,
        "'meta_batch_size'",
    ),
    (
        "module=unknown",
        lambda: proto(module="resnet9000").fit(X, Y),
        ValueError,
        r"'module'.*conv4",
    ),
    ("module=int", lambda: proto(module=3).fit(X, Y), ValueError, "'module'"),
    ("augment=str", lambda: proto(augment="yes").fit(X, Y), ValueError, "'augment'"),
    ("n_jobs=0", lambda: proto(n_jobs=0).fit(X, Y), ValueError, r"'n_jobs'.*range \[1"),
    ("n_jobs=float", lambda: proto(n_jobs=2.0).fit(X, Y), ValueError, r"'n_jobs'.*or None"),
    ("device=int", lambda: proto(device=3).fit(X, Y), ValueError, "'device'"),
    ("device=gpu", lambda: proto(device="gpu").fit(X, Y), ValueError, r"device.*'cpu'"),
    ("random_state=str", lambda: proto(random_state="0").fit(X, Y), ValueError, "'random_state'"),
    (
        "inner_lr=0 (DAML)",
        lambda: DAMLClassifier(**SMALL, inner_lr=0.0).fit(X, Y),
        ValueError,
        "'inner_lr'",
    ),
    ("eps=2 (DAML)", lambda: DAMLClassifier(**SMALL, eps=2.0).fit(X, Y), ValueError, "'eps'"),
    (
        "max_epochs=0 (fine-tune)",
        lambda: FineTuneClassifier(max_epochs=0).fit(X, Y),
        ValueError,
        r"'max_epochs'.*range \[1",
    ),
    ("adapt_lr=-1", lambda: FineTuneClassifier(adapt_lr=-1.0).fit(X, Y), ValueError, "'adapt_lr'"),
    (
        "classifier=str",
        lambda: FeatureFewShotClassifier(classifier="knn").fit(X, Y),
        ValueError,
        "'classifier'",
    ),
    ("X NaN", lambda: proto().fit(_nan(X), Y), ValueError, r"X contains NaN.*clean or impute"),
    ("X inf", lambda: proto().fit(_inf(X), Y), ValueError, r"X contains NaN or infinity"),
    ("X empty", lambda: proto().fit(X[:0], Y[:0]), ValueError, r"X is empty.*at least one"),
    ("X 1-D", lambda: proto().fit(X[0, 0, 0], Y[:8]), ValueError, r"1D.*Reshape your data"),
    ("X 5-D", lambda: proto().fit(X[..., None], Y), ValueError, r"X must be .*dimensions"),
    ("X complex", lambda: proto().fit(X.astype(complex), Y), ValueError, r"Complex data"),
    ("X strings", lambda: proto().fit(np.full((24, 4), "a"), Y), ValueError, r"X must be numeric"),
    (
        "X sparse",
        lambda: proto().fit(sp.csr_matrix(np.ones((24, 4))), Y),
        TypeError,
        r"sparse input is not supported.*toarray",
    ),
    ("X zero width", lambda: proto().fit(np.ones((24, 0)), Y), ValueError, r"0 feature\(s\)"),
    ("y None", lambda: proto().fit(X), ValueError, r"requires y to be passed"),
    (
        "y one class",
        lambda: proto().fit(X, np.zeros(24)),
        ValueError,
        r"single class.*include images of another class",
    ),
    (
        "y continuous",
        lambda: proto().fit(X, RNG.random(24)),
        ValueError,
        r"continuous.*class labels",
    ),
    ("y length", lambda: proto().fit(X, Y[:20]), ValueError, r"X has 24 samples but y has 20"),
    ("y 2-D", lambda: proto().fit(X, np.stack([Y, Y], 1)), ValueError, r"y must be 1-D"),
    ("y NaN", lambda: proto().fit(X, np.where(Y == 0, np.nan, Y)), ValueError, r"y contains NaN"),
    (
        "distribution and y",
        lambda: proto().fit(TaskDistribution(X, Y, n_way=2, n_shot=1, n_query=1), Y),
        ValueError,
        r"either a TaskDistribution or \(X, y\)",
    ),
    (
        "X_valid without y_valid",
        lambda: proto().fit(X, Y, X_valid=X),
        ValueError,
        r"pass both X_valid and y_valid",
    ),
]

AFTER_FIT_CASES = [
    ("predict before adapt", lambda f: f.predict(X), NotFittedError, r"call adapt\(X_support"),
    (
        "adapt one class",
        lambda f: f.adapt(X[:4], np.zeros(4)),
        ValueError,
        r"single class.*at least two classes",
    ),
    (
        "adapt y length",
        lambda f: f.adapt(X[:4], [0, 1, 0]),
        ValueError,
        r"one label per support image",
    ),
    (
        "adapt wrong size",
        lambda f: f.adapt(np.zeros((4, 1, 9, 9), np.float32), [0, 1, 0, 1]),
        ValueError,
        r"fitted on \(1, 8, 8\): resize to 8x8",
    ),
    (
        "adapt wrong channels",
        lambda f: f.adapt(np.zeros((4, 3, 8, 8), np.float32), [0, 1, 0, 1]),
        ValueError,
        r"with 1 channel",
    ),
    ("adapt NaN", lambda f: f.adapt(_nan(X[:4]), [0, 1, 0, 1]), ValueError, r"NaN"),
    (
        "predict wrong size",
        lambda f: f.adapt(X[:4], [0, 1, 0, 1]).predict(X[:, :, :4]),
        ValueError,
        r"fitted on \(1, 8, 8\)",
    ),
    (
        "predict inf",
        lambda f: f.adapt(X[:4], [0, 1, 0, 1]).predict(_inf(X)),
        ValueError,
        r"infinity",
    ),
    (
        "score sample_weight",
        lambda f: f.score(X, Y, sample_weight=np.ones(24)),
        ValueError,
        r"sample_weight",
    ),
]


def test_the_wall_has_at_least_25_cases():
    assert len(FIT_CASES) + len(AFTER_FIT_CASES) >= 25


@pytest.mark.parametrize("case", FIT_CASES, ids=[c[0] for c in FIT_CASES])
def test_fit_refuses_bad_input(case):
    _, call, exc, match = case
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("case", AFTER_FIT_CASES, ids=[c[0] for c in AFTER_FIT_CASES])
def test_adapt_and_predict_refuse_bad_input(fitted, case):
    _, call, exc, match = case
    est = ProtoNetClassifier(**SMALL)
    est.__dict__.update(fitted.__dict__)  # a fresh fitted copy (adapt mutates)
    for a in ("classes_", "prototypes_"):
        est.__dict__.pop(a, None)
    with pytest.raises(exc, match=match):
        call(est)


def test_daml_refuses_a_task_of_another_width():
    daml = DAMLClassifier(**{**SMALL, "n_inner_steps": 1, "n_adapt_steps": 1})
    daml.fit(X[Y < 2], Y[Y < 2])
    with pytest.raises(ValueError, match=r"3 classes but the model was meta-trained on"):
        daml.adapt(X[Y > 0], Y[Y > 0])


def test_bad_input_leaves_a_fitted_estimator_as_it_was(fitted):
    est = proto().fit(X[Y < 2], Y[Y < 2]).adapt(X[Y >= 2], Y[Y >= 2])
    before = est.predict_proba(X)
    state = set(vars(est))
    with pytest.raises(ValueError):
        est.fit(_nan(X), Y)
    assert set(vars(est)) == state
    np.testing.assert_array_equal(est.predict_proba(X), before)


def test_a_diverging_run_names_the_setting_and_leaves_the_estimator_as_before():
    est = proto().fit(X[Y < 2], Y[Y < 2]).adapt(X[Y >= 2], Y[Y >= 2])
    before = est.predict_proba(X)
    module = est.module_
    est.set_params(meta_lr=1e20, n_iterations=5)  # absurd, but inside the constraints
    with pytest.raises(FloatingPointError, match=r"diverged.*Lower meta_lr"):
        est.fit(X, Y)
    assert est.module_ is module
    np.testing.assert_array_equal(est.predict_proba(X), before)
    assert torch.isfinite(next(est.module_.parameters())).all()
