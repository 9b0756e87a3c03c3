"""RelationalSubsetsDistiller: relational-subsets knowledge distillation (RSKD).

Ju et al., *Relational Subsets Knowledge Distillation for Long-tailed Retinal
Diseases Recognition* (MICCAI 2021). The classes are split into subsets (by
frequency -- "shot-based" -- or by a prior such as region or phenotype); one
teacher is trained per subset on that subset's samples, in parallel; a student is
then trained on all the data with

    L = L_CE (multi-class) or L_BCE (multi-label) + sum_i w_i KD_i,

where ``KD_i`` distils class ``i`` from the teacher of its subset at temperature
``T`` and ``w_i`` (Eq. 3) is recomputed after every epoch from the gap between the
teacher's and the student's performance on class ``i`` on a validation split.
The same estimator gives the ablations and baselines of the paper's Tables 3-4:
``kd="plain"`` (all ``w_i = 1``), ``kd=None`` (ERM), and with ``kd=None``:
``class_weight="balanced"`` (re-weighting), ``loss="focal"`` and
``sampler="balanced"`` (class-balanced re-sampling).
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from skorch.utils import to_tensor

from fewmed._dataset import ArrayDataset
from fewmed._parallel import N_JOBS_CONSTRAINT
from fewmed.longtail._base import LongTailClassifier
from fewmed.longtail._distillation import EpochWeights, relational_kd_loss
from fewmed.longtail._subsets import build_subsets
from fewmed.longtail._targets import BalancedSamplingMixin, MultiLabelMixin, validation_split
from fewmed.longtail._teacher_outputs import distillation_state, teacher_log_probs
from fewmed.longtail._teachers import fit_teachers, teacher_jobs

__all__ = ["RelationalSubsetsDistiller"]

_KD_OPTIONS = (None, "plain", "relational")


class RelationalSubsetsDistiller(MultiLabelMixin, BalancedSamplingMixin, LongTailClassifier):
    """Relational-subsets knowledge distillation for long-tailed classification (RSKD).

    A skorch :class:`~skorch.NeuralNetClassifier` for images (multi-class ``y`` or a
    multi-label ``{0, 1}`` indicator ``Y``) customised through its hooks: the
    teachers are trained in ``get_split_datasets`` (before the student's first
    epoch), ``get_loss`` adds the distillation terms, and a callback updates the
    weights at ``on_epoch_end``. The parameters shared with CDC (``module``,
    ``n_filters``, ``loss``, ``gamma``, ``class_weight`` and skorch's) are declared
    by :class:`fewmed.longtail._base.LongTailClassifier`; the multi-label hooks and
    the ``sampler``'s are ``MultiLabelMixin`` and ``BalancedSamplingMixin``
    (``fewmed.longtail._targets``).

    **Subsets and teachers.** ``subsets="shot"`` groups the classes into
    ``"head"`` / ``"medium"`` / ``"tail"`` by training frequency
    (:func:`fewmed.metrics.frequency_groups` with ``many`` and ``few``); a list or
    dict of groups (labels, or names from ``label_names``) gives region- or
    feature-based subsets. Each teacher is trained on its subset's samples (images
    whose label is in the subset; multi-label: with a positive in the subset) plus
    an *"other"* share: out-of-subset images, drawn at random (seeded) up to the
    size of the subset's largest class. Multi-class teachers predict the subset's
    classes + one "other" class, multi-label teachers the subset's labels (the
    other images are all-negative rows). Without the "other" images a teacher
    would never have seen the images it is asked about for most of the data (and
    a one-class subset, such as HAM10000's head ``nv``, could not be trained).
    Teachers run in parallel (see ``n_jobs``).

    **Distillation** at temperature ``T``, times ``T**2``, ``KL(teacher || student)``.
    Multi-label (the paper's setting): ``KD_i = T**2 * mean_n KL`` of the binary
    distributions ``(q_i, 1 - q_i)``, ``q = sigmoid(z / T)`` (Eq. 1's softmax over
    the two states ``{0, 1}`` of a class). Multi-class: ``KD_i`` distils the samples
    of class ``i``, the KL between the teacher's softmax over its subset's classes
    + "other" and the student's softmax grouped the same way (as in LFME, the
    paper's ref. [13]); see :func:`fewmed.longtail._distillation.relational_kd_loss`.

    **Weights (Eq. 3).** ``w_i = 1`` while ``delta * Acc_T,i >= Acc_S,i``, else
    ``(Acc_T,i - Acc_S,i) / (Acc_T,i (1 - delta))`` clipped to ``[0, 1]``;
    ``Acc`` is the per-class ``weight_metric`` on a stratified validation split of
    ``validation_fraction`` of the data, held out from teachers and student alike
    whenever ``kd`` is not None. Weights start at 1 and are updated after every
    epoch; classes in no subset get 0.

    Parameters
    ----------
    module : {"conv4", "resnet", "resnet18", "vgg"}, nn.Module class or instance, default="conv4"
        Backbone of the student (and of the teachers unless ``teacher`` says
        otherwise). Further arguments: ``module__<name>``.
    n_filters : int or None, default=None
        Width of the default backbones (``None``: the backbone's default).
    subsets : "shot", list of lists or dict of lists, default="shot"
        How to split the classes (see above).
    many, few : float, default=100, 20
        Shot thresholds for ``subsets="shot"``: more than ``many`` training samples
        is "head", fewer than ``few`` is "tail"; below 1 they are fractions of the
        total count.
    label_names : sequence of str or None, default=None
        A name per class (in ``classes_`` order; the columns of a multi-label ``Y``)
        that ``subsets`` may use.
    kd : {"relational", "plain"} or None, default="relational"
        ``"relational"``: weights by Eq. 3; ``"plain"``: every ``w_i = 1``;
        ``None``: no teachers, the student alone (ERM and the loss/sampler
        baselines).
    temperature : float, default=10.0
        ``T`` (3, 10 and 20 in the paper's ablation).
    delta : float, default=0.6
        ``delta`` of Eq. 3.
    weight_metric : {"ap", "accuracy"}, default="ap"
        Per-class performance used in Eq. 3 (the paper's metric is mAP).
    validation_fraction : float, default=0.1
        Share of the data held out for Eq. 3 and the teachers' early stopping
        when ``kd`` is set: per class, ``validation_fraction`` of the classes at
        or above the median class size, less for smaller ones
        (``validation_fraction * sqrt(n_c / n_median)``, at least one image), so
        the tail keeps its training images
        (:func:`fewmed.longtail._targets.validation_split`).
    teacher : dict or None, default=None
        Parameters of the teachers that differ from the student's (e.g.
        ``{"max_epochs": 10, "n_filters": 32}``; a ``max_epochs`` here overrides
        ``teacher_max_steps``); teachers always use ``kd=None``, plain CE / BCE,
        no class weights and no sampler unless given here. They inherit the
        student's ``lr_schedule`` over their own budget.
    teacher_max_steps : "student", int or None, default="student"
        Each teacher's budget in optimiser steps, turned into epochs of its own
        training set (:func:`fewmed.longtail._teachers.teacher_epochs`):
        ``"student"`` gives every teacher as many steps as the student's fit
        (``max_epochs`` epochs of the student's data), so a teacher of a small
        subset sees as many updates as the student instead of a few dozen;
        ``None`` gives the teachers the student's ``max_epochs``.
    teacher_patience : int, float or None, default=0.25
        Early stopping of each teacher on its share of the validation hold-out
        (its subset's samples + an "other" share): training stops after this
        many epochs (a float in ``(0, 1)``: this share of the teacher's epochs)
        without a lower validation loss and the best epoch's weights are kept;
        ``None``: no early stopping (the best epoch is still kept). A share
        suits teachers of very different sizes: a small one runs many short
        epochs and needs several before its evaluation-mode outputs settle.
    n_jobs : int or None, default=None
        Workers for the teachers on the active joblib backend (loky processes
        unless :func:`joblib.parallel_config` chooses dask, ray, ...); ``-1`` for all. Teachers
        train at once, one torch thread each; once none is waiting, the cores of
        finished ones go to those still training, at points planned from the
        subsets' sizes (a seed reproduces for a given ``n_jobs``).
    memory : str, joblib.Memory or None, default=None
        Cache of fitted teachers: fits with the same data, subsets, teacher
        parameters and ``random_state`` (e.g. a sweep over ``temperature``) reuse them.
    loss : {"ce", "focal"}, default="ce"
        Student's base loss: CE (BCE for multi-label) or focal loss.
    gamma : float, default=2.0
        Focal loss focusing parameter.
    class_weight : {"balanced", "inverse", "sqrt_inverse"}, dict, array or None, \
default=None
        Per-class weights of the base loss (``"balanced"``: the RW baseline).
    sampler : {"balanced"} or None, default=None
        ``"balanced"``: class-balanced re-sampling (the RS baseline), seeded;
        multi-label rows are drawn with the weight of their rarest positive label.
    augment : bool, dict or Augment, default=False
        Training augmentation (the teachers then see the same augmented batches).
    optimizer : torch optimizer class, default=torch.optim.Adam
    lr : float, default=1e-3
    lr_schedule : {"cosine", "step"} or None, default=None
        Learning-rate schedule of the student (and of the teachers, over their
        own budget); see :class:`fewmed.longtail._base.LongTailClassifier`.
    max_epochs : int, default=20
    batch_size : int, default=64
    train_split : None, default=None
        Must stay None: the hold-out is ``validation_fraction``.
    predict_nonlinearity : "auto" or callable, default="auto"
        ``"auto"``: softmax (multi-class) or sigmoid (multi-label).
    random_state : int, RandomState or None, default=None
        Seeds the split, the teachers, the "other" draw, the initialisation,
        shuffling, sampling and augmentation.
    device : {"cpu", "cuda", "auto"}, default="cpu"
    verbose : int, default=0
    **kwargs
        Further skorch parameters.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Labels (multi-class) or ``arange(n_labels)`` (multi-label): the columns of
        ``predict_proba``.
    multilabel_ : bool
        Whether ``fit`` saw an indicator matrix.
    subsets_ : dict of str to ndarray
        Subset name -> indices into ``classes_``.
    teachers_ : dict of str to RelationalSubsetsDistiller
        Subset name -> fitted teacher (empty when ``kd=None``).
    teacher_scores_ : ndarray of shape (n_classes,)
        Each class's teacher performance on the validation split (NaN without one).
    teacher_quality_ : dict of str to dict
        Per subset: ``valid_ap_eq3`` (mean of ``teacher_scores_`` over its
        classes) and, from the teacher's own validation (its share of the
        hold-out, at the kept epoch), ``loss``, ``acc``, ``map``, ``best_epoch``
        and ``epochs`` trained. Also in the history's first epoch
        (``teacher_quality``).
    kd_weights_ : ndarray of shape (n_classes,)
        The latest weights (for the next epoch).
    kd_weights_history_ : ndarray of shape (n_epochs, n_classes)
        The weights used in every epoch.
    student_scores_history_ : ndarray of shape (n_epochs, n_classes)
        The student's per-class validation performance after every epoch.
    module_ : nn.Module
        The student network.
    history_ : skorch.History
        Per epoch ``train_loss``, ``train_loss_base``, ``train_loss_kd``,
        ``kd_weights`` and ``valid_class_scores``; ``teacher_quality`` in the
        first epoch; per batch ``lr`` with an ``lr_schedule``.

    Examples
    --------
    >>> import numpy as np
    >>> from fewmed import RelationalSubsetsDistiller
    >>> rng = np.random.default_rng(0)
    >>> X = rng.integers(0, 256, size=(60, 16, 16, 3), dtype=np.uint8)
    >>> y = np.array(["nv"] * 40 + ["mel"] * 14 + ["df"] * 6)
    >>> clf = RelationalSubsetsDistiller(subsets=[["nv"], ["mel", "df"]], n_filters=8,
    ...                                  max_epochs=2, random_state=0).fit(X, y)
    >>> clf.predict_proba(X[:2]).shape
    (2, 3)
    >>> sorted(clf.teachers_), clf.kd_weights_history_.shape
    (['subset0', 'subset1'], (2, 3))
    """

    def __init__(
        self,
        module: Any = "conv4",
        *,
        subsets: Any = "shot",
        many: float = 100,
        few: float = 20,
        label_names: Any = None,
        kd: str | None = "relational",
        temperature: float = 10.0,
        delta: float = 0.6,
        weight_metric: str = "ap",
        validation_fraction: float = 0.1,
        teacher: dict | None = None,
        teacher_max_steps: int | str | None = "student",
        teacher_patience: float | None = 0.25,
        n_jobs: int | None = None,
        memory: Any = None,
        sampler: str | None = None,
        predict_nonlinearity: Any = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(module, predict_nonlinearity=predict_nonlinearity, **kwargs)
        self.subsets = subsets
        self.many = many
        self.few = few
        self.label_names = label_names
        self.kd = kd
        self.temperature = temperature
        self.delta = delta
        self.weight_metric = weight_metric
        self.validation_fraction = validation_fraction
        self.teacher = teacher
        self.teacher_max_steps = teacher_max_steps
        self.teacher_patience = teacher_patience
        self.n_jobs = n_jobs
        self.memory = memory
        self.sampler = sampler

    # ------------------------------------------------------------------ params
    _parameter_constraints: dict = {
        **LongTailClassifier._parameter_constraints,
        "subsets": [StrOptions({"shot"}), list, dict],
        "many": [Interval(Real, 0, None, closed="left")],
        "few": [Interval(Real, 0, None, closed="left")],
        "label_names": ["array-like", None],
        "kd": [StrOptions({"relational", "plain"}), None],
        "temperature": [Interval(Real, 0, None, closed="neither")],
        "delta": [Interval(Real, 0, 1, closed="both")],
        "weight_metric": [StrOptions({"ap", "accuracy"})],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "teacher": [dict, None],
        "teacher_max_steps": [
            StrOptions({"student"}),
            Interval(Integral, 1, None, closed="left"),
            None,
        ],
        "teacher_patience": [
            Interval(Integral, 1, None, closed="left"),
            Interval(Real, 0, 1, closed="neither"),
            None,
        ],
        "n_jobs": N_JOBS_CONSTRAINT,
        "memory": [str, HasMethods(["cache"]), None],
        "sampler": [StrOptions({"balanced"}), None],
        # the validation hold-out of Eq. 3 is set by validation_fraction
        "train_split": [None],
    }

    def _loss_terms(self) -> tuple[str, ...]:
        return ("train_loss_base", "train_loss_kd") if self.kd is not None else ()

    @property
    def _default_callbacks(self):
        cbs = list(super()._default_callbacks)
        cbs.insert(len(cbs) - 1, ("kd_weights", EpochWeights()))  # before print_log
        return cbs

    # ------------------------------------------------------------------ data
    def initialize_module(self):
        """Build the student; a (re)built student gets new teachers in ``get_split_datasets``.

        So teachers are trained once per ``fit``, however often ``check_data`` runs, and
        kept by ``partial_fit`` and ``warm_start`` refits with the same classes.
        """
        super().initialize_module()
        self.teachers_pending_ = True
        return self

    def get_split_datasets(self, X: Any, y: Any = None, **fit_params: Any):
        """The training set, the validation hold-out (kept for Eq. 3) and the teachers.

        Returns skorch's ``(dataset_train, None)``: the training dataset's targets
        are row indices into the arrays this method keeps (labels and, when the
        teachers' outputs can be precomputed, their soft targets).
        """
        if "sample_weight" in fit_params:
            raise TypeError(
                f"{type(self).__name__}.fit does not support sample_weight; use class_weight."
            )
        cache = getattr(self, "fit_cache_", None)
        if cache is None or cache[0] != id(X):
            self.check_data(X, y)
            cache = self.fit_cache_
        Xc, targets = cache[1], cache[2]
        self.fit_cache_ = None
        seeds = self._fit_seeds()
        n_classes = len(self.classes_)
        self.subsets_ = build_subsets(
            self.subsets,
            self.classes_,
            self.data_info_["class_counts"],
            many=self.many,
            few=self.few,
            label_names=self.label_names,
        )
        self.kd_weights_history_ = np.zeros((0, n_classes))
        self.student_scores_history_ = np.zeros((0, n_classes))
        self.teacher_scores_ = np.full(n_classes, np.nan)
        self._kd_state_ = None
        if self.kd is None:
            self.teachers_ = {}
            train = np.arange(len(Xc))
        else:
            train, valid = validation_split(
                targets, self.validation_fraction, seeds["split"], self.multilabel_
            )
            if self.teachers_pending_ or set(getattr(self, "teachers_", {})) != set(self.subsets_):
                self.teachers_ = self._fit_teachers(
                    Xc[train], targets[train], seeds["teachers"], valid=(Xc[valid], targets[valid])
                )
            self._prepare_distillation(Xc[train], targets[train], Xc[valid], targets[valid])
        self.teachers_pending_ = False
        self._train_targets_ = torch.as_tensor(targets[train])
        self._sample_weights_ = self._sampling_weights(targets[train])
        return ArrayDataset(Xc[train], np.arange(len(train))), None

    def _fit_seeds(self) -> dict:
        rs = check_random_state(self.random_state)
        draws = rs.randint(0, 2**31 - 1, size=5)  # the first 3 are the init/loader/augment seeds
        return {"split": int(draws[3]), "teachers": int(draws[4])}

    # ------------------------------------------------------------------ teachers
    def _teacher_jobs(
        self, X: np.ndarray, targets: np.ndarray, seed: int, valid: tuple | None = None
    ) -> list:
        """``(name, params, X, y, columns)`` per teacher (:func:`teacher_jobs`)."""
        return teacher_jobs(self, X, targets, seed, valid)

    def _fit_teachers(
        self, X: np.ndarray, targets: np.ndarray, seed: int, valid: tuple | None = None
    ) -> dict:
        jobs = self._teacher_jobs(X, targets, seed, valid)
        return fit_teachers(jobs, n_jobs=self.n_jobs, memory=self.memory)

    def _teacher_log_probs(self, X: Any, temperature: float, y: Any = None) -> torch.Tensor:
        """The teachers' soft targets at ``temperature`` (:func:`teacher_log_probs`)."""
        return teacher_log_probs(
            self.teachers_,
            self.subsets_,
            X,
            temperature,
            n_classes=len(self.classes_),
            multilabel=self.multilabel_,
            y=y,
            device=self.device,
        )

    def _prepare_distillation(self, X_train, y_train, X_valid, y_valid) -> None:
        """The teachers' Eq. 3 scores, their quality, the soft targets (``distillation_state``)."""
        self.teacher_scores_, self.teacher_quality_, self._kd_state_ = distillation_state(
            self, X_train, y_train, X_valid, y_valid
        )
        self.kd_weights_ = self._kd_state_["has_teacher"].astype(np.float64)

    # ------------------------------------------------------------------ loss
    def get_loss(self, y_pred: Any, y_true: Any, X: Any = None, training: bool = False):
        """``L = L_CE / L_BCE + sum_i w_i KD_i`` (only the base loss without teachers).

        Parameters
        ----------
        y_pred : Tensor of shape (n, n_classes)
            Student logits.
        y_true : Tensor
            During ``fit``: row indices into the training arrays; otherwise class
            codes ``(n,)`` or an indicator ``(n, n_classes)``.
        X : Tensor of shape (n, C, H, W), default=None
            The (augmented) batch; the teachers see it when their outputs are not
            precomputed.
        training : bool, default=False

        Returns
        -------
        Tensor
        """
        logits = y_pred
        y_true = to_tensor(y_true, device="cpu")
        stored = getattr(self, "_train_targets_", None)
        idx = None
        if training and stored is not None:
            idx = y_true.long()
            targets = stored[idx]
        else:
            targets = y_true
        targets = targets.to(logits.device)
        targets = targets.float() if self.multilabel_ else targets.long()
        base = self.criterion_(logits, targets)
        state = getattr(self, "_kd_state_", None)
        if self.kd is None or state is None or not training:
            return base
        if state["teacher_lp"] is not None and idx is not None:
            teacher_lp = state["teacher_lp"][idx].to(logits.device)
        else:
            teacher_lp = self._teacher_log_probs(X, float(self.temperature), targets.cpu())
        weights = torch.as_tensor(self.kd_weights_, dtype=logits.dtype)
        kd, _ = relational_kd_loss(
            logits, teacher_lp, weights, float(self.temperature), self.multilabel_, targets
        )
        self.last_terms_ = {"train_loss_base": base.item(), "train_loss_kd": kd.item()}
        return base + kd

    def on_train_end(self, net, X=None, y=None, **kwargs):
        """Drop the fit-time arrays (labels, soft targets, validation images)."""
        self._train_targets_ = None
        self._sample_weights_ = None
        self._kd_state_ = None
        return super().on_train_end(net, X=X, y=y, **kwargs)

    def __getstate__(self):
        state = super().__getstate__()
        for key in ("_train_targets_", "_sample_weights_", "_kd_state_"):
            state.pop(key, None)
        return state
