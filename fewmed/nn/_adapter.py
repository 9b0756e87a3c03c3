"""Make any torch module follow fewmed's backbone protocol."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping, Sequence
from numbers import Integral
from typing import Any

import torch
from torch import nn

from ._protocol import _Backbone

__all__ = ["BackboneAdapter", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""Per-channel mean of ImageNet (RGB in [0, 1]): the ``mean`` of ImageNet-pretrained weights."""

IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""Per-channel standard deviation of ImageNet (RGB in [0, 1])."""

# options of fewmed's own backbones that estimators set (DAML: norm="reference"):
# they configure fewmed's backbones and are not passed to another factory unless it
# names them in its signature ("reference" is fewmed's own and never passed)
_FEWMED_OPTIONS = ("norm", "track_running_stats")


def _describe(module: object) -> str:
    name = getattr(module, "__qualname__", None) or type(module).__name__
    return f"module={name}"


def _instantiate(module: Any, module_kwargs: Mapping[str, Any]) -> nn.Module:
    """A private copy of an instance, or what a class or factory builds."""
    if isinstance(module, nn.Module):
        if module_kwargs:
            raise TypeError(
                f"{_describe(module)} is an instance: it takes no constructor arguments "
                f"(got {sorted(module_kwargs)}); pass its class or set them when you build it."
            )
        return copy.deepcopy(module)
    if not callable(module):
        raise TypeError(
            "module must be an nn.Module instance, an nn.Module class or a factory returning "
            f"one; got {module!r}."
        )
    try:
        built = module(**module_kwargs)
    except TypeError as err:
        raise TypeError(
            f"{_describe(module)} could not be called with {dict(module_kwargs)!r}: {err}. "
            "Only your own module__<name> arguments are passed to it; fewmed's (in_channels, "
            "n_classes, input_shape, n_filters) are not."
        ) from err
    if not isinstance(built, nn.Module):
        raise TypeError(f"{_describe(module)} returned a {type(built).__name__}, not an nn.Module.")
    return built


def _find_head(body: nn.Module, head: str | None) -> str | None:
    """Attribute path of the head: the last ``nn.Linear`` (``"auto"``) or ``head``."""
    if head is None:
        return None
    if head == "auto":
        linears = [name for name, m in body.named_modules() if isinstance(m, nn.Linear)]
        return linears[-1] if linears else None
    try:
        layer = body.get_submodule(head)
    except AttributeError as err:
        raise ValueError(f"head={head!r} is not a submodule of the module: {err}") from err
    if not isinstance(layer, nn.Linear):
        raise ValueError(f"head={head!r} must name an nn.Linear, got {type(layer).__name__}.")
    return head


def _as_map(out: torch.Tensor) -> torch.Tensor:
    """A body's output as a 4-D map (``(n, d)`` gives ``(n, d, 1, 1)``)."""
    if out.ndim == 4:
        return out
    if out.ndim == 2:
        return out[:, :, None, None]
    if out.ndim == 3:
        return out[..., None]
    raise ValueError(
        f"the module's features have shape {tuple(out.shape)}; fewmed needs (n, d) or "
        "(n, c, h, w) (2-D images: e.g. spatial_dims=2 for MONAI networks)."
    )


def _channel_vector(value: Sequence[float] | float | None, channels: int, name: str, fill: float):
    if value is None:
        return torch.full((1, channels, 1, 1), fill)
    vec = torch.as_tensor(value, dtype=torch.float32).flatten()
    if vec.numel() == 1:
        vec = vec.expand(channels)
    if vec.numel() != channels:
        raise ValueError(f"{name} has {vec.numel()} values; the images have {channels} channels.")
    if name == "std" and bool((vec <= 0).any()):
        raise ValueError(f"std must be positive, got {value!r}.")
    return vec.reshape(1, channels, 1, 1).clone()


