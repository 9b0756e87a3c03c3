"""DAMLClassifier: the meta-loss, the protocol, reproducibility and errors."""

import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score

from fewmed import DAMLClassifier
from fewmed.datasets import make_synthetic_lesions
from fewmed.fewshot._daml import difficulty_aware_loss
from fewmed.model_selection import LeaveClassesOut, TaskDistribution

FAST = dict(
    n_filters=8,
    n_iterations=6,
    difficulty_start=3,
    n_query=5,
    meta_batch_size=2,
    n_inner_steps=2,
    n_adapt_steps=3,
    n_score_tasks=5,
    verbose=0,
    random_state=0,
)


@pytest.fixture(scope="module")
def lesions():
    d = make_synthetic_lesions(n_classes=6, n_per_class=20, size=16, random_state=0)
    order = np.argsort(d.target, kind="stable")  # class c is rows 20c .. 20c + 19
    return d.images[order], d.target[order]


def test_meta_loss_hand_values():
    L = torch.tensor([0.5, 0.9, 1.3])
    eta, eps = 3.0, 0.1
    # below 1 - eps the paper's -L**eta log(1 - L); above, the log's tangent at 0.9:
    # -log(0.1) + (1.3 - 0.9) / 0.1
    expected = -(0.5**3) * np.log(0.5) - (0.9**3) * np.log(0.1) + 1.3**3 * (-np.log(0.1) + 4.0)
    assert np.isclose(difficulty_aware_loss(L, eta, eps).item(), expected, rtol=1e-6)
    # eta = 1, a single easy task: -L log(1 - L)
    assert np.isclose(difficulty_aware_loss(torch.tensor([0.2]), 1.0).item(), -0.2 * np.log(0.8))


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0, 3.0, 5.0, 7.0, 10.0])
def test_meta_loss_finite_at_and_above_one(eta):
    L = torch.tensor([0.0, 0.5, 0.9, 0.999, 1.0, 1.5, 3.0, 50.0], requires_grad=True)
    loss = difficulty_aware_loss(L, eta, eps=0.1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(L.grad).all()


@pytest.mark.parametrize("eta", [1.0, 3.0, 5.0, 7.0])
def test_task_weight_grows_with_the_task_loss(eta):
    """w(L) = dL_meta/dL, by central finite differences of the loss in float64 on a
    grid over [0, 3] (not by the formula), is finite and non-decreasing: no task
    weighs less than an easier one, also past 1 - eps where the paper's clamp
    cut the log's gradient."""
    grid = np.linspace(1e-3, 3.0, 1500)
    h = 1e-6

    def f(v):
        return difficulty_aware_loss(torch.tensor([v], dtype=torch.float64), eta).item()

    w = np.array([(f(v + h) - f(v - h)) / (2 * h) for v in grid])
    assert np.isfinite(w).all()
    assert (np.diff(w) >= -1e-6 * np.abs(w[1:])).all(), grid[1:][np.diff(w) < 0]
    # the literal clamp would drop the weight across 1 - eps (13.3 -> 7.6 at eta = 5)
    assert f(0.95) > f(0.9) > f(0.85)
    lo, hi = np.searchsorted(grid, 0.899), np.searchsorted(grid, 0.901)
    assert w[hi] >= w[lo]


def test_task_weights_in_history_match_the_meta_gradient(lesions):
    X, y = lesions
    clf = DAMLClassifier(**{**FAST, "meta_batch_size": 3}).fit(X, y)
    for h in clf.history_:
        L, w = np.array(h["task_losses"]), np.array(h["task_weights"])
        assert L.shape == w.shape == (3,) and np.isclose(L.mean(), h["task_loss"], rtol=1e-5)
        if not h["difficulty"]:
            np.testing.assert_allclose(w, 1 / 3, rtol=1e-6)  # MAML's mean
        else:  # a harder task never weighs less
            order = np.argsort(L)
            assert (np.diff(w[order]) >= -1e-6).all(), (L, w)
            eff = w.sum() ** 2 / (w**2).sum()
            assert np.isclose(eff, h["effective_tasks"], rtol=1e-5)


def test_lr_decays_once_at_the_switch_and_adapt_steps_follow_training(lesions):
    X, y = lesions
    clf = DAMLClassifier(**{**FAST, "n_adapt_steps": None}).fit(X, y)
    assert [h["lr"] for h in clf.history_] == pytest.approx([1e-3] * 3 + [1e-4] * 3)
    assert clf._n_adapt_steps() == FAST["n_inner_steps"]
    # a warm start that lengthens the run keeps the decay at the switch
    part = DAMLClassifier(**{**FAST, "n_iterations": 3}).fit(X, y)
    assert [h["lr"] for h in part.history_] == pytest.approx([1e-3] * 3)
    part.set_params(n_iterations=6, warm_start=True).fit(X, y)
    assert [h["lr"] for h in part.history_] == pytest.approx([1e-3] * 3 + [1e-4] * 3)
    # without a switch: once at half of the run; an int keeps its step
    never = DAMLClassifier(**{**FAST, "difficulty_start": None}).fit(X, y)
    assert [h["lr"] for h in never.history_] == pytest.approx([1e-3] * 3 + [1e-4] * 3)
    every = DAMLClassifier(**{**FAST, "lr_decay_step": 2}).fit(X, y)
    assert [h["lr"] for h in every.history_] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5])


