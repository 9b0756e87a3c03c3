"""CDC on HAM10000 (Skin-7): the paper's Tables 1-3 (MF1, precision, recall; mean (std)).

5-fold cross-validation stratified by class and grouped by lesion
(``StratifiedGroupKFold``). Eight methods: CE, WCE, CD, CDC (Table 1) and FL, WFL,
CD+FL, CDC+FL (Table 2), all with the same backbone and budget; Table 3 is the
same metrics averaged over the smallest classes (akiec, vasc, df). Accuracy and
macro AUC are reported too, every method's fold-by-fold difference to CE (and
WCE) with its 95% interval (:func:`fewmed.metrics.paired_confidence_interval`),
the decoder's reconstruction quality (PSNR per epoch on the training batches,
and on the test fold), and the CDC / plain epoch-time ratio measured in the same
run. The decoder reads a spatial feature map: at the quick profile Conv4-16 with
its first two poolings only (``module__n_pools=2``: 16 x 7 x 7 at 28 px).
"""

from __future__ import annotations

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
from fewmed.metrics import paired_confidence_interval

RARE = ["akiec", "vasc", "df"]

METHODS = {
    "CE": dict(decoder=False, loss="ce"),
    "WCE": dict(decoder=False, loss="ce", class_weight="balanced"),
    "CD": dict(twin=False, loss="ce"),
    "CDC": dict(loss="ce"),
    "FL": dict(decoder=False, loss="focal"),
    "WFL": dict(decoder=False, loss="focal", class_weight="balanced"),
    "CD+FL": dict(twin=False, loss="focal"),
    "CDC+FL": dict(loss="focal"),
    # not in the default run: CD / CDC on the class-weighted base losses
    "CD+WCE": dict(twin=False, loss="ce", class_weight="balanced"),
    "CDC+WCE": dict(loss="ce", class_weight="balanced"),
    "CDC+WFL": dict(loss="focal", class_weight="balanced"),
}
DEFAULT_METHODS = ["CE", "WCE", "CD", "CDC", "FL", "WFL", "CD+FL", "CDC+FL"]

#: Random horizontal / vertical flips only (exact at any size; no interpolation).
FLIPS = dict(scale=(1.0, 1.0), rotation=0.0, translate=False)

PROFILES = {
    # 2 CPU cores: Conv4-16 pooling twice (a 16 x 7 x 7 map for the decoder)
    "quick": dict(
        size=28,
        module="conv4",
        n_filters=16,
        n_pools=2,
        epochs=8,
        batch_size=128,
        lr=3e-3,
        decoder_filters=None,
        decoder_scale=0.5,  # half-resolution decoder blocks: 1.5x a plain epoch, not 2.3-2.8x
        decoder_kind="upsample",
        optimizer="adam",
        augment="flips",
        schedule="cosine",
        nv_cap=None,
    ),
    # for a GPU: ResNet-10 at 64 px, full augmentation, 60 epochs
    "full": dict(
        size=64,
        module="resnet",
        n_filters=32,
        n_pools=None,
        epochs=60,
        batch_size=64,
        lr=1e-3,
        decoder_filters=None,
        decoder_scale=1.0,
        decoder_kind="upsample",
        optimizer="adam",
        augment="full",
        schedule="cosine",
        nv_cap=None,
    ),
}

AUGMENT = {"none": False, "flips": FLIPS, "full": True}


