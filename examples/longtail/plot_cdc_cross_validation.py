"""
CDC under lesion-grouped cross-validation
=========================================

``cross_val_score`` with ``StratifiedGroupKFold`` on HAM10000's lesion ids, so
that no lesion has images on both sides of a split. The plain classifier (CE,
``decoder=False``) and :class:`~fewmed.longtail.CDCClassifier` (auxiliary
decoder + twin classifier) are scored on macro F1 over the same folds, with
class-balanced weights. A subset of at most 150 images per class and two
epochs keep it short; ``fewmed benchmark cdc`` is the full comparison.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, cross_val_score

from fewmed import CDCClassifier
from fewmed.datasets import load_ham10000_or_synthetic

bunch, synthetic = load_ham10000_or_synthetic(size=28, verbose=0)
print("data:", bunch.source)
X, y, groups = bunch.images, bunch.target, bunch.groups
if groups is None:  # synthetic lesions or DermaMNIST: no lesion ids, one group per image
    groups = np.arange(len(y))
rng = np.random.default_rng(0)
keep = np.sort(
    np.concatenate([rng.permutation(np.flatnonzero(y == k))[:150] for k in np.unique(y)])
)
X, y, groups = X[keep], y[keep], groups[keep]
print(
    "images per class:", dict(zip(np.asarray(bunch.target_names).tolist(), np.bincount(y).tolist()))
)

# %%
cv = StratifiedGroupKFold(n_splits=3, shuffle=True, random_state=0)
common = dict(
    n_filters=16, max_epochs=2, batch_size=64, lr=3e-3, class_weight="balanced", random_state=0
)
scores = {}
for name, clf in {
    "CE": CDCClassifier(decoder=False, **common),
    "CDC": CDCClassifier(alpha=10, beta=0.2, **common),
}.items():
    scores[name] = cross_val_score(clf, X, y, groups=groups, cv=cv, scoring="f1_macro")
    print(
        f"{name:4s} macro F1 per fold {np.round(scores[name], 3)}, mean {scores[name].mean():.3f}"
    )

fig, ax = plt.subplots(figsize=(4, 3))
for fold in range(cv.n_splits):
    ax.plot(list(scores), [s[fold] for s in scores.values()], "o-", color="#888")
ax.set(ylabel="macro F1", title="same folds, CE vs CDC" + (" (synthetic)" if synthetic else ""))
fig.tight_layout()
