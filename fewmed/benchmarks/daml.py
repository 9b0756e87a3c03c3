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
from fewmed.metrics import mean_confidence_interval

COMMON = ["nv", "mel", "bkl", "bcc"]
RARE = ["akiec", "vasc", "df"]

PROFILES = {
    # 2 CPU cores, ~10 minutes a seed: the estimator's own inner loop (5 steps, the
    # same number to adapt) and augmentation; 360 iterations is what that fits
    "quick": dict(
        size=28,
        n_filters=32,
        iterations=360,
        inner_steps=5,
        augment=True,
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
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="training seeds (--seed, --seed + 1, ...); Tables 1b and 2 pool the paired "
        "differences over seeds and tasks",
    )


def _split(bunch):
    names = list(bunch.target_names)
    y = np.asarray(names)[bunch.target]
    common = np.isin(y, COMMON)
    rare = np.isin(y, RARE)
    return (bunch.images[common], y[common]), (bunch.images[rare], y[rare])


def run(args) -> dict:
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
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}.")
    filters = args.filters or prof["n_filters"]
    t_start = time.perf_counter()
    bunch, synthetic = load_ham10000_or_synthetic(
        args.data, size=size, synthetic=args.synthetic, random_state=args.seed, verbose=args.verbose
    )
    (Xc, yc), (Xr, yr) = _split(bunch)
    print(
        f"data: {'SYNTHETIC lesions' if synthetic else 'HAM10000'} at {size}px, "
        f"{len(yc)} common images ({', '.join(COMMON)}), {len(yr)} rare ({', '.join(RARE)})",
        flush=True,
    )
    setup = dict(prof=prof, size=size, n_tasks=n_tasks, iters=iters, switch=switch, filters=filters)
    seeds = [args.seed + i for i in range(args.seeds)]
    runs = []
    for seed in seeds:
        if len(seeds) > 1:
            print(f"\n== training seed {seed} ==", flush=True)
        runs.append(_one_seed(args, seed, setup, (Xc, yc), (Xr, yr)))
    shots = args.shots
    names = list(runs[0]["task_scores"])
    in_table1 = runs[0]["table1_names"]
    # pooled over seeds and tasks; each seed draws its own test tasks
    per_seed = {
        n: {
            k: [r["task_scores"][n][k] for r in runs]
            for k in shots
            if k in runs[0]["task_scores"][n]
        }
        for n in names
    }
    table1 = {n: {k: _pooled(per_seed[n][k]) for k in shots} for n in in_table1}
    vs_maml = {
        n: {k: _pooled([a - b for a, b in zip(per_seed[n][k], per_seed["MAML"][k])]) for k in shots}
        for n in names
        if n != "MAML" and n in in_table1
    }
    table2 = _table2(runs, max(shots))
    timings = {"total_s": time.perf_counter() - t_start, "per_seed": [r["timings"] for r in runs]}

    rows1 = [
        [name] + [f"{100 * r[k]['mean']:.1f} +- {100 * r[k]['ci95']:.1f}" for k in shots]
        for name, r in table1.items()
        if name in in_table1
    ]
    tab1 = format_table(rows1, ["method"] + [f"k={k}" for k in shots])
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
            f"{100 * r['share_past_knot']:.0f}%",
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
            "tasks with L > 1 - eps (2nd half)",
        ],
    )
    note = " [SYNTHETIC DATA]" if synthetic else ""
    over = f"{n_tasks} 2-way tasks of the rare classes"
    if len(seeds) > 1:
        over = f"{len(seeds)} training seeds x {n_tasks} 2-way tasks (pooled)"
    print(f"\nTable 1: mean AUC (%) +- 95% CI over {over}{note}")
    print(tab1)
    print(
        "\nTable 1b: each method minus MAML, AUC points, mean +- 95% CI of the paired "
        "per-task differences"
        + (
            " pooled over seeds; the interval includes the between-seed spread "
            "(one-way random effects over seeds)"
            if len(seeds) > 1
            else " (the same tasks for every method; one training seed: an interval that "
            "excludes 0 is beyond the test tasks' noise, not beyond training-run noise)"
        )
    )
    print(tab1b)
    if len(seeds) > 1:
        for name, r in vs_maml.items():
            per = ", ".join(f"{100 * v:+.1f}" for v in r[max(shots)]["per_seed"])
            print(f"  {name:<18} k={max(shots)} per seed: {per}")
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
        "inner_steps": prof["inner_steps"],
        "augment": prof["augment"],
        "difficulty_start": switch,
        "n_tasks": n_tasks,
        "shots": shots,
        "seeds": seeds,
        "table1": {n: table1[n] for n in in_table1},
        "table1_minus_maml": vs_maml,
        "table2": table2,
        "task_aucs": {
            n: {k: np.concatenate(v).tolist() for k, v in per_seed[n].items()} for n in names
        },
        "weights_vs_loss": runs[0]["weights_vs_loss"],
        "timings": timings,
        "curves": runs[0]["curves"],
        "environment": environment(),
    }
    write_json(out / "daml.json", payload)
    _plot(out / "daml.png", payload["table1"], table2, runs[0]["curves"], shots, note)
    _plot_weights(out / "daml_weights.png", runs, args.eta, note)
    print(f"wrote {out / 'daml.json'}, {out / 'daml.png'} and {out / 'daml_weights.png'}")
    return payload


