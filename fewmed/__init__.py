"""fewmed: scikit-learn estimators for few-shot and long-tailed medical image classification.

The estimators are imported lazily so that ``import fewmed`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "DAMLClassifier": "fewmed.fewshot",
    "ProtoNetClassifier": "fewmed.fewshot",
    "ReptileInitializer": "fewmed.fewshot",
    "FineTuneClassifier": "fewmed.fewshot",
    "FeatureFewShotClassifier": "fewmed.fewshot",
    "ConvFeatureExtractor": "fewmed.fewshot",
    "CDCClassifier": "fewmed.longtail",
    "RelationalSubsetsDistiller": "fewmed.longtail",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        return getattr(module, name)
    raise AttributeError(f"module 'fewmed' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
