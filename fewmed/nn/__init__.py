"""Backbones, decoders and tensor augmentations shared by the estimators."""

from ._augment import Augment, augment, make_augment
from ._backbones import (
    BACKBONES,
    VGG,
    Conv4,
    Decoder,
    IndexMaxPool2d,
    ReferenceBatchNorm2d,
    ResNet,
    build_backbone,
    make_decoder,
)
from ._functional import batch_norm_train, max_pool2d_gather

__all__ = [
    "Augment",
    "augment",
    "make_augment",
    "BACKBONES",
    "Conv4",
    "Decoder",
    "IndexMaxPool2d",
    "ReferenceBatchNorm2d",
    "ResNet",
    "VGG",
    "build_backbone",
    "make_decoder",
    "batch_norm_train",
    "max_pool2d_gather",
]
