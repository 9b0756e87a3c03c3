"""The few-shot family's templates: what every few-shot estimator and meta-learner shares.

:class:`FewShotMixin` is the protocol: ``fit`` learns from common classes,
``adapt(X_support, y_support)`` specialises to a new task (``classes_`` become that
task's labels), ``predict_proba`` / ``predict`` / ``decision_function`` answer on
the adapted task, and ``score`` samples episodes from the classes it is given and
returns their mean AUC, so ``GridSearchCV`` / ``cross_val_score`` work with
:class:`~fewmed.model_selection.LeaveClassesOut`. Its ``fit`` is a template (as
imbalanced-learn's ``fit_resample`` calls ``_fit_resample``): it validates the
parameters and the data, calls ``_fit(X, y)``, and forgets a previous adaptation.
A subclass implements ``_fit``, ``_adapt(Xs, ys)`` and ``_predict_logits(X)``.

:class:`BaseMetaLearner` is the template of the meta-learners trained on skorch
(DAML, ProtoNet, Reptile): its ``_fit`` draws the seed, samples the training and
validation tasks (:class:`~fewmed.fewshot._tasks.TaskDataset`), builds the network
and its :class:`~fewmed.fewshot._meta_net.MetaNet`, and meta-trains. A meta-learner
says only what is its own: ``_net_class`` (its meta-update), ``_backbone_kwargs``,
``_lr_schedule`` and, where they differ, ``_outer_lr``, ``_train_n_shot`` and
``_train_n_query``.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from fewmed._parallel import N_JOBS_CONSTRAINT, episode_outputs
from fewmed._validation import (
    AUGMENT_CONSTRAINT,
    DEVICE_CONSTRAINT,
    MODULE_CONSTRAINT,
    check_labels,
    resolve_device,
    seeded_torch,
    validate_images,
)
from fewmed.fewshot._meta_net import IterationSchedule, MetaNet, fit_meta_net
from fewmed.fewshot._tasks import TaskDataset
from fewmed.metrics import ConfidenceInterval, mean_confidence_interval, task_aucs
from fewmed.model_selection import EpisodeSampler, TaskDistribution
from fewmed.nn import build_backbone, make_augment

__all__ = ["META_CONSTRAINTS", "BaseMetaLearner", "FewShotMixin", "MetaNetAttributes"]

#: Parameter constraints every meta-learner shares (backbone width, task
#: sampling, the meta-training loop, scoring); each adds its own to these.
META_CONSTRAINTS: dict = {
    "n_filters": [Interval(Integral, 1, None, closed="left")],
    "n_way": [Interval(Integral, 2, None, closed="left")],
    "n_shot": [Interval(Integral, 1, None, closed="left")],
    "n_query": [Interval(Integral, 1, None, closed="left")],
    "meta_batch_size": [Interval(Integral, 1, None, closed="left")],
    "n_iterations": [Interval(Integral, 0, None, closed="left")],
    "n_score_tasks": [Interval(Integral, 1, None, closed="left")],
    "n_jobs": N_JOBS_CONSTRAINT,
    "iterations_per_epoch": [Interval(Integral, 1, None, closed="left")],
    "n_valid_tasks": [Interval(Integral, 1, None, closed="left")],
    "callbacks": [list, None],
    "module": MODULE_CONSTRAINT,
    "augment": AUGMENT_CONSTRAINT,
    "device": DEVICE_CONSTRAINT,
    "verbose": ["verbose"],
    "random_state": ["random_state"],
}


class FewShotMixin(ClassifierMixin, BaseEstimator):
    """fit / adapt / predict / score for episodic few-shot estimators.

    ``fit`` is a template: subclasses implement ``_fit(Xt, y, **fit_params)`` on
    validated float images ``Xt`` ``(n, C, H, W)`` and labels ``y``.
    """

    def fit(self, X, y=None, **fit_params):
        """Learn from the common classes of ``(X, y)`` (or a ``TaskDistribution``).

        Validates the parameters (``_parameter_constraints``) and the data, runs the
        estimator's own ``_fit``, then forgets the adaptation of the previous fit (a
        fit that raises leaves the estimator as it was, where ``_fit`` allows).

        Parameters
        ----------
        X : array-like of images or TaskDistribution
            ``(n, H, W[, C])`` uint8 or ``(n, C, H, W)`` float.
        y : array-like of shape (n,), default=None
            Labels (omit with a ``TaskDistribution``).
        **fit_params
            Passed to ``_fit`` (the meta-learners' validation tasks).

        Returns
        -------
        self
        """
        before = dict(self.__dict__)
        try:
            if hasattr(self, "_parameter_constraints"):
                self._validate_params()
            Xt, y = self._validate_fit_input(X, y)
            self._fit(Xt, y, **fit_params)
        except BaseException:  # bad input, a diverging run, an interrupt: as before
            self.__dict__.clear()
            self.__dict__.update(before)
            raise
        self._forget_adaptation()  # what adapt set belongs to the previous fit
        return self

    def _fit(self, Xt: np.ndarray, y: np.ndarray, **fit_params) -> None:  # pragma: no cover
        raise NotImplementedError

    # --------------------------------------------------------------- helpers
    def _task_shape(self) -> tuple[int, int, int]:
        return (
            getattr(self, "n_way", 2),
            getattr(self, "n_shot", 5),
            getattr(self, "n_query", 15),
        )

    def _validate_fit_input(self, X, y):
        """Unpack a TaskDistribution, validate images and labels, set ``input_shape_``."""
        shape = None
        if isinstance(X, TaskDistribution):
            if y is not None:
                raise ValueError("pass either a TaskDistribution or (X, y), not both.")
            shape = (X.n_way, X.n_shot, X.n_query)
            X, y = X.X, X.y
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None: "
                "fit needs labels y (or a TaskDistribution as X)."
            )
        Xt = validate_images(self, X, reset=True)
        y = check_labels(y, len(Xt), estimator=type(self).__name__)
        n_way, n_shot, n_query = self._task_shape()
        if shape is not None:
            n_way = shape[0] or n_way
            n_shot = shape[1] or n_shot
            n_query = shape[2] if shape[2] is not None else n_query
        self.task_shape_ = (n_way, n_shot, n_query)
        self.train_classes_ = np.unique(y)
        return Xt, y

    def _seeded_backbone(self, seed: int, n_classes: int | None, **kwargs) -> torch.nn.Module:
        """``module`` built for ``input_shape_`` with weights from ``seed`` (no global RNG)."""
        c, h, w = self.input_shape_
        with seeded_torch(seed):
            return build_backbone(
                self.module,
                in_channels=c,
                input_shape=(h, w),
                n_classes=n_classes,
                n_filters=self.n_filters,
                **kwargs,
            )

    def _forget_adaptation(self) -> None:
        """Drop what ``adapt`` set (a refit invalidates it)."""
        for a in self._adapted_attrs:
            if hasattr(self, a):
                delattr(self, a)

    def _check_X(self, X, name: str = "X") -> torch.Tensor:
        check_is_fitted(self, "input_shape_")
        return torch.from_numpy(validate_images(self, X, reset=False, name=name))

    # ------------------------------------------------------------ protocol
    def adapt(self, X, y):
        """Specialise to a new task from its support set.

        Parameters
        ----------
        X : array-like of images
            Support images, of the same size and channels as in ``fit``.
        y : array-like of shape (n_support,)
            Labels of the new task (any values); ``classes_`` becomes ``unique(y)``.

        Returns
        -------
        self
        """
        check_is_fitted(self, "input_shape_")
        Xs = self._check_X(X)
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(Xs):
            raise ValueError(
                f"y must be 1-D with one label per support image; got shape {y.shape} for "
                f"{len(Xs)} images."
            )
        classes, ys = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(
                f"the support set has a single class ({classes[0]!r}); adapt needs at least two "
                "classes (a task is n_way-way)."
            )
        self._check_n_classes(len(classes))
        self.classes_ = classes
        self._adapt(Xs, torch.as_tensor(ys, dtype=torch.long))
        return self

    def _check_n_classes(self, n: int) -> None:
        """Hook: refuse tasks of a width the estimator cannot serve."""

    def _check_adapted(self) -> None:
        check_is_fitted(self, "input_shape_")
        if not hasattr(self, "classes_"):
            raise NotFittedError(
                f"{type(self).__name__} is meta-trained but not adapted: call "
                "adapt(X_support, y_support) on the new task before predicting."
            )

    def decision_function(self, X) -> np.ndarray:
        """Logits ``(n, n_classes)``, or the positive-class margin ``(n,)`` for two classes."""
        Xt = self._check_X(X)  # validated first: bad input is named even before adapt
        self._check_adapted()
        logits = self._predict_logits(Xt)
        if logits.shape[1] == 2:
            return logits[:, 1] - logits[:, 0]
        return logits

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities on the adapted task, columns in the order of ``classes_``."""
        Xt = self._check_X(X)  # validated first: bad input is named even before adapt
        self._check_adapted()
        logits = torch.as_tensor(self._predict_logits(Xt))
        return torch.softmax(logits.double(), dim=1).numpy()

    def predict(self, X) -> np.ndarray:
        """Most probable label of the adapted task."""
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(1)]

    def episode_scores(
        self,
        X,
        y,
        *,
        n_tasks: int | None = None,
        n_shot: int | None = None,
        n_query: int | None = None,
        random_state=None,
        n_jobs: int | None = None,
    ) -> np.ndarray:
        """AUC of each of ``n_tasks`` tasks sampled from ``(X, y)``.

        Each task draws ``n_way`` classes, adapts a copy of the meta-trained model
        to ``n_shot`` support images per class and scores the ``n_query`` query
        images per class. The estimator itself is left as it was. The tasks
        depend only on ``(y, n_way, n_shot, n_query, n_tasks, random_state)``, so
        two estimators scored with the same arguments see the same tasks, and
        :func:`fewmed.metrics.paired_confidence_interval` compares them task by
        task. ``n_jobs`` spreads the tasks over workers of the active joblib backend
        (``None``: the estimator's ``n_jobs``; see
        :func:`fewmed._parallel.episode_outputs`): the scores equal the serial ones.

        Returns
        -------
        ndarray of shape (n_tasks,)
        """
        check_is_fitted(self, "input_shape_")
        Xt = self._check_X(X)
        y = np.asarray(y)
        n_way, k, q = self.task_shape_
        k = n_shot or k
        q = q if n_query is None else n_query
        n_tasks = n_tasks or getattr(self, "n_score_tasks", 100)
        seed = self.random_state if random_state is None else random_state
        sampler = EpisodeSampler(n_way, k, q, random_state=_score_seed(seed))
        n_jobs = getattr(self, "n_jobs", None) if n_jobs is None else n_jobs
        outputs = episode_outputs(self, Xt.numpy(), sampler.sample(y, n_tasks), n_jobs)
        return task_aucs([t for t, _ in outputs], [s for _, s in outputs])

    def score_episodes(
        self,
        X,
        y,
        *,
        n_tasks: int | None = None,
        n_shot: int | None = None,
        n_query: int | None = None,
        random_state=None,
        n_jobs: int | None = None,
    ) -> ConfidenceInterval:
        """Mean AUC and 95% CI over tasks sampled from ``(X, y)``.

        The summary of :meth:`episode_scores` (same arguments, same tasks).
        """
        return mean_confidence_interval(
            self.episode_scores(
                X,
                y,
                n_tasks=n_tasks,
                n_shot=n_shot,
                n_query=n_query,
                random_state=random_state,
                n_jobs=n_jobs,
            )
        )

    def score(self, X, y, sample_weight=None) -> float:
        """Mean AUC over ``n_score_tasks`` episodes sampled from ``(X, y)``.

        ``X, y`` hold classes unseen in ``fit`` (a class-disjoint split), so
        ``GridSearchCV(..., cv=LeaveClassesOut(...))`` selects what generalises to
        new diseases. The episodes run on the estimator's ``n_jobs`` workers.
        """
        if sample_weight is not None:
            raise ValueError("score does not support sample_weight (it averages over tasks).")
        return float(self.score_episodes(X, y).mean)

    # ----------------------------------------------- adapted-state plumbing
    _adapted_attrs: tuple[str, ...] = ("classes_",)

    def _save_adapted(self) -> dict:
        return {a: getattr(self, a) for a in self._adapted_attrs if hasattr(self, a)}

    def _restore_adapted(self, saved: dict) -> None:
        for a in self._adapted_attrs:
            if a in saved:
                setattr(self, a, saved[a])
            elif hasattr(self, a):
                delattr(self, a)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = True
        tags.input_tags.three_d_array = True
        tags.non_deterministic = False
        return tags


