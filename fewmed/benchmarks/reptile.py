"""Reptile initialization vs random init and supervised pre-training on RetinaMNIST (QWK).

Hu, Tomczak and Welling (MIDL 2018), Table 1, on data available offline. Source
domain: the other real medical sets (HAM10000's 7 diagnoses, BreastMNIST's 2 and
PneumoniaMNIST's 2 classes, all at 28 px, grayscale replicated to 3 channels) as
one pool of 11 classes; the paper used mini-ImageNet. Target: RetinaMNIST's 5
diabetic-retinopathy grades, keeping 10%, 25%, 50% and 100% of the official
training and validation data (seeded, stratified), fine-tuned with Adam (lr 1e-3,
batch 32), early stopping on the (reduced) validation split, BatchNorm removed.
Every seed learns its own initialization (weights, tasks, pre-training), so a
seed varies the initialization and the fine-tuning together; Reptile's
meta-training is early-stopped on validation tasks drawn from a held-out 15% of
the source images. Reported on the official test split: quadratic weighted
kappa, accuracy and macro one-vs-rest AUC, mean +- std over seeds, and Reptile
minus each baseline in QWK paired by seed (same subsample, same test set) with a
95% Student-t interval over the seeds. ``--remove-bn drop fold keep`` also
fine-tunes the Reptile initialization with the other BatchNorm treatments, paired
against the first.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from fewmed.benchmarks._common import (
    add_common_arguments,
    environment,
    format_table,
    output_dir,
    write_json,
)

METHODS = ("random", "supervised", "reptile")

PROFILES = {
    # 2 CPU cores: every seed learns its own initializations (about a minute a seed
    # and fraction on an idle machine)
    "quick": dict(
        n_filters=32,
        iterations=300,
        pretrain_epochs=6,
        max_epochs=40,
        patience=8,
        cap_per_class=400,
        per_seed_init=True,
    ),
    # closer to the paper (GPU or a long CPU run): every seed learns its own init
    "full": dict(
        n_filters=32,
        iterations=5000,
        pretrain_epochs=40,
        max_epochs=100,
        patience=10,
        cap_per_class=None,
        per_seed_init=True,
    ),
}


def add_arguments(parser) -> None:
    add_common_arguments(parser, default_out="fewmed_results/reptile")
    parser.add_argument(
        "--seeds", type=int, default=8, help="seeds per setting (paper: 4; paired tests: >= 8)"
    )
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0])
    parser.add_argument("--iterations", type=int, default=None, help="Reptile outer steps")
    parser.add_argument("--filters", type=int, default=None)
    parser.add_argument(
        "--remove-bn",
        nargs="+",
        default=["drop"],
        choices=["drop", "fold", "keep"],
        help="BatchNorm treatment at the transfer; the first for every method, the others "
        "for the Reptile initialization too (paired against the first)",
    )
    parser.add_argument(
        "--monitor", default="valid_loss", choices=["valid_loss", "valid_qwk", "valid_acc"]
    )
    parser.add_argument("--augment", action="store_true", help="augment while fine-tuning")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)


def _gray_to_rgb(images: np.ndarray) -> np.ndarray:
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def _cap(y: np.ndarray, cap: int | None, rng: np.random.Generator) -> np.ndarray:
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        keep.append(rng.choice(idx, min(cap, len(idx)), replace=False) if cap else idx)
    return np.sort(np.concatenate(keep))


def load_source(
    root: Path | None,
    *,
    cap_per_class: int | None,
    seed: int,
    verbose: int = 1,
    synthetic: bool = False,
):
    """The 11-class source pool (HAM10000 + BreastMNIST + PneumoniaMNIST), 28x28x3 uint8.

    ``root`` holds ``ham10000/`` and the MedMNIST files; None finds each set in
    ``FEWMED_DATA``, the cache or a download, else uses a synthetic stand-in.
    Returns ``X, y, synthetic`` (whether any set was synthetic).
    """
    from fewmed.datasets import load_ham10000_or_synthetic, load_medmnist_or_synthetic

    images, labels = [], []
    ham, fake = load_ham10000_or_synthetic(
        None if root is None else root / "ham10000", size=28, synthetic=synthetic, verbose=verbose
    )
    synthetic |= fake
    names = np.asarray(ham.target_names)
    images.append(ham.images)
    labels.append(np.char.add("ham10000:", names[ham.target].astype(str)))
    for flag in ("breastmnist", "pneumoniamnist"):
        data, fake = load_medmnist_or_synthetic(flag, root, synthetic=synthetic, verbose=verbose)
        synthetic |= fake
        for split in ("train", "val", "test"):
            b = data[split]
            images.append(_gray_to_rgb(b.images))
            labels.append(np.char.add(f"{flag}:", b.target.ravel().astype(str)))
    X, y = np.concatenate(images), np.concatenate(labels)
    keep = _cap(y, cap_per_class, np.random.default_rng(seed))
    return X[keep], y[keep], synthetic


def _subsample(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    if fraction >= 1:
        return np.arange(len(y))
    from sklearn.model_selection import train_test_split

    idx, _ = train_test_split(np.arange(len(y)), train_size=fraction, stratify=y, random_state=seed)
    return np.sort(idx)


def _scores(y_true, proba, classes) -> dict:
    from sklearn.metrics import accuracy_score, roc_auc_score

    from fewmed.metrics import quadratic_weighted_kappa

    pred = classes[proba.argmax(1)]
    return {
        "qwk": quadratic_weighted_kappa(y_true, pred),
        "accuracy": accuracy_score(y_true, pred),
        "auc": roc_auc_score(y_true, proba, multi_class="ovr", average="macro", labels=classes),
    }


def _ms(values) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.3f} +- {v.std():.3f}"


def run(args) -> dict:
    import torch

    from fewmed.datasets import load_medmnist_or_synthetic
    from fewmed.fewshot import ReptileInitializer

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2 if args.quick else 16)))
    prof = dict(PROFILES["quick" if args.quick else "full"])
    iters = args.iterations or prof["iterations"]
    filters = args.filters or prof["n_filters"]
    root = Path(args.data) if args.data else None
    project_data = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    if root is None and (project_data / "retinamnist.npz").is_file():
        root = project_data  # the project's data folder, when it is there
    t0 = time.perf_counter()
    Xs, ys, synthetic = load_source(
        root,
        cap_per_class=prof["cap_per_class"],
        seed=args.seed,
        verbose=0,
        synthetic=args.synthetic,
    )
    retina, fake = load_medmnist_or_synthetic(
        "retinamnist", root, synthetic=args.synthetic, verbose=0
    )
    synthetic |= fake
    if synthetic:
        print("NOTE: SYNTHETIC images stand in for missing data sets (see the warnings)")
    tr, va, te = retina.train, retina.val, retina.test
    counts = {str(k): int(v) for k, v in zip(*np.unique(ys, return_counts=True))}
    print(f"source: {len(ys)} images, {len(counts)} classes: {counts}", flush=True)
    print(
        f"target: RetinaMNIST train {len(tr.target)}, val {len(va.target)}, test {len(te.target)}"
    )
    rm = {"drop": "drop", "fold": "fold", "keep": False}
    common = dict(
        n_filters=filters,
        remove_batchnorm=rm[args.remove_bn[0]],
        fine_tune="full",
        max_epochs=prof["max_epochs"],
        patience=prof["patience"],
        monitor=args.monitor,
        device=args.device,
        verbose=args.verbose if args.verbose > 1 else 0,
    )
    specific = {
        "random": {},
        "supervised": dict(pretrain_epochs=prof["pretrain_epochs"], augment=False),
        "reptile": dict(
            n_iterations=iters,
            iterations_per_epoch=50,
            n_valid_tasks=10,
            n_query=5,
            meta_patience=3,
        ),
    }
    # Reptile's validation tasks: a stratified 15% of the source images
    from sklearn.model_selection import train_test_split

    i_fit, i_val = train_test_split(
        np.arange(len(ys)), test_size=0.15, stratify=ys, random_state=args.seed
    )
    seeds = [args.seed + s for s in range(args.seeds)]
    timings: dict[str, float] = {}
    inits: dict[tuple[str, int], ReptileInitializer] = {}

    def initializer(method: str, seed: int) -> ReptileInitializer:
        key = (method, seed if prof["per_seed_init"] else args.seed)
        if key not in inits:
            t = time.perf_counter()
            est = ReptileInitializer(init=method, random_state=key[1], **common, **specific[method])
            if method == "reptile":
                est.fit(Xs[i_fit], ys[i_fit], X_valid=Xs[i_val], y_valid=ys[i_val])
            else:
                est.fit(Xs, ys)
            inits[key] = est
            spent = timings[f"init_{method}_{key[1]}"] = time.perf_counter() - t
            if args.verbose:
                print(
                    f"  learned the {method} initialization in {spent:.0f}s",
                    flush=True,
                )
        return inits[key]

    # every method, then the Reptile initialization under the other BatchNorm treatments
    runs = [(m, m, args.remove_bn[0]) for m in args.methods]
    if "reptile" in args.methods:
        runs += [(f"reptile ({bn})", "reptile", bn) for bn in args.remove_bn[1:]]
    labels = [label for label, _, _ in runs]
    results: dict[str, dict[str, list[dict]]] = {label: {} for label in labels}
    for seed in seeds:  # seed-major: a seed's initializations are learned once
        for frac in args.fractions:
            itr, iva = _subsample(tr.target, frac, seed), _subsample(va.target, frac, seed + 1000)
            for label, method, bn in runs:
                est = initializer(method, seed)
                est.set_params(random_state=seed, augment=args.augment, remove_batchnorm=rm[bn])
                t = time.perf_counter()
                est.adapt(
                    tr.images[itr], tr.target[itr], X_val=va.images[iva], y_val=va.target[iva]
                )
                sc = _scores(te.target, est.predict_proba(te.images), est.classes_)
                sc["epochs"] = len(est.net_.history)
                sc["seconds"] = time.perf_counter() - t
                sc["seed"] = seed
                results[label].setdefault(str(frac), []).append(sc)
                if args.verbose:
                    print(
                        f"  {int(frac * 100):>3}% seed {seed} {label:<14} QWK {sc['qwk']:.3f} "
                        f"acc {sc['accuracy']:.3f} AUC {sc['auc']:.3f} ({sc['epochs']} epochs)",
                        flush=True,
                    )
    paired = _paired_table(results, args.fractions, labels, args.remove_bn[0])
    rows = []
    for frac in args.fractions:
        for method in labels:
            r = results[method][str(frac)]
            rows.append(
                [
                    f"{int(frac * 100)}%",
                    method,
                    _ms([x["qwk"] for x in r]),
                    _ms([x["accuracy"] for x in r]),
                    _ms([x["auc"] for x in r]),
                ]
            )
    table = format_table(rows, ["data", "init", "QWK", "accuracy", "AUC (macro OvR)"])
    elapsed = time.perf_counter() - t0
    print(
        f"\nRetinaMNIST test, mean +- std over {len(seeds)} seeds (initialization and fine-tuning)"
    )
    print(table)
    if paired["rows"]:
        print(
            f"\nQWK differences paired by seed, mean +- 95% CI (t over {len(seeds)} seeds; "
            "an interval that excludes 0 is beyond the seeds' spread)"
        )
        print(paired["table"])
    print(f"total {elapsed:.0f}s")
    out = output_dir(args.out)
    payload = {
        "benchmark": "reptile",
        "synthetic_data": synthetic,
        "profile": "quick" if args.quick else "full",
        "settings": {
            **prof,
            "iterations": iters,
            "n_filters": filters,
            "remove_bn": args.remove_bn,
            "reptile_meta_iterations": {
                str(k[1]): e.n_iter_ for k, e in inits.items() if k[0] == "reptile"
            },
            "monitor": args.monitor,
            "augment": args.augment,
            "seeds": seeds,
            "fractions": args.fractions,
            "source_counts": counts,
        },
        "results": results,
        "qwk_paired": paired["rows"],
        "summary": {
            m: {
                str(f): {
                    k: [
                        float(np.mean([x[k] for x in results[m][str(f)]])),
                        float(np.std([x[k] for x in results[m][str(f)]])),
                    ]
                    for k in ("qwk", "accuracy", "auc")
                }
                for f in args.fractions
            }
            for m in labels
        },
        "reptile_history": [h for (m, _), e in inits.items() if m == "reptile" for h in e.history_],
        "timings": timings,
        "seconds": elapsed,
        "environment": environment(),
        "table": table,
    }
    write_json(out / "reptile.json", payload)
    _plot(out / "reptile.png", results, labels, args.fractions)
    print(f"wrote {out / 'reptile.json'} and {out / 'reptile.png'}")
    return payload


def _paired_table(results, fractions, labels, first_bn) -> dict:
    """Reptile minus each baseline (and each BatchNorm treatment minus the first), QWK,
    paired by seed."""
    from fewmed.metrics import paired_confidence_interval

    pairs = [
        ("reptile", b) for b in ("random", "supervised") if b in labels and "reptile" in labels
    ]
    pairs += [(label, "reptile") for label in labels if label.startswith("reptile (")]
    rows, out = [], []
    for frac in fractions:
        for a, b in pairs:
            qa = [x["qwk"] for x in results[a][str(frac)]]
            qb = [x["qwk"] for x in results[b][str(frac)]]
            ci = paired_confidence_interval(qa, qb)
            name = f"{a} minus {b}" if b != "reptile" else f"{a} minus reptile ({first_bn})"
            rows.append(
                {
                    "fraction": frac,
                    "comparison": name,
                    "mean": ci.mean,
                    "ci95": ci.half_width,
                    "n": ci.n,
                    "per_seed": [float(x - y) for x, y in zip(qa, qb)],
                }
            )
            above = " *" if ci.n > 1 and ci.mean - ci.half_width > 0 else ""
            out.append(
                [f"{int(frac * 100)}%", name, f"{ci.mean:+.3f} +- {ci.half_width:.3f}{above}"]
            )
    return {"rows": rows, "table": format_table(out, ["data", "comparison", "QWK difference"])}


def _plot(path, results, methods, fractions) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - plotting is optional
        return
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    width = 0.8 / len(methods)
    for ax, key in zip(axes, ("qwk", "accuracy", "auc")):
        for i, m in enumerate(methods):
            vals = [[x[key] for x in results[m][str(f)]] for f in fractions]
            pos = np.arange(len(fractions)) + (i - (len(methods) - 1) / 2) * width
            ax.bar(
                pos,
                [np.mean(v) for v in vals],
                width,
                yerr=[np.std(v) for v in vals],
                label=m,
                capsize=3,
            )
        ax.set_xticks(np.arange(len(fractions)), [f"{int(f * 100)}% data" for f in fractions])
        ax.set_title(f"RetinaMNIST test {key}")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
