"""Few-shot diagnosis of rare skin diseases with DAMLClassifier.

Meta-train on HAM10000's common diseases (nv, mel, bkl, bcc), adapt to a 5-shot
task of two rare ones (akiec, vasc, df), predict, then choose eta with
GridSearchCV over class-disjoint splits.

Run ``python examples/daml_rare_diseases.py [HAM10000 folder]``; without real data
it falls back to synthetic lesion images (and says so).
"""

# %%
import sys

import numpy as np
from sklearn.model_selection import GridSearchCV

from fewmed import DAMLClassifier
from fewmed.datasets import load_ham10000_or_synthetic
from fewmed.model_selection import EpisodeSampler, LeaveClassesOut

data, synthetic = load_ham10000_or_synthetic(sys.argv[1] if len(sys.argv) > 1 else None, size=28)
names = np.asarray(data.target_names)[data.target]
common = np.isin(names, ["nv", "mel", "bkl", "bcc"])
X_common, y_common = data.images[common], names[common]
X_rare, y_rare = data.images[~common], names[~common]

# %% Meta-train (a short run; the paper uses 3000 iterations with the switch at 1500)
daml = DAMLClassifier(
    n_filters=32,
    n_iterations=300,
    difficulty_start=150,
    n_inner_steps=3,
    eta=5,
    random_state=0,
    verbose=1,
)
daml.fit(X_common, y_common)

# %% Adapt to one 5-shot task of two rare diseases and predict its query images
episode = next(EpisodeSampler(n_way=2, n_shot=5, n_query=15, random_state=0).sample(y_rare))
daml.adapt(X_rare[episode.support_idx], y_rare[episode.support_idx])
pred = daml.predict(X_rare[episode.query_idx])
print("task classes:", daml.classes_, "accuracy:", np.mean(pred == y_rare[episode.query_idx]))

# %% Mean AUC and 95% CI over 100 rare-class tasks
print("5-shot AUC on rare classes:", daml.score_episodes(X_rare, y_rare, n_tasks=100))

# %% Choose eta on class-disjoint splits of the common classes (small budget)
search = GridSearchCV(
    DAMLClassifier(
        n_filters=16,
        n_iterations=60,
        difficulty_start=30,
        n_inner_steps=2,
        n_score_tasks=20,
        random_state=0,
        verbose=0,
    ),
    {"eta": [1.0, 3.0, 5.0]},
    cv=LeaveClassesOut(n_test_classes=2, n_splits=2, random_state=0),
)
search.fit(X_common, y_common)
print("best eta:", search.best_params_, "mean AUC:", round(search.best_score_, 3))
