"""Tests of fewmed.losses: each loss against a hand computation on tiny tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight

from fewmed.losses import (
    BinaryFocalLoss,
    FocalLoss,
    ReconstructionLoss,
    class_weights,
    focal_loss,
    make_classification_loss,
    reconstruction_loss,
)

LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [-1.0, 1.0, 3.0], [0.0, 0.0, 0.0]])
TARGET = torch.tensor([0, 1, 2, 1])


# ---------------------------------------------------------------- class weights
def test_balanced_matches_sklearn():
    y = np.array([0] * 6 + [1] * 3 + [2] * 1)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=y)
    np.testing.assert_allclose(class_weights(y), expected, rtol=1e-6)


def test_inverse_and_sqrt_inverse_average_one():
    y = ["a"] * 8 + ["b"] * 2
    w = class_weights(y, "inverse")
    np.testing.assert_allclose(w, [0.4, 1.6], rtol=1e-6)  # 1/8 : 1/2, mean 1
    ws = class_weights(y, "sqrt_inverse")
    assert ws.mean() == pytest.approx(1.0) and ws[1] / ws[0] == pytest.approx(2.0)


def test_dict_array_none_and_absent_class():
    y = ["nv", "nv", "df"]
    np.testing.assert_array_equal(class_weights(y, {"df": 5.0}), [5.0, 1.0])
    np.testing.assert_array_equal(class_weights(y, [2.0, 3.0]), [2.0, 3.0])
    np.testing.assert_array_equal(class_weights(y, None), [1.0, 1.0])
    w = class_weights([0, 0, 1], "balanced", classes=[0, 1, 2])  # class 2 absent → 1
    assert w[2] == 1.0 and w[1] > w[0]


def test_multilabel_counts_positives():
    Y = np.array([[1, 0], [1, 0], [1, 1], [1, 0]])
    np.testing.assert_allclose(class_weights(Y), [4 / (2 * 4), 4 / (2 * 1)])


@pytest.mark.parametrize(
    "option, match",
    [("bogus", "class_weight must be one of"), ([1.0], "1 entries"), ([1.0, -1.0], ">= 0")],
)
def test_class_weights_errors(option, match):
    with pytest.raises(ValueError, match=match):
        class_weights([0, 1, 1], option)
    with pytest.raises(ValueError, match="not among the classes"):
        class_weights([0, 1], {7: 2.0})


# ---------------------------------------------------------------- focal loss
def _hand_focal(logits, target, gamma, weight=None):
    total, norm = 0.0, 0.0
    for row, t in zip(logits.tolist(), target.tolist()):
        z = sum(math.exp(v) for v in row)
        p = math.exp(row[t]) / z
        w = 1.0 if weight is None else weight[t]
        total += -w * (1 - p) ** gamma * math.log(p)
        norm += w
    return total / norm


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("weight", [None, [1.0, 2.0, 4.0]])
def test_focal_matches_hand_computation(gamma, weight):
    got = FocalLoss(gamma=gamma, weight=weight)(LOGITS, TARGET)
    assert float(got) == pytest.approx(_hand_focal(LOGITS, TARGET, gamma, weight), rel=1e-5)


def test_focal_gamma0_equals_cross_entropy():
    w = torch.tensor([1.0, 2.0, 4.0])
    assert torch.allclose(FocalLoss(0.0)(LOGITS, TARGET), F.cross_entropy(LOGITS, TARGET))
    assert torch.allclose(
        FocalLoss(0.0, weight=w)(LOGITS, TARGET), F.cross_entropy(LOGITS, TARGET, weight=w)
    )


def test_focal_reductions_and_weights_per_class():
    none = focal_loss(LOGITS, TARGET, gamma=2.0, reduction="none")
    assert none.shape == (4,)
    assert float(focal_loss(LOGITS, TARGET, 2.0, reduction="sum")) == pytest.approx(
        float(none.sum())
    )
    # weighting class 1 only changes the samples of class 1
    w = torch.tensor([1.0, 3.0, 1.0])
    weighted = focal_loss(LOGITS, TARGET, 2.0, weight=w, reduction="none")
    ratio = (weighted / none).tolist()
    assert ratio == pytest.approx([1.0, 3.0, 1.0, 3.0])


def test_binary_focal_hand_and_bce():
    x = torch.tensor([[1.0, -2.0], [0.0, 3.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert torch.allclose(BinaryFocalLoss(0.0)(x, t), F.binary_cross_entropy_with_logits(x, t))
    p = torch.sigmoid(x)
    pt = torch.where(t == 1, p, 1 - p)
    hand = (-((1 - pt) ** 2) * torch.log(pt) * torch.tensor([2.0, 1.0])).mean()
    assert torch.allclose(BinaryFocalLoss(2.0, weight=[2.0, 1.0])(x, t), hand, atol=1e-6)


def test_make_classification_loss():
    assert isinstance(make_classification_loss("ce"), torch.nn.CrossEntropyLoss)
    assert isinstance(make_classification_loss("focal"), FocalLoss)
    assert isinstance(make_classification_loss("focal", multilabel=True), BinaryFocalLoss)
    assert isinstance(make_classification_loss("bce"), torch.nn.BCEWithLogitsLoss)
    wce = make_classification_loss("ce", weight=[1.0, 2.0, 4.0])
    assert torch.allclose(wce.weight, torch.tensor([1.0, 2.0, 4.0]))
    with pytest.raises(ValueError, match="loss must be one of"):
        make_classification_loss("hinge")
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(gamma=-1)


# ---------------------------------------------------------------- reconstruction
def test_reconstruction_hand_computation_l2_l1():
    target = torch.zeros(3, 1, 2, 2)
    recon = torch.stack(
        [torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 2.0), torch.full((1, 2, 2), 3.0)]
    )
    y = torch.tensor([0, 1, 1])
    w = torch.tensor([2.0, 0.5])
    # per-image L2 errors 1, 4, 9; Lr = (2*1 + 0.5*4 + 0.5*9) / 3
    assert float(reconstruction_loss(recon, target, y, w)) == pytest.approx((2 + 2 + 4.5) / 3)
    assert float(reconstruction_loss(recon, target, y, w, kind="l1")) == pytest.approx(
        (2 * 1 + 0.5 * 2 + 0.5 * 3) / 3
    )
    # no weights: plain MSE
    assert torch.allclose(reconstruction_loss(recon, target), F.mse_loss(recon, target))
    per = ReconstructionLoss("l2", weight=[2.0, 0.5], reduction="none")(recon, target, y)
    assert per.tolist() == pytest.approx([2.0, 2.0, 4.5])


def test_reconstruction_multilabel_and_errors():
    target, recon = torch.zeros(2, 1, 1, 1), torch.ones(2, 1, 1, 1)
    Y = torch.tensor([[1, 1], [0, 0]])
    got = reconstruction_loss(recon, target, Y, torch.tensor([1.0, 3.0]), reduction="none")
    assert got.tolist() == pytest.approx([2.0, 1.0])  # mean of positive weights; none → 1
    with pytest.raises(ValueError, match="'l2' or 'l1'"):
        ReconstructionLoss("huber")
    with pytest.raises(ValueError, match="shape"):
        reconstruction_loss(recon, torch.zeros(2, 1, 2, 2))
    with pytest.raises(ValueError, match="needs y"):
        reconstruction_loss(recon, target, None, torch.ones(2))