class BaseMetaLearner(FewShotMixin):
    """Template of the meta-learners on skorch: seed, tasks, network, meta-training.

    ``fit(X, y, X_valid=None, y_valid=None)`` (from :class:`FewShotMixin`) ends in
    :meth:`_fit`, which draws the run's seed from ``random_state``, samples the
    ``n_iterations * meta_batch_size`` training tasks and the ``n_valid_tasks``
    validation tasks (both before a previous fit is replaced, so bad input leaves
    it intact), builds the network (:meth:`_make_net`) and meta-trains it with
    :func:`~fewmed.fewshot._meta_net.fit_meta_net`. With ``warm_start=True`` a refit
    on images of the same shape continues the previous run and its task stream.

    A subclass sets ``_net_class`` (a :class:`~fewmed.fewshot._meta_net.MetaNet`
    reading the estimator's hyper-parameters through its ``estimator``) and
    implements :meth:`_backbone_kwargs` and :meth:`_lr_schedule`.
    """

    _net_class: type[MetaNet] = MetaNet
    _meta_optimizer: type[torch.optim.Optimizer] = torch.optim.Adam

    def fit(self, X, y=None, X_valid=None, y_valid=None):
        """Meta-train on tasks sampled from ``(X, y)`` or a ``TaskDistribution``.

        Parameters
        ----------
        X : array-like of images or TaskDistribution
            Images of the common classes, ``(n, H, W[, C])`` uint8 or
            ``(n, C, H, W)`` float.
        y : array-like of shape (n,), default=None
            Their labels (omit with a ``TaskDistribution``).
        X_valid, y_valid : array-like, default=None
            Images and labels for ``n_valid_tasks`` fixed validation tasks (for
            instance classes held out of ``y``): their query loss and accuracy
            after adaptation are ``valid_loss`` / ``valid_acc`` in the history, so
            skorch's ``EarlyStopping`` or ``Checkpoint`` in ``callbacks`` can
            follow them.

        Returns
        -------
        self
        """
        fitted_shape = getattr(self, "input_shape_", None)
        return super().fit(X, y, X_valid=X_valid, y_valid=y_valid, fitted_shape=fitted_shape)

    def _fit(self, Xt, y, X_valid=None, y_valid=None, fitted_shape=None) -> None:
        n_query = self._train_n_query()
        resume = (
            getattr(self, "warm_start", False)
            and getattr(self, "meta_net_", None) is not None
            and fitted_shape == self.input_shape_
        )
        if resume:
            seed = self.meta_net_.seed
        else:
            seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        train = self._train_tasks(Xt, y, seed, n_query)
        valid = self._valid_tasks(X_valid, y_valid, seed + 1)
        if resume:  # what a warm start may change; the net reads the rest from self
            for k, v in self._skorch_params().items():
                setattr(self.meta_net_, k, v)
        else:
            self.meta_net_ = self._make_net(seed)
        self._forget_adaptation()  # before training: a diverging run must not keep it
        fit_meta_net(self.meta_net_, train, valid, resume=resume)

    # ----------------------------------------------------------- the hooks
    def _backbone_kwargs(self) -> dict:
        """``n_classes`` of the head (``None``: no head) and the backbone's options."""
        return {"n_classes": self.task_shape_[0]}

    def _lr_schedule(self) -> tuple[str, IterationSchedule]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _outer_lr(self) -> float:
        """The outer loop's learning rate (the net's ``lr``)."""
        return self.meta_lr

    def _train_n_shot(self) -> int:
        """Support images per class of the training tasks."""
        return self.task_shape_[1]

    def _train_n_query(self) -> int:
        """Query images per class of the training tasks."""
        return self.task_shape_[2]

    def _skorch_params(self) -> dict:
        """The net's skorch parameters that follow the estimator's (also on a warm start)."""
        return {"lr": self._outer_lr(), "verbose": self.verbose}

    def _make_net(self, seed: int) -> MetaNet:
        """The network (seeded by ``seed``) and its meta-training net."""
        module = self._seeded_backbone(seed, **self._backbone_kwargs())
        device = resolve_device(self.device)
        return self._net_class(
            module.to(device),
            estimator=self,
            optimizer=self._meta_optimizer,
            batch_size=self.meta_batch_size,
            callbacks=[self._lr_schedule(), *(self.callbacks or [])],
            device=str(device),
            seed=seed,
            **self._skorch_params(),
        )

    # ----------------------------------------------------------- the tasks
    def _train_tasks(self, Xt: np.ndarray, y: np.ndarray, seed: int, n_query: int) -> TaskDataset:
        """The ``n_iterations * meta_batch_size`` seeded meta-training tasks of ``(Xt, y)``."""
        n_way, n_shot = self.task_shape_[0], self._train_n_shot()
        try:
            return TaskDataset(
                torch.from_numpy(Xt),
                y,
                n_way=n_way,
                n_shot=n_shot,
                n_query=n_query,
                seed=seed,
                n_tasks=self.n_iterations * self.meta_batch_size,
                tasks_per_epoch=self.iterations_per_epoch * self.meta_batch_size,
                augment=make_augment(self.augment),
            )
        except ValueError as exc:
            if n_shot == self.task_shape_[1]:
                raise
            raise ValueError(
                f"{exc} Meta-training tasks use n_train_shot={n_shot} support images per "
                "class (not n_shot): lower n_train_shot."
            ) from exc

    def _valid_tasks(self, X_valid, y_valid, seed: int):
        """``n_valid_tasks`` fixed tasks of ``(X_valid, y_valid)`` to validate meta-training."""
        if X_valid is None and y_valid is None:
            return None
        if X_valid is None or y_valid is None:
            raise ValueError("pass both X_valid and y_valid, or neither.")
        Xv = self._check_X(X_valid, name="X_valid")
        y_valid = np.asarray(y_valid)
        if y_valid.shape != (len(Xv),):
            raise ValueError(
                f"y_valid must be 1-D with one label per image of X_valid; got shape "
                f"{y_valid.shape} for {len(Xv)} images."
            )
        n_way, n_shot, n_query = self.task_shape_
        return TaskDataset(
            Xv,
            y_valid,
            n_way=n_way,
            n_shot=n_shot,
            n_query=max(n_query, 1),
            seed=seed,
            n_tasks=self.n_valid_tasks,
        )


class MetaNetAttributes:
    """``module_``, ``history_`` and ``n_iter_`` read from the skorch net ``meta_net_``."""

    @property
    def module_(self) -> torch.nn.Module:
        return self.meta_net_.module_

    @property
    def history_(self) -> list[dict]:
        return self.meta_net_.iteration_records()

    @property
    def n_iter_(self) -> int:
        return self.meta_net_.n_iter_


def _score_seed(random_state) -> int:
    """A fixed episode seed for scoring (so every candidate sees the same tasks)."""
    if isinstance(random_state, (int, np.integer)):
        return int(random_state) + 7919
    return 7919
