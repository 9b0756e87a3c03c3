"""The decoder of CDC: reconstruct the input image from a backbone's feature map."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["Decoder", "make_decoder"]


class Decoder(nn.Module):
    """Reconstruct an image ``(C, H, W)`` from a feature map ``(c, h, w)``.

    ``n_blocks`` blocks of [bilinear upsampling, 3x3 convolution, BatchNorm, ReLU]
    bring the map to the input size on a geometric schedule; a final 3x3
    convolution maps to the image channels, followed by ``output`` (``"sigmoid"``
    for images in [0, 1]). This is the "2 (de)convolution blocks" decoder of CDC.
    With ``scale < 1`` the blocks and the final convolution work at ``scale``
    times the input size and a parameter-free bilinear upsampling restores it:
    the full-resolution convolutions are what makes the decoder expensive.

    Parameters
    ----------
    feature_shape : (int, int, int)
        ``(c, h, w)`` of the backbone's feature map.
    output_shape : (int, int, int)
        ``(C, H, W)`` of the images to reconstruct.
    n_blocks : int, default=2
    n_filters : int or None, default=None
        Width of the blocks; ``None`` halves ``c`` at every block (at least 8).
    output : {"sigmoid", None}, default="sigmoid"
    scale : float in (0, 1], default=1.0
        Resolution of the blocks relative to the output.

    Examples
    --------
    >>> import torch
    >>> dec = Decoder((64, 1, 1), (3, 28, 28))
    >>> dec(torch.zeros(2, 64, 1, 1)).shape
    torch.Size([2, 3, 28, 28])
    >>> Decoder((64, 1, 1), (3, 28, 28), scale=0.5)(torch.zeros(2, 64, 1, 1)).shape
    torch.Size([2, 3, 28, 28])
    """

    def __init__(
        self,
        feature_shape: Sequence[int],
        output_shape: Sequence[int],
        n_blocks: int = 2,
        n_filters: int | None = None,
        output: str | None = "sigmoid",
        scale: float = 1.0,
    ) -> None:
        super().__init__()
        if n_blocks < 1:
            raise ValueError(f"n_blocks must be >= 1, got {n_blocks}.")
        if not 0 < scale <= 1:
            raise ValueError(f"scale must be in (0, 1], got {scale}.")
        c, h, w = (int(v) for v in feature_shape)
        C, H_out, W_out = (int(v) for v in output_shape)
        self.output_shape = (C, H_out, W_out)
        H, W = max(1, round(H_out * scale)), max(1, round(W_out * scale))
        blocks: list[nn.Module] = []
        for i in range(1, n_blocks + 1):
            frac = i / n_blocks
            size = (
                max(1, round(h * (H / h) ** frac)) if h else H,
                max(1, round(w * (W / w) ** frac)) if w else W,
            )
            c_out = n_filters or max(8, c // 2)
            blocks += [
                nn.Upsample(size=size, mode="bilinear", align_corners=False),
                nn.Conv2d(c, c_out, 3, padding=1),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
            ]
            c = c_out
        blocks.append(nn.Conv2d(c, C, 3, padding=1))
        if (H, W) != (H_out, W_out):
            blocks.append(nn.Upsample(size=(H_out, W_out), mode="bilinear", align_corners=False))
        if output == "sigmoid":
            blocks.append(nn.Sigmoid())
        elif output is not None:
            raise ValueError(f"output must be 'sigmoid' or None, got {output!r}.")
        self.net = nn.Sequential(*blocks)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.net(fmap)


def make_decoder(backbone: nn.Module, n_blocks: int = 2, **kwargs: Any) -> Decoder:
    """Build the :class:`Decoder` matching a backbone that follows the protocol.

    Parameters
    ----------
    backbone : BackboneProtocol
        A backbone with ``feature_shape`` ``(c, h, w)`` and ``input_shape``
        ``(C, H, W)`` (any fewmed backbone or :class:`BackboneAdapter`).
    n_blocks : int, default=2
    **kwargs
        Further arguments of :class:`Decoder` (``n_filters``, ``output``, ``scale``).

    Returns
    -------
    Decoder

    Examples
    --------
    >>> import torch
    >>> from fewmed.nn import Conv4
    >>> net = Conv4(in_channels=3, n_classes=7, n_filters=16, input_shape=28)
    >>> make_decoder(net)(net.forward_features(torch.zeros(1, 3, 28, 28))).shape
    torch.Size([1, 3, 28, 28])
    """
    if not hasattr(backbone, "feature_shape") or not hasattr(backbone, "input_shape"):
        raise ValueError(
            "the backbone must expose feature_shape and input_shape (fewmed.nn.BackboneProtocol);"
            " wrap your module in fewmed.nn.BackboneAdapter."
        )
    return Decoder(backbone.feature_shape, backbone.input_shape, n_blocks=n_blocks, **kwargs)
