"""Few-shot baselines of DAML's Table 1 under the same fit / adapt / score protocol.

* :class:`FineTuneClassifier` - a network pre-trained (with augmentation) on the
  common classes, its head replaced and every weight fine-tuned on the support set;
* :class:`ConvFeatureExtractor` - a scikit-learn transformer: the pre-trained
  network's features;
* :class:`FeatureFewShotClassifier` - conv features + any scikit-learn classifier
  (KNN, SVM) in a ``Pipeline`` fitted on each support set.

MAML is ``DAMLClassifier(eta=0)``. Pre-training, the transfer to a new head and the
fine-tuning steps are fewmed's one fine-tuning path, :mod:`fewmed._finetune`.
"""

from __future__ import annotations

import zlib
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer
from sklearn.utils._param_validation import HasMethods, Interval
from sklearn.utils.validation import check_is_fitted
from skorch.history import History

from fewmed._finetune import pretrain, train_steps, transfer
from fewmed._parallel import N_JOBS_CONSTRAINT
from fewmed._validation import (
    AUGMENT_CONSTRAINT,
    DEVICE_CONSTRAINT,
    MODULE_CONSTRAINT,
    check_labels,
    check_random_state_torch,
    seed_int,
    validate_images,
)
from fewmed.fewshot._base import FewShotMixin
from fewmed.nn import make_augment

__all__ = ["ConvFeatureExtractor", "FeatureFewShotClassifier", "FineTuneClassifier"]

_positive = Interval(Integral, 1, None, closed="left")
#: The pre-training parameters ConvFeatureExtractor and FineTuneClassifier share.
_PRETRAIN_CONSTRAINTS: dict = {
    "module": MODULE_CONSTRAINT,
    "n_filters": [_positive],
    "max_epochs": [_positive],
    "lr": [Interval(Real, 0, None, closed="neither")],
    "batch_size": [_positive],
    "augment": AUGMENT_CONSTRAINT,
    "device": DEVICE_CONSTRAINT,
    "random_state": ["random_state"],
    "verbose": ["verbose"],
}
#: The task shape of ``score`` and its workers.
_TASK_CONSTRAINTS: dict = {
    "n_way": [Interval(Integral, 2, None, closed="left")],
    "n_shot": [_positive],
    "n_query": [_positive],
    "n_score_tasks": [_positive],
    "n_jobs": N_JOBS_CONSTRAINT,
}


def _pretrain(
    est: ConvFeatureExtractor | FineTuneClassifier, X: np.ndarray, y: np.ndarray
) -> tuple[torch.nn.Module, History]:
    """Supervised pre-training on the common classes with ``est``'s settings (plain CE)."""
    backbone, history = pretrain(
        est.module,
        X,
        y,
        n_filters=est.n_filters,
        max_epochs=est.max_epochs,
        lr=est.lr,
        batch_size=est.batch_size,
        augment=est.augment,
        channels_last=True,  # the CPU layout these baselines have always pre-trained in
        device=est.device,
        random_state=est.random_state,
        verbose=est.verbose,
    )
    return backbone.cpu().eval(), history


