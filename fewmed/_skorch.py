"""Shared skorch plumbing for fewmed's supervised image classifiers.

:class:`ImageNetClassifier` is a :class:`skorch.NeuralNetClassifier` with the
defaults and hooks fewmed's imbalance learners (``CDCClassifier``,
``RelationalSubsetsDistiller``) need. It never overrides ``fit``, ``fit_loop`` or
``run_single_epoch``; everything happens in skorch's hooks:

* ``check_data`` validates ``X`` and ``y`` (any label values, at least two
  classes, matching length), records ``classes_``, ``n_features_in_``,
  ``input_shape_`` and the class counts, and (re)builds the modules, criteria and
  optimizer when the data's shape calls for it; it, ``get_dataset`` and
  ``get_iterator`` are the data hooks of :class:`fewmed._skorch_data.ImageDataMixin`;
* ``on_train_begin`` (the net's own hook, which skorch calls before the
  callbacks' ``on_train_begin``) runs ``check_data``, so callbacks that hold the
  optimizer (``LRScheduler``) or the module get the ones that are trained, not
  the pre-data placeholders; ``fit_loop``'s own ``check_data`` call with the same
  data is then skipped (the data is checked, and the networks built, once per fit);
* ``get_dataset`` converts images and labels to codes (the models never see the
  raw labels);
* ``initialize_module`` / ``initialize_criterion`` call the subclass's
  ``_build_modules(info)`` / ``_build_criteria(info)``, with the module
  initialisation seeded from ``random_state`` inside :func:`torch.random.fork_rng`
  (the global torch RNG is left as it was);
* ``get_iterator`` seeds the training shuffle without global seeding;
* ``on_train_begin`` also seeds the optional augmentation (from ``random_state``),
  which ``train_step_single`` applies.
* ``infer`` hands the network its batches on its device, in channels-last memory
  layout on the CPU for the subclasses that ask for it (``_wants_channels_last``);
  ``initialize_module`` puts their networks in that layout.

Defaults that differ from skorch's, on purpose:

* ``train_split=None``: skorch's default holds out 20% of the data, which takes
  a fifth of a 100-image rare class away without telling anyone. Pass
  ``train_split=fewmed.model_selection.stratified_split(0.1)`` for an explicit, stratified hold-out;
* ``predict_nonlinearity=softmax``: skorch's ``"auto"`` only recognises CE/BCE
  criteria and would return logits from ``predict_proba`` for a focal loss;
* ``optimizer=torch.optim.Adam``, ``lr=1e-3``, ``verbose=0`` (no printed log).
"""

from __future__ import annotations

import contextlib
from numbers import Integral, Real
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import NotFittedError
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import (
    Interval,
    Options,
    StrOptions,
    validate_parameter_constraints,
)
from skorch import NeuralNetClassifier
from skorch.callbacks import EpochScoring, EpochTimer, PassthroughScoring, PrintLog
from skorch.dataset import unpack_data
from skorch.utils import to_tensor
from torch import nn

from ._dataset import softmax
from ._skorch_data import ImageDataMixin
from ._validation import (
    AUGMENT_CONSTRAINT,
    DEVICE_CONSTRAINT,
    MODULE_CONSTRAINT,
    resolve_device,
    seeded_torch,
)
from .nn import make_augment

__all__ = ["ImageNetClassifier"]

_SKORCH_INIT_STATE = {"history_": None, "_initialized": False, "virtual_params_": {}}


def _encoded_scores(net: ImageNetClassifier, X: Any, y: Any) -> float:
    # the datasets hold label *codes*; compare them with argmax codes (not labels)
    proba = net.predict_proba(X)
    return float(np.mean(proba.argmax(axis=1) == np.asarray(y)))


def _encoded_macro_f1(net: ImageNetClassifier, X: Any, y: Any) -> float:
    from sklearn.metrics import f1_score

    proba = net.predict_proba(X)
    return float(f1_score(np.asarray(y), proba.argmax(axis=1), average="macro", zero_division=0))


class _Unbuilt(nn.Module):
    """Stand-in before ``fit`` has seen data (the real module depends on its shape)."""

    def __init__(self) -> None:
        super().__init__()
        self.placeholder = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - guarded
        raise RuntimeError("the network is built when fit() sees data; call fit first.")


