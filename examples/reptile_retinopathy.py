"""Reptile initialization for diabetic-retinopathy grading on a small dataset.

Learn an initialization with Reptile on other medical images (BreastMNIST and
PneumoniaMNIST here; the benchmark adds HAM10000), fine-tune it on half of
RetinaMNIST with early stopping on its validation split, and score the official
test split with quadratic weighted kappa, through ``make_scorer`` as
``GridSearchCV`` would.

Run from the project root (the data folder defaults to ``../shared/data``)::

    python examples/reptile_retinopathy.py [DATA_FOLDER]
"""

# %%
import sys
from pathlib import Path

import numpy as np

from fewmed import ReptileInitializer
from fewmed.datasets import load_medmnist
from fewmed.metrics import qwk_scorer

root = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")

# %% Source: every class of BreastMNIST and PneumoniaMNIST, grayscale -> 3 channels
images, labels = [], []
for flag in ("breastmnist", "pneumoniamnist_imbalanced"):
    train = load_medmnist(root / f"{flag}.npz", split="train")
    images.append(np.repeat(train.images, 3, axis=-1))
    labels.append(np.char.add(f"{flag}:", train.target.astype(str)))
X_source, y_source = np.concatenate(images), np.concatenate(labels)

# %% Meta-train the initialization (4-way tasks over the 4 source classes)
reptile = ReptileInitializer(n_way=4, n_iterations=150, max_epochs=30, random_state=0)
reptile.fit(X_source, y_source)

# %% Fine-tune on half of the target with the user's validation data
retina = load_medmnist(root / "retinamnist.npz")
rng = np.random.default_rng(0)
half = rng.permutation(len(retina.train.target))[: len(retina.train.target) // 2]
reptile.adapt(
    retina.train.images[half],
    retina.train.target[half],
    X_val=retina.val.images,
    y_val=retina.val.target,
)
print(f"stopped after {len(reptile.net_.history)} epochs (best weights restored)")

# %% Quadratic weighted kappa on the official test split, through make_scorer
test = retina.test
print(f"test QWK {qwk_scorer(reptile, test.images, test.target):.3f}")

# %% The initialization in a plain skorch NeuralNetClassifier
import torch  # noqa: E402
from skorch import NeuralNetClassifier  # noqa: E402

# the module returns logits: pair it with CrossEntropyLoss (skorch's default NLLLoss
# expects log-probabilities)
net = NeuralNetClassifier(
    reptile.init_module(n_classes=5),
    criterion=torch.nn.CrossEntropyLoss,
    max_epochs=2,
    train_split=None,
)
X = retina.train.images[half].transpose(0, 3, 1, 2).astype(np.float32) / 255
net.fit(X, retina.train.target[half])
