"""RSKD on long-tailed HAM10000 and on ChestX-ray14 labels: Tables 3-4 (head/medium/tail mAP).

Multi-class: HAM10000 as a long-tailed 7-class problem -- head nv; medium mel,
bkl, bcc; tail akiec, vasc, df (shot thresholds ``many=0.2``, ``few=0.04`` as
fractions of the training fold) -- with 4-fold cross-validation stratified by
class and grouped by lesion (``StratifiedGroupKFold``). Methods: ERM, RS
(class-balanced re-sampling), RW (class-weighted CE), focal loss, plain KD at
T = 3, 10, 20 from the shot-based teachers (Table 4), RSKD shot-based and RSKD
feature-based (melanocytic-looking pigmented lesions {mel, nv, bkl} apart from
{bcc, akiec, vasc, df}). mAP per head / medium / tail group and in total, and
every method's fold-by-fold difference to ERM with its 95% interval
(:func:`fewmed.metrics.paired_confidence_interval`); the teachers' quality (their
own validation accuracy / mAP, the epoch kept, and Eq. 3's per-subset AP) and
each method's fit time against ERM's.

Multi-label: the real NIH ChestX-ray14 label table (14 findings, 112,120 rows)
gives the shot-based subsets and a real long-tailed label co-occurrence; the
IMAGES ARE SYNTHETIC (one fixed pattern per finding, summed with noise), so the
multi-label numbers test the code path, not chest X-ray diagnosis.

The teachers' wall time with ``n_jobs=2`` vs ``n_jobs=1`` is measured on the
first fold's shot-based subsets and on a balanced workload (4 equal subsets),
with warm loky workers (their one-off start is reported apart), best of two runs. With ``n_jobs=2``
the head teacher gets the second core once the others are done
(:func:`fewmed.longtail._teachers.thread_plan`), so the speed-up can pass the "one thread
per teacher" bound that the largest teacher sets.

The multi-label part lives in ``fewmed.benchmarks._rskd_chest``, the ``n_jobs`` timing
in ``fewmed.benchmarks._rskd_speedup``, what the parts share (the shot thresholds, a
method's estimator, the group mAP) in ``fewmed.benchmarks._rskd_common``; this module
runs the HAM10000 part and the report.
"""

from __future__ import annotations

import tempfile
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
from fewmed.benchmarks._rskd_chest import CHEST_FEW as CHEST_FEW
from fewmed.benchmarks._rskd_chest import CHEST_MANY as CHEST_MANY
from fewmed.benchmarks._rskd_chest import _chest, _chest_labels, _print_chest
from fewmed.benchmarks._rskd_chest import subsets_as_groups as subsets_as_groups
from fewmed.benchmarks._rskd_chest import synthetic_chest_images as synthetic_chest_images
from fewmed.benchmarks._rskd_common import FEW, MANY, _estimator, _group_map
from fewmed.benchmarks._rskd_speedup import _print_speedup, _speedup
from fewmed.datasets import load_ham10000_or_synthetic

HEAD, MEDIUM, TAIL = ["nv"], ["bcc", "bkl", "mel"], ["akiec", "df", "vasc"]
FEATURE_SUBSETS = {"pigmented": ["mel", "nv", "bkl"], "other": ["bcc", "akiec", "vasc", "df"]}

METHODS = {
    "ERM": dict(kd=None),
    "RS": dict(kd=None, sampler="balanced"),
    "RW": dict(kd=None, class_weight="balanced"),
    "Focal": dict(kd=None, loss="focal"),
    "KD (T=3)": dict(kd="plain", temperature=3.0),
    "KD (T=10)": dict(kd="plain", temperature=10.0),
    "KD (T=20)": dict(kd="plain", temperature=20.0),
    "RSKD shot": dict(kd="relational", temperature=10.0),
    "RSKD feature": dict(kd="relational", temperature=10.0, subsets=FEATURE_SUBSETS),
}

