"""Input validation shared by every estimator: images in, float tensors out.

* :func:`check_images` turns an image batch into float32 ``(n, C, H, W)``;
  :func:`check_image_shape` compares it with the shape ``fit`` saw;
* :func:`check_raw_input` and :func:`check_labels` are the cheap checks on raw
  ``X`` / ``y`` that :class:`fewmed._skorch.ImageNetClassifier` runs before skorch
  touches them (sparse, complex, 1-D or empty ``X``; missing, continuous or
  single-class labels);
* :func:`validate_images` is fewmed's ``validate_data``: :func:`check_images` plus
  ``input_shape_`` / ``n_features_in_`` recorded at ``fit`` (``reset=True``) and
  compared afterwards; every estimator validates its images through it;
* :func:`check_random_state_torch`, :func:`seed_int` and :func:`seeded_torch` turn
  ``random_state`` into seeds and torch generators without global seeding (CUDA's
  generators are never touched); :func:`resolve_device` turns ``device`` into a
  ``torch.device``;
* ``MODULE_CONSTRAINT``, ``AUGMENT_CONSTRAINT`` and ``DEVICE_CONSTRAINT`` are the
  ``_parameter_constraints`` entries of the parameters every estimator shares.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from numbers import Integral
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import DataConversionWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.multiclass import type_of_target

__all__ = [
    "AUGMENT_CONSTRAINT",
    "DEVICE_CONSTRAINT",
    "MODULE_CONSTRAINT",
    "check_image_shape",
    "check_images",
    "check_labels",
    "check_random_state_torch",
    "check_raw_input",
    "resolve_device",
    "seed_int",
    "seeded_torch",
    "validate_images",
]

#: ``module``: a backbone name, an ``nn.Module`` class or factory, or an instance.
MODULE_CONSTRAINT: list = [StrOptions({"conv4", "resnet", "resnet18", "vgg"}), callable]
#: ``augment``: a bool, a dict of :class:`fewmed.nn.Augment` parameters, an ``Augment``
#: (any callable ``f(x, generator=)``) or ``None``.
AUGMENT_CONSTRAINT: list = ["boolean", dict, callable, None]
#: ``device``: ``"cpu"``, ``"cuda[:i]"``, ``"auto"``, a ``torch.device`` or ``None``
#: (:func:`resolve_device` checks that the device exists).
DEVICE_CONSTRAINT: list = [str, torch.device, None]


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
    import scipy.sparse as sp

    if sp.issparse(X):
        raise TypeError(
            f"{name} is a sparse matrix: sparse input is not supported; pass a dense image "
            "array (X.toarray())."
        )
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    try:
        X = np.asarray(X)
    except Exception as exc:  # ragged lists
        raise ValueError(f"{name} could not be converted to an array: {exc}") from exc
    if X.dtype.kind == "c":
        raise ValueError(f"Complex data not supported: {name} must hold real-valued images.")
    if X.dtype == object:
        try:
            X = X.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"{name} has dtype object that cannot be converted to numbers ({exc}): pass "
                "uint8 images or floats."
            ) from exc
    if X.dtype.kind not in "uifb":
        raise ValueError(f"{name} must be numeric (uint8 images or floats), got dtype {X.dtype}.")
    if X.ndim == 1:
        raise ValueError(
            f"Expected 2D array, got 1D array instead: {name} is 1-D; it must be 2-D (n, d), 3-D "
            f"(n, H, W) or 4-D images, got shape {X.shape}. Reshape your data either using "
            "X.reshape(-1, 1) if it has a single feature or X[None] for a single image."
        )
    if X.ndim == 0 or X.shape[0] == 0:
        raise ValueError(
            f"{name} is empty: got shape {X.shape} (0 sample(s)); at least one image is needed."
        )
    if X.ndim == 2 and X.shape[1] == 0:
        raise ValueError(
            f"0 feature(s) (shape={X.shape}) while a minimum of 1 is required: {name} has "
            "empty rows."
        )
    is_uint8 = X.dtype == np.uint8
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
    out = np.ascontiguousarray(out)
    return out if out.flags.writeable else out.copy()  # torch needs writable memory


def check_image_shape(
    X: np.ndarray, expected: tuple[int, ...], *, name: str = "X", estimator: str = "the estimator"
) -> None:
    """Raise a ``ValueError`` when ``X``'s ``(C, H, W)`` differs from what ``fit`` saw.

    Examples
    --------
    >>> import numpy as np
    >>> check_image_shape(np.zeros((1, 3, 28, 28)), (3, 28, 28))
    """
    got = tuple(X.shape[1:])
    if got != tuple(expected):
        c, h, w = expected
        if got[:2] == (1, 1) and (c, h) == (1, 1):  # tabular (n, d) input
            raise ValueError(
                f"{name} has {got[2]} features, but {estimator} is expecting {w} features "
                "as input: pass rows of the width seen in fit."
            )
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
    if kind in ("continuous", "continuous-multioutput"):
        raise ValueError(
            f"Unknown label type: y looks continuous ({kind}); a classifier needs class "
            "labels (ints or strings)."
        )
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError(
            f"y has a single class ({classes[0]!r}), 1 class where a classifier needs at "
            "least 2: include images of another class."
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

    Parameters
    ----------
    device : str, torch.device or None
        ``"auto"`` or ``None``: the GPU when torch sees one, else the CPU.
        Otherwise anything ``torch.device`` accepts (``"cpu"``, ``"cuda"``,
        ``"cuda:1"``, a ``torch.device``, ...).

    Returns
    -------
    torch.device
        The device to move the network and the data to.

    Raises
    ------
    ValueError
        If ``device`` is not a device torch knows, or asks for CUDA while
        ``torch.cuda.is_available()`` is False.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("auto").type in ("cpu", "cuda")
    True
    >>> resolve_device("gpu")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: device must be 'cpu', 'cuda', 'cuda:<i>', 'auto' or a torch.device; got 'gpu' ...
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device must be 'cpu', 'cuda', 'cuda:<i>', 'auto' or a torch.device; got "
            f"{device!r} ({exc})."
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device='cuda' was asked for but torch sees no GPU (torch.cuda.is_available() is "
            "False); use device='cpu' or install a CUDA build of torch."
        )
    return dev


def validate_images(estimator: Any, X: Any, *, reset: bool, name: str = "X") -> np.ndarray:
    """fewmed's ``validate_data``: :func:`check_images`, then the fitted shape.

    With ``reset=True`` (``fit``) record ``input_shape_`` ``(C, H, W)`` and
    ``n_features_in_`` on ``estimator``; with ``reset=False`` (predict, transform,
    adapt) refuse images of another shape, naming the shape seen in ``fit``.

    Parameters
    ----------
    estimator : estimator
        Where ``input_shape_`` and ``n_features_in_`` live.
    X : array-like or torch.Tensor
        The images (see :func:`check_images`).
    reset : bool
        Record the shape (``True``) or check against it (``False``).
    name : str, default="X"
        Name used in error messages.

    Returns
    -------
    images : ndarray of shape (n, C, H, W), dtype float32

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.base import BaseEstimator
    >>> est = BaseEstimator()
    >>> validate_images(est, np.zeros((2, 3, 8, 8), dtype=np.float32), reset=True).shape
    (2, 3, 8, 8)
    >>> est.input_shape_, est.n_features_in_
    ((3, 8, 8), 192)
    """
    Xt = check_images(X, name=name)
    if reset:
        estimator.input_shape_ = tuple(int(v) for v in Xt.shape[1:])
        estimator.n_features_in_ = int(np.prod(estimator.input_shape_))
    else:
        check_image_shape(Xt, estimator.input_shape_, name=name, estimator=type(estimator).__name__)
    return Xt


def seed_int(random_state: Any) -> int:
    """An int seed in ``[0, 2**31 - 1)`` from ``random_state`` (int, RandomState or None).

    An int gives itself (modulo ``2**31 - 1``), so the same int always gives the same
    seed; a ``RandomState`` gives its next draw; ``None`` a fresh random seed.

    Examples
    --------
    >>> seed_int(3), seed_int(3)
    (3, 3)
    >>> import numpy as np
    >>> seed_int(np.random.RandomState(0)) == seed_int(np.random.RandomState(0))
    True
    """
    if isinstance(random_state, Integral) and not isinstance(random_state, bool):
        return int(random_state) % (2**31 - 1)
    return int(check_random_state(random_state).randint(2**31 - 1))


@contextlib.contextmanager
def seeded_torch(seed: int) -> Iterator[None]:
    """Run a block with torch's CPU generator seeded by ``seed``, restored afterwards.

    Unlike ``torch.manual_seed`` inside ``fork_rng(devices=[])``, which reseeds every
    CUDA generator too and never restores them, only the CPU generator is seeded:
    the user's global torch state (CPU and CUDA) is the same after the block as
    before. Networks are built on the CPU inside it.

    Examples
    --------
    >>> with seeded_torch(0):
    ...     a = torch.rand(1)
    >>> with seeded_torch(0):
    ...     b = torch.rand(1)
    >>> bool(a == b)
    True
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seed))
        yield