def add_arguments(parser) -> None:
    add_common_arguments(parser, default_out="fewmed_results/cdc")
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--max-folds", type=int, default=None, help="run only the first N folds")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument(
        "--module", default=None, choices=["conv4", "resnet", "resnet18", "vgg"], help="backbone"
    )
    parser.add_argument("--filters", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--alpha", type=float, default=10.0)
    parser.add_argument("--beta", type=float, default=0.2)
    parser.add_argument(
        "--reconstruction-weight",
        default="balanced",
        choices=["balanced", "sqrt_inverse", "inverse", "none"],
    )
    parser.add_argument("--decoder-filters", type=int, default=None)
    parser.add_argument(
        "--decoder-scale", type=float, default=None, help="decoder resolution (0, 1]"
    )
    parser.add_argument(
        "--pools", type=int, default=None, help="Conv4's poolings (2: a 7x7 map at 28 px)"
    )
    parser.add_argument("--decoder-kind", default=None, choices=["upsample", "deconv"])
    parser.add_argument(
        "--optimizer",
        default=None,
        choices=["adam", "sgd"],
        help="sgd: momentum 0.9 (the paper's, with --schedule step --lr 1e-3)",
    )
    parser.add_argument("--augment", default=None, choices=list(AUGMENT))
    parser.add_argument(
        "--schedule",
        default=None,
        choices=["cosine", "step", "none"],
        help="step: the rate divided by 10 at half of the epochs (the paper's)",
    )
    parser.add_argument(
        "--nv-cap",
        type=int,
        default=None,
        help="keep at most this many images of the largest class in each TRAINING fold "
        "(test folds are never subsampled); default: no cap",
    )


def _scores(y_true, proba, n_classes) -> dict:
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score

    pred = proba.argmax(axis=1)
    labels = np.arange(n_classes)
    p, r, f, _ = precision_recall_fscore_support(y_true, pred, labels=labels, zero_division=0)
    try:
        auc = roc_auc_score(y_true, proba, multi_class="ovr", average="macro", labels=labels)
    except ValueError:
        auc = float("nan")
    return {
        "mf1": float(f.mean()),
        "precision": float(p.mean()),
        "recall": float(r.mean()),
        "accuracy": float(accuracy_score(y_true, pred)),
        "auc": float(auc),
        "f1_per_class": f.tolist(),
        "precision_per_class": p.tolist(),
        "recall_per_class": r.tolist(),
    }


def _ms(values) -> str:
    v = 100 * np.asarray(values, dtype=float)
    return f"{v.mean():.2f} ({v.std():.2f})"


_GAIN_KEYS = ("mf1", "accuracy", "auc", "rare_f1")


def _paired_gains(results: dict, n_folds: int) -> dict:
    """Every method minus CE and minus WCE, fold by fold: mean, 95% CI, per fold (x 100)."""
    out = {}
    for b in ("CE", "WCE"):
        if b not in results:
            continue
        out[b] = {}
        for m in results:
            if m == b:
                continue
            out[b][m] = {}
            for k in _GAIN_KEYS:
                get = (lambda r: r["rare"]["f1"]) if k == "rare_f1" else (lambda r, k=k: r[k])
                a = 100 * np.array([get(r) for r in results[m]])
                c = 100 * np.array([get(r) for r in results[b]])
                ci = paired_confidence_interval(a, c)
                out[b][m][k] = {
                    "mean": ci.mean,
                    "ci95": ci.half_width if n_folds > 1 else float("nan"),
                    "per_fold": (a - c).tolist(),
                }
    return out


def _cap_largest(train: np.ndarray, y: np.ndarray, cap: int | None, seed: int) -> np.ndarray:
    """Training indices with the largest class subsampled to ``cap`` images (training only)."""
    if cap is None:
        return train
    counts = np.bincount(y[train])
    big = int(counts.argmax())
    if counts[big] <= cap:
        return train
    rng = np.random.default_rng(seed)
    idx = train[y[train] == big]
    keep = np.sort(np.concatenate([train[y[train] != big], rng.choice(idx, cap, replace=False)]))
    return keep


def run(args) -> dict:
    import warnings

    import torch
    from sklearn.model_selection import StratifiedGroupKFold

    from fewmed import CDCClassifier

    torch.set_num_threads(min(2, torch.get_num_threads()))
    # skorch's LRScheduler steps the (per-batch) schedule in on_batch_end, after the
    # optimizer; torch's "step() before optimizer.step()" check misfires on it
    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
    prof = dict(PROFILES["quick" if args.quick else "full"])
    size = args.size or prof["size"]
    epochs = prof["epochs"] if args.epochs is None else args.epochs
    module = args.module or prof["module"]
    filters = args.filters or (prof["n_filters"] if module == prof["module"] else None)
    batch_size = args.batch_size or prof["batch_size"]
    lr = args.lr or prof["lr"]
    augment = args.augment or prof["augment"]
    dec_filters = args.decoder_filters or prof["decoder_filters"]
    dec_scale = args.decoder_scale or prof["decoder_scale"]
    dec_kind = args.decoder_kind or prof["decoder_kind"]
    optimizer = args.optimizer or prof["optimizer"]
    pools = args.pools if args.pools is not None else prof["n_pools"]
    module_kwargs = {"module__n_pools": pools} if module == "conv4" and pools is not None else {}
    opt_kwargs = (
        {"optimizer": torch.optim.SGD, "optimizer__momentum": 0.9}
        if optimizer == "sgd"
        else {"optimizer": torch.optim.Adam}
    )
    schedule = args.schedule or prof["schedule"]
    nv_cap = args.nv_cap if args.nv_cap is not None else prof["nv_cap"]
    rec_weight = None if args.reconstruction_weight == "none" else args.reconstruction_weight
    bunch, synthetic = load_ham10000_or_synthetic(
        args.data,
        size=size,
        synthetic=args.synthetic,
        random_state=args.seed,
        verbose=args.verbose,
    )
    X, y = bunch.images, np.asarray(bunch.target)
    names = [str(n) for n in bunch.target_names]
    groups = bunch.get("groups")
    if groups is None:
        groups = np.arange(len(y))
    rare_idx = [names.index(n) for n in RARE if n in names]
    print(
        f"data: {'SYNTHETIC lesions' if synthetic else 'HAM10000'} at {size}px, {len(y)} images, "
        f"counts {dict(zip(names, np.bincount(y).tolist()))}; {args.folds}-fold "
        f"StratifiedGroupKFold on lesions; {module}-{filters or 'default'} {module_kwargs}, "
        f"{epochs} epochs, batch {batch_size}, {optimizer} lr {lr} ({schedule} schedule), "
        f"augment {augment!r}, alpha {args.alpha}, beta {args.beta}, reconstruction_weight "
        f"{rec_weight}, decoder {dec_kind} filters {dec_filters} scale {dec_scale}",
        flush=True,
    )
    if nv_cap is not None:
        print(
            f"NOTE: the largest class is subsampled to {nv_cap} images in every TRAINING fold "
            "(test folds are complete)",
            flush=True,
        )
    cv = StratifiedGroupKFold(args.folds, shuffle=True, random_state=args.seed)
    results = {m: [] for m in args.methods}
    curves = {}
    durations = {m: [] for m in args.methods}
    t0 = time.time()
    for fold, (tr, te) in enumerate(cv.split(X, y, groups)):
        if args.max_folds is not None and fold >= args.max_folds:
            break
        tr = _cap_largest(tr, y, nv_cap, args.seed + fold)
        for m in args.methods:
            clf = CDCClassifier(
                module=module,
                n_filters=filters,
                max_epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                alpha=args.alpha,
                beta=args.beta,
                reconstruction_weight=rec_weight,
                decoder_filters=dec_filters,
                decoder_scale=dec_scale,
                decoder_kind=dec_kind,
                augment=AUGMENT[augment],
                lr_schedule=None if schedule == "none" else schedule,
                random_state=args.seed + fold,
                device=args.device,
                **module_kwargs,
                **opt_kwargs,
                **METHODS[m],
            )
            clf.fit(X[tr], y[tr])
            score = _scores(y[te], clf.predict_proba(X[te]), len(names))
            if clf.decoder:
                from fewmed.longtail._cdc import psnr

                Xte = clf.get_dataset(X[te]).X
                score["test_psnr"] = psnr(
                    torch.as_tensor(clf.reconstruct(X[te])), Xte, clf.data_info_["in_unit_range"]
                )
            if fold == 0:
                score["feature_shape"] = list(clf.module_.feature_shape)
            score["rare"] = {
                k: float(np.mean([score[f"{k}_per_class"][i] for i in rare_idx]))
                for k in ("f1", "precision", "recall")
            }
            results[m].append(score)
            durations[m] += list(clf.history[:, "dur"])
            if fold == 0:
                keys = [
                    k
                    for k in (
                        "train_loss",
                        "train_loss_cls",
                        "train_loss_rec",
                        "train_psnr",
                        "train_loss_twin",
                    )
                    if k in clf.history[-1]
                ]
                curves[m] = {k: list(clf.history[:, k]) for k in keys}
            if args.verbose:
                rec = f" PSNR {score['test_psnr']:.1f} dB" if "test_psnr" in score else ""
                print(
                    f"fold {fold} {m:7s} MF1 {100 * score['mf1']:.2f} acc "
                    f"{score['accuracy']:.3f} AUC {score['auc']:.3f} rare-F1 "
                    f"{100 * score['rare']['f1']:.2f}{rec} epoch "
                    f"{np.mean(clf.history[:, 'dur']):.2f}s [{time.time() - t0:.0f}s]",
                    flush=True,
                )
    n_folds = len(next(iter(results.values())))

    def agg(m, key, sub=None):
        vals = [r[sub][key] if sub else r[key] for r in results[m]]
        return _ms(vals)

    tables = {}
    for title, group in (
        ("Table 1 (cross-entropy based)", ["CE", "WCE", "CD", "CDC"]),
        ("Table 2 (focal-loss based)", ["FL", "WFL", "CD+FL", "CDC+FL"]),
    ):
        rows = [
            [m, agg(m, "mf1"), agg(m, "precision"), agg(m, "recall")] for m in group if m in results
        ]
        if rows:  # a run with --methods may leave a table empty
            tables[title] = format_table(rows, ["method", "MF1", "Precision", "Recall"])
    rows = [
        [m, agg(m, "f1", "rare"), agg(m, "precision", "rare"), agg(m, "recall", "rare")]
        for m in results
    ]
    tables["Table 3 (smallest classes: " + ", ".join(RARE) + ")"] = format_table(
        rows, ["method", "MF1", "Precision", "Recall"]
    )
    rows = [
        [m, agg(m, "accuracy"), f"{np.mean([r['auc'] for r in results[m]]):.3f}", agg(m, "mf1")]
        for m in results
    ]
    tables["Accuracy and macro AUC"] = format_table(rows, ["method", "Accuracy", "AUC", "MF1"])
    ratio = None
    if "CDC" in durations and "CE" in durations and durations["CE"]:
        ratio = float(np.mean(durations["CDC"]) / np.mean(durations["CE"]))
    for title, table in tables.items():
        print(f"\n{title}, 100 x mean (std) over {n_folds} folds\n{table}")
    if ratio is not None:
        print(
            f"\nepoch time: CE {np.mean(durations['CE']):.2f}s, CDC "
            f"{np.mean(durations['CDC']):.2f}s, ratio {ratio:.2f}x (target <= 2.5x)"
        )
    gain = _paired_gains(results, n_folds)
    for b, per_method in gain.items():
        rows = [
            [m] + [f"{g[k]['mean']:+.2f} ± {g[k]['ci95']:.2f}" for k in _GAIN_KEYS]
            for m, g in per_method.items()
        ]
        print(
            f"\nminus {b}, fold by fold (same folds): mean ± 95% CI half-width (100 x)\n"
            + format_table(rows, ["method", *_GAIN_KEYS])
        )
    psnrs = {m: [r["test_psnr"] for r in results[m] if "test_psnr" in r] for m in results}
    psnrs = {m: float(np.mean(v)) for m, v in psnrs.items() if v}
    if psnrs:
        print(
            "reconstruction PSNR on the test folds (dB): "
            + ", ".join(f"{m} {v:.2f}" for m, v in psnrs.items())
        )
    total = time.time() - t0
    print(f"total {total / 60:.1f} min", flush=True)

    out = output_dir(args.out)
    payload = {
        "benchmark": "cdc",
        "profile": "quick" if args.quick else "full",
        "synthetic_data": synthetic,
        "size": size,
        "module": module,
        "n_filters": filters,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "alpha": args.alpha,
        "beta": args.beta,
        "folds": args.folds,
        "folds_run": n_folds,
        "augment": augment,
        "schedule": schedule,
        "nv_cap": nv_cap,
        "reconstruction_weight": rec_weight,
        "decoder_filters": dec_filters,
        "decoder_scale": dec_scale,
        "classes": names,
        "results": results,
        "epoch_seconds": {m: float(np.mean(d)) for m, d in durations.items()},
        "epoch_time_ratio_cdc_over_ce": ratio,
        "paired_differences": gain,
        "test_psnr": psnrs,
        "optimizer": optimizer,
        "module_kwargs": module_kwargs,
        "decoder_kind": dec_kind,
        "curves_fold0": curves,
        "tables": tables,
        "seconds": total,
        "environment": environment(),
    }
    write_json(out / "cdc.json", payload)
    _plot(out / "cdc.png", results, curves, names)
    print(f"wrote {out / 'cdc.json'} and {out / 'cdc.png'}")
    return payload


def _plot(path, results, curves, names) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plotting is an extra
        return
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(20, 4.5))
    methods = list(results)
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(names))
    for i, m in enumerate(methods):
        f1 = np.array([r["f1_per_class"] for r in results[m]])
        ax1.bar(x + i * width, f1.mean(0), width, yerr=f1.std(0), label=m, capsize=1)
    ax1.set_xticks(x + 0.4 - width / 2, names)
    ax1.set_ylabel("F1 (mean over folds)")
    ax1.set_title("per-class F1")
    ax1.legend(fontsize=7, ncol=2)
    for m, c in curves.items():
        ax2.plot(np.arange(1, len(c["train_loss"]) + 1), c["train_loss"], label=f"{m} L")
        if "train_loss_rec" in c and m in ("CDC", "CDC+FL"):
            ax2.plot(
                np.arange(1, len(c["train_loss_cls"]) + 1),
                c["train_loss_cls"],
                "--",
                label=f"{m} Lc",
            )
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("training loss (fold 0)")
    ax2.set_title("training curves")
    ax2.legend(fontsize=7, ncol=2)
    for m, c in curves.items():
        if "train_psnr" in c:
            ax3.plot(np.arange(1, len(c["train_psnr"]) + 1), c["train_psnr"], label=m)
    ax3.set_xlabel("epoch")
    ax3.set_ylabel("reconstruction PSNR (dB, training batches, fold 0)")
    ax3.set_title("the decoder at work")
    ax3.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
