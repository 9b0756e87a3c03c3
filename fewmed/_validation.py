"""Input validation shared by every estimator: images in, float tensors out.

* :func:`check_images` turns an image batch into float32 ``(n, C, H, W)``;
  :func:`check_image_shape` compares it with the shape ``fit`` saw;
* :func:`check_raw_input` and :func:`check_labels` are the cheap checks on raw
  ``X`` / ``y`` that :class:`fewmed._skorch.ImageNetClassifier` runs before skorch
  touches them (sparse, complex, 1-D or empty ``X``; missing, continuous or
  single-class labels);
* :func:`check_random_state_torch` and :func:`resolve_device` turn ``random_state``
  and ``device`` into torch objects.
"""

from __future__ import annotations

import warnings
from numbers import Integral
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import DataConversionWarning
from sklearn.utils.multiclass import type_of_target

__all__ = [
    "check_image_shape",
    "check_images",
    "check_labels",
    "check_random_state_torch",
    "check_raw_input",
    "resolve_device",
]


def check_images(X: Any, *, name: str = "X") -> np.ndarray:
    """Validate an image batch and return it as float32 ``(n, C, H, W)`` in ``[0, 1]``.

    Accepted layouts (the design card's contract):

    * ``uint8`` arrays ``(n, H, W)`` or ``(n, H, W, C)`` (channels last, as loaders
      return them) are scaled by ``1/255``;
    * float arrays or tensors ``(n, C, H, W)`` (channels first) are used as they are,
      ``(n, H, W)`` float gets a channel axis;
    * 2-D ``(n, d)`` arrays are read as one-row images ``(n, 1, 1, d)`` so tabular
      input (scikit-learn's estimator checks) still flows through the same code.

    Parameters
    ----------
    X : array-like or torch.Tensor
        The images.
    name : str, default="X"
        Name used in error messages.

    Returns
    -------
    images : ndarray of shape (n, C, H, W), dtype float32

    Raises
    ------
    ValueError
        On an empty batch, an unsupported number of dimensions, or NaN / infinite
        values.

    Examples
    --------
    >>> import numpy as np
    >>> check_images(np.zeros((2, 28, 28, 3), dtype=np.uint8)).shape
    (2, 3, 28, 28)
    """
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    try:
        X = np.asarray(X)
    except Exception as exc:  # ragged lists
        raise ValueError(f"{name} could not be converted to an array: {exc}") from exc
    if X.dtype == object or X.dtype.kind not in "uifb":
        raise ValueError(f"{name} must be numeric (uint8 images or floats), got dtype {X.dtype}.")
    if X.ndim == 0 or X.shape[0] == 0:
        raise ValueError(f"{name} is empty: got shape {X.shape}; at least one image is needed.")
    is_uint8 = X.dtype == np.uint8
    if X.ndim == 1:
        raise ValueError(
            f"{name} must be 2-D (n, d), 3-D (n, H, W) or 4-D images; got a 1-D array of shape "
            f"{X.shape}. Reshape a single image with X[None]."
        )
    if X.ndim == 2:
        X = X[:, None, None, :]
    elif X.ndim == 3:
        X = X[:, None, :, :]
    elif X.ndim == 4:
        if is_uint8:
            X = X.transpose(0, 3, 1, 2)
    else:
        raise ValueError(
            f"{name} must be (n, H, W[, C]) uint8 images or (n, C, H, W) floats; got {X.ndim} "
            f"dimensions (shape {X.shape})."
        )
    if X.shape[1] == 0 or X.shape[2] == 0 or X.shape[3] == 0:
        raise ValueError(f"{name} has an empty image dimension: shape {X.shape}.")
    if is_uint8:
        out = X.astype(np.float32) / np.float32(255.0)
    else:
        out = X.astype(np.float32, copy=False)
        if not np.isfinite(out).all():
            raise ValueError(
                f"{name} contains NaN or infinity: clean or impute the images before fitting."
            )
    return np.ascontiguousarray(out)


def check_image_shape(X: np.ndarray, expected: tuple[int, ...], *, name: str = "X") -> None:
    """Raise a ``ValueError`` when ``X``'s ``(C, H, W)`` differs from what ``fit`` saw.

    Examples
    --------
    >>> import numpy as np
    >>> check_image_shape(np.zeros((1, 3, 28, 28)), (3, 28, 28))
    """
    got = tuple(X.shape[1:])
    if got != tuple(expected):
        c, h, w = expected
        raise ValueError(
            f"{name} has images of shape (C, H, W) = {got}, but the estimator was fitted on "
            f"{tuple(expected)}: resize to {h}x{w} with {c} channel(s) (loaders take size=)."
        )


