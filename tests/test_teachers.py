"""Tests of RSKD's teachers: their data, parameters, training and outputs
(fewmed.longtail._teachers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback

from fewmed import RelationalSubsetsDistiller
from fewmed.longtail._teachers import (
    ThreadSchedule,
    teacher_datasets,
    teacher_epochs,
    teacher_params,
    thread_plan,
)

SMALL = dict(n_filters=8, max_epochs=2, batch_size=32, random_state=0)


def test_teachers_trained_once_per_fit(toy_long_tail, monkeypatch):
    import fewmed.longtail._teachers as teachers_module

    fits = []
    fit_teacher = teachers_module.fit_teacher

    def counting(params, X, y, plan=((0.0, 1),)):
        fits.append(len(X))
        return fit_teacher(params, X, y, plan)

    monkeypatch.setattr(teachers_module, "fit_teacher", counting)
    X, y = toy_long_tail
    clf = RelationalSubsetsDistiller(subsets=[["nv"], ["mel", "bkl", "df"]], **SMALL)
    clf.fit(X, y)  # check_data runs in on_train_begin; the teachers are trained once
    assert len(fits) == 2
    first = dict(clf.teachers_)
    clf.fit(X, y)  # a refit trains new teachers, once
    assert len(fits) == 4 and all(clf.teachers_[k] is not first[k] for k in first)
    kept = dict(clf.teachers_)
    clf.check_data(X, y)
    clf.partial_fit(X, y)  # continues the student with the same teachers
    assert len(fits) == 4 and all(clf.teachers_[k] is kept[k] for k in kept)


def test_memory_reuses_teachers(toy_long_tail, tmp_path):
    X, y = toy_long_tail
    a = RelationalSubsetsDistiller(memory=str(tmp_path), temperature=3.0, **SMALL).fit(X, y)
    b = RelationalSubsetsDistiller(memory=str(tmp_path), temperature=20.0, **SMALL).fit(X, y)
    for name in a.teachers_:
        sa, sb = a.teachers_[name].module_.state_dict(), b.teachers_[name].module_.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    np.testing.assert_array_equal(a.teacher_scores_, b.teacher_scores_)


def test_thread_plan_gives_idle_cores_to_running_teachers():
    # HAM10000's shot subsets on 2 cores: the head teacher runs alone on one core
    # while medium then tail run on the other; from then on it has both cores
    plan = thread_plan([7511, 2880, 682], 2)
    assert plan[1] == [(0.0, 1)] and plan[2] == [(0.0, 1)]
    assert plan[0][0] == (0.0, 1) and plan[0][1][1] == 2
    assert plan[0][1][0] == pytest.approx((2880 + 682) / 7511)
    # one core: one thread throughout; equal jobs: nobody waits, nothing to give
    assert thread_plan([7511, 2880, 682], 1) == [[(0.0, 1)]] * 3
    assert thread_plan([5, 5, 5, 5], 2) == [[(0.0, 1)]] * 4
    # more cores than jobs: the cores are shared out, the longest job gets the rest
    assert thread_plan([10, 5], 5) == [[(0.0, 3), (0.75, 5)], [(0.0, 2)]]


def test_thread_schedule_switches_at_the_planned_batch(toy_long_tail):
    X, y = toy_long_tail  # 202 images, batch 32: 7 batches per epoch, 14 in all
    seen = []

    class Record(Callback):
        def on_batch_begin(self, net, training=False, **kwargs):
            if training:
                seen.append(torch.get_num_threads())

    before = torch.get_num_threads()
    schedule = ThreadSchedule([(0.0, 1), (0.5, 2)])
    RelationalSubsetsDistiller(
        kd=None, callbacks=[("threads", schedule), ("record", Record())], **SMALL
    ).fit(X, y)
    assert seen == [1] * 7 + [2] * 7
    assert torch.get_num_threads() == before


@pytest.mark.slow
def test_parallel_teachers_reproduce(toy_long_tail):
    # with n_jobs=2 the head teacher switches to two threads part-way (a fixed
    # point of the plan, not a race), so a seed reproduces exactly
    X, y = toy_long_tail
    one = RelationalSubsetsDistiller(n_jobs=2, **SMALL).fit(X, y)
    two = RelationalSubsetsDistiller(n_jobs=2, **SMALL).fit(X, y)
    np.testing.assert_array_equal(one.predict_proba(X), two.predict_proba(X))
    assert all("thread_schedule" not in dict(t.callbacks_) for t in one.teachers_.values())
    seq = RelationalSubsetsDistiller(n_jobs=1, **SMALL).fit(X, y)
    np.testing.assert_allclose(seq.predict_proba(X), one.predict_proba(X), atol=0.05)


# ---------------------------------------------------------------- data and parameters
def test_teacher_datasets_multilabel_and_other_share():
    Y = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0], [1, 0, 0]])
    subsets = {"ab": np.array([0, 1]), "c": np.array([2])}
    ab, c = teacher_datasets(subsets, Y, multilabel=True, n_classes=3, seed=0)
    # rows with a positive in {a, b} + "other" rows up to the largest class (3): all 2
    assert ab.multilabel and ab.n_outputs == 2 and ab.columns is None
    assert ab.rows.tolist() == [0, 1, 2, 5, 3, 4] and ab.y.tolist()[-2:] == [[0, 0], [0, 0]]
    # a one-label subset: a binary softmax teacher whose positive column is 1
    assert not c.multilabel and c.n_outputs == 2 and c.columns.tolist() == [1]
    assert len(c.rows) == 2 and c.y.tolist() == [1, 0]  # its image + one "other"
    again = teacher_datasets(subsets, Y, multilabel=True, n_classes=3, seed=0)
    assert [t.seed for t in again] == [ab.seed, c.seed]  # seeded
    with pytest.raises(ValueError, match="single class to learn"):
        kw = dict(multilabel=False, n_classes=2, seed=0)  # one class, no "other" images
        list(teacher_datasets({"a": np.array([0])}, np.array([0, 0, 0]), **kw))


def test_teacher_params_follow_the_student():
    student = RelationalSubsetsDistiller(
        "resnet",
        n_filters=16,
        lr=0.01,
        max_epochs=7,
        augment=True,
        loss="focal",
        class_weight="balanced",
        verbose=1,
        random_state=3,
        module__dropout=0.1,
        teacher={"max_epochs": 2},
    )
    params = teacher_params(student, seed=11, n_outputs=3)
    assert params == {
        "module": "resnet",
        "n_filters": 16,
        "optimizer": torch.optim.Adam,
        "lr": 0.01,
        "max_epochs": 2,  # from ``teacher``
        "batch_size": 64,
        "augment": True,
        "device": "cpu",
        "lr_schedule": None,
        "module__dropout": 0.1,
        "kd": None,
        "random_state": 11,
        "verbose": 0,
        "classes": [0, 1, 2],
    }  # no loss, class_weight, train_split or predict_nonlinearity: a plain teacher
    teacher = RelationalSubsetsDistiller(**params)
    assert teacher.loss == "ce" and teacher.class_weight is None
    # the budget (teacher_epochs) is used unless ``teacher`` sets max_epochs
    assert teacher_params(student, 11, 3, max_epochs=40)["max_epochs"] == 2
    student.set_params(teacher=None)
    assert teacher_params(student, 11, 3, max_epochs=40)["max_epochs"] == 40


def test_teacher_budget_in_steps():
    student = RelationalSubsetsDistiller(max_epochs=5, batch_size=64)
    # "student": the student's 5 x 100 steps, over the teacher's 10 batches per epoch
    assert teacher_epochs(student, 6400, 640) == 50
    assert teacher_epochs(student, 6400, 6400) == 5  # as large as the student: its epochs
    assert teacher_epochs(student, 6400, 650) == 46  # 11 batches per epoch, rounded up
    student.set_params(teacher_max_steps=30)
    assert teacher_epochs(student, 6400, 640) == 3
    student.set_params(teacher_max_steps=None)
    assert teacher_epochs(student, 6400, 640) == 5  # the student's max_epochs


def test_teachers_stop_early_on_their_validation_share_and_report_quality(toy_long_tail):
    X, y = toy_long_tail
    clf = RelationalSubsetsDistiller(
        teacher_max_steps=60, teacher_patience=2, validation_fraction=0.2, **SMALL
    ).fit(X, y)
    assert set(clf.teacher_quality_) == set(clf.subsets_)
    assert clf.history[0, "teacher_quality"] == clf.teacher_quality_
    assert "teacher_quality" not in clf.history[-1]
    for name, teacher in clf.teachers_.items():
        losses = teacher.history[:, "teacher_valid_loss"]
        best = int(np.argmin(losses)) + 1
        q = clf.teacher_quality_[name]
        assert q["best_epoch"] == best and q["loss"] == min(losses)
        assert q["epochs"] == len(losses) and len(losses) <= best + 2  # patience 2
        assert 0 <= q["acc"] <= 1 and 0 <= q["valid_ap_eq3"] <= 1
        assert not any(n == "teacher_valid" and cb.X is not None for n, cb in teacher.callbacks_)
    # at least one teacher ran more epochs than the student's 2 (its own budget)
    assert max(q["epochs"] for q in clf.teacher_quality_.values()) > 2