def test_eta_zero_is_maml(lesions):
    X, y = lesions
    maml = DAMLClassifier(**{**FAST, "eta": 0.0}).fit(X, y)
    never = DAMLClassifier(**{**FAST, "difficulty_start": None}).fit(X, y)
    assert not any(h["difficulty"] for h in maml.history_)
    for a, b in zip(maml.history_, never.history_):
        assert np.isclose(a["meta_loss"], a["task_loss"])  # the mean query loss
        assert a["meta_loss"] == b["meta_loss"]
    daml = DAMLClassifier(**FAST).fit(X, y)
    assert [h["difficulty"] for h in daml.history_] == [False] * 3 + [True] * 3
    for h in daml.history_[3:]:  # Eq. 3 / T, not the mean query loss
        assert not np.isclose(h["meta_loss"], h["task_loss"])
    # MAML weighs its 2 tasks equally; the difficulty term concentrates on the harder one
    assert all(np.isclose(r["effective_tasks"], 2.0) for r in maml.history_)
    assert all(1.0 <= r["effective_tasks"] < 2.0 for r in daml.history_[3:])


def test_fit_adapt_predict_any_labels(lesions):
    X, y = lesions
    common = y < 4
    clf = DAMLClassifier(**FAST).fit(X[common], y[common])
    assert clf.n_iter_ == 6 and len(clf.history_) == 6
    names = np.array(["vasc", "df"])[(y[~common] == 5).astype(int)]
    sup = np.r_[0:5, 20:25]
    clf.adapt(X[~common][sup], names[sup])
    assert list(clf.classes_) == ["df", "vasc"]
    proba = clf.predict_proba(X[~common])
    assert proba.shape == (40, 2) and np.allclose(proba.sum(1), 1)
    assert set(clf.predict(X[~common])) <= {"df", "vasc"}
    assert clf.decision_function(X[~common]).shape == (40,)
    # a prediction does not depend on the other images in the batch
    np.testing.assert_allclose(clf.predict_proba(X[~common][:3]), proba[:3], atol=1e-6)
    assert 0 <= clf.score(X[~common], y[~common]) <= 1


def test_seed_reproduces_and_pickle_clone_round_trip(lesions, tmp_path):
    X, y = lesions
    a = DAMLClassifier(**FAST).fit(X, y)
    b = DAMLClassifier(**FAST).fit(X, y)
    assert [h["meta_loss"] for h in a.history_] == [h["meta_loss"] for h in b.history_]
    for p, q in zip(a.module_.parameters(), b.module_.parameters()):
        assert torch.equal(p, q)
    sup_y = np.r_[np.zeros(5), np.ones(5)]
    a.adapt(np.r_[X[:5], X[20:25]], sup_y)
    p = a.predict_proba(X[40:60])
    path = tmp_path / "daml.pkl"
    path.write_bytes(pickle.dumps(a))
    c = pickle.loads(path.read_bytes())
    np.testing.assert_array_equal(c.predict_proba(X[40:60]), p)
    d = clone(a).fit(X, y).adapt(np.r_[X[:5], X[20:25]], sup_y)
    np.testing.assert_array_equal(d.predict_proba(X[40:60]), p)


