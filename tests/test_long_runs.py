"""Long runs keep memory flat: scoring episodes neither grow the process's memory nor
keep tensors alive (the short version of ``fewmed benchmark memory``, 5,000 episodes)."""

from __future__ import annotations

import gc
import sys

import pytest
import torch

from fewmed.benchmarks import memory
from fewmed.datasets import make_synthetic_lesions


def _live_tensors() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
@pytest.mark.parametrize(
    "name",
    [
        "ProtoNet",
        pytest.param("DAML", marks=pytest.mark.slow),
        pytest.param("Features+KNN", marks=pytest.mark.slow),
    ],
)
def test_scoring_episodes_keep_memory_flat(name):
    d = make_synthetic_lesions(n_classes=6, n_per_class=20, size=16, random_state=0)
    X, y = d.images, d.target
    est = memory.estimators(0)[name].set_params(n_shot=2, n_query=2)
    if "n_iterations" in est.get_params():
        est.set_params(n_iterations=2)
    est.fit(X[y < 3], y[y < 3])
    Xr, yr = X[y >= 3], y[y >= 3]
    memory.measure(est, Xr, yr, 20, 20)  # warm-up: allocator pools, lazy kernels
    tensors = _live_tensors()
    res = memory.measure(est, Xr, yr, 100, 25, seed=1)
    assert res["growth_mb"] < 20, res["rss_mb"]
    assert _live_tensors() <= tensors  # no episode leaves a tensor behind
    assert 0.0 <= res["mean_auc"] <= 1.0