class ConvFeatureExtractor(TransformerMixin, BaseEstimator):
    """Features of a network pre-trained on labelled images (a scikit-learn transformer).

    ``fit`` trains the backbone as a plain classifier (cross-entropy, optional
    augmentation); ``transform`` returns the flattened (Conv4) or pooled (ResNet)
    feature map of each image.

    Parameters
    ----------
    module : str or nn.Module class, default="conv4"
    n_filters : int, default=64
    max_epochs : int, default=10
    lr : float, default=1e-3
    batch_size : int, default=64
    augment : bool, default=True
    device : str, default="cpu"
    random_state : int or None, default=None
    verbose : int, default=0

    Examples
    --------
    >>> from fewmed.datasets import make_synthetic_lesions
    >>> d = make_synthetic_lesions(n_classes=3, n_per_class=20, size=16, random_state=0)
    >>> fx = ConvFeatureExtractor(n_filters=8, max_epochs=1, random_state=0)
    >>> fx.fit(d.images, d.target).transform(d.images[:2]).shape
    (2, 8)
    """

    def __init__(
        self,
        module="conv4",
        *,
        n_filters=64,
        max_epochs=10,
        lr=1e-3,
        batch_size=64,
        augment=True,
        device="cpu",
        random_state=None,
        verbose=0,
    ):
        self.module = module
        self.n_filters = n_filters
        self.max_epochs = max_epochs
        self.lr = lr
        self.batch_size = batch_size
        self.augment = augment
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    _parameter_constraints: dict = _PRETRAIN_CONSTRAINTS

    def fit(self, X, y):
        """Pre-train the backbone on ``(X, y)``.

        Parameters
        ----------
        X : array-like of images
            ``(n, H, W[, C])`` uint8 or ``(n, C, H, W)`` float.
        y : array-like of shape (n,)
            Their labels (at least two classes).

        Returns
        -------
        self
        """
        self._validate_params()
        if y is None:
            raise ValueError(
                "ConvFeatureExtractor requires y to be passed, but the target y is None: it "
                "pre-trains a classifier on labelled images."
            )
        Xt = validate_images(self, X, reset=True)
        y = check_labels(y, len(Xt), estimator=type(self).__name__)
        self.backbone_, self.history_ = _pretrain(self, Xt, y)
        return self

    def transform(self, X) -> np.ndarray:
        """Feature vectors ``(n, feature_dim)`` of the images.

        Parameters
        ----------
        X : array-like of images
            Of the size and channels seen in ``fit``.

        Returns
        -------
        ndarray of shape (n, feature_dim)
        """
        check_is_fitted(self, "backbone_")
        Xt = validate_images(self, X, reset=False)
        out = []
        with torch.no_grad():
            for i in range(0, len(Xt), 512):
                x = torch.from_numpy(Xt[i : i + 512])
                out.append(self.backbone_.embed(self.backbone_.forward_features(x)))
        return torch.cat(out).numpy()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.transformer_tags.preserves_dtype = ["float32"]  # the network's features
        return tags


class FeatureFewShotClassifier(FewShotMixin):
    """Conv features + a scikit-learn classifier fitted on each support set.

    ``fit`` pre-trains ``features`` on the common classes; ``adapt`` fits
    ``Pipeline([FrozenEstimator(features_), classifier])`` on the support set (the
    frozen features are not refitted), available as ``pipeline_``.

    Parameters
    ----------
    features : transformer, default=None
        ``None`` is ``ConvFeatureExtractor(random_state=random_state)``.
    classifier : estimator, default=None
        ``None`` is ``make_pipeline(Normalizer(), KNeighborsClassifier(1))``.
    n_way, n_shot, n_query : int, default=2, 5, 15
        Task shape used by ``score``.
    n_score_tasks : int, default=100
    n_jobs : int or None, default=None
        Workers of ``score`` / ``episode_scores``' evaluation episodes, on the
        active ``joblib.parallel_config`` backend (``None``: 1, ``-1``: every core;
        0 or a float raise ``InvalidParameterError``, a ``ValueError``); the scores
        equal the serial ones.
    random_state : int or None, default=None

    Examples
    --------
    >>> from sklearn.svm import LinearSVC
    >>> from fewmed.datasets import make_synthetic_lesions
    >>> d = make_synthetic_lesions(n_classes=4, n_per_class=20, size=16, random_state=0)
    >>> fx = ConvFeatureExtractor(n_filters=8, max_epochs=1, random_state=0)
    >>> rare = d.target >= 2
    >>> clf = FeatureFewShotClassifier(fx, LinearSVC()).fit(d.images[~rare], d.target[~rare])
    >>> clf.adapt(d.images[rare], d.target[rare]).predict(d.images[:2]).shape
    (2,)
    """

    _adapted_attrs = ("classes_", "pipeline_")
    _parameter_constraints: dict = {
        "features": [HasMethods(["fit", "transform"]), None],
        "classifier": [HasMethods(["fit", "predict"]), None],
        **_TASK_CONSTRAINTS,
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        features=None,
        classifier=None,
        *,
        n_way=2,
        n_shot=5,
        n_query=15,
        n_score_tasks=100,
        n_jobs=None,
        random_state=None,
    ):
        self.features = features
        self.classifier = classifier
        self.n_way = n_way
        self.n_shot = n_shot
        self.n_query = n_query
        self.n_score_tasks = n_score_tasks
        self.n_jobs = n_jobs
        self.random_state = random_state

    def _fit(self, Xt: np.ndarray, y: np.ndarray) -> None:
        """Pre-train the feature extractor on the common classes."""
        features = self.features or ConvFeatureExtractor(random_state=self.random_state)
        self.features_ = clone(features).fit(Xt, y)

    def _adapt(self, Xs: torch.Tensor, ys: torch.Tensor) -> None:
        clf = self.classifier or make_pipeline(Normalizer(), KNeighborsClassifier(1))
        self.pipeline_ = make_pipeline(FrozenEstimator(self.features_), clone(clf))
        self.pipeline_.fit(Xs.numpy(), ys.numpy())

    def _predict_logits(self, X: torch.Tensor) -> np.ndarray:
        X = X.numpy()
        n = len(self.classes_)
        if hasattr(self.pipeline_, "predict_proba"):
            try:
                proba = self.pipeline_.predict_proba(X)
                return np.log(np.clip(proba, 1e-6, 1.0))
            except AttributeError:
                pass
        d = self.pipeline_.decision_function(X)
        if n == 2:
            d = np.asarray(d, dtype=float)
            return np.stack([-d / 2, d / 2], axis=1)
        return np.asarray(d, dtype=float)


