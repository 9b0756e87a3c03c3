"""scikit-learn's estimator checks on every public estimator, the few-shot family's API
checks through ``adapt``, declared parameter constraints and docstrings that match
their signatures.

As imbalanced-learn's ``imblearn/tests/test_common.py``: every public estimator runs
through :func:`~sklearn.utils.estimator_checks.parametrize_with_checks` with small
settings, and ``EXPECTED_FAILED`` lists, per estimator, each check it fails and why.
"""

from __future__ import annotations

import inspect
import pickle

import numpy as np
import pytest
from numpydoc.docscrape import ClassDoc, FunctionDoc
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

import fewmed
import fewmed.accelerate
import fewmed.datasets
import fewmed.distributed
import fewmed.fewshot
import fewmed.longtail
import fewmed.metrics
import fewmed.model_selection
import fewmed.nn
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
from fewmed.fewshot import FewShotMixin

_TASK = {"n_way": 2, "n_shot": 1, "n_query": 1, "n_score_tasks": 2, "random_state": 0}


def _small_estimators() -> list:
    """Every public estimator with settings that keep each check well under a second."""
    meta = {**_TASK, "n_filters": 4, "meta_batch_size": 1, "n_iterations": 2, "verbose": 0}
    return [
        DAMLClassifier(**meta, n_inner_steps=1, n_adapt_steps=1, augment=False),
        ProtoNetClassifier(**meta, augment=False),
        ReptileInitializer(
            **meta,
            n_inner_steps=1,
            n_adapt_steps=1,
            max_epochs=1,
            pretrain_epochs=1,
            n_train_shot=1,
        ),
        FineTuneClassifier(**_TASK, n_filters=4, max_epochs=1, n_adapt_steps=1),
        FeatureFewShotClassifier(
            ConvFeatureExtractor(n_filters=4, max_epochs=1, random_state=0), **_TASK
        ),
        ConvFeatureExtractor(n_filters=4, max_epochs=1, random_state=0),
        CDCClassifier(n_filters=8, max_epochs=15, batch_size=32, lr=0.01, random_state=0),
        RelationalSubsetsDistiller(
            n_filters=8, max_epochs=15, batch_size=32, lr=0.01, kd=None, random_state=0
        ),
    ]


# ------------------------------------------------------------ expected failures
#: Why the few-shot estimators fail the checks that call predict right after fit.
_ADAPT_FIRST = (
    "the few-shot protocol: fit learns from the common classes and predict answers on "
    "the task given to adapt(X_support, y_support); the check predicts right after fit, "
    "which raises NotFittedError naming adapt. The same API (pickling, idempotent fit, "
    "read-only memmaps, dtypes, unchanged __dict__, ...) is checked through adapt by "
    "test_few_shot_api_through_adapt below"
)
_PREDICTS_AFTER_FIT = (
    "check_classifier_data_not_an_array",
    "check_classifiers_classes",
    "check_classifiers_train",
    "check_decision_proba_consistency",
    "check_dict_unchanged",
    "check_dtype_object",
    "check_estimators_dtypes",
    "check_estimators_pickle",
    "check_f_contiguous_array_estimator",
    "check_fit_idempotent",
    "check_methods_sample_order_invariance",
    "check_methods_subset_invariance",
    "check_supervised_y_2d",
)
_FEW_SHOT_FAILURES = dict.fromkeys(_PREDICTS_AFTER_FIT, _ADAPT_FIRST)

#: Estimator name -> {check name: the reason it fails}. Every other check passes.
EXPECTED_FAILED: dict[str, dict[str, str]] = {
    "DAMLClassifier": _FEW_SHOT_FAILURES,
    "ProtoNetClassifier": _FEW_SHOT_FAILURES,
    "ReptileInitializer": _FEW_SHOT_FAILURES,
    "FineTuneClassifier": _FEW_SHOT_FAILURES,
    "FeatureFewShotClassifier": _FEW_SHOT_FAILURES,
    "ConvFeatureExtractor": {},
    "CDCClassifier": {},
    "RelationalSubsetsDistiller": {},
}


def _expected_failed(estimator) -> dict[str, str]:
    return EXPECTED_FAILED[type(estimator).__name__]


_LONG_TAIL = ("CDCClassifier", "RelationalSubsetsDistiller")


@parametrize_with_checks(
    [e for e in _small_estimators() if type(e).__name__ not in _LONG_TAIL],
    expected_failed_checks=_expected_failed,
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# the long-tailed family's checks train 15 epochs per check (check_classifiers_train
# wants 83% accuracy): about 3 minutes on 2 cores, so they run with the slow tests
@pytest.mark.slow
@parametrize_with_checks(
    [e for e in _small_estimators() if type(e).__name__ in _LONG_TAIL],
    expected_failed_checks=_expected_failed,
)
def test_sklearn_estimator_checks_long_tail(estimator, check):
    check(estimator)


def test_every_public_estimator_is_checked():
    public = {
        name
        for module in (fewmed.fewshot, fewmed.longtail)
        for name in module.__all__
        if inspect.isclass(getattr(module, name))
        and hasattr(getattr(module, name), "fit")
        and not inspect.isabstract(getattr(module, name))
        and name != "FewShotMixin"
    }
    assert public == set(EXPECTED_FAILED) == {type(e).__name__ for e in _small_estimators()}


def test_expected_failures_all_have_reasons():
    for name, failures in EXPECTED_FAILED.items():
        for check, reason in failures.items():
            assert check.startswith("check_") and len(reason) > 40, (name, check)


# ------------------------------------------------------------ few-shot API via adapt
def _few_shot_data():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2, 3], 6)
    X = (rng.random((24, 1, 8, 8)) + y[:, None, None, None] * 0.3).astype(np.float32)
    common = y < 2
    return X[common], y[common], X[~common], y[~common]


