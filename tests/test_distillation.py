"""Tests of the distillation loss, Eq. 3's weights and their per-epoch update
(fewmed.longtail._distillation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fewmed import RelationalSubsetsDistiller
from fewmed.longtail._distillation import (
    binary_log_probs,
    per_class_scores,
    relational_kd_loss,
    relational_weights,
)

SMALL = dict(n_filters=8, max_epochs=2, batch_size=32, random_state=0)


def _bkl(p, q):
    return p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))


def test_kd_loss_matches_hand_computation_multiclass():
    # subsets {0, 1} and {2}, both teachers with an "other" output
    T, inf = 2.0, np.inf
    zs = torch.tensor([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 2])
    t0 = torch.log_softmax(torch.tensor([2.0, 0.0, 1.0], dtype=torch.float64) / T, 0)
    t1 = torch.log_softmax(torch.tensor([0.5, -0.5], dtype=torch.float64) / T, 0)
    teacher = torch.tensor(
        [[t0[0], t0[1], -inf, t0[2]], [-inf, -inf, t1[0], t1[1]]], dtype=torch.float64
    )
    w = torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64)
    loss, per_class = relational_kd_loss(zs, teacher, w, T, y=y)
    p = torch.softmax(zs / T, 1).numpy()
    q0, q1 = t0.exp().numpy(), t1.exp().numpy()
    kl0 = np.sum(q0 * np.log(q0 / p[0]))  # student's "other" for {0, 1} is class 2
    # grouped: class 2 vs the rest, the rest's probability taken at T = 1, then tempered
    g = np.array([0.0, np.log(np.exp(0.5) + np.exp(2.0))]) / T
    s1 = np.exp(g) / np.exp(g).sum()
    kl1 = np.sum(q1 * np.log(q1 / s1))
    np.testing.assert_allclose(per_class.numpy(), [T**2 * kl0 / 2, 0.0, T**2 * kl1 / 2])
    assert loss.item() == pytest.approx(T**2 / 2 * (kl0 + 0.25 * kl1), rel=1e-10)
    # a sample without a teacher contributes nothing; identical distributions give 0
    none = torch.full((1, 4), -inf, dtype=torch.float64)
    assert relational_kd_loss(zs[:1], none, w, T, y=y[:1])[0].item() == 0.0
    same = torch.cat([torch.log_softmax(zs[:1] / T, 1), torch.tensor([[-inf]])], 1)
    assert abs(relational_kd_loss(zs[:1], same, w, T, y=y[:1])[0].item()) < 1e-12
    # log(1 - q) for the binary (multi-label) form is computed without cancellation
    lp, lnot = binary_log_probs(torch.tensor([[50.0, 0.0, 0.0]]))
    assert torch.isfinite(lnot).all() and lnot[0, 0] < -49


@pytest.mark.parametrize("T", [1.0, 3.0, 10.0, 20.0])
def test_kd_minimiser_reproduces_teacher_other_probability_at_T1(T):
    # a teacher of subset {0, 1} (+ "other") and a 5-class student; minimise KD over
    # the student's logits numerically and read the student's probabilities at T = 1
    t_logits = torch.tensor([1.0, -0.5, 0.2], dtype=torch.float64)  # other: 0.158 at T = 1
    q1 = torch.softmax(t_logits, 0)
    t_lp = torch.log_softmax(t_logits / T, 0)
    inf = torch.inf
    teacher = torch.tensor([[t_lp[0], t_lp[1], -inf, -inf, -inf, t_lp[2]]], dtype=torch.float64)
    z = torch.tensor([[0.3, 0.1, 2.0, -1.0, 0.5]], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [z],
        lr=1,
        max_iter=500,
        tolerance_grad=1e-14,
        tolerance_change=1e-16,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = relational_kd_loss(
            z, teacher, torch.ones(5, dtype=torch.float64), T, y=torch.tensor([0])
        )[0]
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    p = torch.softmax(z.detach()[0], 0).numpy()  # the student at T = 1
    assert closure().item() < 1e-10
    np.testing.assert_allclose(p[2:].sum(), q1[2].item(), atol=1e-5)
    np.testing.assert_allclose(p[:2], q1[:2].numpy(), atol=1e-5)


def test_kd_loss_matches_hand_computation_multilabel():
    T = 3.0
    zs = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    zt = torch.tensor([[-1.0, 0.5]], dtype=torch.float64)
    teacher = torch.stack(binary_log_probs(zt, T, multilabel=True), dim=-1)
    loss, per_class = relational_kd_loss(zs, teacher, torch.ones(2), T, multilabel=True)
    sig = lambda z: 1 / (1 + np.exp(-z / T))  # noqa: E731
    kd = T**2 * _bkl(sig(zt.numpy().astype(float)), sig(zs.numpy().astype(float)))[0]
    np.testing.assert_allclose(per_class.numpy(), kd, rtol=1e-5)
    assert loss.item() == pytest.approx(kd.mean(), rel=1e-5)  # a per-element mean, like BCE
    # the gradient flows to the student only
    zs.requires_grad_(True)
    relational_kd_loss(zs, teacher, torch.ones(2), T, multilabel=True)[0].backward()
    assert zs.grad.abs().sum() > 0


def test_multilabel_kd_and_bce_balance_does_not_depend_on_the_number_of_labels():
    # repeating every label column twice changes neither BCE (a per-element mean) nor
    # KD: their balance per (sample, label) element does not grow with K
    T = 4.0
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    Y = (torch.rand(6, 3, generator=g) > 0.5).float()

    def losses(zs, zt, Y):
        teacher = torch.stack(binary_log_probs(zt, T, multilabel=True), dim=-1)
        w = torch.ones(zs.shape[1])
        kd = relational_kd_loss(zs, teacher, w, T, multilabel=True)[0]
        return kd.item(), torch.nn.functional.binary_cross_entropy_with_logits(zs, Y).item()

    kd, bce = losses(zs, zt, Y)
    kd2, bce2 = losses(zs.repeat(1, 2), zt.repeat(1, 2), Y.repeat(1, 2))
    assert kd2 == pytest.approx(kd, rel=1e-6) and bce2 == pytest.approx(bce, rel=1e-6)


def test_eq3_weights_in_each_case():
    delta = 0.6
    teacher = np.array([0.8, 0.8, 0.8, 0.8, 0.8, 0.0, np.nan, 0.5])
    student = np.array([0.3, 0.48, 0.64, 0.8, 0.95, 0.1, 0.5, np.nan])
    w = relational_weights(teacher, student, delta)
    assert w[0] == 1.0  # delta * Acc_T = 0.48 >= 0.3: full distillation
    assert w[1] == 1.0  # the boundary belongs to the first case
    assert w[2] == pytest.approx((0.8 - 0.64) / (0.8 * 0.4))  # the normalised gap: 0.5
    assert w[3] == 0.0  # student caught up with the teacher
    assert w[4] == 0.0  # student better: the formula's negative value clipped to 0
    assert w[5] == 0.0  # useless teacher (Acc_T = 0 < Acc_S)
    assert w[6] == 0.0 and w[7] == 1.0  # no teacher score / no student score
    assert relational_weights([0.8], [0.7], delta=1.0)[0] == 1.0
    with pytest.raises(ValueError, match="delta"):
        relational_weights([1.0], [1.0], delta=1.5)


def test_per_class_scores():
    y = np.eye(3, dtype=int)[[0, 0, 1, 2]]
    s = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    np.testing.assert_allclose(per_class_scores(y, s, "accuracy"), [0.5, 1.0, 1.0])
    np.testing.assert_allclose(per_class_scores(y, s, "ap"), [1.0, 1.0, 1.0])


def test_weights_are_recomputed_every_epoch_by_eq3(toy_long_tail):
    X, y = toy_long_tail
    clf = RelationalSubsetsDistiller(**{**SMALL, "max_epochs": 3}).fit(X, y)
    for e in range(1, 3):
        expected = relational_weights(
            clf.teacher_scores_, clf.student_scores_history_[e - 1], clf.delta
        )
        np.testing.assert_allclose(clf.kd_weights_history_[e], expected)
    plain = RelationalSubsetsDistiller(kd="plain", **SMALL).fit(X, y)
    np.testing.assert_array_equal(plain.kd_weights_history_, 1.0)