def check_raw_input(X: Any, y: Any, *, estimator: str, fitting: bool = True) -> None:
    """Cheap checks on raw input, before any conversion: refuse what cannot be images.

    Parameters
    ----------
    X : array-like or torch.Tensor
        The raw images.
    y : array-like or None
        The raw labels (``None`` is refused).
    estimator : str
        The estimator's name, used in error messages.
    fitting : bool, default=True
        ``fit`` needs at least two samples; prediction needs one.

    Raises
    ------
    TypeError
        For sparse ``X``.
    ValueError
        For ``y=None``, complex, 1-D, featureless or empty ``X``, or a single sample
        to fit.

    Examples
    --------
    >>> import numpy as np
    >>> check_raw_input(np.zeros((2, 4, 4)), [0, 1], estimator="CDCClassifier")
    >>> check_raw_input(np.zeros((0, 4, 4)), [], estimator="CDCClassifier")
    Traceback (most recent call last):
    ...
    ValueError: X is empty (0 samples); at least 2 samples are needed.
    """
    import scipy.sparse as sp

    if sp.issparse(X):
        raise TypeError(f"{estimator} does not support sparse input: pass a dense image array.")
    if y is None:
        raise ValueError(f"{estimator} requires y to be passed, but the target y is None.")
    shape = tuple(X.shape) if isinstance(X, torch.Tensor) else None
    if shape is None:
        arr = np.asarray(X)
        shape = arr.shape
        if arr.dtype.kind == "c":
            raise ValueError("Complex data not supported: X must hold real-valued images.")
    if len(shape) == 1:
        raise ValueError(
            "X is 1-D: Reshape your data with X.reshape(-1, 1) for one feature or "
            "X[None] for a single image."
        )
    if len(shape) == 2 and shape[1] == 0:
        raise ValueError(f"0 feature(s) (shape={shape}) while a minimum of 1 is required.")
    n = shape[0] if shape else 0
    if n == 0:
        raise ValueError("X is empty (0 samples); at least 2 samples are needed.")
    if fitting and n < 2:
        raise ValueError(f"n_samples={n}: at least 2 samples are needed to fit a classifier.")


def check_labels(y: Any, n: int, *, estimator: str) -> np.ndarray:
    """Check class labels ``y`` for ``n`` images; return them as a 1-D array.

    A column vector is raveled with a :class:`~sklearn.exceptions.DataConversionWarning`
    (whose ``stacklevel`` points at the caller of the estimator's ``check_data``).

    Parameters
    ----------
    y : array-like of shape (n,) or (n, 1)
        Class labels (ints or strings).
    n : int
        Number of images they label.
    estimator : str
        The estimator's name, used in error messages.

    Returns
    -------
    ndarray of shape (n,)

    Raises
    ------
    ValueError
        For ``y=None``, a wrong shape or length, NaN / infinite, continuous or
        single-class labels.

    Examples
    --------
    >>> check_labels(["nv", "df", "nv"], 3, estimator="CDCClassifier").tolist()
    ['nv', 'df', 'nv']
    >>> check_labels([0, 1], 3, estimator="CDCClassifier")
    Traceback (most recent call last):
    ...
    ValueError: X has 3 samples but y has 2: they must match.
    """
    if y is None:
        raise ValueError(f"{estimator} needs labels y; got y=None.")
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        warnings.warn(
            "A column-vector y was passed when a 1d array was expected; it was raveled.",
            DataConversionWarning,
            stacklevel=3,
        )
        y = y.ravel()
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D class labels of shape (n_samples,); got shape {y.shape}.")
    if len(y) != n:
        raise ValueError(f"X has {n} samples but y has {len(y)}: they must match.")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise ValueError("y contains NaN or infinity.")
    kind = type_of_target(y)
    if kind == "continuous":
        raise ValueError(
            f"Unknown label type: y looks continuous ({kind}); a classifier needs class "
            "labels (ints or strings)."
        )
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError(
            f"y has a single class ({classes[0]!r}); a classifier needs at least 2 classes."
        )
    return y


def check_random_state_torch(seed: int | np.random.Generator | None) -> torch.Generator:
    """Make a CPU ``torch.Generator`` from an int / numpy ``Generator`` / ``None``.

    Examples
    --------
    >>> g = check_random_state_torch(0)
    >>> g2 = check_random_state_torch(0)
    >>> float(torch.rand(1, generator=g)) == float(torch.rand(1, generator=g2))
    True
    """
    if isinstance(seed, np.random.Generator):
        seed = int(seed.integers(2**62))
    elif isinstance(seed, np.random.RandomState):
        seed = int(seed.randint(2**31 - 1))
    elif seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    elif not isinstance(seed, Integral):
        raise ValueError(f"random_state must be None, an int or a Generator; got {seed!r}.")
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Turn ``"auto"``/``None``/``"cpu"``/``"cuda"`` into a ``torch.device``.

    ``"cuda"`` without a GPU raises a ``ValueError`` that says so.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device='cuda' was asked for but torch sees no GPU (torch.cuda.is_available() is "
            "False); use device='cpu' or install a CUDA build of torch."
        )
    return dev