_FEW_SHOT = [e for e in _small_estimators() if isinstance(e, FewShotMixin)]


@pytest.mark.parametrize("estimator", _FEW_SHOT, ids=lambda e: type(e).__name__)
def test_few_shot_api_through_adapt(estimator, tmp_path):
    """What the expected failures above skip, checked the few-shot way (fit, adapt)."""
    Xc, yc, Xr, yr = _few_shot_data()
    est = clone(estimator).fit(Xc, yc)
    assert est.n_features_in_ == 64 and est.input_shape_ == (1, 8, 8)
    est.adapt(Xr, yr)
    proba = est.predict_proba(Xr)
    assert proba.shape == (len(Xr), 2)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-6)
    assert set(est.predict(Xr)) <= set(yr)
    # pickling keeps the predictions
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(est)).predict_proba(Xr), proba)
    # predicting leaves the estimator's __dict__ unchanged
    before = {k: v for k, v in vars(est).items() if isinstance(v, (int, float, str, tuple))}
    est.predict(Xr)
    assert before == {k: v for k, v in vars(est).items() if k in before}
    # an idempotent fit: refitting with the same seed gives the same predictions
    again = est.fit(Xc, yc).adapt(Xr, yr).predict_proba(Xr)
    np.testing.assert_array_equal(again, proba)
    # read-only memory-mapped input, Fortran order, float64 and lists
    path = tmp_path / "X.npy"
    np.save(path, Xr)
    memmap = np.load(path, mmap_mode="r")
    np.testing.assert_array_equal(est.predict_proba(memmap), proba)
    np.testing.assert_allclose(est.predict_proba(np.asfortranarray(Xr)), proba)
    np.testing.assert_allclose(est.predict_proba(Xr.astype(np.float64)), proba)
    np.testing.assert_allclose(est.predict_proba(Xr.tolist()), proba)
    # subset and order invariance
    np.testing.assert_allclose(est.predict_proba(Xr[::-1]), proba[::-1], atol=1e-6)
    np.testing.assert_allclose(est.predict_proba(Xr[:3]), proba[:3], atol=1e-6)
    # string labels
    names = np.array(["nv", "df"])[(yr == 3).astype(int)]
    assert set(est.adapt(Xr, names).predict(Xr)) <= {"nv", "df"}
    # the wrong width at predict names the fitted one
    with pytest.raises(ValueError, match=r"fitted on \(1, 8, 8\)"):
        est.predict(Xr.reshape(len(Xr), -1)[:, :10])
    # clone gives an unfitted copy with the same parameters
    fresh = clone(est)
    assert fresh.get_params().keys() == est.get_params().keys()
    assert not hasattr(fresh, "input_shape_")


# ------------------------------------------------------------ declared constraints
@pytest.mark.parametrize("estimator", _small_estimators(), ids=lambda e: type(e).__name__)
def test_parameter_constraints_cover_every_parameter(estimator):
    params = set(type(estimator)().get_params(deep=False))
    assert set(type(estimator)._parameter_constraints) == params


# ------------------------------------------------------------ docstrings
def _public_objects():
    modules = (
        fewmed.fewshot,
        fewmed.longtail,
        fewmed.nn,
        fewmed.datasets,
        fewmed.metrics,
        fewmed.model_selection,
        fewmed.losses,
        fewmed.distributed,
        fewmed.accelerate,
    )
    seen = {}
    for module in modules:
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                seen.setdefault(f"{module.__name__}.{name}", obj)
    return sorted(seen.items())


def _documented(doc) -> list[str]:
    names = []
    for p in doc["Parameters"]:
        for n in p.name.split(","):
            n = n.strip().lstrip("*")
            if n:
                names.append(n)
    return names


def _signature_names(obj) -> list[str]:
    func = obj.__init__ if inspect.isclass(obj) else obj
    sig = inspect.signature(func)
    return [n for n, p in sig.parameters.items() if n != "self"]


@pytest.mark.parametrize(
    "name,obj", _public_objects(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_docstring_parameters_match_signature(name, obj):
    if inspect.isclass(obj) and issubclass(obj, Exception):
        pytest.skip("exceptions take a message")
    if inspect.isclass(obj) and "__init__" not in {
        k for c in obj.__mro__[:-1] if c.__module__.startswith("fewmed") for k in vars(c)
    }:
        pytest.skip("no __init__ of its own")
    if inspect.isclass(obj) and not obj.__init__.__module__.startswith("fewmed"):
        pytest.skip("its __init__ is a library's (skorch's AccelerateMixin, typing.Protocol)")
    doc = ClassDoc(obj) if inspect.isclass(obj) else FunctionDoc(obj)
    documented = _documented(doc)
    in_signature = _signature_names(obj)
    assert doc["Examples"], f"{name}: no Examples section"
    if not in_signature:
        return  # nothing to document
    assert len(documented) == len(set(documented)), f"{name}: documented twice"
    assert set(documented) == set(in_signature), (
        f"{name}: the docstring documents {sorted(set(documented) - set(in_signature))} "
        f"that are not in the signature, and misses {sorted(set(in_signature) - set(documented))}"
    )
