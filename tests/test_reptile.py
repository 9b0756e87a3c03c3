"""ReptileInitializer: BatchNorm removal, fine-tuning with early stopping, QWK, errors."""

import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import cohen_kappa_score
from sklearn.model_selection import GridSearchCV
from skorch import NeuralNetClassifier

from fewmed import ReptileInitializer
from fewmed._finetune import SupervisedNet
from fewmed.datasets import load_medmnist
from fewmed.metrics import quadratic_weighted_kappa, qwk_scorer

FAST = dict(
    n_filters=8,
    n_way=3,
    n_shot=4,
    n_iterations=4,
    meta_batch_size=2,
    n_inner_steps=2,
    inner_batch_size=6,
    pretrain_epochs=2,
    max_epochs=3,
    patience=2,
    n_adapt_steps=3,
    n_query=4,
    n_score_tasks=3,
    verbose=0,
    random_state=0,
)


@pytest.fixture(scope="module")
def source_target(lesions):
    """The shared lesions split into source classes 0-2 and target classes 3-5."""
    X, y = lesions
    src = y < 3
    return (X[src], y[src]), (X[~src], y[~src])


@pytest.fixture(scope="module")
def fitted(source_target):
    (Xs, ys), _ = source_target
    return ReptileInitializer(**FAST).fit(Xs, ys)


def _bn_layers(module):
    from fewmed.nn import ReferenceBatchNorm2d

    kinds = (torch.nn.modules.batchnorm._BatchNorm, ReferenceBatchNorm2d)
    return [m for m in module.modules() if isinstance(m, kinds)]


# ----------------------------------------------------------------- BatchNorm removal
@pytest.mark.parametrize("mode", [True, "drop", "fold"])
def test_no_batchnorm_after_removal(fitted, source_target, mode):
    _, (Xt, yt) = source_target
    assert _bn_layers(fitted.module_)  # the initialization keeps its BatchNorm
    rep = clone(fitted).set_params(remove_batchnorm=mode).fit(*source_target[0])
    rep.adapt(Xt, yt)
    assert _bn_layers(rep.adapted_module_) == []
    assert _bn_layers(rep.init_module(4)) == []
    assert _bn_layers(rep.module_)  # untouched


def test_keep_batchnorm_when_asked(fitted, source_target):
    rep = clone(fitted).set_params(remove_batchnorm=False).fit(*source_target[0])
    assert _bn_layers(rep.init_module(2))


# ----------------------------------------------------------------- fine-tuning
def test_early_stopping_restores_best_weights(fitted, source_target):
    _, (Xt, yt) = source_target
    Xv, yv = Xt[::3], yt[::3]
    rep = clone(fitted).set_params(max_epochs=8, patience=3, lr=5e-3).fit(*source_target[0])
    rep.adapt(Xt, yt, X_val=Xv, y_val=yv)
    hist = rep.net_.history
    best = min(hist[:, "valid_loss"])
    # the restored weights give the best validation loss of the history
    proba = rep.predict_proba(Xv)
    codes = np.searchsorted(rep.classes_, yv)
    loss = -np.log(proba[np.arange(len(codes)), codes]).mean()
    assert loss == pytest.approx(best, rel=1e-4)
    assert rep.net_.callbacks_ and "early_stopping" in dict(rep.net_.callbacks_)


def test_validation_split_is_used_without_val_data(fitted, source_target):
    _, (Xt, yt) = source_target
    rep = clone(fitted).set_params(fine_tune="full").fit(*source_target[0]).adapt(Xt, yt)
    assert "valid_loss" in rep.net_.history[-1]
    assert rep.net_.history[-1, "valid_qwk"] is not None


def test_any_labels_and_few_shot(fitted, source_target):
    _, (Xt, yt) = source_target
    names = np.array(["mild", "none", "severe"])[yt - 3]
    rep = clone(fitted).fit(*source_target[0]).adapt(Xt, names)
    assert list(rep.classes_) == ["mild", "none", "severe"]
    assert set(rep.predict(Xt)) <= set(names)
    # a few images per class: a few-shot adaptation (no skorch net)
    few = np.concatenate([np.flatnonzero(names == c)[:3] for c in rep.classes_])
    rep.adapt(Xt[few], names[few])
    assert rep.net_ is None
    np.testing.assert_allclose(rep.predict_proba(Xt).sum(1), 1.0)
    assert 0.0 <= rep.score(Xt, yt) <= 1.0


@pytest.mark.parametrize("init", ["random", "supervised"])
def test_baselines(source_target, init):
    (Xs, ys), (Xt, yt) = source_target
    rep = ReptileInitializer(**{**FAST, "init": init}).fit(Xs, ys).adapt(Xt, yt)
    assert rep.predict(Xt).shape == yt.shape
    if init == "supervised":
        assert rep.module_.head.out_features == 3 and len(rep.history_) >= 1
    rep.fit(Xs, ys)  # a refit forgets the adaptation to the previous initialization
    assert not hasattr(rep, "adapted_module_") and not hasattr(rep, "classes_")


def test_export_to_plain_skorch(fitted, source_target):
    _, (Xt, yt) = source_target
    from fewmed._validation import check_images

    X = check_images(Xt)
    net = NeuralNetClassifier(
        fitted.init_module(3),
        criterion=torch.nn.CrossEntropyLoss,
        max_epochs=1,
        lr=1e-3,
        optimizer=torch.optim.Adam,
        train_split=None,
    )
    net.fit(X, (yt - 3).astype(np.int64))
    assert np.isfinite(net.history[-1, "train_loss"])
    assert net.predict_proba(X).shape == (len(X), 3)
    ref = fitted.module_.features[0].weight
    torch.testing.assert_close(fitted.init_module(3).features[0].weight, ref)