PROFILES = {
    # 2 CPU cores: Conv4-16 at 28 px, 5 epochs, cosine decay; teachers get as many
    # steps as the student (teacher_max_steps="student"), early-stopped after a
    # quarter of their epochs without a better validation loss
    "quick": dict(
        size=28,
        module="conv4",
        n_filters=16,
        epochs=5,
        batch_size=64,
        lr=2e-3,
        lr_schedule="cosine",
        teacher_max_steps="student",
        teacher_patience=0.25,
    ),
    # for a GPU: ResNet at 64 px, 40 epochs, augmentation
    "full": dict(
        size=64,
        module="resnet",
        n_filters=32,
        epochs=40,
        batch_size=64,
        lr=1e-3,
        lr_schedule="cosine",
        teacher_max_steps="student",
        teacher_patience=0.25,
    ),
}


def add_arguments(parser) -> None:
    add_common_arguments(parser, default_out="fewmed_results/rskd")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--max-folds", type=int, default=None, help="run only the first N folds")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--filters", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--delta", type=float, default=0.6)
    parser.add_argument("--schedule", default=None, choices=["cosine", "step", "none"])
    parser.add_argument(
        "--teacher-steps",
        default=None,
        help="teachers' budget in optimiser steps: 'student' (as many as the student), "
        "an int, or 'epochs' (the student's max_epochs, the old behaviour)",
    )
    parser.add_argument(
        "--teacher-patience",
        type=lambda v: float(v) if "." in v else int(v),
        default=None,
        help="epochs (int) or a share of each teacher's epochs (float in (0, 1))",
    )
    parser.add_argument("--n-jobs", type=int, default=2, help="teachers trained at once")
    parser.add_argument("--no-multilabel", action="store_true", help="skip ChestX-ray14")
    parser.add_argument("--no-speedup", action="store_true", help="skip the n_jobs timing")


def _settings(args) -> dict:
    prof = dict(PROFILES["quick" if args.quick else "full"])
    for key, arg in [
        ("epochs", "epochs"),
        ("n_filters", "filters"),
        ("batch_size", "batch_size"),
        ("lr", "lr"),
        ("size", "size"),
        ("teacher_patience", "teacher_patience"),
    ]:
        if getattr(args, arg, None) is not None:
            prof[key] = getattr(args, arg)
    schedule = getattr(args, "schedule", None)
    if schedule is not None:
        prof["lr_schedule"] = None if schedule == "none" else schedule
    steps = getattr(args, "teacher_steps", None)
    if steps is not None:
        prof["teacher_max_steps"] = (
            None if steps == "epochs" else steps if steps == "student" else int(steps)
        )
    return prof