class ImageNetClassifier(ImageDataMixin, NeuralNetClassifier):
    """Base class: a skorch classifier for image arrays with fewmed's defaults.

    Subclasses implement ``_build_modules(info)`` (set ``self.module_`` and any
    extra modules such as ``self.decoder_``) and ``_build_criteria(info)`` (set
    ``self.criterion_`` and extra criteria); ``info`` is the dict of data facts
    ``check_data`` collected (``input_shape``, ``n_classes``, ``class_counts``,
    ``in_unit_range``). See the module docstring for the hooks used.

    Parameters
    ----------
    module : str, nn.Module class or instance, default="conv4"
    optimizer : torch optimizer class, default=torch.optim.Adam
    lr : float, default=1e-3
    max_epochs : int, default=20
    batch_size : int, default=64
    train_split : callable or None, default=None
        ``None`` trains on all the data (no silent hold-out); see
        :func:`fewmed.model_selection.stratified_split`.
    predict_nonlinearity : callable, default=softmax
    augment : bool, dict or Augment, default=False
    random_state : int, RandomState or None, default=None
    device : {"cpu", "cuda", "auto"} or torch.device, default="cpu"
        ``"auto"`` picks CUDA when available; it is replaced by the device it
        resolved to when the network is initialised.
    verbose : int, default=0
    **kwargs
        Any further skorch parameter (``callbacks``, ``iterator_train__num_workers``,
        ``optimizer__weight_decay``, ...).
    """

    def __init__(
        self,
        module: Any = "conv4",
        *,
        criterion: Any = None,
        optimizer: Any = torch.optim.Adam,
        lr: float = 1e-3,
        max_epochs: int = 20,
        batch_size: int = 64,
        train_split: Any = None,
        predict_nonlinearity: Any = softmax,
        augment: Any = False,
        random_state: Any = None,
        device: Any = "cpu",
        verbose: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            module,
            criterion=criterion,
            optimizer=optimizer,
            lr=lr,
            max_epochs=max_epochs,
            batch_size=batch_size,
            train_split=train_split,
            predict_nonlinearity=predict_nonlinearity,
            device=device,
            verbose=verbose,
            **kwargs,
        )
        self.augment = augment
        self.random_state = random_state
        # skorch's __init__ stores history_, initialized_ and virtual_params_ on the
        # instance; scikit-learn's contract is that __init__ stores parameters only.
        # Their unfitted values live on the class (below), so nothing else is set.
        for name, default in _SKORCH_INIT_STATE.items():
            if self.__dict__.get(name, default) == default:
                self.__dict__.pop(name, None)

    # the unfitted state skorch's __init__ would set on the instance
    history_ = None
    virtual_params_ = MappingProxyType({})  # read-only: initialize() sets the instance's

    @property
    def initialized_(self) -> bool:
        """Whether skorch's ``initialize`` ran (stored once it did).

        Missing while skorch's ``__init__`` sets the parameters: its ``__setattr__``
        tells that phase by ``hasattr(self, "initialized_")``.
        """
        if "_initialized" in self.__dict__:
            return self.__dict__["_initialized"]
        if "_params_to_validate" not in self.__dict__:  # inside NeuralNet.__init__
            raise AttributeError("initialized_")
        return False

    @initialized_.setter
    def initialized_(self, value: bool) -> None:
        self.__dict__["_initialized"] = value

    # ------------------------------------------------------------------ callbacks
    @property
    def _default_callbacks(self):
        cbs = [
            ("epoch_timer", EpochTimer()),
            ("train_loss", PassthroughScoring(name="train_loss", on_train=True)),
            ("valid_loss", PassthroughScoring(name="valid_loss")),
            (
                "valid_acc",
                EpochScoring(_encoded_scores, name="valid_acc", lower_is_better=False),
            ),
            (
                "valid_f1",
                EpochScoring(_encoded_macro_f1, name="valid_f1", lower_is_better=False),
            ),
        ]
        for name in self._loss_terms():
            cbs.append((name, PassthroughScoring(name=name, on_train=True)))
        cbs.append(("print_log", PrintLog()))
        return cbs

    #: The constraints of skorch's parameters and fewmed's ``augment`` and
    #: ``random_state`` (subclasses add theirs); checked by scikit-learn's
    #: ``_validate_params`` in :meth:`initialize`. ``max_epochs=0`` is refused: it
    #: would leave an untrained network that predicts.
    _parameter_constraints: dict = {
        "module": MODULE_CONSTRAINT,
        "criterion": [callable, None],
        "optimizer": [callable],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left"), Options(Integral, {-1})],
        "iterator_train": [callable],
        "iterator_valid": [callable],
        "dataset": [callable],
        "train_split": [callable, None],
        "callbacks": [list, tuple, StrOptions({"disable"}), None],
        "predict_nonlinearity": [callable, StrOptions({"auto"}), None],
        "warm_start": ["boolean"],
        "verbose": ["verbose"],
        "device": DEVICE_CONSTRAINT,
        "compile": ["boolean"],
        "use_caching": ["boolean", StrOptions({"auto"})],
        "torch_load_kwargs": [dict, None],
        "classes": ["array-like", None],
        "augment": AUGMENT_CONSTRAINT,
        "random_state": ["random_state"],
    }

    def _check_params(self) -> None:
        """Validate the hyper-parameters against ``_parameter_constraints``
        (scikit-learn's ``InvalidParameterError``, a ``ValueError`` naming them).

        scikit-learn's ``BaseEstimator._validate_params`` is shadowed by skorch's
        (which checks the ``prefix__name`` arguments), so its function is called.
        """
        validate_parameter_constraints(
            self._parameter_constraints,
            self.get_params(deep=False),
            caller_name=type(self).__name__,
        )

    def _loss_terms(self) -> tuple[str, ...]:
        """Names of the per-batch loss terms recorded in the history (subclasses)."""
        return ()

    # ------------------------------------------------------------------ init hooks
    def initialize(self):
        """Check the parameters, resolve ``device`` (``"auto"``; a clear error for a missing
        GPU), then skorch's initialisation.

        The attributes before it are kept until the fit ends: a fit that fails on its
        data or whose loss becomes NaN / infinite puts them back (:meth:`_restore`).
        """
        self._check_params()
        self.__dict__.pop("_before_fit", None)
        self._before_fit = dict(self.__dict__)
        if self.device is not None:
            resolved = resolve_device(self.device)
            if self.device == "auto":
                self.device = str(resolved)
        return super().initialize()

    def _draw_seeds(self) -> None:
        rs = check_random_state(self.random_state)
        init, loader, aug = rs.randint(0, 2**31 - 1, size=3)
        self.seeds_ = {"init": int(init), "loader": int(loader), "augment": int(aug)}

    def initialize_module(self):
        self.fresh_ = True
        info = getattr(self, "data_info_", None)
        if info is None:
            self.module_ = _Unbuilt()
            self.built_for_ = None
            return self
        self._draw_seeds()
        with seeded_torch(self.seeds_["init"]):
            self._build_modules(info)
        self.built_for_ = self._signature(info)
        if self._channels_last():
            for name in self._modules:
                module = getattr(self, f"{name}_", None)
                if isinstance(module, nn.Module):
                    module.to(memory_format=torch.channels_last)
        return self

    def initialize_criterion(self):
        self._build_criteria(getattr(self, "data_info_", None))
        return self

    def _build_modules(self, info: dict) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _wants_channels_last(self) -> bool:
        """Hook: train in channels-last memory layout on the CPU (oneDNN's convolutions,
        pooling and upsampling are ~1.5-2x faster on it for small images)."""
        return False

    def _channels_last(self) -> bool:
        """Whether the networks and batches use channels-last layout (CPU devices only)."""
        return self._wants_channels_last() and torch.device(self.device or "cpu").type == "cpu"

    def _as_input(self, x: Any) -> torch.Tensor:
        """A batch on the net's device, in channels-last layout where the net uses it."""
        x = to_tensor(x, device=self.device)
        if x.ndim == 4 and self._channels_last():
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def infer(self, x: Any, **fit_params: Any):
        """skorch's forward pass, on the batch in the net's memory layout."""
        return super().infer(self._as_input(x), **fit_params)

    def _build_criteria(self, info: dict | None) -> None:
        self.criterion_ = nn.CrossEntropyLoss()

    @staticmethod
    def _signature(info: dict) -> tuple:
        return (tuple(info["input_shape"]), int(info["n_classes"]), bool(info["in_unit_range"]))

    # ------------------------------------------------------------------ data hooks
    def on_train_begin(self, net, X=None, y=None, **kwargs):
        """Check the data and build the networks and optimizer *before* the callbacks start.

        skorch calls this hook before the callbacks' ``on_train_begin`` and before
        ``fit_loop``'s ``check_data``, so an ``LRScheduler`` gets the real optimizer.
        """
        self._prechecked_ = None  # a key left by an interrupted fit must not match
        if not isinstance(X, torch.utils.data.Dataset):
            try:
                self.check_data(X, y)
            except Exception:
                self._restore()
                raise
            self._prechecked_ = (id(X), id(y))
        self._seed_augmentation()
        return super().on_train_begin(net, X=X, y=y, **kwargs)

    def _seed_augmentation(self) -> None:
        """The fit's augmentation and its generator, seeded from ``random_state``."""
        if getattr(self, "seeds_", None) is None:  # a Dataset X: no build drew them
            self._draw_seeds()
        self.augment_ = make_augment(self.augment)
        self.augment_generator_ = torch.Generator().manual_seed(self.seeds_["augment"])

    def _restore(self) -> None:
        """Put back the attributes of before this fit's ``initialize`` (when it ran)."""
        before = self.__dict__.pop("_before_fit", None)
        if before is not None:
            self.__dict__.clear()
            self.__dict__.update(before)

    def on_train_end(self, net, X=None, y=None, **kwargs):
        self.fit_cache_ = None
        self.__dict__.pop("_prechecked_", None)
        self.__dict__.pop("_before_fit", None)
        return super().on_train_end(net, X=X, y=y, **kwargs)

    # ------------------------------------------------------------------ training
    def _augment_batch(self, Xi: torch.Tensor) -> torch.Tensor:
        aug = getattr(self, "augment_", None)
        if aug is None:
            return Xi
        return aug(Xi, generator=self.augment_generator_)

    def train_step_single(self, batch, **fit_params):
        """Augment (if asked), forward, loss (with its terms recorded), backward."""
        self._set_training(True)
        Xi, yi = unpack_data(batch)
        Xi = self._augment_batch(to_tensor(Xi, device=self.device))
        with self._autocast():  # fewmed.accelerate: mixed precision where asked
            y_pred = self.infer(Xi, **fit_params)
            loss = self.get_loss(y_pred, yi, X=Xi, training=True)
        if not torch.isfinite(loss).all():
            epoch = len(self.history)
            self._restore()
            raise FloatingPointError(
                f"training diverged in epoch {epoch}: the loss is {float(loss.detach())}. "
                f"Lower lr (now {self.lr}), or check the images for extreme values; "
                f"{type(self).__name__} was left as it was before this fit."
            )
        self._backward(loss)
        terms = getattr(self, "last_terms_", None) or {}
        for name, value in terms.items():
            self.history.record_batch(name, float(value))
        return {"loss": loss, "y_pred": y_pred}

    def _autocast(self):
        """Context of the forward pass and loss (``fewmed.accelerate``: the accelerator's)."""
        return contextlib.nullcontext()

    def _backward(self, loss: torch.Tensor) -> None:
        """Back-propagate the loss (``fewmed.accelerate``: through the accelerator)."""
        loss.backward()

    # ------------------------------------------------------------------ prediction
    def __sklearn_is_fitted__(self) -> bool:
        return bool(getattr(self, "initialized_", False)) and (
            getattr(self, "built_for_", None) is not None
        )

    def check_is_fitted(self, attributes=None, *args, **kwargs):
        """Raise :class:`sklearn.exceptions.NotFittedError` before ``fit``."""
        if not self.__sklearn_is_fitted__():
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                "appropriate arguments before using this estimator."
            )
        return super().check_is_fitted(attributes, *args, **kwargs)

    def _get_param_names(self):
        private = ("_params_to_validate", "_initialized", "_before_fit")  # state, not params
        return [k for k in super()._get_param_names() if k not in private]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``(n_samples, n_classes)``, columns in ``classes_`` order.

        Parameters
        ----------
        X : array-like of images
            As in ``fit``; images must have the fitted ``(C, H, W)``.

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
        """
        self.check_is_fitted()
        return super().predict_proba(X)

    def predict(self, X: Any) -> np.ndarray:
        """Predicted class labels (values from ``classes_``, not codes).

        Parameters
        ----------
        X : array-like of images

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        self.check_is_fitted()
        return np.asarray(self.classes_)[self.predict_proba(X).argmax(axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        tags.input_tags.three_d_array = True
        return tags
