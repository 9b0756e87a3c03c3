"""Training on imbalanced / long-tailed disease distributions.

* :class:`CDCClassifier` - auxiliary decoder + twin classifier (Xu et al., 2021);
  ``decoder=False`` gives the plain CE / WCE / focal baselines;
* :class:`RelationalSubsetsDistiller` - relational subsets knowledge distillation
  (Ju et al., MICCAI 2021): a teacher per class subset distilled into one student;
  ``kd=None`` is plain ERM.

Both are skorch classifiers built on ``fewmed._skorch.ImageNetClassifier``. RSKD's
pieces live in modules named for what they hold: ``_subsets`` (which classes go
together), ``_teachers`` (the teachers' data, training and outputs) and
``_distillation`` (the loss and its per-class weights). See ``docs/architecture.md``.
"""

from ._cdc import CDCClassifier
from ._distillation import build_subsets, relational_kd_loss, relational_weights
from ._rskd import RelationalSubsetsDistiller

__all__ = [
    "CDCClassifier",
    "RelationalSubsetsDistiller",
    "build_subsets",
    "relational_kd_loss",
    "relational_weights",
]
