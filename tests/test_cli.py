"""The command line and the benchmarks (smoke tests on synthetic data)."""

import json

import numpy as np
import pytest

from fewmed.cli import main


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


def test_pooled_interval_includes_the_between_seed_spread():
    from scipy import stats

    from fewmed.benchmarks.daml import _pooled
    from fewmed.metrics import mean_confidence_interval

    rng = np.random.default_rng(0)
    noise = [rng.normal(0, 0.1, 50) for _ in range(3)]
    # seeds that agree: the interval of all 150 tasks together
    agree = [v - v.mean() + 0.02 for v in noise]
    r = _pooled(agree)
    naive = mean_confidence_interval(np.concatenate(agree))
    assert np.isclose(r["mean"], 0.02) and np.isclose(r["ci95"], naive.half_width, rtol=0.01)
    # seeds that disagree far beyond their tasks' noise: the t interval of the 3 seed means,
    # much wider than the pooled-tasks interval, which ignores training-run noise
    spread = [v + m for v, m in zip(noise, (-0.2, 0.0, 0.3))]
    r = _pooled(spread)
    means = [v.mean() for v in spread]
    expected = stats.t.ppf(0.975, 2) * np.std(means, ddof=1) / np.sqrt(3)
    assert np.isclose(r["ci95"], expected) and r["df"] == 2
    assert r["ci95"] > 5 * mean_confidence_interval(np.concatenate(spread)).half_width
    assert np.isclose(r["mean"], np.mean(np.concatenate(spread)))
    assert np.allclose(r["per_seed"], means)


@pytest.mark.slow
def test_daml_benchmark_pools_seeds(capsys, tmp_path):
    args = ["benchmark", "daml", "--quick", "--synthetic", "--iterations", "4", "--n-tasks", "4"]
    args += ["--filters", "4", "--size", "12", "--shots", "2", "--etas", "5", "--seeds", "2"]
    assert main(args + ["--out", str(tmp_path), "-v", "0"]) == 0
    out = capsys.readouterr().out
    assert "2 training seeds" in out and "between-seed spread" in out
    payload = json.loads((tmp_path / "daml.json").read_text())
    assert payload["seeds"] == [0, 1]
    aucs = payload["task_aucs"]
    d = np.array(aucs["DAML (eta=5)"]["2"]) - np.array(aucs["MAML"]["2"])
    assert len(d) == 8  # 2 seeds x 4 tasks, pooled
    pooled = payload["table1_minus_maml"]["DAML (eta=5)"]["2"]
    assert np.isclose(pooled["mean"], np.nanmean(d)) and pooled["n_seeds"] == 2
    assert np.allclose(pooled["per_seed"], [np.nanmean(d[:4]), np.nanmean(d[4:])])
    w = payload["weights_vs_loss"]
    assert len(w["loss"]) == len(w["weight"]) > 0
    assert (tmp_path / "daml_weights.png").stat().st_size > 1000


def test_daml_benchmark_difficulty_start_must_leave_both_phases(tmp_path, capsys):
    args = ["benchmark", "daml", "--quick", "--synthetic", "--iterations", "4", "--out"]
    assert main(args + [str(tmp_path), "--difficulty-start", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fewmed benchmark daml: error: --difficulty-start must be between 1 and")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["benchmark", "daml", "--data", "/no/such/folder"], "--data: /no/such/folder does not"),
        (["benchmark", "cdc", "--device", "gpu"], "argument --device: expected 'cpu'"),
        (["benchmark", "rskd", "--size", "0"], "argument --size: expected an integer >= 1"),
        (["benchmark", "daml", "--seed", "x"], "argument --seed: invalid int value"),
        (["benchmark", "daml", "--bogus"], "unrecognized arguments: --bogus"),
        (["benchmark", "nope"], "invalid choice: 'nope'"),
        (["datasets", "--data-home"], "expected one argument"),
    ],
)
def test_usage_errors_are_one_line_with_status_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert message in captured.err and "error:" in captured.err


def test_data_that_is_not_the_data_set_is_one_line_with_status_2(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not images")
    assert main(["benchmark", "cdc", "--quick", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fewmed benchmark cdc: error: ") and "is not a HAM10000 folder" in err
    assert err.count("\n") == 1


def test_the_command_prints_no_traceback(tmp_path):
    """The installed entry point, in a fresh interpreter: stderr is the one line."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "fewmed.cli", "benchmark", "daml", "--data", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert "is not a HAM10000 folder" in proc.stderr


def test_cdc_benchmark_smoke_with_another_backbone(capsys, tmp_path):
    args = ["benchmark", "cdc", "--quick", "--synthetic", "--methods", "CE", "CDC"]
    args += ["--module", "vgg", "--filters", "4", "--epochs", "1", "--size", "12"]
    args += ["--folds", "2", "--out", str(tmp_path), "-v", "0"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "vgg-4" in out and "Table 1" in out and "Table 2" not in out  # no focal methods
    payload = json.loads((tmp_path / "cdc.json").read_text())
    assert payload["module"] == "vgg" and payload["synthetic_data"] is True
    # every method minus CE fold by fold (the same folds), with a t interval over the folds
    assert "minus CE, fold by fold" in out and "95% CI" in out
    gain, res = payload["paired_differences"]["CE"]["CDC"]["mf1"], payload["results"]
    per_fold = [100 * (c["mf1"] - b["mf1"]) for c, b in zip(res["CDC"], res["CE"])]
    assert np.allclose(gain["per_fold"], per_fold) and np.isclose(gain["mean"], np.mean(per_fold))
    assert np.isfinite(gain["ci95"]) and "test_psnr" in res["CDC"][0]
    assert "train_psnr" in payload["curves_fold0"]["CDC"]


def test_cdc_benchmark_quick_profile_gives_the_decoder_a_spatial_map(capsys, tmp_path):
    args = ["benchmark", "cdc", "--quick", "--synthetic", "--methods", "CE", "CDC"]
    args += ["--filters", "4", "--epochs", "1", "--max-folds", "1", "--out", str(tmp_path)]
    assert (
        main(args + ["--decoder-kind", "deconv", "--optimizer", "sgd", "--schedule", "step"]) == 0
    )
    payload = json.loads((tmp_path / "cdc.json").read_text())
    c, h, w = payload["results"]["CDC"][0]["feature_shape"]
    assert payload["size"] == 28 and h >= 4 and w >= 4  # Conv4 pooling twice: 7 x 7
    assert payload["decoder_kind"] == "deconv" and payload["optimizer"] == "sgd"


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
