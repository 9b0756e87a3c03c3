"""
Your own backbone
=================

Every estimator takes ``module=``: fewmed's backbones by name, or any torch
module. A module that does not follow fewmed's backbone protocol is wrapped by
:class:`~fewmed.nn.BackboneAdapter`, which finds its last ``nn.Linear`` (the
head), gives it a new head when the number of classes changes, pools its
features for embeddings and measures its feature map. Here one small
``nn.Sequential`` serves a long-tailed classifier
(:class:`~fewmed.longtail.CDCClassifier`, whose decoder is built from the
feature map) and a few-shot one (:class:`~fewmed.fewshot.ProtoNetClassifier`,
which uses the embeddings).
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
from torch import nn

from fewmed import CDCClassifier, ProtoNetClassifier
from fewmed.datasets import make_synthetic_lesions
from fewmed.nn import BackboneAdapter, follows_protocol

data = make_synthetic_lesions(n_classes=4, n_per_class=40, size=28, random_state=0)
X, y = data.images, data.target
print("data:", data.DESCR.splitlines()[0])


def my_backbone() -> nn.Module:
    """A user's network: two conv blocks, then a linear head."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 10),
    )


adapter = BackboneAdapter(my_backbone(), input_shape=(3, 28, 28), n_classes=4)
print("follows the protocol:", follows_protocol(adapter))
print("head:", adapter.head_path, "| feature map:", adapter.feature_shape)

# %%
# The instance is copied, never trained in place
clf = CDCClassifier(my_backbone(), max_epochs=2, random_state=0).fit(X[::2], y[::2])
print("CDC accuracy on held-out images:", clf.score(X[1::2], y[1::2]))

# %%
# A class (or factory) works too: built at fit, wrapped the same way
proto = ProtoNetClassifier(
    module=my_backbone,
    n_iterations=20,
    iterations_per_epoch=10,
    n_valid_tasks=5,
    random_state=0,
    verbose=0,
)
proto.fit(X[y < 2], y[y < 2])
print(
    "ProtoNet 5-shot AUC on two unseen classes:",
    proto.score_episodes(X[y >= 2], y[y >= 2], n_tasks=10),
)

fig, ax = plt.subplots(figsize=(4, 3))
history = clf.history[:, "train_loss"]
ax.plot(np.arange(1, len(history) + 1), history, "o-")
ax.set(xlabel="epoch", ylabel="training loss", title="CDC with your own backbone")
fig.tight_layout()
