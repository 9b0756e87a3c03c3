"""Few-shot diagnosis of rare diseases by meta-learning, and the baselines of its tables.

The meta-learners learn from tasks sampled from common diseases and adapt to a
new (rare) one from a few labelled images:

* :class:`DAMLClassifier` - difficulty-aware MAML (Li et al., MICCAI 2020);
  ``eta=0`` is plain MAML;
* :class:`ProtoNetClassifier` - Prototypical Networks (Snell et al., 2017);
* :class:`ReptileInitializer` - a Reptile-learned initialization, transferred and
  fine-tuned on a target data set (Hu et al., MIDL 2018);
* :class:`FineTuneClassifier`, :class:`ConvFeatureExtractor` and
  :class:`FeatureFewShotClassifier` - DAML's Table 1 baselines (fine-tuning, conv
  features + KNN / SVM) under the same ``fit`` / ``adapt`` / ``score`` protocol.

All of them share :class:`FewShotMixin` (``adapt``, ``predict_proba``, episodic
``score``); the meta-learners train on skorch through ``fewmed.fewshot._meta_net``
and the differentiable inner loop of ``fewmed.fewshot._inner_loop``. See
``docs/architecture.md``.
"""

from .._finetune import remove_batchnorm
from ._base import FewShotMixin
from ._baselines import ConvFeatureExtractor, FeatureFewShotClassifier, FineTuneClassifier
from ._daml import DAMLClassifier, difficulty_aware_loss
from ._inner_loop import meta_batch_losses
from ._protonet import ProtoNetClassifier, prototypes, prototypical_loss, squared_distances
from ._reptile import ReptileInitializer
from ._reptile_net import reptile_update

__all__ = [
    "ConvFeatureExtractor",
    "DAMLClassifier",
    "FeatureFewShotClassifier",
    "FewShotMixin",
    "FineTuneClassifier",
    "ProtoNetClassifier",
    "ReptileInitializer",
    "difficulty_aware_loss",
    "meta_batch_losses",
    "prototypes",
    "prototypical_loss",
    "remove_batchnorm",
    "reptile_update",
    "squared_distances",
]
