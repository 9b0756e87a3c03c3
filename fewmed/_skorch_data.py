"""The data side of fewmed's skorch base: checking, encoding, datasets, iterators.

:class:`ImageDataMixin` holds the data hooks of :class:`fewmed._skorch.ImageNetClassifier`
(which mixes it in before :class:`skorch.NeuralNetClassifier`; see that module's
docstring for how the hooks fit together):

* ``check_data`` / ``_check_data`` validate ``X`` (:func:`fewmed._validation.check_raw_input`,
  :func:`~fewmed._validation.check_images`) and ``y``
  (:func:`~fewmed._validation.check_labels`), record ``classes_``,
  ``n_features_in_``, ``input_shape_`` and the class counts, and (re)build the
  modules, criteria and optimizer when the data's shape calls for it
  (``_set_data_info``);
* ``get_dataset`` converts images to float ``(n, C, H, W)`` and labels to codes
  ``0..n_classes-1`` (``_encode``), and checks at predict time that images have
  the shape seen in ``fit``;
* ``get_iterator`` gives the training ``DataLoader`` a seeded
  :class:`torch.Generator`, so shuffling is reproducible without global seeding.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._dataset import ArrayDataset, collate_batch, is_array_dataset
from ._validation import check_images, check_labels, check_raw_input

__all__ = ["ImageDataMixin"]


class ImageDataMixin:
    """The data hooks of :class:`fewmed._skorch.ImageNetClassifier` (see the module docstring).

    Relies on the classifier's ``classes``, ``classes_``, ``built_for_`` / ``fresh_``
    (set when its networks are built), ``_signature`` and skorch's
    ``_initialize_module`` / ``_initialize_criterion`` / ``_initialize_optimizer``.
    """

    def _as_array(self, X: Any) -> np.ndarray:
        if not isinstance(X, torch.Tensor | np.ndarray):
            X = np.asarray(X)
        if isinstance(X, np.ndarray) and X.dtype == object:
            try:
                X = X.astype(np.float64)
            except (TypeError, ValueError) as exc:
                raise TypeError(
                    f"X has dtype object that cannot be converted to numbers: {exc}"
                ) from exc
        return check_images(X)

    def _shape_error(self, got: tuple, expected: tuple) -> ValueError:
        if got[:2] == (1, 1) and expected[:2] == (1, 1):
            return ValueError(
                f"X has {got[2]} features, but {type(self).__name__} is expecting "
                f"{expected[2]} features as input."
            )
        return ValueError(
            f"X has images of shape (C, H, W) = {got}, but {type(self).__name__} was fitted "
            f"on {expected}: resize them (loaders take size=)."
        )

    def _encode(self, y: np.ndarray) -> np.ndarray:
        classes = np.asarray(self.classes_)
        order = np.argsort(classes, kind="stable")
        pos = np.searchsorted(classes[order], y)
        pos = np.clip(pos, 0, len(classes) - 1)
        codes = order[pos]
        unknown = classes[codes] != y
        if np.any(unknown):
            raise ValueError(
                f"y contains labels {np.unique(y[unknown]).tolist()} that are not among the "
                f"classes {classes.tolist()}."
            )
        return codes.astype(np.int64)

    def check_data(self, X: Any, y: Any = None) -> None:
        """Validate images and labels, record ``classes_`` and the data facts, (re)build.

        ``fit_loop``'s call right after ``on_train_begin`` checked the same ``X`` and
        ``y`` returns at once (once; any other call checks). Subclasses extend
        :meth:`_check_data`.
        """
        if self.__dict__.pop("_prechecked_", None) == (id(X), id(y)):
            return
        self._check_data(X, y)

    def _check_data(self, X: Any, y: Any = None) -> None:
        """The work of :meth:`check_data`: validate, record the data facts, (re)build."""
        check_raw_input(X, y, estimator=type(self).__name__)
        Xc = self._as_array(X)
        y = check_labels(y, len(Xc), estimator=type(self).__name__)
        built = getattr(self, "built_for_", None)
        if not getattr(self, "fresh_", True) and built is not None:
            if tuple(Xc.shape[1:]) != built[0]:  # partial_fit / warm start on other shapes
                raise self._shape_error(tuple(Xc.shape[1:]), built[0])
            if self.classes is None:  # partial_fit / warm start with labels never seen
                unseen = np.setdiff1d(np.unique(y), np.asarray(self.classes_))
                if len(unseen):
                    raise ValueError(
                        f"y contains labels {unseen.tolist()} that are not among the classes "
                        f"{np.asarray(self.classes_).tolist()} of the first fit: pass every "
                        "class as classes=[...] to the constructor, or refit with fit."
                    )
        if self.classes is not None:
            self.classes_inferred_ = np.asarray(self.classes)
        else:
            self.classes_inferred_ = np.unique(y)
        codes = self._encode(y)
        n_classes = len(self.classes_)
        info = {
            "input_shape": tuple(int(v) for v in Xc.shape[1:]),
            "n_classes": n_classes,
            "class_counts": np.bincount(codes, minlength=n_classes),
            "in_unit_range": bool(Xc.min() >= 0.0 and Xc.max() <= 1.0),
        }
        self._set_data_info(X, Xc, codes, info)

    def _set_data_info(self, X: Any, Xc: np.ndarray, targets: np.ndarray, info: dict) -> None:
        """Record the checked data's facts and cache; (re)build what they call for."""
        built = getattr(self, "built_for_", None)
        if not getattr(self, "fresh_", True) and built is not None:
            if int(info["n_classes"]) != built[1]:  # partial_fit: a head of another width
                kind = "labels (columns of Y)" if info.get("multilabel") else "classes"
                raise ValueError(
                    f"y has {info['n_classes']} {kind} but {type(self).__name__} was fitted "
                    f"on {built[1]}: keep the width of the first fit (pass classes=[...] to "
                    "the constructor), or refit with fit."
                )
        self.data_info_ = info
        self.input_shape_ = info["input_shape"]
        self.n_features_in_ = int(np.prod(Xc.shape[1:]))
        self.fit_cache_ = (id(X), Xc, targets)
        if built != self._signature(info):
            self._initialize_module()
            self._initialize_criterion()
            self._initialize_optimizer()
        else:  # same shapes (warm start / refit): only the class weights may change
            self._initialize_criterion()
        self.fresh_ = False

    def get_dataset(self, X: Any, y: Any = None):
        """Images → float ``(n, C, H, W)``, labels → codes, then skorch's dataset."""
        if y is None:
            self.check_is_fitted()
        if isinstance(X, torch.utils.data.Dataset):
            return X
        cache = getattr(self, "fit_cache_", None)
        if y is not None and cache is not None and cache[0] == id(X):
            Xc, codes = cache[1], cache[2]
            self.fit_cache_ = None
        else:
            name = type(self).__name__
            check_raw_input(
                X, np.zeros(2) if y is None else y, estimator=name, fitting=y is not None
            )
            Xc = self._as_array(X)
            codes = None if y is None else self._encode(check_labels(y, len(Xc), estimator=name))
            shape = getattr(self, "input_shape_", None)
            if shape is not None and tuple(Xc.shape[1:]) != tuple(shape):
                raise self._shape_error(tuple(Xc.shape[1:]), tuple(shape))
        return ArrayDataset(Xc, codes)

    def get_split_datasets(self, X: Any, y: Any = None, **fit_params: Any):
        """skorch's split; refuses ``sample_weight`` (use ``class_weight``) explicitly."""
        if "sample_weight" in fit_params:
            raise TypeError(
                f"{type(self).__name__}.fit does not support sample_weight; use class_weight "
                "(per-class weights) instead."
            )
        return super().get_split_datasets(X, y, **fit_params)

    def get_iterator(self, dataset, training: bool = False):
        """skorch's iterator, with a seeded generator for the training shuffle.

        Called once per ``fit`` after ``on_train_begin`` (which drew the seeds).
        """
        if training and "iterator_train__generator" not in self.__dict__:
            seeds = getattr(self, "seeds_", None)
            if seeds is not None and self.__dict__.get("iterator_train__shuffle", True):
                gen = torch.Generator()
                gen.manual_seed(seeds["loader"])
                kwargs = self.get_params_for("iterator_train")
                kwargs.setdefault("batch_size", self.batch_size)
                kwargs["shuffle"] = True
                if kwargs["batch_size"] == -1:
                    kwargs["batch_size"] = len(dataset)
                kwargs["generator"] = gen
                if is_array_dataset(dataset):
                    kwargs.setdefault("collate_fn", collate_batch)
                return self.iterator_train(dataset, **kwargs)
        prefix = "iterator_train" if training else "iterator_valid"
        if is_array_dataset(dataset) and f"{prefix}__collate_fn" not in self.__dict__:
            kwargs = self.get_params_for(prefix)
            kwargs.setdefault("batch_size", self.batch_size)
            if kwargs["batch_size"] == -1:
                kwargs["batch_size"] = len(dataset)
            kwargs["collate_fn"] = collate_batch
            # a private generator: the DataLoader draws a worker seed from torch's
            # global RNG otherwise, and predicting must not move the user's RNG
            kwargs.setdefault("generator", torch.Generator())
            iterator = self.iterator_train if training else self.iterator_valid
            return iterator(dataset, **kwargs)
        return super().get_iterator(dataset, training=training)
