"""fewmed's backbones (Conv4, a small ResNet, VGG) and ``build_backbone``.

Every backbone follows :class:`fewmed.nn.BackboneProtocol` so estimators can reuse
it: ``forward_features(x)`` gives the feature map ``(N, C, h, w)``,
``forward_head(fmap)`` the logits, ``embed(fmap)`` vectors, ``reset_head`` a new
head, ``feature_shape`` ``(C, h, w)`` for ``input_shape``. Any other torch module
is wrapped in :class:`fewmed.nn.BackboneAdapter` by :func:`build_backbone`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ._adapter import BackboneAdapter, factory_kwargs, takes_fewmed_arguments
from ._functional import batch_norm_train, max_pool2d_gather
from ._protocol import _Backbone, follows_protocol

__all__ = [
    "Conv4",
    "ResNet",
    "VGG",
    "ReferenceBatchNorm2d",
    "IndexMaxPool2d",
    "build_backbone",
    "BACKBONES",
]


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


class ReferenceBatchNorm2d(nn.Module):
    """BatchNorm whose statistics come from a reference part of the batch.

    With ``n_ref = None`` it normalises a batch with its own statistics (as
    BatchNorm in training mode, no running averages). With ``n_ref = k`` the mean
    and variance are computed on the first ``k`` images only and applied to all:
    meta-learners put a task's support set first, so query and test images are
    normalised with support statistics and a prediction never depends on the other
    images it is batched with. Nothing is stored between calls, so nothing leaks
    from one task to the next.

    Parameters
    ----------
    num_features : int
        Channels of the input ``(n, num_features, H, W)``.
    eps : float, default=1e-5
        Added to the variance before the square root.

    Examples
    --------
    >>> import torch
    >>> bn = ReferenceBatchNorm2d(4)
    >>> x = torch.randn(6, 4, 5, 5)
    >>> bn.n_ref = 2
    >>> torch.allclose(bn(x)[:2], ReferenceBatchNorm2d(4)(x[:2]), atol=1e-6)
    True
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.n_ref: int | None = None
        self.fused = True
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.n_ref is None and self.fused:  # fused kernels, fast double backward
            return batch_norm_train(x, self.weight, self.bias, self.eps)
        ref = x if self.n_ref is None else x[: self.n_ref]
        var, mean = torch.var_mean(ref, dim=(0, 2, 3), correction=0, keepdim=True)
        # x * scale + shift with per-channel scale and shift (as torch's CPU kernel
        # computes it): one full-size pass forward, two backward
        scale = self.weight[None, :, None, None] * torch.rsqrt(var + self.eps)
        return torch.addcmul(self.bias[None, :, None, None] - mean * scale, x, scale)


