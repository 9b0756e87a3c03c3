"""Tests of the long-tailed family's template (fewmed.longtail._base.LongTailClassifier):
parameters declared once, shared checks, backbone and class-weighted base loss."""

from __future__ import annotations

import inspect
import re

import numpy as np
import pytest
import torch
from sklearn.base import clone

from fewmed import CDCClassifier, RelationalSubsetsDistiller
from fewmed._skorch import ImageNetClassifier
from fewmed.longtail._base import LongTailClassifier
from fewmed.losses import class_weights

FAMILY = [CDCClassifier, RelationalSubsetsDistiller]
SMALL = dict(n_filters=4, max_epochs=1, batch_size=32, random_state=0)


def _declared(klass) -> set[str]:
    """The parameter names ``klass.__init__`` itself writes (not ``self``, ``**kwargs``)."""
    code = klass.__dict__["__init__"].__code__
    return set(code.co_varnames[1 : code.co_argcount + code.co_kwonlyargcount])


def _documented(klass) -> set[str]:
    section = klass.__doc__.split("Parameters\n    ----------\n")[1].split("\n\n    ")[0]
    names = re.findall(r"^    (\w+(?:, \w+)*) :", section, flags=re.MULTILINE)
    return {n for group in names for n in group.split(", ")}


@pytest.mark.parametrize("klass", FAMILY, ids=lambda k: k.__name__)
def test_each_parameter_declared_once(klass):
    shared = _declared(LongTailClassifier) | _declared(ImageNetClassifier)
    again = _declared(klass) & shared
    # ``module`` is the positional argument; RSKD's output defaults to "auto" (sigmoid
    # for multi-label targets), CDC keeps the family's softmax
    allowed = {"module"} | (
        {"predict_nonlinearity"} if klass is RelationalSubsetsDistiller else set()
    )
    assert again == allowed
    assert {"n_filters", "loss", "gamma", "class_weight"} <= _declared(LongTailClassifier)


@pytest.mark.parametrize("klass", FAMILY, ids=lambda k: k.__name__)
def test_signature_and_docstring_list_every_parameter(klass):
    sig = inspect.signature(klass)
    names = [n for n, p in sig.parameters.items() if p.kind != p.VAR_KEYWORD]
    assert names[0] == "module" and "lr" in names and "class_weight" in names
    assert len(names) == len(set(names))
    est = klass()
    params = est.get_params()
    for name in names:  # the defaults of the signature are the estimator's
        default = sig.parameters[name].default
        assert params[name] is default or params[name] == default, name
    assert params["predict_nonlinearity"] == (
        "auto"
        if klass is RelationalSubsetsDistiller
        else sig.parameters["predict_nonlinearity"].default
    )
    assert set(names) <= _documented(klass)


@pytest.mark.parametrize("klass", FAMILY, ids=lambda k: k.__name__)
def test_clone_get_params_set_params(klass):
    est = klass("resnet", n_filters=8, loss="focal", gamma=1.0, lr=0.01, module__dropout=0.2)
    params = est.get_params()
    assert params["module"] == "resnet" and params["lr"] == 0.01 and params["gamma"] == 1.0
    assert params["module__dropout"] == 0.2
    twin = clone(est)
    assert twin is not est
    for key in ("module", "n_filters", "loss", "gamma", "lr", "module__dropout", "class_weight"):
        assert twin.get_params()[key] == params[key]
    twin.set_params(class_weight="balanced", max_epochs=3, gamma=0.5)
    assert (twin.class_weight, twin.max_epochs, twin.gamma) == ("balanced", 3, 0.5)
    assert est.class_weight is None  # the clone is independent


@pytest.mark.parametrize("klass", FAMILY, ids=lambda k: k.__name__)
@pytest.mark.parametrize(
    "params, match",
    [
        ({"loss": "hinge"}, "'loss' parameter.*'focal'"),
        ({"loss": "bce"}, "'loss' parameter.*'focal'"),
        ({"gamma": -1.0}, "'gamma' parameter.*range \\[0"),
        ({"gamma": "two"}, "'gamma' parameter.*float"),
        ({"class_weight": "bogus"}, "'class_weight' parameter.*'balanced'"),
    ],
)
def test_shared_parameter_checks(toy, klass, params, match):
    X, y = toy
    with pytest.raises(ValueError, match=match):
        klass(**{**SMALL, **params}).fit(X, y)


@pytest.mark.parametrize("klass", FAMILY, ids=lambda k: k.__name__)
def test_backbone_and_class_weighted_loss(toy, klass):
    X, y = toy
    net = klass(class_weight="balanced", **SMALL).initialize()
    net.check_data(X, y)  # builds the networks and criteria, trains nothing
    conv = next(m for m in net.module_.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.in_channels == 3 and conv.out_channels == 4  # n_filters
    assert net.module_(torch.zeros(2, 3, 16, 16)).shape == (2, 3)
    expected = class_weights(y, "balanced", classes=net.classes_)
    np.testing.assert_allclose(net.criterion_.weight.numpy(), expected, rtol=1e-6)
    assert klass(**SMALL).initialize()._class_weights("balanced", None) is None


def test_class_weights_of_a_multilabel_target():
    rng = np.random.default_rng(0)
    Y = (rng.random((60, 3)) < [0.6, 0.3, 0.1]).astype(int)
    X = rng.random((60, 3, 8, 8)).astype(np.float32)
    net = RelationalSubsetsDistiller(class_weight="balanced", **SMALL).initialize()
    net.check_data(X, Y)
    expected = class_weights(Y, "balanced")
    np.testing.assert_allclose(net._class_weights("balanced", net.data_info_), expected)
    assert isinstance(net.criterion_, torch.nn.BCEWithLogitsLoss)
