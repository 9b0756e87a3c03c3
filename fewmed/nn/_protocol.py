"""The backbone protocol: what fewmed's estimators use of a network, and the shared half of it."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

__all__ = ["BackboneProtocol", "follows_protocol"]


@runtime_checkable
class BackboneProtocol(Protocol):
    """What fewmed's estimators need of a backbone.

    A backbone is a :class:`torch.nn.Module` split in two: a body that turns
    images into a feature map, and a linear head that turns the feature map into
    logits. fewmed's own backbones (:class:`Conv4`, :class:`ResNet`,
    :class:`VGG`) follow this protocol; :class:`BackboneAdapter` makes any other
    torch module follow it. ``isinstance(net, BackboneProtocol)`` checks that the
    members exist (not their signatures).

    Who uses what:

    * every estimator calls ``net(x)``, which must equal
      ``net.forward_head(net.forward_features(x))``;
    * :class:`~fewmed.ProtoNetClassifier`, ``ConvFeatureExtractor`` and
      ``FeatureFewShotClassifier`` embed images with
      ``net.embed(net.forward_features(x))``;
    * :class:`~fewmed.CDCClassifier` reconstructs images from
      ``forward_features`` with a decoder built for ``feature_shape`` and
      ``input_shape`` (:func:`make_decoder`);
    * ``FineTuneClassifier``, :class:`~fewmed.ReptileInitializer` and
      :func:`build_backbone` (one head size per RSKD teacher) call
      ``reset_head``.

    Attributes
    ----------
    input_shape : tuple of int
        ``(C, H, W)`` of the images the backbone was built for.
    feature_shape : tuple of int
        ``(c, h, w)`` of ``forward_features``'s output for ``input_shape``
        images; a vector backbone has ``(d, 1, 1)``.
    n_classes : int or None
        Outputs of the head; ``None`` when the head is the identity (a feature
        extractor).

    Examples
    --------
    >>> from fewmed.nn import BackboneProtocol, Conv4
    >>> isinstance(Conv4(n_classes=2, n_filters=4), BackboneProtocol)
    True
    >>> import torch
    >>> isinstance(torch.nn.Linear(3, 2), BackboneProtocol)
    False
    """

    input_shape: tuple[int, ...]
    feature_shape: tuple[int, ...]
    n_classes: int | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(n, n_classes)``: ``forward_head(forward_features(x))``."""
        ...

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map ``(n, c, h, w)`` of images ``x`` of shape ``(n, *input_shape)``."""
        ...

    def forward_head(self, fmap: torch.Tensor) -> torch.Tensor:
        """Logits ``(n, n_classes)`` of a feature map: ``head(embed(fmap))``."""
        ...

    def embed(self, fmap: torch.Tensor) -> torch.Tensor:
        """Vectors ``(n, d)`` of a feature map (flattened or average-pooled)."""
        ...

    def reset_head(self, n_classes: int) -> None:
        """Replace the head by a new ``Linear(d, n_classes)``, drawn from torch's RNG."""
        ...


def follows_protocol(module: object) -> bool:
    """Whether ``module`` is a torch module that follows :class:`BackboneProtocol`.

    Parameters
    ----------
    module : object

    Returns
    -------
    bool

    Examples
    --------
    >>> import torch
    >>> from fewmed.nn import Conv4, follows_protocol
    >>> follows_protocol(Conv4(n_filters=4)), follows_protocol(torch.nn.Identity())
    (True, False)
    """
    return isinstance(module, torch.nn.Module) and isinstance(module, BackboneProtocol)


class _Backbone(nn.Module):
    """Common head logic: flatten (or pool) the feature map, then a linear layer.

    Also the base of :class:`fewmed.nn.BackboneAdapter`, which shares the pooling,
    ``forward_head`` and ``forward``.
    """

    global_pool: bool = False

    def _build_head(self, n_classes: int | None) -> None:
        was_training = self.training
        self.eval()
        with torch.no_grad():
            fmap = self.forward_features(torch.zeros(2, *self.input_shape))
        self.train(was_training)
        self.feature_shape = tuple(fmap.shape[1:])
        self.feature_dim = self._embedding_dim()
        self.n_classes = n_classes
        self.head = nn.Linear(self.feature_dim, n_classes) if n_classes else nn.Identity()

    def _embedding_dim(self) -> int:
        """Length of :meth:`embed`'s vectors for a map of ``feature_shape``."""
        c, h, w = self.feature_shape
        return c if self.global_pool else c * h * w

    def embed(self, fmap: torch.Tensor) -> torch.Tensor:
        """Flatten (Conv4) or average-pool (ResNet) a feature map into vectors."""
        if self.global_pool:
            return fmap.mean(dim=(2, 3))
        return fmap.flatten(1)

    def forward_head(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(fmap))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_head(self, n_classes: int) -> None:
        """Replace the classifier head by a freshly initialised one for ``n_classes``."""
        device = next(self.parameters()).device
        self.n_classes = n_classes
        self.head = nn.Linear(self.feature_dim, n_classes).to(device)
