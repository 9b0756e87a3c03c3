"""Input validation shared by every estimator: images in, float tensors out."""

from __future__ import annotations

from numbers import Integral
from typing import Any

import numpy as np
import torch

__all__ = ["check_images", "check_image_shape", "check_random_state_torch", "resolve_device"]


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