# ----------------------------------------------------------------- errors
def test_clear_errors(fitted, source_target):
    _, (Xt, yt) = source_target
    rep = clone(fitted).fit(*source_target[0])
    with pytest.raises(ValueError, match="single class"):
        rep.adapt(Xt[:20], np.zeros(20))
    with pytest.raises(ValueError, match="validation split is empty"):
        rep.set_params(fine_tune="full", validation_fraction=0.01).adapt(Xt, yt)
    rep.set_params(fine_tune="auto")
    with pytest.raises(ValueError, match=r"shape \(C, H, W\)"):
        rep.adapt(np.zeros((30, 20, 20, 3), dtype=np.uint8), np.arange(30) % 3)
    with pytest.raises(ValueError, match="X_val and y_val"):
        rep.adapt(Xt, yt, X_val=Xt)
    with pytest.raises(ValueError, match="not in y's classes"):
        rep.adapt(Xt, yt, X_val=Xt[:4], y_val=np.array([9, 3, 4, 5]))
    with pytest.raises(NotFittedError):
        ReptileInitializer().predict(Xt)
    with pytest.raises(NotFittedError, match="not adapted"):
        clone(fitted).fit(*source_target[0]).predict(Xt)
    with pytest.raises(ValueError, match="init"):
        ReptileInitializer(init="imagenet").fit(*source_target[0])


# ----------------------------------------------------------------- sklearn contract
def test_pickle_round_trip_and_reproducibility(fitted, source_target):
    _, (Xt, yt) = source_target
    a = clone(fitted).fit(*source_target[0]).adapt(Xt, yt)
    b = pickle.loads(pickle.dumps(a))
    np.testing.assert_array_equal(a.predict_proba(Xt), b.predict_proba(Xt))
    state = torch.random.get_rng_state()
    c = clone(fitted).fit(*source_target[0]).adapt(Xt, yt)
    assert torch.equal(state, torch.random.get_rng_state())  # no global RNG used
    np.testing.assert_array_equal(a.predict_proba(Xt), c.predict_proba(Xt))
    assert clone(fitted).get_params() == fitted.get_params()


# ----------------------------------------------------------------- QWK
def test_qwk_agrees_with_sklearn_and_scores_grid_search(fitted, source_target):
    rng = np.random.default_rng(0)
    t, p = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
    assert quadratic_weighted_kappa(t, p) == pytest.approx(
        cohen_kappa_score(t, p, weights="quadratic")
    )
    _, (Xt, yt) = source_target
    grid = GridSearchCV(
        SupervisedNet(fitted.init_module(3), max_epochs=1, random_state=0),
        {"lr": [1e-3, 3e-3]},
        scoring=qwk_scorer,
        cv=2,
    )
    grid.fit(Xt, yt)
    assert np.isfinite(grid.best_score_)


# ----------------------------------------------------------------- real data
def test_real_retinamnist_beats_majority(retina_npz):
    retina = load_medmnist(retina_npz)
    tr, va, te = retina.train, retina.val, retina.test
    rep = ReptileInitializer(
        init="random", n_filters=16, max_epochs=15, patience=4, verbose=0, random_state=0
    )
    rep.fit(tr.images, tr.target).adapt(tr.images, tr.target, X_val=va.images, y_val=va.target)
    qwk = quadratic_weighted_kappa(te.target, rep.predict(te.images))
    majority = np.full_like(te.target, np.bincount(tr.target).argmax())
    assert qwk > quadratic_weighted_kappa(te.target, majority) + 0.1


# ------------------------------------------------------ nothing untrained survives
@pytest.mark.parametrize("init", ["reptile", "supervised"])
@pytest.mark.parametrize("mode", [True, "drop", False])
def test_transfer_keeps_only_learned_weights_and_the_new_head(source_target, init, mode):
    """Every parameter of the transferred network is the learned one (same name, same
    values) or the new head; the convolutions' biases, which get no gradient under
    BatchNorm, start at zero and so are still zero: dropping BatchNorm exposes
    nothing random."""
    (Xs, ys), _ = source_target
    rep = ReptileInitializer(**{**FAST, "init": init, "remove_batchnorm": mode}).fit(Xs, ys)
    learned = dict(rep.module_.named_parameters())
    convs = [m for m in rep.module_.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.bias is None or not m.bias.any() for m in convs)
    new = rep.init_module(4, random_state=1)
    for name, p in new.named_parameters():
        if name.startswith("head."):
            assert p.shape[0] == 4
            continue
        assert name in learned, name
        assert torch.equal(p, learned[name]), name
    # the new head is the only parameter that differs from the learned network
    assert {n for n, _ in new.named_parameters() if n.startswith("head.")} == {
        "head.weight",
        "head.bias",
    }


def test_fold_keeps_the_learned_function(source_target):
    (Xs, ys), _ = source_target
    rep = ReptileInitializer(**{**FAST, "remove_batchnorm": "fold"}).fit(Xs, ys)
    new = rep.init_module(3, random_state=1).eval()
    ref = rep.module_.eval()
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():  # BatchNorm (running statistics) merged into the convolutions
        torch.testing.assert_close(new.forward_features(x), ref.forward_features(x))