def _one_seed(args, seed: int, setup: dict, common, rare) -> dict:
    """Every method trained with ``seed`` and scored on the test tasks drawn from it."""
    from sklearn.svm import LinearSVC

    from fewmed.fewshot import (
        ConvFeatureExtractor,
        DAMLClassifier,
        FeatureFewShotClassifier,
        FineTuneClassifier,
        ProtoNetClassifier,
    )

    (Xc, yc), (Xr, yr) = common, rare
    prof, filters, iters, switch = setup["prof"], setup["filters"], setup["iters"], setup["switch"]
    n_tasks, verbose = setup["n_tasks"], args.verbose
    timings: dict[str, float] = {}
    task_scores: dict[str, dict[int, np.ndarray]] = {}  # per-task AUCs, for paired differences
    table1_names: list[str] = []
    curves: dict[str, list] = {}

    def record(name, k, est, in_table1=True):
        # every method is scored on the same tasks (same arguments), so they can be
        # compared task by task
        scores = est.episode_scores(
            Xr, yr, n_tasks=n_tasks, n_shot=k, random_state=seed, n_jobs=args.n_jobs
        )
        task_scores.setdefault(name, {})[k] = scores
        if in_table1 and name not in table1_names:
            table1_names.append(name)
        if verbose:
            print(f"  {name:<18} k={k}: AUC {mean_confidence_interval(scores)}", flush=True)

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

    ablation: dict[str, dict] = {}
    weights = {}
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
                name = f"eta = {eta:g}"
                if eta != args.eta:
                    record(name, k_train, est, in_table1=False)
                else:
                    task_scores[name] = task_scores[f"DAML (eta={eta:g})"]
                ablation[name] = _training_stats(est)
            ablation["no difficulty term (MAML)"] = _training_stats(maml)
            task_scores["no difficulty term (MAML)"] = task_scores["MAML"]
            weights = {
                "loss": [
                    L for h in damls[args.eta].history_ if h["difficulty"] for L in h["task_losses"]
                ],
                "weight": [
                    w
                    for h in damls[args.eta].history_
                    if h["difficulty"]
                    for w in h["task_weights"]
                ],
                "eps": damls[args.eta].eps,
                "meta_batch_size": damls[args.eta].meta_batch_size,
            }
    timings["meta_training_and_test_s"] = time.perf_counter() - t
    return {
        "seed": seed,
        "task_scores": task_scores,
        "table1_names": table1_names,
        "ablation": ablation,
        "weights_vs_loss": weights,
        "curves": curves,
        "timings": timings,
    }


