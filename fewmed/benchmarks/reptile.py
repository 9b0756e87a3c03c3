"""Reptile initialization vs random init and supervised pre-training on RetinaMNIST (QWK).

Hu, Tomczak and Welling (MIDL 2018), Table 1, on data available offline. Source
domain: the other real medical sets (HAM10000's 7 diagnoses, BreastMNIST's 2 and
PneumoniaMNIST's 2 classes, all at 28 px, grayscale replicated to 3 channels) as
one pool of 11 classes; the paper used mini-ImageNet. Target: RetinaMNIST's 5
diabetic-retinopathy grades, keeping 50% and 100% of the official training and
validation data (seeded, stratified), fine-tuned with Adam (lr 1e-3, batch 32),
early stopping on the (reduced) validation split, BatchNorm removed. Reported on
the official test split: quadratic weighted kappa, accuracy and macro one-vs-rest
AUC, mean +- std over seeds.
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
    # 2 CPU cores, < 10 minutes: one initialization per method, 4 fine-tuning seeds
    "quick": dict(
        n_filters=32,
        iterations=400,
        pretrain_epochs=8,
        max_epochs=40,
        patience=8,
        cap_per_class=600,
        per_seed_init=False,
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
    parser.add_argument("--seeds", type=int, default=4, help="seeds per setting (paper: 4)")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.5, 1.0])
    parser.add_argument("--iterations", type=int, default=None, help="Reptile outer steps")
    parser.add_argument("--filters", type=int, default=None)
    parser.add_argument(
        "--remove-bn", default="drop", choices=["drop", "fold", "keep"], help="BatchNorm removal"
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
    rm = {"drop": "drop", "fold": "fold", "keep": False}[args.remove_bn]
    common = dict(
        n_filters=filters,
        remove_batchnorm=rm,
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
        "reptile": dict(n_iterations=iters),
    }
    seeds = [args.seed + s for s in range(args.seeds)]
    timings: dict[str, float] = {}
    inits: dict[tuple[str, int], ReptileInitializer] = {}

    def initializer(method: str, seed: int) -> ReptileInitializer:
        key = (method, seed if prof["per_seed_init"] else args.seed)
        if key not in inits:
            t = time.perf_counter()
            est = ReptileInitializer(init=method, random_state=key[1], **common, **specific[method])
            inits[key] = est.fit(Xs, ys)
            spent = timings[f"init_{method}_{key[1]}"] = time.perf_counter() - t
            if args.verbose:
                print(
                    f"  learned the {method} initialization in {spent:.0f}s",
                    flush=True,
                )
        return inits[key]

    results: dict[str, dict[str, list[dict]]] = {m: {} for m in args.methods}
    for frac in args.fractions:
        for seed in seeds:
            itr, iva = _subsample(tr.target, frac, seed), _subsample(va.target, frac, seed + 1000)
            for method in args.methods:
                est = initializer(method, seed)
                est.set_params(random_state=seed, augment=args.augment)
                t = time.perf_counter()
                est.adapt(
                    tr.images[itr], tr.target[itr], X_val=va.images[iva], y_val=va.target[iva]
                )
                sc = _scores(te.target, est.predict_proba(te.images), est.classes_)
                sc["epochs"] = len(est.net_.history)
                sc["seconds"] = time.perf_counter() - t
                results[method].setdefault(str(frac), []).append(sc)
                if args.verbose:
                    print(
                        f"  {int(frac * 100):>3}% seed {seed} {method:<10} QWK {sc['qwk']:.3f} "
                        f"acc {sc['accuracy']:.3f} AUC {sc['auc']:.3f} ({sc['epochs']} epochs)",
                        flush=True,
                    )
    rows = []
    for frac in args.fractions:
        for method in args.methods:
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
    print(table)
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
            "monitor": args.monitor,
            "augment": args.augment,
            "seeds": seeds,
            "fractions": args.fractions,
            "source_counts": counts,
        },
        "results": results,
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
            for m in args.methods
        },
        "reptile_history": [h for (m, _), e in inits.items() if m == "reptile" for h in e.history_],
        "timings": timings,
        "seconds": elapsed,
        "environment": environment(),
        "table": table,
    }
    write_json(out / "reptile.json", payload)
    _plot(out / "reptile.png", results, args.methods, args.fractions)
    print(f"wrote {out / 'reptile.json'} and {out / 'reptile.png'}")
    return payload


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
