"""Backbones, decoders and tensor augmentations shared by the estimators."""

from ._augment import Augment, augment
from ._backbones import (
    BACKBONES,
    Conv4,
    Decoder,
    ReferenceBatchNorm2d,
    ResNet,
    build_backbone,
    make_decoder,
)

__all__ = [
    "Augment",
    "augment",
    "BACKBONES",
    "Conv4",
    "Decoder",
    "ReferenceBatchNorm2d",
    "ResNet",
    "build_backbone",
    "make_decoder",
]
