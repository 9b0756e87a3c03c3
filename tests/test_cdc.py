"""Tests of CDCClassifier (fewmed.longtail._cdc).

The shared parts: test_longtail_base.py (the template), test_skorch.py (the skorch base).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.model_selection import (
    StratifiedGroupKFold,
)

from fewmed import CDCClassifier
from fewmed.metrics import macro_f1

SMALL = dict(n_filters=4, max_epochs=2, batch_size=16, random_state=0)


# ---------------------------------------------------------------- loss terms
def test_loss_terms_match_hand_computation(toy):
    X, y = toy
    clf = CDCClassifier(alpha=3.0, beta=0.5, class_weight="balanced", **SMALL).fit(X, y)
    codes = np.searchsorted(clf.classes_, y)
    counts = np.bincount(codes)
    w = len(y) / (3 * counts)  # "balanced" weights, classes_ order
    xb = torch.as_tensor(X[:10].transpose(0, 3, 1, 2) / 255.0, dtype=torch.float32)
    yb = torch.as_tensor(codes[:10])
    clf.module_.train(), clf.decoder_.train()
    torch.manual_seed(0)
    logits, recon, twin = clf.infer(xb)
    got = clf.get_loss((logits, recon, twin), yb, X=xb, training=True)
    wt = torch.tensor(w, dtype=torch.float32)
    lc = F.cross_entropy(logits, yb, weight=wt)
    per_image = ((recon - xb) ** 2).flatten(1).mean(1)
    lr = (wt[yb] * per_image).mean()
    lt = F.cross_entropy(twin, yb, weight=wt)
    assert torch.allclose(got, lc + 3.0 * lr + 0.5 * lt, rtol=1e-5)
    assert clf.last_terms_["train_loss_rec"] == pytest.approx(lr.item(), rel=1e-5)
    assert clf.last_terms_["train_loss_twin"] == pytest.approx(lt.item(), rel=1e-5)
    # the twin is the classifier applied to the reconstruction
    clf.module_.eval()
    assert torch.allclose(twin, twin)  # finite
    with torch.no_grad():
        assert clf.module_(recon).shape == twin.shape


def test_reconstruction_weights_per_class(toy):
    X, y = toy
    clf = CDCClassifier(reconstruction_weight={"df": 7.0}, **SMALL).fit(X, y)
    assert clf.reconstruction_criterion_.weight.tolist() == [7.0, 1.0, 1.0]  # df, mel, nv
    clf = CDCClassifier(**SMALL).fit(X, y)  # default "balanced": rarest class heaviest
    wr = clf.reconstruction_criterion_.weight
    assert wr[0] > wr[1] > wr[2]
    assert clf.criterion_.weight is None  # class_weight=None: plain CE


def test_alpha_beta_zero_equals_base_loss(toy):
    X, y = toy
    base = CDCClassifier(decoder=False, **SMALL).fit(X, y)
    cdc = CDCClassifier(alpha=0.0, beta=0.0, **SMALL).fit(X, y)
    np.testing.assert_allclose(cdc.predict_proba(X), base.predict_proba(X), atol=1e-6)
    np.testing.assert_allclose(
        cdc.history[:, "train_loss"], base.history[:, "train_loss"], rtol=1e-5
    )


def test_twin_shares_the_classifier_parameters(toy):
    X, y = toy
    clf = CDCClassifier(**SMALL).fit(X, y)
    opt_params = {id(p) for g in clf.optimizer_.param_groups for p in g["params"]}
    own = {id(p) for p in clf.module_.parameters()} | {id(p) for p in clf.decoder_.parameters()}
    assert opt_params == own  # no separate twin classifier anywhere
    # the twin loss alone sends gradients into the classifier head
    clf.module_.train(), clf.decoder_.train()
    xb = torch.as_tensor(X[:8].transpose(0, 3, 1, 2) / 255.0, dtype=torch.float32)
    clf.module_.zero_grad()
    _, recon, twin = clf.infer(xb)
    F.cross_entropy(twin, torch.zeros(8, dtype=torch.long)).backward()
    assert clf.module_.head.weight.grad.abs().sum() > 0
    # the twin pass does not move BatchNorm running statistics
    bn = next(m for m in clf.module_.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    with torch.no_grad():
        clf.infer(xb)  # real pass (updates) + twin pass (must not)
    after_real = bn.running_mean.clone()
    clf.twin = False
    bn.running_mean.copy_(before)
    with torch.no_grad():
        clf.infer(xb)
    assert torch.allclose(bn.running_mean, after_real)


def test_history_records_three_terms(toy):
    X, y = toy
    clf = CDCClassifier(**SMALL).fit(X, y)
    for key in ("train_loss", "train_loss_cls", "train_loss_rec", "train_loss_twin", "dur"):
        assert len(clf.history[:, key]) == 2
    cd = CDCClassifier(twin=False, **SMALL).fit(X, y)
    assert "train_loss_twin" not in cd.history[-1] and "train_loss_rec" in cd.history[-1]
    plain = CDCClassifier(decoder=False, **SMALL).fit(X, y)
    assert not hasattr(plain, "decoder_") and "train_loss_rec" not in plain.history[-1]


# ---------------------------------------------------------------- predictions
@pytest.mark.parametrize("loss", ["ce", "focal"])
def test_predict_proba_is_probability_for_any_loss(toy, loss):
    X, y = toy
    clf = CDCClassifier(loss=loss, class_weight="balanced", **SMALL).fit(X, y)
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 3) and np.all(proba >= 0)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert set(clf.predict(X)) <= set(y)


# ---------------------------------------------------------------- bad input
def test_bad_parameters_have_clear_errors(toy):
    X, y = toy
    for params, match in [
        ({"reconstruction": "huber"}, "'reconstruction' parameter"),
        ({"alpha": -1.0}, "'alpha' parameter"),
        ({"beta": float("nan")}, "'beta' parameter"),
        ({"reconstruction_weight": "bogus"}, "'reconstruction_weight' parameter"),
        ({"decoder_filters": 0}, "'decoder_filters' parameter"),
        ({"decoder_blocks": 0}, "'decoder_blocks' parameter"),
        ({"decoder_scale": 1.5}, "'decoder_scale' parameter"),
    ]:
        with pytest.raises(ValueError, match=match):
            CDCClassifier(**{**SMALL, **params}).fit(X, y)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda(toy):
    X, y = toy
    clf = CDCClassifier(device="cuda", **SMALL).fit(X, y)
    assert clf.predict_proba(X).shape == (len(X), 3)


# ---------------------------------------------------------------- scikit-learn checks
# in tests/test_common.py (every public estimator, one EXPECTED_FAILED dict)


# ---------------------------------------------------------------- real data
@pytest.mark.slow
@pytest.mark.realdata
def test_short_run_on_ham10000_beats_majority(ham28):
    X, y, groups = ham28.images, ham28.target, ham28.groups
    rng = np.random.default_rng(0)
    keep = np.concatenate(
        [rng.permutation(np.flatnonzero(y == k))[:300] for k in np.unique(y)]
    )  # <= 300 per class: 1,857 images, the rare classes whole
    X, y, groups = X[keep], y[keep], groups[keep]
    train, test = next(StratifiedGroupKFold(4, shuffle=True, random_state=0).split(X, y, groups))
    clf = CDCClassifier(n_filters=16, max_epochs=4, batch_size=64, random_state=0)
    clf.fit(X[train], y[train])
    mf1 = macro_f1(y[test], clf.predict(X[test]))
    majority = macro_f1(y[test], np.full(len(test), np.bincount(y[train]).argmax()))
    assert mf1 > majority + 0.1, (mf1, majority)


# ---------------------------------------------------------------- speed / benchmark plumbing
def test_channels_last_on_cpu_gives_the_same_predictions(toy, monkeypatch):
    import fewmed.longtail._cdc as cdc_module

    X, y = toy
    fast = CDCClassifier(**SMALL).fit(X, y)
    conv = next(m for m in fast.module_.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(cdc_module, "_CHANNELS_LAST_ON_CPU", False)
    plain = CDCClassifier(**SMALL).fit(X, y)
    np.testing.assert_allclose(fast.predict_proba(X), plain.predict_proba(X), atol=1e-3)


def test_training_only_cap():
    from fewmed.benchmarks.cdc import _cap_largest

    y = np.array([0] * 50 + [1] * 10 + [2] * 5)
    train = np.arange(65)
    kept = _cap_largest(train, y, 20, seed=0)
    assert np.bincount(y[kept]).tolist() == [20, 10, 5]
    assert set(kept) <= set(train)
    np.testing.assert_array_equal(_cap_largest(train, y, None, seed=0), train)


def test_lr_scheduler_callback_decays_the_learning_rate(toy):
    from skorch.callbacks import LRScheduler
    from torch.optim.lr_scheduler import CosineAnnealingLR

    X, y = toy
    sched = LRScheduler(CosineAnnealingLR, T_max=8, step_every="batch")
    clf = CDCClassifier(callbacks=[("lr_scheduler", sched)], **SMALL).fit(X, y)
    # the scheduler drives the optimizer that trains the network (built before callbacks start)
    assert clf.optimizer_.param_groups[0]["lr"] < 1e-6  # 2 epochs x 4 batches = T_max
    assert sched.lr_scheduler_.optimizer is clf.optimizer_
    narrow = CDCClassifier(decoder_filters=3, **SMALL).fit(X, y)
    convs = [m for m in narrow.decoder_.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [3, 3, 3]


# ---------------------------------------------------------------- the decoder at work
@pytest.fixture(scope="module")
def lesions28():
    from fewmed.datasets import make_synthetic_lesions

    d = make_synthetic_lesions(n_classes=3, n_per_class=40, size=28, random_state=0)
    return d.images, d.target


def test_decoder_reads_the_quick_profiles_spatial_map(lesions28):
    from fewmed.benchmarks.cdc import PROFILES

    X, y = lesions28
    prof = PROFILES["quick"]
    clf = CDCClassifier(
        module=prof["module"],
        module__n_pools=prof["n_pools"],
        n_filters=4,
        max_epochs=1,
        batch_size=40,
        random_state=0,
    )
    seen = []
    clf.initialize()
    clf.fit(X, y)  # builds the networks; hook the decoder and train one more epoch
    clf.decoder_.register_forward_hook(lambda mod, inp, out: seen.append(tuple(inp[0].shape)))
    clf.partial_fit(X, y)
    assert seen and all(s[1:] == clf.module_.feature_shape for s in seen)
    c, h, w = seen[0][1:]
    assert h >= 4 and w >= 4  # a 7 x 7 map at 28 px, not Conv4's usual 1 x 1


@pytest.mark.parametrize("kind", ["upsample", "deconv"])
def test_short_fit_lowers_the_reconstruction_error(lesions28, kind):
    X, y = lesions28
    clf = CDCClassifier(
        module__n_pools=2,
        n_filters=8,
        max_epochs=6,
        batch_size=30,
        lr=3e-3,
        decoder_kind=kind,
        random_state=0,
    )
    clf.fit(X, y)
    rec, psnr_curve = clf.history[:, "train_loss_rec"], clf.history[:, "train_psnr"]
    assert rec[-1] < 0.5 * rec[0] and psnr_curve[-1] > psnr_curve[0] + 3
    Xf = clf.get_dataset(X).X.numpy()
    err = np.mean((clf.reconstruct(X) - Xf) ** 2)
    assert err < np.var(Xf)  # better than the best constant image (the mean pixel)


def test_decoder_kaiming_init_and_the_papers_schedule(toy):
    from fewmed.nn import Decoder

    dec = Decoder((64, 7, 7), (3, 28, 28), n_filters=64)
    conv = next(m for m in dec.modules() if isinstance(m, torch.nn.Conv2d))
    fan_in = conv.in_channels * 9
    assert conv.weight.std().item() == pytest.approx(np.sqrt(2 / fan_in), rel=0.05)
    assert torch.all(conv.bias == 0)
    X, y = toy
    clf = CDCClassifier(
        optimizer=torch.optim.SGD,
        optimizer__momentum=0.9,
        lr=1e-3,
        lr_schedule="step",
        **{**SMALL, "max_epochs": 4},
    ).fit(X, y)
    lrs = [b["lr"] for epoch in clf.history for b in epoch["batches"]]
    per_epoch = len(lrs) // 4
    assert lrs[: 2 * per_epoch] == [1e-3] * (2 * per_epoch)  # / 10 at half of max_epochs
    assert lrs[2 * per_epoch :] == pytest.approx([1e-4] * (2 * per_epoch))
