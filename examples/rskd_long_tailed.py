"""Relational-subsets knowledge distillation on a long-tailed skin-lesion problem.

Compares ERM with RSKD (shot-based and feature-based subsets) by head / medium /
tail mAP on one lesion-grouped split. Uses real HAM10000 when it can be found
(``--data PATH`` or ``FEWMED_DATA``), otherwise SYNTHETIC lesion images (then the
numbers only show that the code runs).

    python examples/rskd_long_tailed.py --data ../shared/data/ham10000
"""

# %%
from __future__ import annotations

import argparse

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from fewmed import RelationalSubsetsDistiller
from fewmed.datasets import load_ham10000_or_synthetic
from fewmed.metrics import group_mean_average_precision

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data", default=None)
parser.add_argument("--epochs", type=int, default=5)
args = parser.parse_args()

# %% data: HAM10000 at 28 px (or synthetic lesions), split by lesion
bunch, synthetic = load_ham10000_or_synthetic(args.data, size=28)
X, y, groups = bunch["images"], bunch["target"], bunch["groups"]
names = np.asarray(bunch["target_names"])
train, test = next(StratifiedGroupKFold(4, shuffle=True, random_state=0).split(X, y, groups))
counts = np.bincount(y[train], minlength=len(names))

# %% three models: ERM, RSKD with shot-based subsets, RSKD with a feature prior
common = dict(
    n_filters=16,
    max_epochs=args.epochs,
    lr=2e-3,
    many=0.2,
    few=0.04,
    label_names=list(names),
    n_jobs=2,
    random_state=0,
)
models = {
    "ERM": RelationalSubsetsDistiller(kd=None, **common),
    "RSKD shot": RelationalSubsetsDistiller(subsets="shot", **common),
    "RSKD feature": RelationalSubsetsDistiller(
        subsets={"pigmented": ["mel", "nv", "bkl"], "other": ["bcc", "akiec", "vasc", "df"]},
        **common,
    ),
}
print("HAM10000" if not synthetic else "SYNTHETIC lesions", "- mAP on a lesion-grouped 25%")
for name, model in models.items():
    model.fit(X[train], y[train])
    scores = group_mean_average_precision(
        y[test], model.predict_proba(X[test]), counts, many=0.2, few=0.04
    )
    print(f"{name:13s}", "  ".join(f"{k} {100 * v:5.1f}" for k, v in scores.items()))

# %% what RSKD learnt: the subsets and the per-class KD weights of the last epoch
rskd = models["RSKD shot"]
print({k: names[v].tolist() for k, v in rskd.subsets_.items()})
print(dict(zip(names, np.round(rskd.kd_weights_history_[-1], 2))))
