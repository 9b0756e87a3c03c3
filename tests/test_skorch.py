"""Tests of the shared skorch base (fewmed._skorch.ImageNetClassifier) through its subclasses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skorch.callbacks import LRScheduler

from fewmed import CDCClassifier, RelationalSubsetsDistiller

SMALL = dict(n_filters=4, max_epochs=3, batch_size=32, lr=1e-2, random_state=0)
ESTIMATORS = {
    "cdc": lambda **kw: CDCClassifier(**{**SMALL, **kw}),
    "rskd": lambda **kw: RelationalSubsetsDistiller(subsets=[["a"], ["b", "c"]], **{**SMALL, **kw}),
}


@pytest.fixture(scope="module")
def toy():
    """Three colour classes (40/16/12), 16 px, string labels."""
    rng = np.random.default_rng(0)
    X, y = [], []
    for k, (name, count) in enumerate({"a": 40, "b": 16, "c": 12}.items()):
        img = rng.normal(0.25 + 0.25 * k, 0.05, size=(count, 16, 16, 3))
        X.append(np.clip(img * 255, 0, 255).astype(np.uint8))
        y += [name] * count
    return np.concatenate(X), np.array(y)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_lr_scheduler_drives_the_optimizer_that_trains(toy, name):
    X, y = toy
    sched = LRScheduler(policy=torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.1)
    net = ESTIMATORS[name](callbacks=[("lr", sched)])
    for _ in range(2):  # a refit builds a new optimizer: the scheduler follows it
        net.fit(X, y)
        # 3 epochs, a step after each: 1e-2 -> 1e-5 in the optimizer of the trained network
        assert net.optimizer_.param_groups[0]["lr"] == pytest.approx(1e-5)
        assert sched.lr_scheduler_.optimizer is net.optimizer_
        trained = {id(p) for g in net.optimizer_.param_groups for p in g["params"]}
        assert {id(p) for p in net.module_.parameters()} <= trained
        assert net.history[:, "event_lr"] == pytest.approx([1e-2, 1e-3, 1e-4])


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_data_checked_and_networks_built_once_per_fit(toy, name, monkeypatch):
    X, y = toy
    calls = []
    net = ESTIMATORS[name](max_epochs=1)
    original = type(net)._check_data

    def counting(self, X, y=None):
        if self is net:  # not RSKD's teachers
            calls.append(len(X))
        return original(self, X, y)

    monkeypatch.setattr(type(net), "_check_data", counting)
    net.fit(X, y)
    assert calls == [len(X)]  # on_train_begin checks; fit_loop's call is skipped
    module = net.module_
    net.partial_fit(X, y)
    assert calls == [len(X)] * 2 and net.module_ is module  # partial_fit keeps the network
    net.check_data(X[::2], y[::2])  # outside a fit, check_data always checks
    assert calls == [len(X)] * 2 + [len(X[::2])]
