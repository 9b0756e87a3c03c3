"""The command line, the DAML / inner-loop benchmarks (smoke) and the few-shot baselines."""

import json

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.frozen import FrozenEstimator
from sklearn.svm import LinearSVC

from fewmed.cli import main
from fewmed.datasets import make_synthetic_lesions
from fewmed.fewshot._baselines import (
    ConvFeatureExtractor,
    FeatureFewShotClassifier,
    FineTuneClassifier,
)


def test_datasets_command(capsys, tmp_path):
    assert main(["datasets", "--data-home", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ham10000" in out and "retinamnist" in out and str(tmp_path) in out


@pytest.mark.parametrize("name", ["daml", "cdc", "rskd", "reptile", "inner-loop"])
def test_benchmark_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["benchmark", name, "--help"])
    assert exc.value.code == 0
    with pytest.raises(SystemExit):
        main(["benchmark", "--help"])
    assert name in capsys.readouterr().out


def test_daml_benchmark_smoke_on_synthetic(capsys, tmp_path):
    args = [
        "benchmark",
        "daml",
        "--quick",
        "--synthetic",
        "--iterations",
        "4",
        "--n-tasks",
        "3",
        "--filters",
        "4",
        "--size",
        "12",
        "--shots",
        "1",
        "2",
        "--etas",
        "1",
        "5",
        "--out",
        str(tmp_path),
        "-v",
        "0",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out and "Table 1" in out and "Table 2" in out
    payload = json.loads((tmp_path / "daml.json").read_text())
    assert payload["synthetic_data"] is True
    assert payload["difficulty_start"] == 2  # half of --iterations, the paper's rule
    assert set(payload["table1"]) == {
        "Finetune + Aug",
        "ConvFeature + KNN",
        "ConvFeature + SVM",
        "MAML",
        "DAML (eta=5)",
        "ProtoNet",
    }
    # Table 1b: every method minus MAML, task by task on the same tasks
    assert "Table 1b" in out
    diffs, aucs = payload["table1_minus_maml"], payload["task_aucs"]
    assert set(diffs) == set(payload["table1"]) - {"MAML"}
    for k in ("1", "2"):
        a, b = np.array(aucs["DAML (eta=5)"][k]), np.array(aucs["MAML"][k])
        assert len(a) == len(b) == 3
        assert np.isclose(diffs["DAML (eta=5)"][k]["mean"], np.nanmean(a - b))
        assert np.isclose(payload["table1"]["MAML"][k]["mean"], np.nanmean(b))
    eta1, maml2 = payload["table2"]["eta = 1"], payload["table1"]["MAML"]["2"]
    assert np.isclose(eta1["vs_maml"]["mean"], eta1["mean"] - maml2["mean"])
    assert (tmp_path / "daml.png").stat().st_size > 1000


def test_daml_benchmark_difficulty_start_must_leave_both_phases(tmp_path):
    args = ["benchmark", "daml", "--quick", "--synthetic", "--iterations", "4", "--out"]
    with pytest.raises(ValueError, match="--difficulty-start must be between 1 and"):
        main(args + [str(tmp_path), "--difficulty-start", "4"])


def test_cdc_benchmark_smoke_with_another_backbone(capsys, tmp_path):
    args = ["benchmark", "cdc", "--quick", "--synthetic", "--methods", "CE", "CDC"]
    args += ["--module", "vgg", "--filters", "4", "--epochs", "1", "--size", "12"]
    args += ["--folds", "2", "--out", str(tmp_path), "-v", "0"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "vgg-4" in out and "Table 1" in out and "Table 2" not in out  # no focal methods
    payload = json.loads((tmp_path / "cdc.json").read_text())
    assert payload["module"] == "vgg" and payload["synthetic_data"] is True
    # CDC minus CE fold by fold (the same folds), with a t interval over the folds
    assert "CDC MF1 gain over CE" in out and "95% CI over folds" in out
    gain, res = payload["mf1_gain_cdc_minus"]["CE"], payload["results"]
    per_fold = [100 * (c["mf1"] - b["mf1"]) for c, b in zip(res["CDC"], res["CE"])]
    assert np.allclose(gain["per_fold"], per_fold) and np.isclose(gain["mean"], np.mean(per_fold))


def test_inner_loop_benchmark_smoke(capsys, tmp_path):
    args = [
        "benchmark",
        "inner-loop",
        "--repeats",
        "3",
        "--filters",
        "4",
        "--size",
        "12",
        "--inner-steps",
        "1",
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    payload = json.loads((tmp_path / "inner_loop.json").read_text())
    for name, r in payload["results"].items():
        # every implementation gives the same meta-gradient: "threads" the one-thread
        # loop's (the thread count of the convolutions moves second-order gradients)
        key = "max_grad_diff_one_thread" if "threads" in name else "max_grad_diff"
        assert r[key] < 1e-4, name
        # the per-round speed-up: the baseline's time over this one's in each round
        base = np.asarray(payload["times"]["higher loop (baseline)"])
        per_round = base / np.asarray(payload["times"][name])
        paired = r["paired_speedup"]
        assert np.allclose(paired["per_round"], per_round) and len(per_round) == 3
        assert np.isclose(paired["median"], np.median(per_round))
        assert paired["q25"] <= paired["median"] <= paired["q75"]
    out = capsys.readouterr().out
    assert "speed vs baseline" in out and "per round (IQR)" in out


@pytest.fixture(scope="module")
def lesions():
    d = make_synthetic_lesions(n_classes=5, n_per_class=24, size=16, random_state=1)
    return d.images, d.target


def test_feature_baselines_pipeline(lesions):
    X, y = lesions
    common = y < 3
    fx = ConvFeatureExtractor(n_filters=8, max_epochs=2, random_state=0)
    knn = FeatureFewShotClassifier(fx, n_query=5, n_score_tasks=5).fit(X[common], y[common])
    svm = FeatureFewShotClassifier(fx, LinearSVC(), n_query=5).fit(X[common], y[common])
    sup = np.flatnonzero(~common)
    sup = np.r_[sup[y[sup] == 3][:5], sup[y[sup] == 4][:5]]
    p = svm.adapt(X[sup], y[sup]).predict_proba(X[~common])
    assert p.shape == (int((~common).sum()), 2) and np.allclose(p.sum(1), 1)
    assert svm.pipeline_.steps[0][1].estimator is svm.features_  # frozen, not refitted
    assert 0 <= knn.score(X[~common], y[~common]) <= 1


def test_finetune_baseline_reproducible(lesions):
    X, y = lesions
    sup = np.r_[np.flatnonzero(y == 3)[:5], np.flatnonzero(y == 4)[:5]]
    kw = dict(n_filters=8, max_epochs=1, n_adapt_steps=3, random_state=0)
    a = FineTuneClassifier(**kw).fit(X[y < 3], y[y < 3]).adapt(X[sup], y[sup])
    b = FineTuneClassifier(**kw).fit(X[y < 3], y[y < 3]).adapt(X[sup], y[sup])
    np.testing.assert_allclose(a.predict_proba(X[:8]), b.predict_proba(X[:8]), atol=1e-6)
    assert list(a.classes_) == [3, 4]
    # adapting to another task in between changes nothing: the same support set gives the
    # same model, so a task's score does not depend on what was scored before it
    first = a.predict_proba(X[:8])
    other = np.r_[np.flatnonzero(y == 0)[:5], np.flatnonzero(y == 4)[:5]]
    a.adapt(X[other], y[other]).adapt(X[sup], y[sup])
    np.testing.assert_array_equal(a.predict_proba(X[:8]), first)
    kw = dict(n_tasks=4, n_shot=2, random_state=0)
    np.testing.assert_array_equal(a.episode_scores(X, y, **kw), a.episode_scores(X, y, **kw))


def test_finetune_reuses_a_fitted_extractor(lesions, monkeypatch):
    import fewmed.fewshot._baselines as baselines

    X, y = lesions
    common = y < 3
    sup = np.r_[np.flatnonzero(y == 3)[:5], np.flatnonzero(y == 4)[:5]]
    pre = dict(n_filters=8, max_epochs=1, random_state=0)
    own = FineTuneClassifier(**pre, n_adapt_steps=3).fit(X[common], y[common])
    fx = ConvFeatureExtractor(**pre).fit(X[common], y[common])
    before = {k: v.clone() for k, v in fx.backbone_.state_dict().items()}
    calls = []
    real = baselines._pretrain
    monkeypatch.setattr(baselines, "_pretrain", lambda *a: calls.append(1) or real(*a))
    shared = FineTuneClassifier(extractor=fx, n_adapt_steps=3, random_state=0)
    shared.fit(X[common], y[common])
    assert calls == [] and shared.backbone_ is fx.backbone_ and shared.history_ is fx.history_
    # the same pre-training settings give the same backbone: sharing changes no prediction
    p_own = own.adapt(X[sup], y[sup]).predict_proba(X[:8])
    p_shared = shared.adapt(X[sup], y[sup]).predict_proba(X[:8])
    np.testing.assert_allclose(p_shared, p_own, atol=1e-6)
    after = fx.backbone_.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # fine-tuning used a copy
    # clone: parameters unchanged, a fitted extractor becomes an unfitted copy that is fitted
    c = clone(shared)
    assert c.get_params()["extractor"] is not fx and not hasattr(c.extractor, "backbone_")
    c.fit(X[common], y[common])
    assert len(calls) == 1 and c.backbone_ is not fx.backbone_
    assert c.extractor.get_params() == fx.get_params() and not hasattr(c.extractor, "backbone_")
    # a FrozenEstimator keeps the fitted extractor through clone
    frozen = clone(FineTuneClassifier(extractor=FrozenEstimator(fx), n_adapt_steps=3))
    assert frozen.fit(X[common], y[common]).backbone_ is fx.backbone_ and len(calls) == 1


def test_finetune_extractor_errors(lesions):
    X, y = lesions
    fx = ConvFeatureExtractor(n_filters=8, max_epochs=1, random_state=0).fit(X, y)
    with pytest.raises(ValueError, match="shape"):
        FineTuneClassifier(extractor=fx).fit(X[:, :8, :8], y)
    with pytest.raises(TypeError, match="ConvFeatureExtractor"):
        FineTuneClassifier(extractor=LinearSVC()).fit(X, y)
