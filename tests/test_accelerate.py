"""The skorch estimators through skorch's AccelerateMixin: one process and 2 CPU processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

accelerate = pytest.importorskip("accelerate")

from fewmed import CDCClassifier, RelationalSubsetsDistiller  # noqa: E402
from fewmed.accelerate import (  # noqa: E402
    AcceleratedCDCClassifier,
    AcceleratedRelationalSubsetsDistiller,
)
from fewmed.datasets import make_synthetic_lesions  # noqa: E402

WORKER = Path(__file__).with_name("_accelerate_worker.py")
SMALL = dict(n_filters=4, max_epochs=2, batch_size=8, random_state=0)


@pytest.fixture(scope="module")
def data():
    d = make_synthetic_lesions(n_classes=3, n_per_class=16, size=16, random_state=0)
    return d.images, d.target


@pytest.mark.parametrize(
    "plain, accelerated",
    [
        (CDCClassifier, AcceleratedCDCClassifier),
        (RelationalSubsetsDistiller, AcceleratedRelationalSubsetsDistiller),
    ],
)
def test_one_process_equals_the_plain_estimator(data, plain, accelerated):
    X, y = data
    a = plain(**SMALL).fit(X, y)
    b = accelerated(accelerator=accelerate.Accelerator(cpu=True), device=None, **SMALL).fit(X, y)
    np.testing.assert_allclose(b.predict_proba(X), a.predict_proba(X), rtol=1e-5, atol=1e-6)
    assert not isinstance(b.module_, torch.nn.parallel.DistributedDataParallel)  # unwrapped


def test_two_processes_share_every_epoch(tmp_path):
    env = dict(os.environ, WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="29555")
    env.update(GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(WORKER.parent.parent) + os.pathsep + env.get("PYTHONPATH", "")
    args = [sys.executable, str(WORKER), str(tmp_path), str(tmp_path / "init")]
    procs = [
        subprocess.Popen(
            args,
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    try:
        logs = [p.communicate(timeout=180)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(logs)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert r0["num_processes"] == 2 and "MULTI_CPU" in r0["distributed"]
    # 48 images, 8 per batch and process: each process trains on half of every epoch
    assert r0["batch_sizes"] == r1["batch_sizes"] == [8] * 6
    for k in r0["params"]:  # DistributedDataParallel keeps one network
        assert torch.equal(r0["params"][k], r1["params"][k])
    np.testing.assert_array_equal(r0["proba"], r1["proba"])
