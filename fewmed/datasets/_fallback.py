"""Real data where it can be found, else a synthetic stand-in that says so: for examples.

Benchmarks and examples find their data in one order, so that they run on any
machine:

1. the path the user gave (``--data PATH``, the ``data`` argument): it must be
   the data set, else an error says what was expected;
2. the data home ``FEWMED_DATA`` when it is set and is a folder (a
   ``FEWMED_DATA`` naming a missing folder is ignored with a warning);
3. the cache, ``~/fewmed_data``;
4. a download into the data home when online (the public MedMNIST files; for
   HAM10000, its 28-pixel MedMNIST version DermaMNIST);
5. otherwise :func:`~fewmed.datasets.make_synthetic_lesions`, with a
   ``UserWarning`` that starts with "SYNTHETIC DATA" and says how to get the
   real data.

``FEWMED_OFFLINE=1`` (or ``download=False``) skips step 4.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

from ._fetch import ChecksumError, DatasetNotAvailableError, fetch_medmnist
from ._ham10000 import load_ham10000, resolve_ham10000
from ._medmnist import MEDMNIST_INFO, MEDMNIST_SIZES, load_medmnist
from ._synthetic import make_synthetic_lesions

__all__ = [
    "HAM10000_HELP",
    "data_homes",
    "load_ham10000_or_synthetic",
    "load_medmnist_or_synthetic",
]

#: What to do when HAM10000 is not found.
HAM10000_HELP = (
    "Real HAM10000 data was not found. Get it from "
    "https://doi.org/10.7910/DVN/DBW86T (HAM10000_metadata.csv + the two image folders) "
    "or the ISIC 2018 Task 3 training set, then pass --data PATH or set FEWMED_DATA."
)

#: HAM10000's class sizes / 10, in the sorted order of its class names.
_HAM_NAMES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
_HAM_SIZES_BY_10 = (33, 51, 110, 12, 111, 670, 14)
_DEFAULT_HOME = Path("~") / "fewmed_data"


def data_homes() -> list[Path]:
    """The folders searched for data, in order: ``FEWMED_DATA`` (when a folder), the cache.

    A ``FEWMED_DATA`` that is set but names no folder is left out, with a
    ``UserWarning``: the cache ``~/fewmed_data`` is used instead (downloads go
    there), so that ``FEWMED_DATA=${FEWMED_DATA:-../shared/data} fewmed ...``
    runs on a machine without that folder.

    Returns
    -------
    homes : list of pathlib.Path
        The first one is where downloads go.

    Examples
    --------
    >>> import os
    >>> from fewmed.datasets import data_homes
    >>> os.environ.get("FEWMED_DATA") is not None or data_homes()[0].name == "fewmed_data"
    True
    """
    homes = []
    env = os.environ.get("FEWMED_DATA")
    if env:
        path = Path(env).expanduser()
        if path.is_dir():
            homes.append(path)
        else:
            warnings.warn(
                f"FEWMED_DATA={env} is not a folder; ignoring it and using {_DEFAULT_HOME}",
                UserWarning,
                stacklevel=2,
            )
    default = _DEFAULT_HOME.expanduser()
    if default not in homes:
        homes.append(default)
    return homes


def _downloads_allowed(download: bool | None) -> bool:
    if download is not None:
        return bool(download)
    return os.environ.get("FEWMED_OFFLINE", "").lower() in ("", "0", "false", "no")


def _synthetic_warning(what: str, help_text: str) -> None:
    warnings.warn(
        f"SYNTHETIC DATA: {what} was not found and could not be downloaded; running on "
        f"synthetic lesion images, NOT real medical images. {help_text}",
        UserWarning,
        stacklevel=3,
    )


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    if images.shape[1] == size and images.shape[2] == size:
        return images
    from PIL import Image

    out = [
        np.asarray(Image.fromarray(im.squeeze()).resize((size, size), Image.BILINEAR))
        for im in images
    ]
    return np.stack(out).reshape(len(images), size, size, -1)


def _medmnist_sources(flag: str, homes: list[Path], file_size: int) -> list[Path]:
    stem = flag if file_size == 28 else f"{flag}_{file_size}"
    names = [f"{stem}.npz"] + ([f"{flag}_imbalanced.npz"] if file_size == 28 else [])
    found = []
    for home in homes:
        for folder in (home, home / "medmnist"):
            found.extend(folder / n for n in names if (folder / n).is_file())
    return found


def _find_medmnist(flag, data, *, size, download, verbose, homes=None) -> tuple[Bunch | None, str]:
    """A MedMNIST set from ``data``, the data homes or a download; (None, why) if none."""
    if data is not None:
        path = Path(data).expanduser()
        if path.is_dir():
            hits = _medmnist_sources(flag, [path], size)
            if not hits:
                raise FileNotFoundError(f"{path} holds no {flag}.npz (a MedMNIST file)")
            path = hits[0]
        elif not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: expected {flag}.npz or its folder")
        return load_medmnist(path, flag=flag), str(path)
    homes = data_homes() if homes is None else homes
    hits = _medmnist_sources(flag, homes, size)
    if hits:
        return load_medmnist(hits[0], flag=flag), str(hits[0])
    if not _downloads_allowed(download):
        return None, "downloads are off (FEWMED_OFFLINE)"
    try:
        return (
            fetch_medmnist(flag, size=size, data_home=homes[0], verbose=verbose),
            f"{flag} downloaded into {homes[0]}",
        )
    except (DatasetNotAvailableError, ChecksumError) as exc:
        return None, str(exc)


def load_ham10000_or_synthetic(
    data: str | os.PathLike | None = None,
    *,
    size: int = 28,
    synthetic: bool = False,
    random_state: int = 0,
    n_per_class: Sequence[int] | None = None,
    download: bool | None = None,
    verbose: int = 1,
) -> tuple[Bunch, bool]:
    """HAM10000 from ``data``, ``FEWMED_DATA``, the cache or a download, else synthetic lesions.

    The order is the module's (``data``; ``FEWMED_DATA``; ``~/fewmed_data``;
    a download of DermaMNIST, HAM10000 at 28 pixels, when online; synthetic
    lesions with a warning). DermaMNIST has no lesion ids (``groups`` is None)
    and is resized when ``size`` is not one of its file sizes.

    Parameters
    ----------
    data : str or path-like, default=None
        A HAM10000 folder (``HAM10000_metadata.csv`` + images) or a
        ``dermamnist*.npz`` file; it must be one (else ``ValueError`` /
        ``FileNotFoundError``). ``None`` searches the data homes.
    size : int, default=28
        Image side in pixels.
    synthetic : bool, default=False
        Use the synthetic stand-in even when real data is found.
    random_state : int, default=0
        Seed of the synthetic images.
    n_per_class : sequence of int, default=None
        Synthetic class sizes (HAM10000's in class-name order, divided by 10, at
        least 40, by default).
    download : bool, default=None
        Allow downloading DermaMNIST; None allows it unless ``FEWMED_OFFLINE``
        is set.
    verbose : int, default=1
        Progress while decoding the real images or downloading.

    Returns
    -------
    bunch : sklearn.utils.Bunch
        As :func:`~fewmed.datasets.load_ham10000` returns (``images``,
        ``target``, ``target_names`` with HAM10000's short names, ``groups``
        or None, ``DESCR``, which starts with "SYNTHETIC" for the stand-in),
        plus ``source``: where the data came from, in words.
    is_synthetic : bool

    Raises
    ------
    ValueError
        When ``data`` is a folder but not a HAM10000 folder.
    FileNotFoundError
        When ``data`` does not exist.

    Warns
    -----
    UserWarning
        "SYNTHETIC DATA ..." when no real data was found (not when
        ``synthetic=True`` asked for it).

    Examples
    --------
    >>> bunch, is_synthetic = load_ham10000_or_synthetic(size=16, synthetic=True)
    >>> is_synthetic, bunch.target_names.tolist()[:3], bunch.images.shape[1:]
    (True, ['akiec', 'bcc', 'bkl'], (16, 16, 3))
    """
    if not synthetic:
        if data is not None and not Path(data).expanduser().exists():
            raise FileNotFoundError(f"{data} does not exist: expected a HAM10000 folder")
        if data is not None and Path(data).suffix == ".npz":
            derma, where = _find_medmnist("dermamnist", data, size=28, download=False, verbose=0)
            return _from_dermamnist(derma, where, size), False
        path = resolve_ham10000(data) if data is not None else None
        homes = data_homes() if data is None else []
        for home in homes:
            path = resolve_ham10000(data_home=home)
            if path is not None:
                break
        if path is not None:
            bunch = load_ham10000(path, size=size, verbose=verbose)
            bunch["source"] = f"HAM10000 at {path}"
            return bunch, False
        file_size = size if size in MEDMNIST_SIZES else 28
        derma, why = _find_medmnist(
            "dermamnist", None, size=file_size, download=download, verbose=verbose, homes=homes
        )
        if derma is not None:
            return _from_dermamnist(derma, why, size), False
        _synthetic_warning("HAM10000 (or DermaMNIST)", f"{HAM10000_HELP} ({why})")
    sizes = list(n_per_class) if n_per_class else [max(s, 40) for s in _HAM_SIZES_BY_10]
    bunch = make_synthetic_lesions(
        n_classes=len(_HAM_NAMES), size=size, random_state=random_state, class_sizes=sizes
    )
    bunch["target_names"] = np.array(_HAM_NAMES)
    bunch["source"] = "SYNTHETIC lesions (not real images)"
    return bunch, True


def _from_dermamnist(derma: Bunch, where: str, size: int) -> Bunch:
    splits = [derma[s] for s in ("train", "val", "test") if s in derma]
    images = _resize(np.concatenate([b.images for b in splits]), size)
    target = np.concatenate([np.asarray(b.target).ravel() for b in splits]).astype(np.int64)
    warnings.warn(
        f"HAM10000 not found; using DermaMNIST ({where}): the same images at low "
        "resolution, WITHOUT lesion ids (groups=None), so images of one lesion may fall "
        "on both sides of a split",
        UserWarning,
        stacklevel=3,
    )
    return Bunch(
        images=images,
        target=target,
        target_names=np.array(_HAM_NAMES),
        groups=None,
        DESCR=f"DermaMNIST (HAM10000 at {images.shape[1]} px, no lesion ids): {where}",
        source=f"DermaMNIST ({where})",
    )


def load_medmnist_or_synthetic(
    flag: str,
    data: str | os.PathLike | None = None,
    *,
    synthetic: bool = False,
    n_per_split: tuple[int, int, int] = (100, 30, 60),
    random_state: int = 0,
    download: bool | None = None,
    verbose: int = 1,
) -> tuple[Bunch, bool]:
    """A 2D MedMNIST set from ``data``, ``FEWMED_DATA``, the cache or a download, else synthetic.

    Files are looked for as ``{flag}.npz`` (or ``{flag}_imbalanced.npz``) in
    the folder and its ``medmnist/`` sub-folder; a download uses
    :func:`~fewmed.datasets.fetch_medmnist`. The synthetic stand-in has the
    set's classes and channels, and ``n_per_split`` images per class in the
    train / val / test splits.

    Parameters
    ----------
    flag : str
        A MedMNIST flag (``"retinamnist"``, ``"breastmnist"``, ...).
    data : str or path-like, default=None
        The ``.npz`` file or a folder holding it; it must exist.
    synthetic : bool, default=False
        Use the synthetic stand-in even when real data is found.
    n_per_split : (int, int, int), default=(100, 30, 60)
        Synthetic images per class in train, val and test.
    random_state : int, default=0
        Seed of the synthetic images.
    download : bool, default=None
        Allow downloading; None allows it unless ``FEWMED_OFFLINE`` is set.
    verbose : int, default=1
        Download progress bar when > 0.

    Returns
    -------
    bunch : sklearn.utils.Bunch
        As :func:`~fewmed.datasets.load_medmnist` with ``split=None`` returns
        (``train``, ``val``, ``test``, ``target_names``, ``task``, ``flag``,
        ``DESCR``), plus ``source``.
    is_synthetic : bool

    Examples
    --------
    >>> retina, is_synthetic = load_medmnist_or_synthetic("retinamnist", synthetic=True)
    >>> is_synthetic, retina.train.images.shape[1:], len(retina.target_names)
    (True, (28, 28, 3), 5)
    """
    flag = flag.lower()
    if flag not in MEDMNIST_INFO:
        raise ValueError(f"unknown MedMNIST flag {flag!r}; known: {sorted(MEDMNIST_INFO)}")
    info = MEDMNIST_INFO[flag]
    if not synthetic:
        bunch, why = _find_medmnist(flag, data, size=28, download=download, verbose=verbose)
        if bunch is not None:
            bunch["source"] = f"{flag} ({why})"
            return bunch, False
        _synthetic_warning(
            flag, f"Pass --data FILE or put {flag}.npz in FEWMED_DATA/medmnist/ ({why})"
        )
    n_classes = len(info["labels"])
    rng = np.random.default_rng(random_state)
    out = Bunch(target_names=np.array(info["labels"]), task=info["task"], flag=flag)
    for split, n in zip(("train", "val", "test"), n_per_split):
        b = make_synthetic_lesions(
            n_classes=n_classes, n_per_class=n, random_state=int(rng.integers(2**31))
        )
        images = b.images if info["n_channels"] == 3 else b.images.mean(-1, keepdims=True)
        out[split] = Bunch(images=images.astype(np.uint8), target=b.target, split=split, flag=flag)
    out["DESCR"] = f"SYNTHETIC stand-in for {flag} (not real images)"
    out["source"] = f"SYNTHETIC lesions standing in for {flag} (not real images)"
    return out, True
