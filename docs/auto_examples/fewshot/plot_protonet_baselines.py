"""
ProtoNet and the Table 1 baselines on the same rare-disease tasks
=================================================================

The few-shot estimators share one protocol: ``fit`` on the common diseases,
then ``episode_scores`` adapts a copy to each task of rare diseases and returns
its AUC. Every estimator scored with the same arguments sees the **same tasks**,
so the differences between methods are paired, task by task, and
:func:`~fewmed.metrics.paired_confidence_interval` gives their 95% intervals.

Compared here, as in DAML's Table 1: fine-tuning a pre-trained network
(:class:`~fewmed.fewshot.FineTuneClassifier`), convolutional features with a
nearest-neighbour or linear SVM classifier
(:class:`~fewmed.fewshot.FeatureFewShotClassifier`) and prototypical networks
(:class:`~fewmed.fewshot.ProtoNetClassifier`). Budgets are tiny.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
from sklearn.neighbors import KNeighborsClassifier
from sklearn.svm import LinearSVC

from fewmed.datasets import load_ham10000_or_synthetic
from fewmed.fewshot import (
    ConvFeatureExtractor,
    FeatureFewShotClassifier,
    FineTuneClassifier,
    ProtoNetClassifier,
)
from fewmed.metrics import paired_confidence_interval

data, synthetic = load_ham10000_or_synthetic(size=28, verbose=0)
print("data:", data.source)
names = np.asarray(data.target_names)[data.target]
common = np.isin(names, ["nv", "mel", "bkl", "bcc"])
# at most 300 images per common class keep the pre-training short
rng = np.random.default_rng(0)
keep = np.concatenate([rng.permutation(np.flatnonzero(names == c))[:300] for c in np.unique(names)])
keep = np.sort(keep)
X, y, common = data.images[keep], names[keep], common[keep]
X_common, y_common, X_rare, y_rare = X[common], y[common], X[~common], y[~common]

# %%
# Fit each method on the common classes (shared feature extractor for KNN / SVM)
features = ConvFeatureExtractor(n_filters=16, max_epochs=2, random_state=0)
methods = {
    "Finetune": FineTuneClassifier(n_filters=16, max_epochs=2, n_adapt_steps=10, random_state=0),
    "Conv + KNN": FeatureFewShotClassifier(features, KNeighborsClassifier(1), random_state=0),
    "Conv + SVM": FeatureFewShotClassifier(features, LinearSVC(), random_state=0),
    "ProtoNet": ProtoNetClassifier(
        n_filters=16,
        n_iterations=30,
        iterations_per_epoch=10,
        n_valid_tasks=5,
        random_state=0,
        verbose=0,
    ),
}
for method in methods.values():
    method.fit(X_common, y_common)

# %%
# The same 15 five-shot tasks for every method
aucs = {
    name: method.episode_scores(X_rare, y_rare, n_tasks=15, n_shot=5, random_state=1)
    for name, method in methods.items()
}
for name, a in aucs.items():
    diff = paired_confidence_interval(a, aucs["ProtoNet"])
    print(f"{name:10s} AUC {100 * np.mean(a):5.1f}   minus ProtoNet {diff}")

fig, ax = plt.subplots(figsize=(5, 3))
ax.boxplot(list(aucs.values()), tick_labels=list(aucs))
ax.set(ylabel="task AUC", title="5-shot rare-disease tasks" + (" (synthetic)" if synthetic else ""))
fig.tight_layout()
