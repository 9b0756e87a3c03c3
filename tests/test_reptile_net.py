"""Reptile's meta-training: the outer update, the net's outer step, epsilon's annealing."""

import numpy as np
import pytest
import torch

import fewmed.fewshot._reptile_net as reptile_net
from fewmed import ReptileInitializer
from fewmed.fewshot import reptile_update

META = dict(n_filters=8, n_way=3, n_shot=4, n_iterations=4, verbose=0, random_state=0)


@pytest.fixture(scope="module")
def source(lesions):
    X, y = lesions
    return X[y < 3], y[y < 3]


def test_reptile_update_equation():
    phi = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    tasks = [
        {"w": torch.tensor([3.0, 2.0]), "n": torch.tensor(5)},
        {"w": torch.tensor([1.0, 6.0]), "n": torch.tensor(5)},
    ]
    new = reptile_update(phi, tasks, 0.5)
    # mean(phi_i - phi) = [1, 2]
    torch.testing.assert_close(new["w"], torch.tensor([1.5, 3.0]))
    assert int(new["n"]) == 5
    with pytest.raises(ValueError, match="at least one task"):
        reptile_update(phi, [], 0.5)


def test_fit_outer_step_is_phi_plus_eps_mean(source, monkeypatch):
    """One meta-iteration of fit moves phi by epsilon * mean(phi_task - phi)."""
    Xs, ys = source
    params = {**META, "meta_step_size": 0.3, "meta_batch_size": 3}
    phi0 = ReptileInitializer(**{**params, "n_iterations": 0}).fit(Xs, ys).module_.state_dict()
    phi0 = {k: v.clone() for k, v in phi0.items()}
    recorded, calls = [], []
    original = reptile_net.train_steps

    def spy(model, *args, **kwargs):
        loss = original(model, *args, **kwargs)
        calls.append(kwargs)
        recorded.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return loss

    monkeypatch.setattr(reptile_net, "train_steps", spy)
    rep = ReptileInitializer(**{**params, "n_iterations": 1}).fit(Xs, ys)
    assert len(recorded) == 3
    # the inner loop: mini-batches of inner_batch_size, Adam with beta1 = inner_beta1
    assert all(c["batch_size"] == 10 and c["betas"] == (0.0, 0.999) for c in calls)
    for k, v in rep.module_.state_dict().items():
        if not torch.is_floating_point(v):
            continue
        expected = phi0[k] + 0.3 * torch.stack([s[k] - phi0[k] for s in recorded]).mean(0)
        torch.testing.assert_close(v, expected, rtol=1e-5, atol=1e-6)
    assert rep.history_[0]["epsilon"] == pytest.approx(0.3)
    assert type(rep.meta_net_) is reptile_net.ReptileNet


def test_epsilon_is_annealed_linearly(source):
    Xs, ys = source
    rep = ReptileInitializer(**{**META, "meta_step_size": 1.0, "meta_step_size_final": 0.2})
    rep.fit(Xs, ys)
    eps = [h["epsilon"] for h in rep.history_]
    np.testing.assert_allclose(eps, [1.0, 0.8, 0.6, 0.4])


def test_validation_tasks_train_on_the_support_set(source):
    Xs, ys = source
    rep = ReptileInitializer(**{**META, "n_valid_tasks": 2, "n_adapt_steps": 2, "n_query": 2})
    rep.fit(Xs, ys, X_valid=Xs, y_valid=ys)
    row = rep.meta_net_.history[-1]
    assert np.isfinite(row["valid_loss"]) and 0.0 <= row["valid_acc"] <= 1.0
