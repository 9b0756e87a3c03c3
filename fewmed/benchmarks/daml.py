"""DAML on HAM10000's rare classes: the paper's Tables 1 and 2 (AUC +- 95% CI).

Meta-train on the common diseases (nv, mel, bkl, bcc), test on 2-way k-shot
tasks from the rare ones (akiec, vasc, df). Table 1 compares fine-tuning, conv
features + KNN / SVM, Prototypical Networks, MAML and DAML at k = 1, 3, 5; Table 2
the difficulty exponent eta = 1, 3, 5, 7 against no difficulty term at k = 5. MAML
and every DAML variant share the plain-MAML warm-up (``warm_start``), as in the
paper's schedule; fine-tuning and the conv-feature baselines share one pre-trained
backbone; ProtoNet is meta-trained for as many iterations as MAML. Every method is
scored on the same test tasks, so Table 1b (and a column of Table 2) gives each
method minus MAML with a paired 95% CI over those tasks.
"""

from __future__ import annotations

import copy
import time

import numpy as np

from fewmed.benchmarks._common import (
    add_common_arguments,
    environment,
    format_table,
    output_dir,
    write_json,
)
from fewmed.datasets import load_ham10000_or_synthetic
from fewmed.metrics import mean_confidence_interval, paired_confidence_interval

COMMON = ["nv", "mel", "bkl", "bcc"]
RARE = ["akiec", "vasc", "df"]

PROFILES = {
    # 2 CPU cores, < 10 minutes
    "quick": dict(
        size=28,
        n_filters=32,
        iterations=360,
        inner_steps=3,
        augment=False,
        pretrain_epochs=4,
        n_tasks=100,
        per_k_training=False,
    ),
    # the paper's configuration; for a GPU
    "full": dict(
        size=84,
        n_filters=64,
        iterations=3000,
        inner_steps=5,
        augment=True,
        pretrain_epochs=30,
        n_tasks=600,
        per_k_training=True,
    ),
}


def add_arguments(parser) -> None:
    add_common_arguments(parser, default_out="fewmed_results/daml")
    parser.add_argument(
        "--n-jobs",
        type=int,
        default=None,
        help="workers for the evaluation episodes (the active joblib backend; -1: all)",
    )
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--etas", type=float, nargs="+", default=[1, 3, 5, 7])
    parser.add_argument("--eta", type=float, default=5.0, help="DAML's eta in Table 1")
    parser.add_argument("--n-tasks", type=int, default=None, help="test tasks per cell")
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument(
        "--difficulty-start",
        type=int,
        default=None,
        help="meta-iteration at which DAML switches on the difficulty term "
        "(default: half of --iterations, as in the paper: 1500 of 3000)",
    )
    parser.add_argument("--filters", type=int, default=None)


def _split(bunch):
    names = list(bunch.target_names)
    y = np.asarray(names)[bunch.target]
    common = np.isin(y, COMMON)
    rare = np.isin(y, RARE)
    return (bunch.images[common], y[common]), (bunch.images[rare], y[rare])


