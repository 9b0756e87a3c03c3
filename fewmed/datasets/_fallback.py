"""HAM10000 where it can be found, else a synthetic stand-in that says so: for examples.

:func:`load_ham10000_or_synthetic` lets an example or a benchmark run on any
machine: on the real images when a HAM10000 folder is found
(:func:`~fewmed.datasets.resolve_ham10000`: the given path, ``FEWMED_DATA``, the
data home), otherwise on :func:`~fewmed.datasets.make_synthetic_lesions` with
HAM10000's class names and (scaled-down) class sizes, with a ``UserWarning`` that
says how to get the real data.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.utils import Bunch

from ._ham10000 import load_ham10000, resolve_ham10000
from ._synthetic import make_synthetic_lesions

__all__ = ["HAM10000_HELP", "load_ham10000_or_synthetic"]

#: What to do when HAM10000 is not found.
HAM10000_HELP = (
    "Real HAM10000 data was not found. Get it from "
    "https://doi.org/10.7910/DVN/DBW86T (HAM10000_metadata.csv + the two image folders) "
    "or the ISIC 2018 Task 3 training set, then pass --data PATH or set FEWMED_DATA."
)

#: HAM10000's class sizes / 10, in the sorted order of its class names.
_HAM_NAMES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
_HAM_SIZES_BY_10 = (33, 51, 110, 12, 111, 670, 14)


def load_ham10000_or_synthetic(
    data: str | os.PathLike | None = None,
    *,
    size: int = 28,
    synthetic: bool = False,
    random_state: int = 0,
    n_per_class: Sequence[int] | None = None,
    verbose: int = 1,
) -> tuple[Bunch, bool]:
    """HAM10000 from ``data`` / ``FEWMED_DATA`` / the data home, else synthetic lesions.

    Parameters
    ----------
    data : str or path-like, default=None
        A HAM10000 folder (``HAM10000_metadata.csv`` + images); ``None`` searches
        ``FEWMED_DATA`` and the data home (:func:`~fewmed.datasets.resolve_ham10000`).
    size : int, default=28
        Image side in pixels.
    synthetic : bool, default=False
        Use the synthetic stand-in even when real data is found.
    random_state : int, default=0
        Seed of the synthetic images.
    n_per_class : sequence of int, default=None
        Synthetic class sizes (HAM10000's in class-name order, divided by 10, at
        least 40, by default).
    verbose : int, default=1
        Progress while decoding the real images.

    Returns
    -------
    bunch : sklearn.utils.Bunch
        As :func:`~fewmed.datasets.load_ham10000` returns (synthetic: ``images``,
        ``target``, ``target_names`` with HAM10000's names, ``DESCR`` starting
        with "SYNTHETIC").
    is_synthetic : bool

    Warns
    -----
    UserWarning
        When no real data was found (not when ``synthetic=True`` asked for it).

    Examples
    --------
    >>> bunch, is_synthetic = load_ham10000_or_synthetic(size=16, synthetic=True)
    >>> is_synthetic, bunch.target_names.tolist()[:3], bunch.images.shape[1:]
    (True, ['akiec', 'bcc', 'bkl'], (16, 16, 3))
    """
    path = None if synthetic else resolve_ham10000(data)
    if path is not None:
        return load_ham10000(path, size=size, verbose=verbose), False
    if not synthetic:
        warnings.warn(
            f"{HAM10000_HELP} Running on SYNTHETIC lesion images instead.",
            UserWarning,
            stacklevel=2,
        )
    sizes = list(n_per_class) if n_per_class else list(_HAM_SIZES_BY_10)
    bunch = make_synthetic_lesions(
        n_classes=len(_HAM_NAMES),
        size=size,
        random_state=random_state,
        class_sizes=[max(s, 40) for s in sizes],
    )
    bunch["target_names"] = np.array(_HAM_NAMES)
    return bunch, True
