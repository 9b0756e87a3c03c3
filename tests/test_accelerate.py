"""The skorch estimators and the fine-tuning path through skorch's AccelerateMixin: one
process and 2 CPU processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import colour_classes

accelerate = pytest.importorskip("accelerate")

from fewmed import CDCClassifier, RelationalSubsetsDistiller  # noqa: E402
from fewmed._finetune import fine_tune  # noqa: E402
from fewmed._validation import seeded_torch  # noqa: E402
from fewmed.accelerate import (  # noqa: E402
    AcceleratedCDCClassifier,
    AcceleratedRelationalSubsetsDistiller,
)
from fewmed.datasets import make_synthetic_lesions  # noqa: E402
from fewmed.nn import Conv4  # noqa: E402

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


def test_fine_tune_one_process_equals_the_plain_path(data):
    X, y = data
    kw = dict(n_filters=4, max_epochs=3, batch_size=8, validation_fraction=0.25, random_state=0)
    a = fine_tune("conv4", X, y, patience=1, **kw)
    b = fine_tune("conv4", X, y, patience=1, accelerator=accelerate.Accelerator(cpu=True), **kw)
    assert type(b).__name__ == "AcceleratedSupervisedNet" and type(b.module_) is Conv4
    assert b.history[:, "valid_loss"] == a.history[:, "valid_loss"]
    np.testing.assert_allclose(b.predict_proba(X), a.predict_proba(X), rtol=1e-5, atol=1e-6)


def _launch(tmp_path, mode: str, port: int) -> list[dict]:
    """Two worker processes (gloo, 127.0.0.1, one torch thread each); their results."""
    env = dict(os.environ, WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    env.update(GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(WORKER.parent.parent) + os.pathsep + env.get("PYTHONPATH", "")
    args = [sys.executable, str(WORKER), str(tmp_path), str(tmp_path / "init"), mode]
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
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_two_processes_share_every_epoch(tmp_path):
    r0, r1 = _launch(tmp_path, "rskd", 29555)
    assert r0["num_processes"] == 2 and "MULTI_CPU" in r0["distributed"]
    # 48 images, 8 per batch and process: each process trains on half of every epoch
    assert r0["batch_sizes"] == r1["batch_sizes"] == [8] * 6
    for k in r0["params"]:  # DistributedDataParallel keeps one network
        assert torch.equal(r0["params"][k], r1["params"][k])
    np.testing.assert_array_equal(r0["proba"], r1["proba"])


def test_fine_tuning_path_on_two_processes(tmp_path):
    """``fine_tune`` / ``pretrain(accelerator=)`` on 2 gloo processes. With 8 images per
    process and batch, DistributedDataParallel's mean of the two halves' gradients is
    one process's gradient on 16 (the same shuffle: accelerate syncs the loader's
    generator), so a network without BatchNorm trains to one process's weights;
    validation and early stopping agree on both processes (``random_state=None`` too)."""
    with seeded_torch(0):  # a small convolutional network without BatchNorm
        module = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3),
            torch.nn.Tanh(),  # no dead units: it learns from every seed tried (0, 1, 2)
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(8, 3),
        )
    Xc, yc = colour_classes({"nv": 16, "mel": 16, "df": 16})  # learnable in a few steps
    torch.save((module, Xc, yc), tmp_path / "plain.pt")
    r0, r1 = _launch(tmp_path, "finetune", 29556)
    one = fine_tune(module, Xc, yc, batch_size=16, lr=0.03, max_epochs=15, random_state=0)
    assert r0["num_processes"] == 2 and r0["plain_type"] == type(one.module_).__name__
    for (k, v), start in zip(one.module_.named_parameters(), module.parameters(), strict=True):
        assert (v - start).abs().max() > 1e-2, k  # it trained
    for k, v in one.module_.state_dict().items():
        torch.testing.assert_close(r0["plain"][k], v, rtol=0, atol=1e-5)
    np.testing.assert_allclose(r0["plain_proba"], one.predict_proba(Xc), atol=1e-5)
    assert r0["plain_loss"][-1] < 0.5 * r0["plain_loss"][0] < np.log(3)  # it learned
    assert np.mean(r0["plain_pred"] == yc) > 0.9  # chance: 1/3
    for r in (r0, r1):  # early stopping restored the best epoch's weights on both
        assert r["stopped_best"] < len(r["stopped_valid_loss"])
    assert r0["stopped_valid_loss"] == r1["stopped_valid_loss"]
    assert r0["pretrained_valid_loss"] == r1["pretrained_valid_loss"]
    for key in ("plain", "stopped", "pretrained"):
        for k in r0[key]:
            assert torch.equal(r0[key][k], r1[key][k]), (key, k)
    np.testing.assert_array_equal(r0["stopped_proba"], r1["stopped_proba"])