def test_threads_backend_fits_and_reproduces(lesions):
    # the tasks of a meta-batch run in parallel threads; a seed still reproduces
    X, y = lesions
    params = {**FAST, "backend": "threads", "meta_batch_size": 4}
    a = DAMLClassifier(**params).fit(X, y)
    b = DAMLClassifier(**params).fit(X, y)
    assert [h["meta_loss"] for h in a.history_] == [h["meta_loss"] for h in b.history_]
    assert np.isfinite([h["meta_loss"] for h in a.history_]).all()
    a.adapt(np.r_[X[:5], X[20:25]], np.r_[np.zeros(5), np.ones(5)])
    proba = a.predict_proba(X[40:60])
    assert proba.shape == (20, 2) and np.allclose(proba.sum(1), 1)


def test_warm_start_continues(lesions):
    X, y = lesions
    full = DAMLClassifier(**FAST).fit(X, y)
    part = DAMLClassifier(**{**FAST, "n_iterations": 3}).fit(X, y)
    part.set_params(n_iterations=6, warm_start=True).fit(X, y)
    assert [h["meta_loss"] for h in part.history_] == [h["meta_loss"] for h in full.history_]


def test_task_distribution_input(lesions):
    X, y = lesions
    clf = DAMLClassifier(**FAST).fit(TaskDistribution(X, y, n_shot=1, n_query=3))
    assert clf.task_shape_ == (2, 1, 3)


def test_errors(lesions):
    X, y = lesions
    clf = DAMLClassifier(**FAST)
    with pytest.raises(NotFittedError):
        clf.adapt(X[:10], y[:10])
    with pytest.raises(ValueError, match="n_shot \\+ n_query"):
        DAMLClassifier(**{**FAST, "n_shot": 30}).fit(X, y)
    with pytest.raises(ValueError, match="single class"):
        clf.fit(X[:20], y[:20])
    nan = X.astype(np.float32).transpose(0, 3, 1, 2) / 255
    nan[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        clf.fit(nan, y)
    clf.fit(X, y)
    with pytest.raises(NotFittedError, match="adapt"):
        clf.predict(X[:2])
    with pytest.raises(ValueError, match="single class"):
        clf.adapt(X[:5], y[:5])
    with pytest.raises(ValueError, match="n_way=2"):
        clf.adapt(X[::10], y[::10])
    clf.adapt(np.r_[X[:5], X[20:25]], [0] * 5 + [1] * 5)
    with pytest.raises(ValueError, match="resize to 16x16"):
        clf.predict(np.zeros((2, 20, 20, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="3 channel"):
        clf.predict(np.zeros((2, 16, 16), dtype=np.uint8))
    with pytest.raises(ValueError, match="eta"):
        DAMLClassifier(eta=-1).fit(X, y)


def test_divergence_is_reported(lesions):
    X, y = lesions
    with pytest.raises(FloatingPointError, match="diverged"):
        DAMLClassifier(**{**FAST, "inner_lr": 1e30}).fit(X, y)


def test_grid_search_and_cross_val_with_class_disjoint_splits(lesions):
    X, y = lesions
    cv = LeaveClassesOut(test_classes=[[4, 5], [0, 1]])
    scores = cross_val_score(DAMLClassifier(**FAST), X, y, cv=cv)
    assert scores.shape == (2,) and np.all((scores >= 0) & (scores <= 1))
    gs = GridSearchCV(DAMLClassifier(**FAST), {"eta": [1.0, 5.0]}, cv=cv).fit(X, y)
    assert gs.best_params_["eta"] in (1.0, 5.0)
    assert hasattr(gs.best_estimator_, "module_")


@pytest.mark.slow
def test_real_ham10000_rare_class_auc(ham28):
    """Short meta-training on the common classes; 5-shot AUC on the rare ones.

    MAML at this budget varies with the seed: random_state 0 / 1 / 2 measured
    0.608 / 0.662 / 0.701 on these 50 tasks (CI half-width ~0.034). The test asks
    for what holds for all of them: the whole 95% CI above 0.55, the mean above 0.6.
    """
    names = np.asarray(ham28.target_names)[ham28.target]
    common = np.isin(names, ["nv", "mel", "bkl", "bcc"])
    clf = DAMLClassifier(
        n_filters=32,
        n_iterations=300,
        difficulty_start=200,
        n_inner_steps=3,
        augment=False,
        random_state=0,
        verbose=0,
    )
    clf.fit(ham28.images[common], names[common])
    ci = clf.score_episodes(ham28.images[~common], names[~common], n_tasks=50, random_state=1)
    assert ci.low > 0.55 and ci.mean > 0.6, ci
