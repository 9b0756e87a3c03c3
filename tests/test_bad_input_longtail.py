"""The long-tailed family's bad-input wall (CDC and RSKD): each malformed input is
refused with a scikit-learn-typed error that names the parameter (or argument) and
what to do; a diverging run stops naming the setting to change and leaves the
estimator as it was before that fit."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.exceptions import NotFittedError

from fewmed import CDCClassifier, RelationalSubsetsDistiller

RNG = np.random.default_rng(0)
Y = np.repeat([0, 1, 2], [12, 8, 4])
X = (RNG.random((24, 1, 8, 8)) + Y[:, None, None, None] * 0.3).astype(np.float32)
YM = (RNG.random((24, 3)) < 0.4).astype(np.int64)
YM[:3] = np.eye(3, dtype=np.int64)  # every label has a positive
SMALL = dict(n_filters=4, max_epochs=1, batch_size=16, random_state=0)


def cdc(**params):
    return CDCClassifier(**{**SMALL, **params})


def rskd(**params):
    return RelationalSubsetsDistiller(**{**SMALL, "kd": None, **params})


def _nan(a):
    a = a.copy()
    a[0, 0, 0, 0] = np.nan
    return a


FIT_CASES = [
    ("max_epochs=0", lambda: cdc(max_epochs=0).fit(X, Y), ValueError, r"'max_epochs'.*range \[1"),
    ("max_epochs=0 (RSKD)", lambda: rskd(max_epochs=0).fit(X, Y), ValueError, r"'max_epochs'"),
    ("max_epochs=2.5", lambda: cdc(max_epochs=2.5).fit(X, Y), TypeError, r"'max_epochs'.*int"),
    ("batch_size=0", lambda: cdc(batch_size=0).fit(X, Y), ValueError, r"'batch_size'"),
    ("lr=0", lambda: cdc(lr=0.0).fit(X, Y), ValueError, r"'lr'.*\(0"),
    ("lr=nan", lambda: cdc(lr=float("nan")).fit(X, Y), ValueError, r"'lr'"),
    ("alpha=-1", lambda: cdc(alpha=-1.0).fit(X, Y), ValueError, r"'alpha'.*range \[0"),
    ("beta=str", lambda: cdc(beta="0.2").fit(X, Y), TypeError, r"'beta'"),
    (
        "reconstruction=l3",
        lambda: cdc(reconstruction="l3").fit(X, Y),
        ValueError,
        r"'reconstruction'.*'l1'",
    ),
    ("decoder_blocks=0", lambda: cdc(decoder_blocks=0).fit(X, Y), ValueError, "'decoder_blocks'"),
    ("decoder_scale=2", lambda: cdc(decoder_scale=2.0).fit(X, Y), ValueError, "'decoder_scale'"),
    ("loss=hinge", lambda: cdc(loss="hinge").fit(X, Y), ValueError, r"'loss'.*'focal'"),
    ("gamma=-2", lambda: cdc(gamma=-2.0).fit(X, Y), ValueError, r"'gamma'"),
    (
        "class_weight=uniform",
        lambda: cdc(class_weight="uniform").fit(X, Y),
        ValueError,
        r"'class_weight'.*'balanced'",
    ),
    ("module=unknown", lambda: cdc(module="resnet9000").fit(X, Y), ValueError, r"'module'"),
    ("device=gpu", lambda: cdc(device="gpu").fit(X, Y), ValueError, r"device.*'cpu'"),
    ("augment=str", lambda: cdc(augment="yes").fit(X, Y), ValueError, r"'augment'"),
    ("random_state=str", lambda: cdc(random_state="0").fit(X, Y), ValueError, "'random_state'"),
    ("temperature=0 (RSKD)", lambda: rskd(temperature=0.0).fit(X, Y), ValueError, r"'temperature'"),
    ("delta=2 (RSKD)", lambda: rskd(delta=2.0).fit(X, Y), ValueError, r"'delta'.*\[0"),
    ("kd=soft (RSKD)", lambda: rskd(kd="soft").fit(X, Y), ValueError, r"'kd'"),
    ("n_jobs=0 (RSKD)", lambda: rskd(n_jobs=0).fit(X, Y), ValueError, r"'n_jobs'.*range \[1"),
    (
        "validation_fraction=1 (RSKD)",
        lambda: rskd(validation_fraction=1.0).fit(X, Y),
        ValueError,
        r"'validation_fraction'",
    ),
    (
        "train_split given (RSKD)",
        lambda: rskd(train_split=lambda *a: a).fit(X, Y),
        ValueError,
        r"'train_split'.*None",
    ),
    ("teacher=list (RSKD)", lambda: rskd(teacher=[1]).fit(X, Y), ValueError, r"'teacher'"),
    ("X NaN", lambda: cdc().fit(_nan(X), Y), ValueError, r"NaN.*clean or impute"),
    ("X empty", lambda: cdc().fit(X[:0], Y[:0]), ValueError, r"empty"),
    ("X 1-D", lambda: cdc().fit(X[0, 0, 0], Y[:8]), ValueError, r"Reshape your data"),
    ("X complex", lambda: cdc().fit(X.astype(complex), Y), ValueError, r"Complex data"),
    ("X sparse", lambda: cdc().fit(sp.csr_matrix(np.ones((24, 4))), Y), TypeError, r"sparse"),
    ("y None", lambda: cdc().fit(X, None), ValueError, r"requires y to be passed"),
    (
        "y one class",
        lambda: cdc().fit(X, np.zeros(24)),
        ValueError,
        r"single class.*include images of another class",
    ),
    ("y continuous", lambda: cdc().fit(X, RNG.random(24)), ValueError, r"continuous"),
    ("y length", lambda: cdc().fit(X, Y[:20]), ValueError, r"X has 24 samples but y has 20"),
    (
        "sample_weight",
        lambda: cdc().fit(X, Y, sample_weight=np.ones(24)),
        TypeError,
        r"sample_weight.*class_weight",
    ),
    (
        "multi-label width vs classes (RSKD)",
        lambda: rskd(classes=[0, 1]).fit(X, YM),
        ValueError,
        r"classes has 2 entries but Y has 3 columns",
    ),
    (
        "multi-label width at partial_fit (RSKD)",
        lambda: rskd().fit(X, YM).partial_fit(X, np.c_[YM, YM[:, :1]]),
        ValueError,
        r"4 labels \(columns of Y\) but RelationalSubsetsDistiller was fitted on 3",
    ),
]


@pytest.fixture(scope="module")
def fitted():
    return cdc().fit(X, Y)


AFTER_FIT_CASES = [
    ("predict before fit", lambda f: cdc().predict(X), NotFittedError, r"Call 'fit'"),
    ("predict wrong size", lambda f: f.predict(X[:, :, :4]), ValueError, r"resize"),
    (
        "predict wrong channels",
        lambda f: f.predict(np.repeat(X, 3, 1)),
        ValueError,
        r"\(C, H, W\) = \(3, 8, 8\).*fitted on \(1, 8, 8\)",
    ),
    ("predict NaN", lambda f: f.predict(_nan(X)), ValueError, r"NaN"),
    (
        "partial_fit unseen label",
        lambda f: f.partial_fit(X, np.where(Y == 2, 7, Y)),
        ValueError,
        r"labels \[7\] that are not among the classes",
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
def test_predict_refuses_bad_input(fitted, case):
    _, call, exc, match = case
    with pytest.raises(exc, match=match):
        call(fitted)


def test_a_diverging_run_names_the_setting_and_leaves_the_estimator_as_before():
    est = cdc(max_epochs=2).fit(X, Y)
    before = est.predict_proba(X)
    module = est.module_
    est.set_params(lr=1e20, max_epochs=3)
    with pytest.raises(FloatingPointError, match=r"diverged.*Lower lr"):
        est.fit(X, Y)
    assert est.module_ is module and est.lr == 1e20
    np.testing.assert_array_equal(est.predict_proba(X), before)


def test_bad_data_leaves_a_fitted_estimator_as_it_was():
    est = cdc().fit(X, Y)
    before = est.predict_proba(X)
    with pytest.raises(ValueError):
        est.fit(_nan(X), Y)
    np.testing.assert_array_equal(est.predict_proba(X), before)