def run(args) -> dict:
    from sklearn.svm import LinearSVC

    from fewmed.fewshot import (
        ConvFeatureExtractor,
        DAMLClassifier,
        FeatureFewShotClassifier,
        FineTuneClassifier,
        ProtoNetClassifier,
    )

    prof = dict(PROFILES["quick" if args.quick else "full"])
    size = args.size or prof["size"]
    n_tasks = args.n_tasks or prof["n_tasks"]
    iters = args.iterations or prof["iterations"]
    switch = iters // 2 if args.difficulty_start is None else args.difficulty_start
    if not 0 < switch < iters:
        raise ValueError(
            f"--difficulty-start must be between 1 and --iterations - 1 ({iters - 1}), got "
            f"{switch}: MAML and DAML share the plain-MAML iterations before it."
        )
    filters = args.filters or prof["n_filters"]
    seed, verbose = args.seed, args.verbose
    t_start = time.perf_counter()
    bunch, synthetic = load_ham10000_or_synthetic(
        args.data, size=size, synthetic=args.synthetic, random_state=seed, verbose=verbose
    )
    (Xc, yc), (Xr, yr) = _split(bunch)
    print(
        f"data: {'SYNTHETIC lesions' if synthetic else 'HAM10000'} at {size}px, "
        f"{len(yc)} common images ({', '.join(COMMON)}), {len(yr)} rare ({', '.join(RARE)})",
        flush=True,
    )
    timings: dict[str, float] = {}
    table1: dict[str, dict[int, dict]] = {}
    task_scores: dict[str, dict[int, np.ndarray]] = {}  # per-task AUCs, for paired differences
    curves: dict[str, list] = {}

    def episode_scores(name, k, est):
        # every method is scored on the same tasks (same arguments), so they can be
        # compared task by task
        scores = est.episode_scores(
            Xr, yr, n_tasks=n_tasks, n_shot=k, random_state=seed, n_jobs=args.n_jobs
        )
        task_scores.setdefault(name, {})[k] = scores
        return mean_confidence_interval(scores)

    def record(name, k, est):
        ci = episode_scores(name, k, est)
        table1.setdefault(name, {})[k] = {"mean": ci.mean, "ci95": ci.half_width, "n": ci.n}
        if verbose:
            print(f"  {name:<18} k={k}: AUC {ci}", flush=True)

    base = dict(
        n_filters=filters, max_epochs=prof["pretrain_epochs"], random_state=seed, device=args.device
    )
    t = time.perf_counter()
    fx = ConvFeatureExtractor(**base).fit(Xc, yc)  # one backbone for all three baselines
    ft = FineTuneClassifier(**base, extractor=fx).fit(Xc, yc)
    timings["pretraining_s"] = time.perf_counter() - t
    knn = FeatureFewShotClassifier(fx, random_state=seed).fit(Xc, yc)
    svm = FeatureFewShotClassifier(fx, LinearSVC(C=1.0), random_state=seed).fit(Xc, yc)
    for k in args.shots:
        for name, est in [
            ("Finetune + Aug", ft),
            ("ConvFeature + KNN", knn),
            ("ConvFeature + SVM", svm),
        ]:
            record(name, k, est)

    train_shots = args.shots if prof["per_k_training"] else [max(args.shots)]
    t = time.perf_counter()
    for k_train in train_shots:
        proto = ProtoNetClassifier(
            n_filters=filters,
            n_shot=k_train,
            n_iterations=iters,
            augment=prof["augment"],
            random_state=seed,
            device=args.device,
            verbose=verbose,
        ).fit(Xc, yc)
        for k in [k_train] if prof["per_k_training"] else args.shots:
            record("ProtoNet", k, proto)
        if k_train == max(args.shots):
            curves["ProtoNet"] = [h["task_loss"] for h in proto.history_]
    timings["protonet_s"] = time.perf_counter() - t

    def meta(k, eta, n_iter, warm=None):
        if warm is not None:
            est = copy.deepcopy(warm)
            est.set_params(eta=eta, n_iterations=n_iter, warm_start=True)
        else:
            est = DAMLClassifier(
                n_filters=filters,
                n_shot=k,
                eta=eta,
                difficulty_start=switch,
                n_iterations=n_iter,
                n_inner_steps=prof["inner_steps"],
                augment=prof["augment"],
                random_state=seed,
                device=args.device,
                verbose=verbose,
            )
        return est.fit(Xc, yc)

    table2: dict[str, dict] = {}
    t = time.perf_counter()
    for k_train in train_shots:
        trunk = meta(k_train, 0.0, switch)  # plain MAML up to the switch
        maml = meta(k_train, 0.0, iters, warm=trunk)
        etas = sorted(set(args.etas) | {args.eta}) if k_train == max(args.shots) else [args.eta]
        damls = {eta: meta(k_train, eta, iters, warm=trunk) for eta in etas}
        test_shots = [k_train] if prof["per_k_training"] else args.shots
        for k in test_shots:
            record("MAML", k, maml)
            record(f"DAML (eta={args.eta:g})", k, damls[args.eta])
        if k_train == max(args.shots):
            curves["MAML"] = [h["task_loss"] for h in maml.history_]
            for eta, est in damls.items():
                curves[f"DAML eta={eta:g}"] = [h["task_loss"] for h in est.history_]
                name, in_table1 = f"eta = {eta:g}", f"DAML (eta={eta:g})"
                if eta == args.eta and k_train in table1[in_table1]:  # scored for Table 1
                    row = dict(table1[in_table1][k_train])
                    scores = task_scores[in_table1][k_train]
                else:
                    ci = episode_scores(name, k_train, est)
                    row = {"mean": ci.mean, "ci95": ci.half_width}
                    scores = task_scores[name][k_train]
                row["effective_tasks"] = _effective_tasks(est)
                row["vs_maml"] = _paired(scores, task_scores["MAML"][k_train])
                table2[name] = row
            table2["no difficulty term (MAML)"] = {
                **table1["MAML"][k_train],
                "effective_tasks": _effective_tasks(maml),
                "vs_maml": {"mean": 0.0, "ci95": 0.0},
            }
    timings["meta_training_and_test_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_start

    shots = args.shots
    rows1 = [
        [name] + [f"{100 * r[k]['mean']:.1f} +- {100 * r[k]['ci95']:.1f}" for k in shots]
        for name, r in table1.items()
    ]
    tab1 = format_table(rows1, ["method"] + [f"k={k}" for k in shots])
    vs_maml = {
        name: {k: _paired(task_scores[name][k], task_scores["MAML"][k]) for k in shots}
        for name in table1
        if name != "MAML"
    }
    tab1b = format_table(
        [[name] + [_signed(r[k]) for k in shots] for name, r in vs_maml.items()],
        ["method"] + [f"k={k}" for k in shots],
    )
    rows2 = [
        [
            name,
            f"{100 * r['mean']:.1f} +- {100 * r['ci95']:.1f}",
            _signed(r["vs_maml"]) if name.startswith("eta") else "",
            f"{r['effective_tasks']:.2f}",
        ]
        for name, r in table2.items()
    ]
    tab2 = format_table(
        rows2,
        [
            "setting",
            f"AUC (k={max(shots)})",
            "minus MAML, paired",
            "effective tasks / meta-batch (2nd half)",
        ],
    )
    note = " [SYNTHETIC DATA]" if synthetic else ""
    print(f"\nTable 1: mean AUC (%) +- 95% CI over {n_tasks} 2-way tasks of the rare classes{note}")
    print(tab1)
    print(
        "\nTable 1b: each method minus MAML, AUC points, mean +- 95% CI of the per-task "
        "differences (the same tasks for every method; an interval that excludes 0 is a "
        "difference beyond the test tasks' noise, not beyond training-run noise)"
    )
    print(tab1b)
    print(f"\nTable 2: difficulty exponent{note}")
    print(tab2)
    print(f"\ntime: {timings['total_s']:.0f} s")
    out = output_dir(args.out)
    payload = {
        "benchmark": "daml",
        "profile": "quick" if args.quick else "full",
        "synthetic_data": synthetic,
        "size": size,
        "n_filters": filters,
        "iterations": iters,
        "difficulty_start": switch,
        "n_tasks": n_tasks,
        "shots": shots,
        "table1": table1,
        "table1_minus_maml": vs_maml,
        "table2": table2,
        "task_aucs": {
            name: {k: [float(v) for v in sc] for k, sc in r.items()}
            for name, r in task_scores.items()
        },
        "timings": timings,
        "curves": curves,
        "environment": environment(),
    }
    write_json(out / "daml.json", payload)
    _plot(out / "daml.png", table1, table2, curves, shots, note)
    print(f"wrote {out / 'daml.json'} and {out / 'daml.png'}")
    return payload


def _paired(a, b) -> dict:
    ci = paired_confidence_interval(a, b)
    return {"mean": ci.mean, "ci95": ci.half_width, "n": ci.n}


def _signed(r: dict) -> str:
    return f"{100 * r['mean']:+.1f} +- {100 * r['ci95']:.1f}"


def _effective_tasks(est) -> float:
    """Mean effective number of tasks per meta-update over the second half of training."""
    half = est.history_[len(est.history_) // 2 :]
    return float(np.mean([h["effective_tasks"] for h in half]))


def _plot(path, table1, table2, curves, shots, note) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    width = 0.8 / max(1, len(table1))
    for i, (name, r) in enumerate(table1.items()):
        xs = np.arange(len(shots)) + i * width
        axes[0].bar(
            xs,
            [100 * r[k]["mean"] for k in shots],
            width,
            yerr=[100 * r[k]["ci95"] for k in shots],
            label=name,
            capsize=2,
        )
    axes[0].set_xticks(np.arange(len(shots)) + 0.4 - width / 2, [f"k={k}" for k in shots])
    axes[0].set_ylabel("AUC (%)")
    axes[0].set_ylim(40, 100)
    axes[0].set_title("Table 1: rare-class 2-way tasks" + note)
    axes[0].legend(fontsize=7)
    names = list(table2)
    axes[1].bar(
        range(len(names)),
        [100 * table2[n]["mean"] for n in names],
        yerr=[100 * table2[n]["ci95"] for n in names],
        capsize=3,
    )
    axes[1].set_xticks(range(len(names)), names, rotation=20, fontsize=7)
    axes[1].set_ylim(40, 100)
    axes[1].set_title(f"Table 2: eta ablation (k={max(shots)})")
    for name, c in curves.items():
        c = np.asarray(c)
        w = max(1, len(c) // 40)
        axes[2].plot(np.convolve(c, np.ones(w) / w, mode="valid"), label=name)
    axes[2].set_xlabel("meta-iteration")
    axes[2].set_ylabel("query loss (moving mean)")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
