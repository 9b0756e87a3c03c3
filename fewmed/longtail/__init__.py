"""Training on imbalanced / long-tailed disease distributions.

* :class:`CDCClassifier` - auxiliary decoder + twin classifier (Xu et al., 2021);
  ``decoder=False`` gives the plain CE / WCE / focal baselines;
* :class:`RelationalSubsetsDistiller` - relational subsets knowledge distillation
  (Ju et al., MICCAI 2021): a teacher per class subset distilled into one student;
  ``kd=None`` is plain ERM.

Both are skorch classifiers built on one template,
``fewmed.longtail._base.LongTailClassifier`` (the parameters, checks, backbone and
class-weighted loss they share; itself a ``fewmed._skorch.ImageNetClassifier``).
RSKD's pieces live in modules named for what they hold: ``_subsets`` (which classes
go together), ``_teachers`` (the teachers' data and training), ``_teacher_outputs``
(their outputs mapped to the student's classes), ``_distillation`` (the loss, its
per-class weights and their per-epoch update) and ``_targets`` (multi-label targets,
the validation hold-out, balanced sampling, and the estimator's mixins for them).
See ``docs/architecture.md``.
"""

from ._cdc import CDCClassifier
from ._distillation import relational_kd_loss, relational_weights
from ._rskd import RelationalSubsetsDistiller
from ._subsets import build_subsets
from ._teachers import fit_teacher, fit_teachers

__all__ = [
    "CDCClassifier",
    "RelationalSubsetsDistiller",
    "build_subsets",
    "fit_teacher",
    "fit_teachers",
    "relational_kd_loss",
    "relational_weights",
]
