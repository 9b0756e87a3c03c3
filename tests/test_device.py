"""``device="auto"`` for every estimator; the CUDA path where a GPU exists; the GPU benchmark."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fewmed
from fewmed.datasets import make_synthetic_lesions

SMALL = dict(
    n_filters=4,
    n_iterations=1,
    max_epochs=1,
    pretrain_epochs=1,
    verbose=0,
    n_way=2,
    n_shot=2,
    n_train_shot=2,
    n_query=3,
    random_state=0,
)
ESTIMATORS = [n for n in fewmed.__all__ if n != "__version__"]


@pytest.fixture(scope="module")
def data():
    d = make_synthetic_lesions(n_classes=4, n_per_class=12, size=16, random_state=0)
    return d.images, d.target


def _make(name: str, device: str):
    cls = getattr(fewmed, name)
    params = cls().get_params()
    kw = {k: v for k, v in SMALL.items() if k in params}
    if "device" in params:
        return cls(device=device, **kw)
    # FeatureFewShotClassifier: its device is its feature extractor's
    fx = fewmed.ConvFeatureExtractor(device=device, n_filters=4, max_epochs=1, verbose=0)
    return cls(fx, random_state=0)


def _fit_predict(est, X, y):
    est.fit(X, y)
    if hasattr(est, "adapt"):  # a 2-way support set
        rows = np.concatenate([np.flatnonzero(y == c)[:2] for c in np.unique(y)[:2]])
        est.adapt(X[rows], y[rows])
    if not hasattr(est, "predict"):
        return est.transform(X[:6])
    return est.predict(X[:6])


@pytest.mark.parametrize("name", ESTIMATORS)
def test_every_estimator_accepts_device_auto(name, data):
    X, y = data
    est = _make(name, "auto")
    assert len(_fit_predict(est, X, y)) == 6
    params = [p for m in _modules(est) for p in m.parameters()]
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert params and all(p.device.type == expected for p in params)


def _modules(est, depth=2):
    """The torch modules an estimator holds (in skorch nets and sub-estimators too)."""
    for v in vars(est).values():
        if isinstance(v, torch.nn.Module):
            yield v
        elif depth and hasattr(v, "get_params"):
            yield from _modules(v, depth - 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ESTIMATORS)
def test_every_estimator_fits_on_cuda(name, data):  # pragma: no cover - no GPU in CI
    X, y = data
    est = _make(name, "cuda")
    cpu = _fit_predict(_make(name, "cpu"), X, y)
    assert _fit_predict(est, X, y).shape == cpu.shape
    assert all(p.is_cuda for m in _modules(est) for p in m.parameters())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_gpu_benchmark_says_it_needs_a_gpu(tmp_path, capsys):
    from fewmed.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["benchmark", "gpu", "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "torch.cuda.is_available() is False" in err
    assert not (tmp_path / "gpu.json").exists()
