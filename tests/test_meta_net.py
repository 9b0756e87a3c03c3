"""fewmed.fewshot._meta_net: the skorch machinery of the meta-learners (epochs, callbacks)."""

import numpy as np
import pytest
from skorch.callbacks import Checkpoint, EarlyStopping

from fewmed import DAMLClassifier, ReptileInitializer
from fewmed.datasets import make_synthetic_lesions
from fewmed.fewshot._meta_net import linear_anneal, step_decay

FAST = dict(
    n_filters=8,
    n_query=5,
    meta_batch_size=2,
    n_inner_steps=2,
    n_adapt_steps=2,
    verbose=0,
    random_state=0,
)


@pytest.fixture(scope="module")
def lesions():
    d = make_synthetic_lesions(n_classes=6, n_per_class=20, size=16, random_state=0)
    return d.images, d.target


def test_schedules():
    assert [step_decay(2)(i) for i in range(5)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    assert step_decay(None)(10_000) == 1.0
    assert [linear_anneal(1.0, 0.0, 4)(i) for i in range(4)] == pytest.approx([1, 0.75, 0.5, 0.25])


def test_daml_history_epochs_and_lr_schedule(lesions):
    X, y = lesions
    clf = DAMLClassifier(
        **FAST, n_iterations=5, iterations_per_epoch=2, lr_decay_step=2, difficulty_start=None
    ).fit(X, y)
    hist = clf.meta_net_.history
    assert len(hist) == 3 and [len(b) for b in hist[:, "batches"]] == [2, 2, 1]
    assert [r["lr"] for r in clf.history_] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-5])
    assert [r["iteration"] for r in clf.history_] == list(range(5))
    # skorch's train_loss is the meta-loss
    batches = hist[0, "batches"]
    np.testing.assert_allclose(
        [b["train_loss"] for b in batches], [b["meta_loss"] for b in batches]
    )


def test_daml_validation_tasks_and_early_stopping(lesions):
    X, y = lesions
    seen, held = y < 4, y >= 4
    stop = EarlyStopping(monitor="valid_loss", patience=1, threshold=1e9, load_best=True)
    clf = DAMLClassifier(
        **FAST, n_iterations=20, iterations_per_epoch=2, n_valid_tasks=3, callbacks=[stop]
    )
    clf.fit(X[seen], y[seen], X_valid=X[held], y_valid=y[held])
    hist = clf.meta_net_.history
    assert len(hist) == 2  # no epoch beats the first by 1e9: stopped after `patience`
    assert all(0 <= a <= 1 for a in hist[:, "valid_acc"])
    assert np.all(np.isfinite(hist[:, "valid_loss"]))
    with pytest.raises(ValueError, match="X_valid and y_valid"):
        clf.fit(X[seen], y[seen], X_valid=X[held])


def test_checkpoint_callback_saves(lesions, tmp_path):
    X, y = lesions
    cp = Checkpoint(monitor=None, dirname=str(tmp_path))
    DAMLClassifier(**FAST, n_iterations=2, iterations_per_epoch=1, callbacks=[cp]).fit(X, y)
    assert (tmp_path / "params.pt").exists() and (tmp_path / "history.json").exists()


def test_reptile_on_the_same_machinery(lesions):
    X, y = lesions
    seen, held = y < 4, y >= 4
    rep = ReptileInitializer(
        **{**FAST, "n_way": 2, "n_shot": 3},
        n_iterations=4,
        iterations_per_epoch=2,
        meta_step_size=0.5,
        n_valid_tasks=2,
    ).fit(X[seen], y[seen], X_valid=X[held], y_valid=y[held])
    hist = rep.meta_net_.history
    assert len(hist) == 2 and np.all(np.isfinite(hist[:, "valid_loss"]))
    assert [r["epsilon"] for r in rep.history_] == pytest.approx([0.5, 0.375, 0.25, 0.125])
    assert rep.module_ is rep.meta_net_.module_
