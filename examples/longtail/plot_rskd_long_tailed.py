"""
RSKD: multi-class and multi-label long-tailed training
======================================================

:class:`~fewmed.longtail.RelationalSubsetsDistiller` trains one teacher per
subset of the classes (by frequency: ``subsets="shot"``, or given), then
distils them into a student. It takes a multi-class target ``y`` or a
multi-label indicator matrix ``Y``. Scores are mean average precision over the
head, medium and tail classes
(:func:`~fewmed.metrics.group_mean_average_precision`). Budgets are tiny;
``fewmed benchmark rskd`` is the full comparison.
"""

# %%
# Multi-class: HAM10000 (or synthetic lesions), a lesion-grouped hold-out
import matplotlib.pyplot as plt
import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from fewmed import RelationalSubsetsDistiller
from fewmed.datasets import load_ham10000_or_synthetic, make_synthetic_lesions
from fewmed.metrics import group_mean_average_precision

bunch, synthetic = load_ham10000_or_synthetic(size=28, verbose=0)
print("data:", bunch.source)
X, y, names = bunch.images, bunch.target, np.asarray(bunch.target_names)
groups = bunch.groups if bunch.groups is not None else np.arange(len(y))
rng = np.random.default_rng(0)
cap = {k: 800 if k == np.bincount(y).argmax() else 300 for k in np.unique(y)}  # a short run
keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == k))[: cap[k]] for k in cap]))
X, y, groups = X[keep], y[keep], groups[keep]
train, test = next(StratifiedGroupKFold(4, shuffle=True, random_state=0).split(X, y, groups))
counts = np.bincount(y[train], minlength=len(names))
print("training images per class:", dict(zip(names.tolist(), counts.tolist())))
# head: the most frequent class; tail: the two rarest; medium: the others
many, few = int(np.sort(counts)[-2]), int(np.sort(counts)[2])

common = dict(
    n_filters=16, max_epochs=2, lr=2e-3, many=many, few=few, label_names=list(names), random_state=0
)
results = {}
for name, model in {
    "ERM (no KD)": RelationalSubsetsDistiller(kd=None, **common),
    "RSKD shot": RelationalSubsetsDistiller(subsets="shot", **common),
}.items():
    model.fit(X[train], y[train])
    results[name] = group_mean_average_precision(
        y[test], model.predict_proba(X[test]), counts, many=many, few=few
    )
    print(f"{name:12s}", "  ".join(f"{k} {100 * v:5.1f}" for k, v in results[name].items()))
print("RSKD's subsets:", {k: names[v].tolist() for k, v in model.subsets_.items()})

# %%
# Multi-label: an indicator matrix Y (here 4 findings with long-tailed
# frequencies on synthetic images; ChestX-ray14's labels in the benchmark)
images = make_synthetic_lesions(n_classes=4, class_sizes=[200, 80, 30, 15], random_state=1)
Y = np.eye(4, dtype=int)[images.target]
Y[rng.random(len(Y)) < 0.2, 0] = 1  # a frequent second finding
mlb = RelationalSubsetsDistiller(
    subsets="shot", n_filters=16, max_epochs=2, many=100, few=20, random_state=0
)
mlb.fit(images.images, Y)
proba = mlb.predict_proba(images.images[:5])
print("multi-label probabilities, one column per finding:\n", np.round(proba, 2))

fig, ax = plt.subplots(figsize=(5, 3))
width = 0.4
for i, (name, res) in enumerate(results.items()):
    ax.bar(np.arange(len(res)) + i * width, [100 * v for v in res.values()], width, label=name)
ax.set_xticks(np.arange(len(res)) + width / 2, list(res))
ax.set(ylabel="mAP (%)", title="HAM10000 hold-out" + (" (synthetic)" if synthetic else ""))
ax.legend()
fig.tight_layout()
