"""The decoder of CDC: reconstruct the input image from a backbone's feature map."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["Decoder", "make_decoder"]


class _UpConv(nn.Module):
    """A transposed convolution to ``size``: stride ``s = ceil(size / h)``, kernel
    ``2s - s % 2`` (3 for ``s = 1``), so the output is exactly ``h * s``; a bilinear
    resize corrects the rare remainder (``size`` not a multiple of ``h``)."""

    def __init__(self, c_in: int, c_out: int, in_size: tuple, size: tuple) -> None:
        super().__init__()
        self.size = tuple(size)
        s = [max(1, -(-o // max(i, 1))) for i, o in zip(in_size, size)]
        k = [3 if v == 1 else 2 * v - v % 2 for v in s]
        p = [1 if v == 1 else v // 2 for v in s]
        self.conv = nn.ConvTranspose2d(c_in, c_out, tuple(k), stride=tuple(s), padding=tuple(p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if tuple(x.shape[-2:]) != self.size:
            x = nn.functional.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return x


class Decoder(nn.Module):
    """Reconstruct an image ``(C, H, W)`` from a feature map ``(c, h, w)``.

    ``n_blocks`` up-sampling blocks bring the map to the input size on a
    geometric schedule; a final 3x3 convolution maps to the image channels,
    followed by ``output`` (``"sigmoid"`` for images in [0, 1]). This is the
    "2 (de)convolution blocks" decoder of CDC. A block is, for
    ``kind="upsample"``, [bilinear upsampling, 3x3 convolution, BatchNorm, ReLU];
    for ``kind="deconv"`` (the paper's: "each block contains 1 deconvolutional
    layer"), [transposed convolution, BatchNorm, ReLU]. The convolutions are
    initialised by Kaiming normal initialisation (the paper's, for ReLU; biases
    0). With ``scale < 1`` the blocks and the final convolution work at
    ``scale`` times the input size and a parameter-free bilinear upsampling
    restores it: the full-resolution convolutions are what makes the decoder
    expensive. The decoder can only reconstruct what the map keeps: from a 1x1
    map it draws one blurred image per feature vector; read a spatial map
    (``feature_shape`` of at least 4x4) for a useful reconstruction.

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
    kind : {"upsample", "deconv"}, default="upsample"
        The blocks: bilinear upsampling + convolution, or a transposed convolution.

    Examples
    --------
    >>> import torch
    >>> dec = Decoder((64, 1, 1), (3, 28, 28))
    >>> dec(torch.zeros(2, 64, 1, 1)).shape
    torch.Size([2, 3, 28, 28])
    >>> Decoder((64, 1, 1), (3, 28, 28), scale=0.5)(torch.zeros(2, 64, 1, 1)).shape
    torch.Size([2, 3, 28, 28])
    >>> Decoder((16, 7, 7), (3, 28, 28), kind="deconv")(torch.zeros(2, 16, 7, 7)).shape
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
        kind: str = "upsample",
    ) -> None:
        super().__init__()
        if kind not in ("upsample", "deconv"):
            raise ValueError(f"kind must be 'upsample' or 'deconv', got {kind!r}.")
        if n_blocks < 1:
            raise ValueError(f"n_blocks must be >= 1, got {n_blocks}.")
        if not 0 < scale <= 1:
            raise ValueError(f"scale must be in (0, 1], got {scale}.")
        c, h, w = (int(v) for v in feature_shape)
        C, H_out, W_out = (int(v) for v in output_shape)
        self.output_shape = (C, H_out, W_out)
        H, W = max(1, round(H_out * scale)), max(1, round(W_out * scale))
        blocks: list[nn.Module] = []
        prev = (h, w)
        for i in range(1, n_blocks + 1):
            frac = i / n_blocks
            size = (
                max(1, round(h * (H / h) ** frac)) if h else H,
                max(1, round(w * (W / w) ** frac)) if w else W,
            )
            c_out = n_filters or max(8, c // 2)
            if kind == "deconv":
                blocks.append(_UpConv(c, c_out, prev, size))
            else:
                blocks += [
                    nn.Upsample(size=size, mode="bilinear", align_corners=False),
                    nn.Conv2d(c, c_out, 3, padding=1),
                ]
            blocks += [nn.BatchNorm2d(c_out), nn.ReLU()]
            c, prev = c_out, size
        blocks.append(nn.Conv2d(c, C, 3, padding=1))
        if (H, W) != (H_out, W_out):
            blocks.append(nn.Upsample(size=(H_out, W_out), mode="bilinear", align_corners=False))
        if output == "sigmoid":
            blocks.append(nn.Sigmoid())
        elif output is not None:
            raise ValueError(f"output must be 'sigmoid' or None, got {output!r}.")
        self.net = nn.Sequential(*blocks)
        for m in self.net.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

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
        Further arguments of :class:`Decoder` (``n_filters``, ``output``, ``scale``,
        ``kind``).

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
