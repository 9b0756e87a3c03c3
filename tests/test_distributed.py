"""Meta-training over torch.distributed (gloo, 2 CPU processes) equals one process.

The ranks are started as ``torchrun`` starts them (``RANK`` / ``WORLD_SIZE`` in the
environment) by ``tests/_distributed_worker.py``; the process group meets through a
file and gloo binds to the loopback interface, so nothing listens beyond
127.0.0.1. Every launch has a timeout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fewmed.fewshot._distributed import ShardBatchSampler

WORKER = Path(__file__).with_name("_distributed_worker.py")
ROOT = WORKER.parent.parent
SCENARIOS = "daml64,daml32,reptile64,protonet"


def _env(rank: int, world: int) -> dict:
    env = dict(os.environ)
    env.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        GLOO_SOCKET_IFNAME="lo",
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    return env


def _launch(scenario: str, out: Path, world: int, timeout: float = 240):
    """Run ``world`` ranks (``world=1``: one process, no process group); their outputs."""
    out.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, str(WORKER), scenario, str(out)]
    if world > 1:
        args.append(str(out / "init"))
    procs = [
        subprocess.Popen(
            args, env=_env(r, world), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for r in range(world)
    ]
    logs, start = [], time.monotonic()
    try:
        for p in procs:
            left = max(timeout - (time.monotonic() - start), 1)
            logs.append(p.communicate(timeout=left)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [p.returncode for p in procs], logs, time.monotonic() - start


def _load(out: Path, scenario: str, rank: int) -> dict:
    return torch.load(out / f"{scenario}_rank{rank}.pt", weights_only=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    for out, world in ((one, 1), (two, 2)):
        codes, logs, _ = _launch(SCENARIOS, out, world)
        assert codes == [0] * world, "\n".join(logs)
    return one, two


def _max_diff(a: dict, b: dict, keys=None) -> float:
    keys = a.keys() if keys is None else keys
    return max((a[k].double() - b[k].double()).abs().max().item() for k in keys)


def _moving(grads: list[dict], tol: float) -> list[str]:
    """Parameters whose meta-gradient is not identically zero.

    A convolution's bias followed by BatchNorm has a gradient that is zero up to
    rounding (the normalisation removes it); Adam divides that rounding by its
    ``eps`` (1e-8), so these biases move by rounding noise / 1e-8 and are compared
    separately.
    """
    return [k for k in grads[0] if max(g[k].abs().max().item() for g in grads) > tol]


def test_shard_batch_sampler_splits_every_meta_batch():
    shares = [list(ShardBatchSampler(6, 3, rank=r, world_size=2)) for r in range(2)]
    assert shares == [[[0], [3]], [[1, 2], [4, 5]]]
    with pytest.raises(ValueError, match="meta_batch_size"):
        list(ShardBatchSampler(2, 1, rank=0, world_size=2))


def test_shard_batch_sampler_covers_tasks_once():
    for n, m, w in [(12, 4, 2), (12, 3, 2), (10, 5, 3)]:
        got = sorted(i for r in range(w) for b in ShardBatchSampler(n, m, r, w) for i in b)
        assert got == list(range(n))


def test_daml_two_ranks_equal_one_process_float64(runs):
    one, two = runs
    a, r0, r1 = _load(one, "daml64", 0), _load(two, "daml64", 0), _load(two, "daml64", 1)
    assert len(a["grads"]) == len(r0["grads"]) == 4
    for g1, g2 in zip(a["grads"], r0["grads"]):  # the meta-gradients
        assert _max_diff(g1, g2) < 1e-10
    moving = _moving(a["grads"], 1e-12)
    assert len(moving) >= len(a["params"]) - 4  # only the 4 pre-BatchNorm conv biases are still
    assert _max_diff(a["params"], r0["params"], moving) < 1e-10
    assert _max_diff(a["params"], r0["params"]) < 1e-8  # the still biases: rounding / Adam eps
    assert _max_diff(r0["params"], r1["params"]) == 0.0  # every rank holds the same network
    # the history (rank 0's and every rank's) is the meta-batch's, not a share's
    np.testing.assert_allclose(
        [h["train_loss"] for h in r0["history"]],
        [h["train_loss"] for h in a["history"]],
        rtol=1e-12,
    )
    np.testing.assert_allclose(r0["valid_loss"], a["valid_loss"], rtol=1e-12)


def test_daml_resumed_from_checkpoint_equals_one_uninterrupted_run(runs):
    one, two = runs
    a, r0, r1 = _load(one, "daml64", 0), _load(two, "daml64", 0), _load(two, "daml64", 1)
    assert r0["n_iter"] == r1["n_iter"] == 4
    moving = _moving(a["grads"], 1e-12)
    assert _max_diff(a["params"], r0["resumed"], moving) < 1e-10
    assert _max_diff(r0["resumed"], r1["resumed"]) == 0.0
    assert r0["wrote_checkpoint"] and not r1["wrote_checkpoint"]  # rank 0 writes


def test_daml_two_ranks_float32_within_tolerance(runs):
    one, two = runs
    a, r0 = _load(one, "daml32", 0), _load(two, "daml32", 0)
    # the first meta-gradient agrees to float32 rounding; Adam's eps then amplifies the
    # rounding of the pre-BatchNorm biases' zero gradients (docs/scaling.md)
    assert _max_diff(a["grads"][0], r0["grads"][0]) < 1e-4
    moving = _moving(a["grads"], 1e-3)
    assert _max_diff(a["params"], r0["params"], moving) < 1e-3


def test_reptile_two_ranks_equal_one_process_float64(runs):
    one, two = runs
    a, r0, r1 = _load(one, "reptile64", 0), _load(two, "reptile64", 0), _load(two, "reptile64", 1)
    # the outer mean is summed in another order (1e-16); the inner loop's Adam divides
    # the pre-BatchNorm biases' zero gradients by its eps, as in DAML: 1e-9 after 3 steps
    assert _max_diff(a["params"], r0["params"]) < 1e-8
    assert _max_diff(r0["params"], r1["params"]) == 0.0


def test_protonet_ranks_hold_one_network(runs):
    _, two = runs
    r0, r1 = _load(two, "protonet", 0), _load(two, "protonet", 1)
    # random_state=None: rank 0's seed and network are broadcast; BatchNorm running
    # statistics are averaged, so the ranks never drift apart
    assert _max_diff(r0["params"], r1["params"]) == 0.0
    assert len(r0["history"]) == 3


@pytest.mark.slow
def test_a_failing_rank_ends_the_job_with_a_clear_error(tmp_path):
    codes, logs, seconds = _launch("fault", tmp_path, 2, timeout=150)
    assert codes[0] != 0 and codes[1] != 0
    assert "injected fault on rank 1 at iteration 1" in logs[1]
    assert "rank 0 of 2: distributed meta-training stopped at meta-iteration 1" in logs[0]
    assert "another rank failed" in logs[0]
    assert seconds < 150