class FineTuneClassifier(FewShotMixin):
    """Fine-tuning baseline: pre-train on common classes, fine-tune on the support set.

    ``fit`` trains the backbone as a plain classifier with augmentation (the
    paper's "Finetune + Aug"), or reuses the backbone of an already fitted
    ``extractor``. ``adapt`` replaces the head by a new one for the task's classes
    and fine-tunes every weight for ``n_adapt_steps`` Adam steps on the augmented
    support set, with BatchNorm statistics frozen at their pre-training values (a
    10-image support set cannot estimate them).

    Parameters
    ----------
    module : str or nn.Module class, default="conv4"
    n_filters : int, default=64
    max_epochs : int, default=10
        Pre-training epochs.
    lr : float, default=1e-3
        Pre-training learning rate.
    batch_size : int, default=64
    augment : bool, default=True
        Augmentation while pre-training and while fine-tuning on a support set.
    extractor : ConvFeatureExtractor or FrozenEstimator of one, default=None
        Share pre-training with the feature baselines. A fitted extractor's
        backbone is reused as it is (``fit`` does not pre-train, and
        ``module``, ``n_filters``, ``max_epochs``, ``lr`` and ``batch_size`` are
        unused); an unfitted one is cloned and fitted on ``fit``'s data (its own
        pre-training settings apply). ``clone`` (hence ``GridSearchCV`` and
        ``cross_val_score``) turns a fitted extractor into an unfitted copy, so
        every fold pre-trains on its own data; wrap it in
        ``sklearn.frozen.FrozenEstimator`` to keep it fitted through ``clone``.
        The backbone is never modified: every task fine-tunes a copy.
    adapt_lr : float, default=1e-3
        Adam learning rate when fine-tuning on a support set.
    n_adapt_steps : int, default=30
    n_way, n_shot, n_query, n_score_tasks : int
        Task shape used by ``score``.
    n_jobs : int or None, default=None
        Workers of ``score`` / ``episode_scores``' evaluation episodes, on the
        active ``joblib.parallel_config`` backend (``None``: 1, ``-1``: every core;
        0 or a float raise ``InvalidParameterError``, a ``ValueError``); the scores
        equal the serial ones.
    device : str, default="cpu"
    random_state : int or None, default=None
    verbose : int, default=0

    Examples
    --------
    >>> from fewmed.datasets import make_synthetic_lesions
    >>> d = make_synthetic_lesions(n_classes=4, n_per_class=20, size=16, random_state=0)
    >>> rare = d.target >= 2  # classes 2 and 3 play the rare diseases
    >>> ft = FineTuneClassifier(n_filters=8, max_epochs=1, n_adapt_steps=2, random_state=0)
    >>> ft = ft.fit(d.images[~rare], d.target[~rare]).adapt(d.images[rare], d.target[rare])
    >>> ft.predict_proba(d.images[:2]).shape, ft.classes_.tolist()
    ((2, 2), [2, 3])

    Pre-train once for both fine-tuning and conv features:

    >>> fx = ConvFeatureExtractor(n_filters=8, max_epochs=1, random_state=0)
    >>> fx = fx.fit(d.images[~rare], d.target[~rare])
    >>> ft = FineTuneClassifier(extractor=fx, n_adapt_steps=2, random_state=0)
    >>> ft.fit(d.images[~rare], d.target[~rare]).backbone_ is fx.backbone_
    True
    """

    _adapted_attrs = ("classes_", "adapted_module_")
    _parameter_constraints: dict = {
        **_PRETRAIN_CONSTRAINTS,
        "extractor": [HasMethods(["fit", "transform"]), None],
        "adapt_lr": [Interval(Real, 0, None, closed="neither")],
        "n_adapt_steps": [Interval(Integral, 0, None, closed="left")],
        **_TASK_CONSTRAINTS,
    }

    def __init__(
        self,
        module="conv4",
        *,
        n_filters=64,
        max_epochs=10,
        lr=1e-3,
        batch_size=64,
        augment=True,
        extractor=None,
        adapt_lr=1e-3,
        n_adapt_steps=30,
        n_way=2,
        n_shot=5,
        n_query=15,
        n_score_tasks=100,
        n_jobs=None,
        device="cpu",
        random_state=None,
        verbose=0,
    ):
        self.module = module
        self.n_filters = n_filters
        self.max_epochs = max_epochs
        self.lr = lr
        self.batch_size = batch_size
        self.augment = augment
        self.extractor = extractor
        self.adapt_lr = adapt_lr
        self.n_adapt_steps = n_adapt_steps
        self.n_way = n_way
        self.n_shot = n_shot
        self.n_query = n_query
        self.n_score_tasks = n_score_tasks
        self.n_jobs = n_jobs
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def _fit(self, Xt: np.ndarray, y: np.ndarray) -> None:
        """Pre-train on the common classes (or reuse ``extractor``'s backbone)."""
        self.seed_ = seed_int(self.random_state)  # an int gives itself; drawn once per fit
        if self.extractor is None:
            self.backbone_, self.history_ = _pretrain(self, Xt, y)
        else:
            fx = self._fitted_extractor(Xt, y)
            self.backbone_, self.history_ = fx.backbone_, fx.history_

    def _fitted_extractor(self, Xt: np.ndarray, y: np.ndarray) -> ConvFeatureExtractor:
        fx = self.extractor
        if isinstance(fx, FrozenEstimator):
            fx = fx.estimator
        if not isinstance(fx, ConvFeatureExtractor):
            raise TypeError(
                "extractor must be a ConvFeatureExtractor (fitted or not) or a FrozenEstimator "
                f"of one; got {type(fx).__name__}."
            )
        try:
            check_is_fitted(fx, "backbone_")
        except NotFittedError:
            return clone(fx).fit(Xt, y)
        if tuple(fx.input_shape_) != self.input_shape_:
            raise ValueError(
                f"the extractor was fitted on images of shape (C, H, W) = {fx.input_shape_}, "
                f"but X has {self.input_shape_}: fit both on the same images."
            )
        return fx

    def _adapt(self, Xs: torch.Tensor, ys: torch.Tensor) -> None:
        # the seed (new head, augmentation) depends on random_state and the support set
        # only: the same support set gives the same adapted model whatever was adapted
        # before, so a task's score does not depend on the tasks scored before it
        digest = zlib.crc32(ys.cpu().numpy().tobytes(), zlib.crc32(Xs.cpu().numpy().tobytes()))
        seed = (self.seed_ * 1_000_003 + digest) % (2**63 - 1)
        model = transfer(self.backbone_, len(self.classes_), seed)  # BatchNorm: eval
        train_steps(
            model,
            Xs,
            ys,
            self.n_adapt_steps,
            check_random_state_torch(seed),
            lr=self.adapt_lr,
            augment=make_augment(self.augment),
        )
        self.adapted_module_ = model

    def _predict_logits(self, X: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return self.adapted_module_(X).numpy()
