"""
DAML: meta-train on common diseases, adapt to rare ones, tune eta
=================================================================

:class:`~fewmed.fewshot.DAMLClassifier` is meta-trained on tasks drawn from
HAM10000's four common diseases (nv, mel, bkl, bcc), then adapted to a 5-shot
task of two rare ones (akiec, vasc, df). Its difficulty exponent ``eta`` is
chosen by ``GridSearchCV`` over **class-disjoint** splits of the common
classes (:class:`~fewmed.model_selection.LeaveClassesOut`): each candidate is
meta-trained on some classes and scored on tasks of the others, as it will be
used.

The budgets here are tiny (the paper meta-trains for 3,000 iterations; see
``fewmed benchmark daml``).
"""

# %%
# Data: HAM10000 when found, else synthetic lesions with HAM10000's class names
import matplotlib.pyplot as plt
import numpy as np
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

from fewmed import DAMLClassifier
from fewmed.datasets import load_ham10000_or_synthetic
from fewmed.model_selection import EpisodeSampler, LeaveClassesOut

data, synthetic = load_ham10000_or_synthetic(size=28, verbose=0)
print("data:", data.source)
names = np.asarray(data.target_names)[data.target]
common = np.isin(names, ["nv", "mel", "bkl", "bcc"])
X_common, y_common = data.images[common], names[common]
X_rare, y_rare = data.images[~common], names[~common]
for label, ys in (("common", y_common), ("rare", y_rare)):
    print(f"{label}:", {str(c): int(n) for c, n in zip(*np.unique(ys, return_counts=True))})

# %%
# Meta-train: plain MAML for the first half, the difficulty-aware loss after
daml = DAMLClassifier(
    n_filters=16,
    n_iterations=12,
    difficulty_start=6,
    meta_batch_size=2,
    n_inner_steps=1,
    n_adapt_steps=5,
    eta=5,
    iterations_per_epoch=10,
    n_valid_tasks=5,
    random_state=0,
    verbose=0,
)
_ = daml.fit(X_common, y_common)

# %%
# Adapt to one 5-shot task of two rare diseases and classify its query images
sampler = EpisodeSampler(n_way=2, n_shot=5, n_query=15, random_state=0)
episode = next(sampler.sample(y_rare))
daml.adapt(X_rare[episode.support_idx], y_rare[episode.support_idx])
pred = daml.predict(X_rare[episode.query_idx])
print("task:", daml.classes_, "query accuracy:", np.mean(pred == y_rare[episode.query_idx]))

# %%
# Mean AUC with its 95% confidence interval over rare-class tasks
print("5-shot AUC on the rare classes:", daml.score_episodes(X_rare, y_rare, n_tasks=8))

# %%
# Choose eta on class-disjoint splits (eta=0 is MAML)
search = GridSearchCV(
    clone(daml).set_params(n_iterations=6, difficulty_start=3, n_score_tasks=4),
    {"eta": [0.0, 5.0]},
    cv=LeaveClassesOut(n_test_classes=2, n_splits=2, random_state=0),
)
search.fit(X_common, y_common)
results = search.cv_results_
for eta, mean, std in zip(
    results["param_eta"], results["mean_test_score"], results["std_test_score"]
):
    print(f"eta={eta}: AUC {mean:.3f} +- {std:.3f}")

fig, ax = plt.subplots(figsize=(4, 3))
ax.bar(
    [str(e) for e in results["param_eta"]],
    results["mean_test_score"],
    yerr=results["std_test_score"],
    color=["#888", "#1f77b4"],
)
ax.set(
    xlabel="eta",
    ylabel="mean task AUC",
    ylim=(0.4, 1.0),
    title="GridSearchCV over eta" + (" (synthetic)" if synthetic else ""),
)
fig.tight_layout()