class BackboneAdapter(_Backbone):
    """Wrap any torch module so that it follows :class:`BackboneProtocol`.

    The module is split into a body and a linear head. The head is the
    ``nn.Linear`` named by ``head`` (by default the module's last
    ``nn.Linear``, which must be its final operation); the body is the module
    with that layer replaced by an identity. Without a head (``head=None`` or no
    ``nn.Linear``) the whole module is the body and a new ``nn.Linear`` head is
    put on its pooled or flattened output. The module is never trained in place:
    an instance is deep-copied, a class or factory is called.

    Parameters
    ----------
    module : nn.Module instance, nn.Module class or callable returning an nn.Module
        The network: an instance (deep-copied) or a class / factory called with
        ``module_kwargs`` only.
    input_shape : (int, int, int)
        ``(C, H, W)`` of the images: a zero batch of this shape is run once to
        find ``feature_shape``.
    n_classes : int or None, default=None
        Outputs of the head. ``None`` keeps the module's head (or, without one, no
        head: the adapter is a feature extractor); a number different from the
        module's head gives a new head.
    head : "auto", str or None, default="auto"
        Attribute path of the final linear layer (``"fc"``, ``"class_layers.out"``,
        ``"2"`` in an ``nn.Sequential``); ``"auto"`` takes the last ``nn.Linear``;
        ``None``: the module has no head.
    pool : {"auto", "avg", "flatten"}, default="auto"
        How ``embed`` turns the feature map into vectors: average over ``(h, w)``
        or flatten. ``"auto"``: what the module's head expects (its
        ``in_features``), average pooling without a head.
    mean, std : float or sequence of float, default=None
        Input normalisation ``(x - mean) / std`` per channel, applied first in
        ``forward`` and ``forward_features`` (:data:`IMAGENET_MEAN` and
        :data:`IMAGENET_STD` for ImageNet-pretrained weights; fewmed's images are
        in [0, 1]). ``None``: no shift (scale).
    module_kwargs : dict or None, default=None
        Keyword arguments of a class or factory ``module``.

    Attributes
    ----------
    body : nn.Module
        The module without its head.
    head : nn.Module
        ``nn.Linear(feature_dim, n_classes)``, or ``nn.Identity`` without a head.
    head_path : str or None
        Where the head was found in the module (``None``: none was).
    input_shape : tuple of int
        ``(C, H, W)``.
    feature_shape : tuple of int
        ``(c, h, w)`` of ``forward_features``; a vector output ``(n, d)`` gives ``(d, 1, 1)``.
    feature_dim : int
        Width of ``embed``'s vectors (the head's ``in_features``).
    n_classes : int or None
    pool : {"avg", "flatten"}

    Raises
    ------
    TypeError
        ``module`` is neither a module nor a factory, or the factory rejects
        ``module_kwargs``.
    ValueError
        The module cannot process ``input_shape`` images (e.g. other channels).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from fewmed.nn import BackboneAdapter
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
    ...                     nn.Flatten(), nn.Linear(8, 5))
    >>> ad = BackboneAdapter(net, input_shape=(3, 16, 16))
    >>> ad.head_path, ad.n_classes, ad.feature_shape
    ('4', 5, (8, 1, 1))
    >>> ad.reset_head(3)
    >>> ad(torch.zeros(2, 3, 16, 16)).shape
    torch.Size([2, 3])
    >>> ad.embed(ad.forward_features(torch.zeros(2, 3, 16, 16))).shape
    torch.Size([2, 8])
    """

    def __init__(
        self,
        module: nn.Module | Callable[..., nn.Module],
        *,
        input_shape: Sequence[int],
        n_classes: int | None = None,
        head: str | None = "auto",
        pool: str = "auto",
        mean: Sequence[float] | float | None = None,
        std: Sequence[float] | float | None = None,
        module_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if pool not in ("auto", "avg", "flatten"):
            raise ValueError(f"pool must be 'auto', 'avg' or 'flatten', got {pool!r}.")
        if n_classes is not None and (not isinstance(n_classes, Integral) or n_classes < 1):
            raise ValueError(f"n_classes must be a positive int or None, got {n_classes!r}.")
        shape = tuple(int(v) for v in input_shape)
        if len(shape) != 3:
            raise ValueError(f"input_shape must be (C, H, W), got {tuple(input_shape)!r}.")
        self.input_shape = shape
        self._source = _describe(module)
        body = _instantiate(module, dict(module_kwargs or {}))
        self.head_path = _find_head(body, head)
        found: nn.Linear | None = None
        if self.head_path is not None:
            found = body.get_submodule(self.head_path)
            if self.head_path == "":
                body = nn.Identity()
            else:
                parent, _, leaf = self.head_path.rpartition(".")
                setattr(body.get_submodule(parent), leaf, nn.Identity())
        self.body = body
        c = shape[0]
        self.register_buffer("mean", _channel_vector(mean, c, "mean", 0.0))
        self.register_buffer("std", _channel_vector(std, c, "std", 1.0))
        self._normalises = mean is not None or std is not None
        self._probe()
        self.pool = self._choose_pool(pool, found)
        self.feature_dim = self._embedding_dim()
        if found is not None and n_classes in (None, found.out_features):
            self.head: nn.Module = found
            self.n_classes: int | None = found.out_features
        elif n_classes is not None:
            self.reset_head(n_classes)
        else:
            self.head, self.n_classes = nn.Identity(), None

    # ------------------------------------------------------------------ set-up
    def _probe(self) -> None:
        """Set ``feature_shape`` from one forward pass of a zero batch (eval mode)."""
        modes = [(m, m.training) for m in self.body.modules()]
        device, dtype = self._device_dtype()
        x = torch.zeros(2, *self.input_shape, device=device, dtype=dtype)
        self.body.eval()
        try:
            with torch.no_grad():
                fmap = self.forward_features(x)
        except RuntimeError as err:
            raise ValueError(self._probe_message(err)) from err
        finally:
            for m, training in modes:
                m.training = training
        self.feature_shape = tuple(int(v) for v in fmap.shape[1:])

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        for t in [*self.body.parameters(), *self.body.buffers()]:
            if t.is_floating_point():
                return t.device, t.dtype
        return self.mean.device, self.mean.dtype

    def _probe_message(self, err: Exception) -> str:
        c = self.input_shape[0]
        convs = [m for m in self.body.modules() if isinstance(m, nn.modules.conv._ConvNd)]
        if convs and convs[0].in_channels != c:
            return (
                f"{self._source} could not process images of shape (C, H, W) = "
                f"{self.input_shape}: its first convolution expects {convs[0].in_channels} "
                f"channels ({err}). fewmed does not adapt channels: build the module for {c} "
                f"input channel(s) (e.g. in_channels={c} / in_chans={c}) or convert the images "
                "to the module's channels before fitting."
            )
        head = (
            f"; the head {self.head_path!r} must be the module's final layer (or use head=None)"
            if self.head_path is not None
            else ""
        )
        return (
            f"{self._source} could not process images of shape (C, H, W) = {self.input_shape} "
            f"({err}). Build the module for {c}-channel 2-D images of this size{head}."
        )

    def _choose_pool(self, pool: str, found: nn.Linear | None) -> str:
        c, h, w = self.feature_shape
        if found is None:
            return "avg" if pool == "auto" else pool
        widths = {"flatten": c * h * w, "avg": c}
        options = [pool] if pool != "auto" else ["flatten", "avg"]
        for option in options:
            if widths[option] == found.in_features:
                return option
        raise ValueError(
            f"the head {self.head_path!r} of {self._source} takes {found.in_features} features "
            f"but the rest of the module gives a map of shape {self.feature_shape} (pool={pool!r}):"
            " the head must be the module's final operation; name it with head=... or use "
            "head=None."
        )

    def _set_input_shape(self, input_shape: Sequence[int]) -> None:
        """Re-probe for other images (``build_backbone`` with an adapter instance)."""
        self.input_shape = tuple(int(v) for v in input_shape)
        self._probe()
        dim = self._embedding_dim()
        if dim != self.feature_dim:
            self.feature_dim = dim
            if self.n_classes is not None:
                self.reset_head(self.n_classes)

    # ------------------------------------------------------------------ protocol
    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` per channel (``x`` unchanged without ``mean`` / ``std``)."""
        if not self._normalises:
            return x
        return (x - self.mean) / self.std

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map ``(n, c, h, w)`` of the normalised images (the body's output)."""
        return _as_map(self.body(self.normalise(x)))

    @property
    def global_pool(self) -> bool:
        """Whether :meth:`embed` averages the map over ``(h, w)`` (``pool="avg"``)."""
        return self.pool == "avg"

    def reset_head(self, n_classes: int) -> None:
        """Replace the head by a new ``Linear(feature_dim, n_classes)`` (torch's RNG)."""
        device, dtype = self._device_dtype()
        self.n_classes = int(n_classes)
        self.head = nn.Linear(self.feature_dim, self.n_classes).to(device, dtype)

    def extra_repr(self) -> str:
        return (
            f"input_shape={self.input_shape}, feature_shape={self.feature_shape}, "
            f"pool={self.pool!r}, head_path={self.head_path!r}"
        )


def takes_fewmed_arguments(cls: object) -> bool:
    """Whether a class is built like fewmed's backbones (``in_channels``, ``n_classes``, ...).

    Examples
    --------
    >>> from torch import nn
    >>> from fewmed.nn import Conv4
    >>> takes_fewmed_arguments(Conv4), takes_fewmed_arguments(nn.Linear)
    (True, False)
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        return False
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False
    return all(name in params for name in ("in_channels", "n_classes", "input_shape"))


def factory_kwargs(factory: Callable[..., Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` without fewmed's backbone options that ``factory`` does not name.

    Examples
    --------
    >>> from torch import nn
    >>> factory_kwargs(nn.Conv2d, {"norm": "reference", "bias": False})
    {'bias': False}
    """
    try:
        named = set(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        named = set()
    return {
        k: v
        for k, v in kwargs.items()
        if k not in _FEWMED_OPTIONS or (k in named and not (k == "norm" and v == "reference"))
    }
