"""Loaders for medical image data sets, downloads into a cache, and synthetic data.

Every loader returns a :class:`sklearn.utils.Bunch` with ``images`` (uint8,
``(n, H, W, C)``), ``target``, ``target_names`` and, where the data set has
them, ``groups`` (lesion or patient ids: split by them, never by image).
See ``docs/data.md``.
"""

from ._base import get_data_home
from ._fallback import (
    HAM10000_HELP,
    data_homes,
    load_ham10000_or_synthetic,
    load_medmnist_or_synthetic,
)
from ._fetch import (
    ChecksumError,
    DatasetNotAvailableError,
    fetch_ham10000,
    fetch_medmnist,
    list_datasets,
)
from ._folder import load_image_folder
from ._ham10000 import HAM10000_CLASSES, load_ham10000, load_isic2018, resolve_ham10000
from ._medmnist import MEDMNIST_FLAGS, MEDMNIST_INFO, load_medmnist
from ._multilabel import load_multilabel_csv
from ._synthetic import make_synthetic_lesions

__all__ = [
    "ChecksumError",
    "DatasetNotAvailableError",
    "HAM10000_CLASSES",
    "HAM10000_HELP",
    "MEDMNIST_FLAGS",
    "MEDMNIST_INFO",
    "data_homes",
    "fetch_ham10000",
    "fetch_medmnist",
    "get_data_home",
    "list_datasets",
    "load_ham10000",
    "load_ham10000_or_synthetic",
    "load_image_folder",
    "load_isic2018",
    "load_medmnist",
    "load_medmnist_or_synthetic",
    "load_multilabel_csv",
    "make_synthetic_lesions",
    "resolve_ham10000",
]