def _ham(args, prof, memory) -> dict:
    from sklearn.model_selection import StratifiedGroupKFold

    from fewmed.metrics import frequency_groups

    bunch, synthetic = load_ham10000_or_synthetic(
        args.data,
        size=prof["size"],
        synthetic=args.synthetic,
        random_state=args.seed,
        verbose=args.verbose,
    )
    X, y, groups = bunch["images"], bunch["target"], bunch.get("groups")
    names = np.asarray(bunch["target_names"])
    if groups is None:
        groups = np.arange(len(y))
    expected = {
        g: sorted(np.flatnonzero(np.isin(names, c)).tolist())
        for g, c in (("head", HEAD), ("medium", MEDIUM), ("tail", TAIL))
    }
    cv = StratifiedGroupKFold(args.folds, shuffle=True, random_state=args.seed)
    results = {m: [] for m in args.methods}
    fits = {m: [] for m in args.methods}
    weights = {}
    first_split = None
    for fold, (train, test) in enumerate(cv.split(X, y, groups)):
        if getattr(args, "max_folds", None) is not None and fold >= args.max_folds:
            break
        first_split = first_split or (train, test)
        counts = np.bincount(y[train], minlength=len(names))
        got = {
            k: sorted(v.tolist()) for k, v in frequency_groups(counts, many=MANY, few=FEW).items()
        }
        if got != expected and not synthetic:
            raise RuntimeError(f"fold {fold}: shot groups {got} differ from {expected}")
        for method in args.methods:
            params = dict(METHODS[method])
            if "subsets" in params:
                params["subsets"] = {
                    k: [int(np.flatnonzero(names == c)[0]) for c in v]
                    for k, v in params["subsets"].items()
                }
            t0 = time.perf_counter()
            est = _estimator(prof, args.seed + fold, args, memory, **params)
            est.fit(X[train], y[train])
            dur = time.perf_counter() - t0
            scores = _group_map(y[test], est.predict_proba(X[test]), got)
            scores["fit_seconds"] = dur
            results[method].append(scores)
            if est.kd == "relational":
                weights.setdefault(method, []).append(est.kd_weights_history_.tolist())
            if est.kd is not None:
                scores["teacher_quality"] = est.teacher_quality_
            fits[method].append(dur)
            if args.verbose:
                print(
                    f"fold {fold} {method:13s} head {scores['head']:.3f} medium "
                    f"{scores['medium']:.3f} tail {scores['tail']:.3f} total "
                    f"{scores['total']:.3f} ({dur:.0f} s)",
                    flush=True,
                )
                for name, q in scores.get("teacher_quality", {}).items():
                    print(
                        f"    teacher {name:9s} acc {q.get('acc', np.nan):.3f} mAP "
                        f"{q.get('map', np.nan):.3f} (Eq. 3 AP {q['valid_ap_eq3']:.3f}), "
                        f"kept epoch {q.get('best_epoch', '-')} of {q.get('epochs', '-')}",
                        flush=True,
                    )
    summary = {}
    for method, rows in results.items():
        summary[method] = {
            k: {
                "mean": float(np.mean([r[k] for r in rows])),
                "std": float(np.std([r[k] for r in rows])),
            }
            for k in ("head", "medium", "tail", "total")
        }
        summary[method]["fit_seconds"] = float(np.sum(fits[method]))
    return {
        "paired_vs_erm": _paired_vs_erm(results),
        "teacher_quality": _teacher_summary(results),
        "synthetic": synthetic,
        "class_names": names.tolist(),
        "groups": expected,
        "counts": np.bincount(y, minlength=len(names)).tolist(),
        "folds": results,
        "summary": summary,
        "kd_weights_history": weights,
        "first_split": first_split,
        "X": X,
        "y": y,
    }


_GROUPS = ("head", "medium", "tail", "total")


def _paired_vs_erm(results: dict) -> dict:
    """Every method minus ERM, fold by fold (x 100 mAP): mean, 95% CI, per fold; fit-time
    ratio."""
    from fewmed.metrics import paired_confidence_interval

    if "ERM" not in results:
        return {}
    base = results["ERM"]
    out = {}
    for method, rows in results.items():
        if method == "ERM":
            continue
        out[method] = {}
        for g in _GROUPS:
            a = 100 * np.array([r[g] for r in rows])
            b = 100 * np.array([r[g] for r in base])
            ci = paired_confidence_interval(a, b)
            half = ci.half_width if len(a) > 1 else float("nan")
            out[method][g] = {"mean": ci.mean, "ci95": half, "per_fold": (a - b).tolist()}
        t = sum(r["fit_seconds"] for r in rows) / sum(r["fit_seconds"] for r in base)
        out[method]["fit_time_ratio"] = float(t)
    return out


def _teacher_summary(results: dict) -> dict:
    """Per method with teachers and per subset: mean over folds of the teachers' quality."""
    out = {}
    for method, rows in results.items():
        qs = [r["teacher_quality"] for r in rows if "teacher_quality" in r]
        if not qs:
            continue
        out[method] = {
            name: {
                k: float(np.nanmean([q[name].get(k, np.nan) for q in qs]))
                for k in ("acc", "map", "valid_ap_eq3", "best_epoch", "epochs")
            }
            for name in qs[0]
        }
    return out