class IndexMaxPool2d(nn.MaxPool2d):
    """:class:`torch.nn.MaxPool2d` with a faster CPU path and identical derivatives.

    Without padding, dilation or ``ceil_mode`` it pools with
    :func:`fewmed.nn.max_pool2d_gather` (indices from torch's channels-last kernel,
    values gathered): the same outputs and the same first and second derivatives
    as torch's layer, 2.5x faster on CPU for forward, backward and double
    backward together. Other settings and devices use torch's path.

    Examples
    --------
    >>> import torch
    >>> x = torch.randn(2, 3, 6, 6)
    >>> torch.equal(IndexMaxPool2d(2)(x), torch.nn.MaxPool2d(2)(x))
    True
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plain = (
            self.padding in (0, (0, 0))
            and self.dilation in (1, (1, 1))
            and not self.ceil_mode
            and not self.return_indices
        )
        if plain:
            return max_pool2d_gather(x, self.kernel_size, self.stride)
        return super().forward(x)


def _normalises(kind: str | None) -> bool:
    """Whether ``norm=kind`` puts a normalisation after each convolution.

    Without one a convolution needs its own bias; with one the bias is redundant.
    """
    return kind not in (None, "none")


def _norm(kind: str | None, channels: int, track_running_stats: bool) -> nn.Module:
    if not _normalises(kind):
        return nn.Identity()
    if kind == "batch":
        return nn.BatchNorm2d(channels, track_running_stats=track_running_stats)
    if kind == "reference":
        return ReferenceBatchNorm2d(channels)
    raise ValueError(f"norm must be 'batch', 'reference' or None, got {kind!r}.")


def _halving_pool(h: int, w: int) -> tuple[IndexMaxPool2d, int, int]:
    """2x2 max-pooling that stops halving a side once it is 1 pixel; the new ``(h, w)``."""
    kh, kw = (2 if h >= 2 else 1), (2 if w >= 2 else 1)
    return IndexMaxPool2d((kh, kw)), h // kh, w // kw


class Conv4(_Backbone):
    """The four-block convolutional backbone of MAML / DAML.

    Each block is a 3x3 convolution with ``n_filters`` filters (padding 1),
    BatchNorm, ReLU and 2x2 max-pooling; the final feature map is flattened into a
    linear head. Any input size and channel count work: pooling stops shrinking a
    side once it is 1 pixel.

    Parameters
    ----------
    in_channels : int, default=3
        Channels of the input images.
    n_classes : int or None, default=None
        Outputs of the linear head; ``None`` gives a feature extractor (no head).
    n_filters : int, default=64
        Filters of every convolution.
    input_shape : int or (int, int), default=28
        Image height and width the network is built for (sets the head's width).
    norm : {"batch", "reference", None}, default="batch"
        Normalisation after each convolution; ``"reference"`` is
        :class:`ReferenceBatchNorm2d` (used by the meta-learners).
    track_running_stats : bool, default=True
        Passed to BatchNorm. Meta-learners use ``False``: every forward pass is
        normalised with its own batch statistics, so nothing leaks between tasks.
    n_pools : int, default=4
        Blocks that end with the 2x2 max-pooling (the first ones); fewer keep a
        spatial feature map (at 28 px: 4 pools give 1x1, 2 give 7x7), e.g. for
        CDC's decoder.

    Examples
    --------
    >>> import torch
    >>> Conv4(n_filters=8, input_shape=28, n_pools=2).feature_shape
    (8, 7, 7)
    >>> net = Conv4(in_channels=3, n_classes=2, n_filters=8, input_shape=28)
    >>> net(torch.zeros(4, 3, 28, 28)).shape
    torch.Size([4, 2])
    >>> net.feature_shape
    (8, 1, 1)
    """

    def __init__(
        self,
        in_channels: int = 3,
        n_classes: int | None = None,
        n_filters: int = 64,
        input_shape: int | Sequence[int] = 28,
        norm: str | None = "batch",
        track_running_stats: bool = True,
        n_pools: int = 4,
    ) -> None:
        super().__init__()
        if not 0 <= int(n_pools) <= 4:
            raise ValueError(f"n_pools must be in 0..4, got {n_pools!r}.")
        h, w = _pair(input_shape)
        self.input_shape = (in_channels, h, w)
        layers: list[nn.Module] = []
        c = in_channels
        for block in range(4):
            pool, h, w = _halving_pool(h, w) if block < n_pools else (nn.Identity(), h, w)
            # max-pooling commutes with ReLU (both are monotone), so pooling first gives
            # the same outputs and gradients with 4x less ReLU work
            layers += [
                nn.Conv2d(c, n_filters, 3, padding=1),
                _norm(norm, n_filters, track_running_stats),
                pool,
                nn.ReLU(inplace=False),
            ]
            c = n_filters
        self.features = nn.Sequential(*layers)
        self._build_head(n_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, norm: str | None, trs: bool) -> None:
        super().__init__()
        bias = not _normalises(norm)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = _norm(norm, c_out, trs)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=bias)
        self.bn2 = _norm(norm, c_out, trs)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=bias),
                _norm(norm, c_out, trs),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(_Backbone):
    """A small ResNet for low-resolution medical images (MedMNIST-style, 28-224 px).

    A 3x3 stem, four stages of basic blocks with ``n_filters * (1, 2, 4, 8)``
    channels (strides 1, 2, 2, 2), global average pooling and a linear head.
    ``layers=(2, 2, 2, 2)`` is ResNet-18's layout; the default ``(1, 1, 1, 1)``
    (ResNet-10) trains in minutes on a CPU.

    Parameters
    ----------
    in_channels : int, default=3
    n_classes : int or None, default=None
    n_filters : int, default=32
        Width of the first stage.
    input_shape : int or (int, int), default=28
    layers : sequence of 4 int, default=(1, 1, 1, 1)
        Basic blocks per stage.
    norm : {"batch", None}, default="batch"
    track_running_stats : bool, default=True

    Examples
    --------
    >>> import torch
    >>> net = ResNet(in_channels=1, n_classes=5, n_filters=8, input_shape=28)
    >>> net(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 5])
    """

    global_pool = True

    def __init__(
        self,
        in_channels: int = 3,
        n_classes: int | None = None,
        n_filters: int = 32,
        input_shape: int | Sequence[int] = 28,
        layers: Sequence[int] = (1, 1, 1, 1),
        norm: str | None = "batch",
        track_running_stats: bool = True,
    ) -> None:
        super().__init__()
        h, w = _pair(input_shape)
        self.input_shape = (in_channels, h, w)
        trs = track_running_stats
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, n_filters, 3, padding=1, bias=not _normalises(norm)),
            _norm(norm, n_filters, trs),
            nn.ReLU(),
        )
        blocks: list[nn.Module] = []
        c = n_filters
        for i, n in enumerate(layers):
            c_out = n_filters * 2**i
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(_BasicBlock(c, c_out, stride, norm, trs))
                c = c_out
        self.features = nn.Sequential(*blocks)
        self._build_head(n_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.stem(x))


class VGG(_Backbone):
    """A VGG-style network for small images: pairs of 3x3 convolutions, then pooling.

    ``n_blocks`` blocks of [conv 3x3, BatchNorm, ReLU, conv 3x3, BatchNorm, ReLU,
    2x2 max-pooling] with ``n_filters * (1, 2, 4, ...)`` channels, global average
    pooling, optional dropout and a linear head. At 28 px the default (3 blocks,
    32 filters) keeps a 28x28 and a 14x14 stage before its 7x7 one, where
    :class:`Conv4` pools after every convolution. On HAM10000 at 28 px it gave
    the best plain classifier of fewmed's backbones (``docs/benchmarks.md``, CDC
    section), at about 30 M multiply-adds per image (ResNet-10 with 32 filters:
    about 50 M).

    Parameters
    ----------
    in_channels : int, default=3
    n_classes : int or None, default=None
    n_filters : int, default=32
        Width of the first block; block ``i`` has ``n_filters * 2**i`` filters.
    input_shape : int or (int, int), default=28
    n_blocks : int, default=3
        Pooling stops halving a side once it is 1 pixel.
    dropout : float, default=0.0
        Dropout before the head.
    norm : {"batch", "reference", None}, default="batch"
    track_running_stats : bool, default=True

    Examples
    --------
    >>> import torch
    >>> net = VGG(in_channels=3, n_classes=7, n_filters=8, input_shape=28)
    >>> net(torch.zeros(2, 3, 28, 28)).shape
    torch.Size([2, 7])
    >>> net.feature_shape
    (32, 3, 3)
    """

    global_pool = True

    def __init__(
        self,
        in_channels: int = 3,
        n_classes: int | None = None,
        n_filters: int = 32,
        input_shape: int | Sequence[int] = 28,
        n_blocks: int = 3,
        dropout: float = 0.0,
        norm: str | None = "batch",
        track_running_stats: bool = True,
    ) -> None:
        super().__init__()
        if n_blocks < 1:
            raise ValueError(f"n_blocks must be >= 1, got {n_blocks}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        h, w = _pair(input_shape)
        self.input_shape = (in_channels, h, w)
        bias = not _normalises(norm)
        layers: list[nn.Module] = []
        c = in_channels
        for i in range(n_blocks):
            c_out = n_filters * 2**i
            for c_in in (c, c_out):
                layers += [
                    nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias),
                    _norm(norm, c_out, track_running_stats),
                    nn.ReLU(),
                ]
            pool, h, w = _halving_pool(h, w)
            layers.append(pool)
            c = c_out
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self._build_head(n_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.embed(fmap)))


BACKBONES: dict[str, type[_Backbone]] = {"conv4": Conv4, "resnet": ResNet, "vgg": VGG}


def build_backbone(
    module: str | type[nn.Module] | nn.Module | Callable[..., nn.Module],
    *,
    in_channels: int,
    input_shape: int | Sequence[int],
    n_classes: int | None,
    n_filters: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a backbone that follows :class:`BackboneProtocol` from what ``module=`` says.

    Parameters
    ----------
    module : str, nn.Module class, factory or nn.Module instance
        * a name, ``"conv4"``, ``"resnet"``, ``"resnet18"`` or ``"vgg"``: that
          fewmed backbone, called with ``in_channels``, ``n_classes``,
          ``input_shape``, ``n_filters`` and ``kwargs``;
        * a class taking ``in_channels``, ``n_classes`` and ``input_shape`` (fewmed's
          backbones and classes written like them): called in the same way;
        * any other class or factory: called with ``kwargs`` only (the estimator's
          ``module__<name>`` arguments) and wrapped in :class:`BackboneAdapter`;
        * an instance that follows the protocol: deep-copied (the user's object is
          never trained in place), with a new head when ``n_classes`` differs from
          its ``n_classes``;
        * any other instance: deep-copied and wrapped in :class:`BackboneAdapter`.
    in_channels, input_shape, n_classes, n_filters
        Shape of the problem: channels, ``(H, W)`` (or one int), outputs of the
        head (``None``: keep an instance's head, no head for a name),
        ``n_filters=None`` keeps the backbone's default. Only fewmed's backbones
        (and classes taking fewmed's arguments) receive ``n_filters``.
    **kwargs
        Further keyword arguments for the class or factory. fewmed's backbone
        options ``norm`` and ``track_running_stats`` reach another factory only if
        its signature names them (``norm="reference"`` never does).

    Returns
    -------
    nn.Module

    Raises
    ------
    TypeError
        ``module`` is none of the above (e.g. ``module=42``).
    ValueError
        An unknown name, or a module that cannot process the images.

    Examples
    --------
    >>> build_backbone("conv4", in_channels=1, input_shape=28, n_classes=2).head
    Linear(in_features=64, out_features=2, bias=True)
    >>> from torch import nn
    >>> mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 4))
    >>> net = build_backbone(mlp, in_channels=3, input_shape=8, n_classes=2)
    >>> type(net).__name__, net.head, net.feature_shape
    ('BackboneAdapter', Linear(in_features=16, out_features=2, bias=True), (16, 1, 1))
    """
    shape = (int(in_channels), *_pair(input_shape))
    if isinstance(module, nn.Module):
        if not follows_protocol(module):
            return BackboneAdapter(module, input_shape=shape, n_classes=n_classes)
        net = copy.deepcopy(module)
        if isinstance(net, BackboneAdapter) and net.input_shape != shape:
            net._set_input_shape(shape)
        if n_classes is not None and getattr(net, "n_classes", None) != n_classes:
            net.reset_head(n_classes)
        return net
    if isinstance(module, str):
        name = module.lower()
        if name == "resnet18":
            kwargs.setdefault("layers", (2, 2, 2, 2))
            name = "resnet"
        if name not in BACKBONES:
            raise ValueError(
                f"module={module!r} is not a known backbone; use one of "
                f"{sorted([*BACKBONES, 'resnet18'])}, an nn.Module class or an instance."
            )
        module = BACKBONES[name]
    if takes_fewmed_arguments(module):
        if n_filters is not None:
            kwargs["n_filters"] = n_filters
        return module(
            in_channels=in_channels, n_classes=n_classes, input_shape=input_shape, **kwargs
        )
    if not callable(module):
        raise TypeError(
            "module must be a backbone name, an nn.Module class or factory, or an nn.Module "
            f"instance; got {module!r}."
        )
    return BackboneAdapter(
        module, input_shape=shape, n_classes=n_classes, module_kwargs=factory_kwargs(module, kwargs)
    )
