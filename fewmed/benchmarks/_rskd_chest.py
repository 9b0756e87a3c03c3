"""The benchmark ``rskd``'s multi-label part: ChestX-ray14 labels, SYNTHETIC images.

Part of :mod:`fewmed.benchmarks.rskd` (see its docstring): the real NIH
ChestX-ray14 label table gives the shot-based subsets and a real long-tailed label
co-occurrence; the images are synthetic (one fixed pattern per finding, summed
with noise), so the numbers test the code path, not chest X-ray diagnosis.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from fewmed.benchmarks._common import format_table
from fewmed.benchmarks._rskd_common import _estimator, _group_map

CHEST_MANY, CHEST_FEW = 10000, 2000  # on the full label table: 3 head, 8 medium, 3 tail


def synthetic_chest_images(Y: np.ndarray, size: int = 28, random_state: int = 0) -> np.ndarray:
    """SYNTHETIC grey images whose content depends on the labels (one pattern per finding).

    Each finding has a fixed smooth random pattern; an image is the sum of its
    findings' patterns (random strength 0.5-1) plus noise. Not chest X-rays.
    """
    rng = np.random.default_rng(random_state)
    k = Y.shape[1]
    yy, xx = np.mgrid[0:size, 0:size] / size
    patterns = []
    for _ in range(k):
        cy, cx = rng.uniform(0.2, 0.8, 2)
        r = rng.uniform(0.08, 0.2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
        fy, fx = rng.uniform(2, 8, 2)
        patterns.append(blob * (0.6 + 0.4 * np.sin(2 * np.pi * (fy * yy + fx * xx))))
    patterns = np.stack(patterns)
    strength = rng.uniform(0.5, 1.0, size=Y.shape) * Y
    img = np.einsum("nk,khw->nhw", strength, patterns) * 0.6
    img += rng.normal(0.3, 0.15, size=img.shape)
    return np.clip(img, 0, 1).astype(np.float32)[:, None]


def _chest(args, prof, path: Path, memory) -> dict:
    from sklearn.model_selection import GroupShuffleSplit

    from fewmed.datasets import load_multilabel_csv
    from fewmed.longtail import build_subsets

    bunch = load_multilabel_csv(path, load_images=False)
    Y_all, names = np.asarray(bunch["target"]), np.asarray(bunch["target_names"])
    counts_all = Y_all.sum(axis=0)
    subsets = build_subsets(
        "shot", np.arange(len(names)), counts_all, many=CHEST_MANY, few=CHEST_FEW
    )
    rng = np.random.default_rng(args.seed)
    n = 4000 if args.quick else 20000
    rows = np.sort(rng.choice(len(Y_all), size=n, replace=False))
    Y, groups = Y_all[rows], np.asarray(bunch["groups"])[rows]
    X = synthetic_chest_images(Y, size=prof["size"], random_state=args.seed)
    train, test = next(
        GroupShuffleSplit(1, test_size=0.25, random_state=args.seed).split(X, Y, groups)
    )
    named = {k: [names[i] for i in v] for k, v in subsets.items()}
    methods = {
        "ERM": dict(kd=None),
        "RW": dict(kd=None, class_weight="balanced"),
        "Focal": dict(kd=None, loss="focal"),
        "RSKD shot": dict(kd="relational", subsets=named, label_names=list(names)),
    }
    out = {}
    for method, params in methods.items():
        t0 = time.perf_counter()
        est = _estimator(prof, args.seed, args, memory, **params).fit(X[train], Y[train])
        scores = _group_map(Y[test], est.predict_proba(X[test]), subsets_as_groups(subsets))
        scores["fit_seconds"] = time.perf_counter() - t0
        out[method] = scores
        if args.verbose:
            print(
                f"chest (synthetic images) {method:10s} head {scores['head']:.3f} medium "
                f"{scores['medium']:.3f} tail {scores['tail']:.3f} total {scores['total']:.3f}",
                flush=True,
            )
    return {
        "images": "SYNTHETIC (label-dependent patterns); labels: real NIH ChestX-ray14 rows",
        "n_rows_table": len(Y_all),
        "n_used": n,
        "finding_counts": counts_all.tolist(),
        "finding_names": names.tolist(),
        "subsets": named,
        "results": out,
    }


def subsets_as_groups(subsets: dict) -> dict:
    return {
        "head": subsets.get("head", []),
        "medium": subsets.get("medium", []),
        "tail": subsets.get("tail", []),
    }


def _chest_labels(args) -> Path | None:
    import os

    candidates = [
        os.environ.get("FEWMED_CHESTXRAY14_LABELS"),
        Path(os.environ.get("FEWMED_SHARED_DATA", "../shared/data"))
        / "nih_chestxray14_labels.csv.gz",
    ]
    for c in candidates:
        if c and Path(c).exists():
            return Path(c)
    print(
        "NOTE: nih_chestxray14_labels.csv.gz not found (set FEWMED_CHESTXRAY14_LABELS); "
        "skipping the multi-label part."
    )
    return None


def _print_chest(chest: dict) -> None:
    """Print the table of :func:`_chest`'s results."""
    print(
        "\nChestX-ray14 labels (real) with SYNTHETIC images, mAP (%) on a patient-grouped 25%"
    )
    print(
        format_table(
            [
                [m] + [f"{100 * s[c]:.2f}" for c in ("head", "medium", "tail", "total")]
                for m, s in chest["results"].items()
            ],
            ["method", "head", "medium", "tail", "total"],
        )
    )