def _plot(summary: dict, path: Path, paired: dict | None = None) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return None
    methods = list(summary)
    cols = ["head", "medium", "tail", "total"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(18, 4.2))
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        means = [100 * summary[m][c]["mean"] for c in cols]
        stds = [100 * summary[m][c]["std"] for c in cols]
        ax.bar(np.arange(4) + i * width, means, width, yerr=stds, label=m, capsize=2)
    ax.set_xticks(np.arange(4) + 0.4 - width / 2)
    ax.set_xticklabels(cols)
    ax.set_ylabel("mAP (%)")
    ax.set_title("HAM10000 long-tailed, lesion-grouped CV (mean ± std over the folds run)")
    ax.legend(ncol=3, fontsize=8)
    paired = paired or {}
    width2 = 0.8 / max(1, len(paired))
    for i, (m, d) in enumerate(paired.items()):
        means = [d[c]["mean"] for c in cols]
        cis = [d[c]["ci95"] for c in cols]
        ax2.bar(np.arange(4) + i * width2, means, width2, yerr=cis, label=m, capsize=2)
    ax2.axhline(0, color="k", lw=0.8)
    ax2.set_xticks(np.arange(4) + 0.4 - width2 / 2)
    ax2.set_xticklabels(cols)
    ax2.set_ylabel("mAP minus ERM's (points, 95% CI over folds)")
    ax2.set_title("paired differences to ERM")
    ax2.legend(ncol=3, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(args) -> dict:
    """Run the benchmark; print the tables, write ``rskd.json`` and ``rskd.png``."""
    prof = _settings(args)
    out = output_dir(args.out)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fewmed_rskd_") as cache:
        ham = _ham(args, prof, cache)
        X, y, first = ham.pop("X"), ham.pop("y"), ham.pop("first_split")
        speed = None
        if not args.no_speedup:
            speed = _speedup(args, prof, X[first[0]], y[first[0]], args.seed)
        chest = None
        chest_path = _chest_labels(args)
        if not args.no_multilabel and chest_path is not None:
            chest = _chest(args, prof, chest_path, cache)
    rows = [
        [m]
        + [
            f"{100 * s[c]['mean']:.2f} ± {100 * s[c]['std']:.2f}"
            for c in ("head", "medium", "tail", "total")
        ]
        + [f"{s['fit_seconds']:.0f}"]
        for m, s in ham["summary"].items()
    ]
    n_run = len(next(iter(ham["folds"].values())))
    header = ["method", "head", "medium", "tail", "total", f"fit s ({n_run} folds)"]
    print(
        "\nHAM10000"
        + (" (SYNTHETIC)" if ham["synthetic"] else "")
        + f", mAP (%) mean ± std over {n_run} of {args.folds} lesion-grouped folds"
    )
    print(format_table(rows, header))
    paired = ham["paired_vs_erm"]
    if paired:
        print(
            f"\nminus ERM, fold by fold (same {n_run} folds): mAP (%) mean ± 95% CI "
            "half-width; fit time / ERM's"
        )
        print(
            format_table(
                [
                    [m]
                    + [f"{d[g]['mean']:+.2f} ± {d[g]['ci95']:.2f}" for g in _GROUPS]
                    + [f"{d['fit_time_ratio']:.2f}x"]
                    for m, d in paired.items()
                ],
                ["method", *_GROUPS, "fit time"],
            )
        )
    if ham["teacher_quality"]:
        print("\nTeachers (mean over folds): own validation accuracy / mAP, Eq. 3 AP, epochs")
        print(
            format_table(
                [
                    [m, name]
                    + [f"{q[k]:.3f}" for k in ("acc", "map", "valid_ap_eq3")]
                    + [f"{q['best_epoch']:.1f} / {q['epochs']:.1f}"]
                    for m, tq in ham["teacher_quality"].items()
                    for name, q in tq.items()
                ],
                ["method", "subset", "acc", "mAP", "Eq. 3 AP", "kept / trained epochs"],
            )
        )
    if speed:
        _print_speedup(speed, prof)
    if chest:
        _print_chest(chest)
    payload = {
        "benchmark": "rskd",
        "profile": "quick" if args.quick else "full",
        "settings": prof,
        "seed": args.seed,
        "shot_thresholds": {"many": MANY, "few": FEW},
        "feature_subsets": FEATURE_SUBSETS,
        "ham10000": ham,
        "teacher_speedup": speed,
        "chestxray14": chest,
        "wall_seconds": time.perf_counter() - t_start,
        "environment": environment(),
    }
    write_json(out / "rskd.json", payload)
    _plot(ham["summary"], out / "rskd.png", ham["paired_vs_erm"])
    print(
        f"\nwrote {out / 'rskd.json'} and {out / 'rskd.png'} "
        f"({payload['wall_seconds'] / 60:.1f} min)"
    )
    return payload

