"""Tensor augmentations (random scaling with crop, rotation, flips) on CPU or GPU.

All transforms of a batch are fused into one affine warp per image
(``affine_grid`` + ``grid_sample``), so a batch on the GPU stays on the GPU and a
seeded ``torch.Generator`` reproduces it exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["Augment", "augment", "make_augment"]


class Augment:
    """Random scaling with crop, rotation and flips for image batches ``(N, C, H, W)``.

    Parameters
    ----------
    scale : (float, float), default=(1.0, 1.25)
        Zoom factor range; a factor ``s > 1`` enlarges the image and crops the
        centre-shifted ``1/s`` window back to the original size ("random scaling
        with crop").
    rotation : float, default=30.0
        Maximum absolute rotation in degrees (uniform in ``[-rotation, rotation]``).
    hflip, vflip : bool, default=True
        Random horizontal / vertical flips (p=0.5 each). Dermoscopy and fundus
        images have no canonical orientation, so both are on by default.
    translate : bool, default=True
        Shift the crop window randomly inside the zoomed image (else centred).
    padding_mode : {"reflection", "zeros", "border"}, default="reflection"
        How corners uncovered by a rotation are filled.

    Examples
    --------
    >>> import torch
    >>> aug = Augment(rotation=15)
    >>> g = torch.Generator().manual_seed(0)
    >>> aug(torch.rand(4, 3, 28, 28), generator=g).shape
    torch.Size([4, 3, 28, 28])
    """

    def __init__(
        self,
        scale: Sequence[float] = (1.0, 1.25),
        rotation: float = 30.0,
        hflip: bool = True,
        vflip: bool = True,
        translate: bool = True,
        padding_mode: str = "reflection",
    ) -> None:
        lo, hi = float(scale[0]), float(scale[1])
        if not (0 < lo <= hi):
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {scale!r}.")
        if rotation < 0:
            raise ValueError(f"rotation must be >= 0 degrees, got {rotation}.")
        self.scale = (lo, hi)
        self.rotation = float(rotation)
        self.hflip = hflip
        self.vflip = vflip
        self.translate = translate
        self.padding_mode = padding_mode

    def __repr__(self) -> str:
        return (
            f"Augment(scale={self.scale}, rotation={self.rotation}, hflip={self.hflip}, "
            f"vflip={self.vflip}, translate={self.translate})"
        )

    def theta(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample ``n`` affine matrices ``(n, 2, 3)`` (output → input coordinates)."""
        u = torch.rand(n, 5, generator=generator)
        lo, hi = self.scale
        s = lo + (hi - lo) * u[:, 0]
        ang = (2 * u[:, 1] - 1) * math.radians(self.rotation)
        inv = 1.0 / s
        cos, sin = torch.cos(ang) * inv, torch.sin(ang) * inv
        fx = torch.where(u[:, 2] < 0.5, -1.0, 1.0) if self.hflip else torch.ones(n)
        fy = torch.where(u[:, 3] < 0.5, -1.0, 1.0) if self.vflip else torch.ones(n)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1] = cos * fx, -sin * fy
        theta[:, 1, 0], theta[:, 1, 1] = sin * fx, cos * fy
        if self.translate:
            room = (1.0 - inv).clamp(min=0.0)
            v = torch.rand(n, 2, generator=generator) * 2 - 1
            theta[:, 0, 2], theta[:, 1, 2] = v[:, 0] * room, v[:, 1] * room
        return theta

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"Augment expects a batch (N, C, H, W), got shape {tuple(x.shape)}.")
        if x.shape[-1] < 2 or x.shape[-2] < 2:
            return x
        theta = self.theta(x.shape[0], generator).to(device=x.device, dtype=x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(
            x, grid, mode="bilinear", padding_mode=self.padding_mode, align_corners=False
        )


def augment(
    x: torch.Tensor, generator: torch.Generator | None = None, **params: Any
) -> torch.Tensor:
    """Functional form of :class:`Augment`: ``Augment(**params)(x, generator=generator)``.

    Parameters
    ----------
    x : torch.Tensor of shape (N, C, H, W)
        Image batch, on any device; the output has the same device and dtype.
    generator : torch.Generator, default=None
        CPU generator the random transforms are drawn from (``None``: torch's
        global generator); a seeded one reproduces the batch exactly.
    **params
        Parameters of :class:`Augment` (``scale``, ``rotation``, ``hflip``,
        ``vflip``, ``translate``, ``padding_mode``); the defaults are its own.

    Returns
    -------
    torch.Tensor of shape (N, C, H, W)
        The augmented batch (``x`` itself when ``H`` or ``W`` is below 2).

    Raises
    ------
    ValueError
        If ``x`` is not 4-D, or ``scale`` / ``rotation`` are out of range.
    TypeError
        If ``params`` holds a name that is not a parameter of :class:`Augment`.

    Examples
    --------
    >>> import torch
    >>> augment(torch.rand(2, 1, 28, 28), rotation=0, hflip=False, vflip=False,
    ...         scale=(1, 1)).shape
    torch.Size([2, 1, 28, 28])
    """
    return Augment(**params)(x, generator=generator)


def make_augment(augment: Any) -> Augment | Callable[..., torch.Tensor] | None:
    """Turn an ``augment`` parameter into an :class:`Augment` (or ``None``).

    ``False``/``None`` → no augmentation, ``True`` → ``Augment()`` defaults, a dict →
    ``Augment(**dict)``, an ``Augment`` (or any callable ``f(x, generator=)``) as is.

    Parameters
    ----------
    augment : bool, dict, Augment, callable or None
        The value of an estimator's ``augment`` parameter.

    Returns
    -------
    Augment, callable or None
        ``None`` for no augmentation, else what to call on each batch as
        ``f(x, generator=g)``.

    Raises
    ------
    ValueError
        If ``augment`` is none of the above, or a dict gives a ``scale`` or
        ``rotation`` out of range.
    TypeError
        If a dict holds a key that is not a parameter of :class:`Augment`.

    Examples
    --------
    >>> make_augment(True)
    Augment(scale=(1.0, 1.25), rotation=30.0, hflip=True, vflip=True, translate=True)
    >>> make_augment({"rotation": 10, "vflip": False})
    Augment(scale=(1.0, 1.25), rotation=10.0, hflip=True, vflip=False, translate=True)
    >>> make_augment(False) is None
    True
    """
    if augment is None or augment is False:
        return None
    if augment is True:
        return Augment()
    if isinstance(augment, dict):
        return Augment(**augment)
    if callable(augment):
        return augment
    raise ValueError(
        f"augment must be a bool, a dict of Augment parameters or an Augment; got {augment!r}."
    )
