"""Backbones, the backbone protocol and adapter, decoders and tensor augmentations."""

from .._validation import resolve_device
from ._adapter import IMAGENET_MEAN, IMAGENET_STD, BackboneAdapter
from ._augment import Augment, augment, make_augment
from ._backbones import (
    BACKBONES,
    VGG,
    Conv4,
    IndexMaxPool2d,
    ReferenceBatchNorm2d,
    ResNet,
    build_backbone,
)
from ._decoder import Decoder, make_decoder
from ._functional import batch_norm_train, max_pool2d_gather
from ._protocol import BackboneProtocol, follows_protocol

__all__ = [
    "resolve_device",
    "Augment",
    "augment",
    "make_augment",
    "BACKBONES",
    "BackboneAdapter",
    "BackboneProtocol",
    "Conv4",
    "Decoder",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IndexMaxPool2d",
    "ReferenceBatchNorm2d",
    "ResNet",
    "VGG",
    "build_backbone",
    "follows_protocol",
    "make_decoder",
    "batch_norm_train",
    "max_pool2d_gather",
]