def _training_stats(est) -> dict:
    """Effective tasks per meta-update and the share of tasks past the tangent's knot,
    over the second half of training."""
    half = est.history_[len(est.history_) // 2 :]
    losses = np.concatenate([h["task_losses"] for h in half])
    return {
        "effective_tasks": float(np.mean([h["effective_tasks"] for h in half])),
        "share_past_knot": float(np.mean(losses > 1 - est.eps)),
    }


def _table2(runs: list[dict], k: int) -> dict:
    """The eta ablation at ``k``, pooled over the seeds, each row paired against MAML."""
    table2 = {}
    for name in runs[0]["ablation"]:
        scores = [r["task_scores"][name][k] for r in runs]
        maml = [r["task_scores"]["MAML"][k] for r in runs]
        row = _pooled(scores)
        row["vs_maml"] = _pooled([a - b for a, b in zip(scores, maml)])
        for stat in ("effective_tasks", "share_past_knot"):
            row[stat] = float(np.mean([r["ablation"][name][stat] for r in runs]))
        table2[name] = row
    return table2


def _pooled(per_seed: list[np.ndarray], confidence: float = 0.95) -> dict:
    """Mean over seeds and tasks with an interval that includes the between-seed spread.

    One training seed: the Student-t interval over its tasks
    (:func:`fewmed.metrics.mean_confidence_interval`). Several: one-way random
    effects, tasks nested in seeds. The grand mean's variance is the larger of
    ``var(seed means) / S`` (Student t with ``S - 1`` degrees of freedom: the
    seeds differ by more than their tasks' noise explains) and
    ``s_within**2 / (S T)`` (``S (T - 1)`` degrees of freedom: they do not), so
    the interval widens when training runs disagree.
    """
    from scipy import stats

    values = [np.asarray(v, dtype=float)[~np.isnan(v)] for v in per_seed]
    if len(values) == 1:
        ci = mean_confidence_interval(values[0], confidence)
        return {"mean": ci.mean, "ci95": ci.half_width, "n": ci.n, "n_seeds": 1}
    means = np.array([v.mean() for v in values])
    n_tasks = np.array([len(v) for v in values])
    grand = float(np.concatenate(values).mean())
    within = float(sum(((v - v.mean()) ** 2).sum() for v in values) / (n_tasks - 1).sum())
    between = float(means.var(ddof=1) / len(values))
    pooled_within = within / n_tasks.sum()
    if between >= pooled_within:
        var, df = between, len(values) - 1
    else:
        var, df = pooled_within, int((n_tasks - 1).sum())
    h = float(stats.t.ppf(0.5 + confidence / 2, df) * np.sqrt(var))
    return {
        "mean": grand,
        "ci95": h,
        "n": int(n_tasks.sum()),
        "n_seeds": len(values),
        "df": df,
        "per_seed": means.tolist(),
    }


def _signed(r: dict) -> str:
    return f"{100 * r['mean']:+.1f} +- {100 * r['ci95']:.1f}"


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


def _plot_weights(path, runs, eta, note) -> None:
    """Each task's weight ``dL_meta/dL_i`` against its loss after the switch (all seeds),
    over the curve of the loss used and of the paper's literal clamp."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from fewmed.fewshot._daml import difficulty_aware_loss

    fig, ax = plt.subplots(figsize=(6, 4.5))
    losses = np.concatenate([r["weights_vs_loss"].get("loss", []) for r in runs])
    weights = np.concatenate([r["weights_vs_loss"].get("weight", []) for r in runs])
    eps = runs[0]["weights_vs_loss"].get("eps", 0.1)
    top = max(1.5, float(np.quantile(losses, 0.995)) if len(losses) else 1.5)
    grid = torch.linspace(1e-3, top, 400, dtype=torch.float64, requires_grad=True)
    difficulty_aware_loss(grid, eta, eps).backward()
    g = grid.detach().numpy()
    # w divided by T (the meta-batch size): the history's weights are of Eq. 3 / T
    ax.scatter(losses, weights, s=4, alpha=0.3, label="tasks while meta-training")
    n_tasks = runs[0]["weights_vs_loss"].get("meta_batch_size", 4)
    ax.plot(g, grid.grad.numpy() / n_tasks, "k-", label="tangent past 1 - eps (fewmed)")
    literal = -(grid.detach() ** eta) * torch.log(torch.clamp(1 - grid.detach(), min=eps))
    lit = np.gradient(literal.numpy(), g) / n_tasks
    ax.plot(g, lit, "r--", label="literal max(eps, 1 - L) clamp")
    ax.axvline(1 - eps, color="grey", lw=0.8)
    ax.set_xlabel("task query loss L_i")
    ax.set_ylabel("weight dL_meta / dL_i")
    ax.set_title(f"DAML task weights, eta = {eta:g}{note}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
