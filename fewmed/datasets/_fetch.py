"""Fetching the public data sets into the data home, and the list of known sets.

Every file is downloaded by :func:`fewmed.datasets._download.download` (a private
temporary file, checked, then renamed into place: the cache never holds a partial
file under its final name). A cached file with a known MD5 sum is checked before it
is loaded (:func:`check_cached`): a corrupt copy is reported with what to do.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

from sklearn.utils import Bunch

from ._base import PathLike, _data_home_path, get_data_home
from ._download import (
    DEFAULT_TIMEOUT,
    ChecksumError,
    DatasetNotAvailableError,
    _manual_hint,
    download,
)
from ._ham10000 import (
    HAM10000_LICENCE,
    HAM10000_URL,
    ISIC2018_GROUND_TRUTH,
    ISIC2018_GROUPINGS,
    load_ham10000,
    resolve_ham10000,
)
from ._medmnist import MEDMNIST_FLAGS, MEDMNIST_INFO, MEDMNIST_SIZES, load_medmnist
from ._multilabel import CHESTXRAY14_URL

#: Where MedMNIST files are downloaded from (Zenodo record of MedMNIST 3.0).
MEDMNIST_BASE_URL = "https://zenodo.org/records/10519652/files"
#: Where the ISIC 2018 Task 3 training files are downloaded from.
ISIC2018_BASE_URL = "https://isic-challenge-data.s3.amazonaws.com/2018"
ISIC2018_INPUT = "ISIC2018_Task3_Training_Input"
ISIC2018_TRUTH = "ISIC2018_Task3_Training_GroundTruth"


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


#: (path, size, mtime) of cached files whose MD5 was checked in this process
_VERIFIED: set[tuple[str, int, int]] = set()


def check_cached(path: Path, md5: str | None, url: str, *, again: str) -> Path:
    """Refuse a cached file whose MD5 sum is not ``md5`` (a corrupt or truncated copy).

    Each file is hashed once per process (again when its size or time changes).

    Parameters
    ----------
    path : pathlib.Path
        The cached file.
    md5 : str or None
        Its expected MD5 sum (``None``: nothing to check).
    url : str
        Where a good copy comes from (named in the error).
    again : str
        The call that downloads it afresh once the file is deleted.

    Returns
    -------
    path : pathlib.Path

    Raises
    ------
    ChecksumError
        Naming the file, both sums and what to do.

    Examples
    --------
    >>> import tempfile, hashlib
    >>> from pathlib import Path
    >>> f = Path(tempfile.mkdtemp()) / "a.bin"
    >>> _ = f.write_bytes(b"abc")
    >>> check_cached(f, hashlib.md5(b"abc").hexdigest(), "https://x/a.bin", again="f()") == f
    True
    """
    if md5 is None:
        return path
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _VERIFIED:
        return path
    got = _md5(path)
    if got != md5:
        raise ChecksumError(
            f"the cached file {path} is corrupt: its MD5 is {got}, expected {md5} (a truncated "
            f"or overwritten copy). Delete it and call {again} again to download it afresh, or "
            f"replace it with a good copy from {url}."
        )
    _VERIFIED.add(key)
    return path


# ---------------------------------------------------------------------- MedMNIST


def _medmnist_file(flag: str, size: int) -> str:
    return f"{flag}{'' if size == 28 else f'_{size}'}.npz"


def _medmnist_url(flag: str, size: int) -> str:
    return f"{MEDMNIST_BASE_URL}/{_medmnist_file(flag, size)}?download=1"


def fetch_medmnist(
    flag: str,
    *,
    size: int = 28,
    data_home: PathLike | None = None,
    download_if_missing: bool = True,
    split: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    verbose: int = 1,
) -> Bunch:
    """Load a 2D MedMNIST set, downloading it into the data home when missing.

    The file ``{flag}.npz`` (28 px) or ``{flag}_{size}.npz`` is kept in
    ``get_data_home(data_home) / "medmnist"``; downloads come from Zenodo
    record 10519652 (MedMNIST 3.0) and are checked against the official MD5
    sums.

    Parameters
    ----------
    flag : str
        One of ``pathmnist, chestmnist, dermamnist, octmnist, pneumoniamnist,
        retinamnist, breastmnist, bloodmnist, tissuemnist, organamnist,
        organcmnist, organsmnist``.
    size : {28, 64, 128, 224}, default=28
        Image size of the file.
    data_home : str or path-like, default=None
        See :func:`get_data_home`.
    download_if_missing : bool, default=True
        When False and the file is missing, raise at once without using the
        network.
    split : {"train", "val", "test"}, default=None
        Passed to :func:`load_medmnist`.
    timeout : float, default=15.0
        Network timeout in seconds.
    verbose : int, default=1
        Show a download progress bar when > 0.

    Returns
    -------
    data : sklearn.utils.Bunch
        See :func:`load_medmnist`.

    Raises
    ------
    DatasetNotAvailableError
        When the file is missing and cannot be downloaded; the message gives
        the URL and the exact path to save the file to.
    ChecksumError
        When the downloaded or the cached file has the wrong MD5 sum (the message
        says to delete the cached file and call again).

    Examples
    --------
    >>> from fewmed.datasets import fetch_medmnist
    >>> retina = fetch_medmnist("retinamnist")  # doctest: +SKIP
    >>> retina.train.images.shape  # doctest: +SKIP
    (1080, 28, 28, 3)
    """
    flag = flag.lower()
    if flag not in MEDMNIST_INFO:
        raise ValueError(f"unknown MedMNIST flag {flag!r}; known 2D flags: {MEDMNIST_FLAGS}")
    if size not in MEDMNIST_SIZES:
        raise ValueError(f"size must be one of {MEDMNIST_SIZES}, got {size!r}")
    dest = _data_home_path(data_home) / "medmnist" / _medmnist_file(flag, size)
    url = _medmnist_url(flag, size)
    hint = (
        "or load a copy you have with fewmed.datasets.load_medmnist(path), or set FEWMED_DATA "
        "to a folder whose medmnist/ sub-folder holds it"
    )
    md5 = MEDMNIST_INFO[flag]["md5"].get(size)
    if not dest.is_file():
        if not download_if_missing:
            raise DatasetNotAvailableError(
                f"{dest} is missing and download_if_missing=False: {_manual_hint(url, dest)}, "
                + hint
            )
        get_data_home(data_home)
        # a private temporary file renamed into place: a concurrent process downloading
        # the same file, or an interrupted download, never leaves a partial file at dest
        download(url, dest, md5=md5, timeout=timeout, progress=verbose > 0, hint=hint)
    check_cached(dest, md5, url, again=f"fetch_medmnist({flag!r}, size={size})")
    return load_medmnist(dest, split=split, flag=flag)


# ---------------------------------------------------------------------- HAM10000


def _isic_files(home: Path) -> list[tuple[str, str, Path]]:
    folder = home / "isic2018"
    # small files first: an unreachable server is noticed before the 2.6 GB download
    return [
        (f"{ISIC2018_TRUTH}.zip", f"{ISIC2018_BASE_URL}/{ISIC2018_TRUTH}.zip", folder),
        (ISIC2018_GROUPINGS, f"{ISIC2018_BASE_URL}/{ISIC2018_GROUPINGS}", folder),
        (f"{ISIC2018_INPUT}.zip", f"{ISIC2018_BASE_URL}/{ISIC2018_INPUT}.zip", folder),
    ]


def _extract(archive: Path, folder: Path) -> None:
    """Unzip ``archive`` into ``folder`` through a temporary folder, refusing unsafe paths."""
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".extract-"))
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                target = (tmp / member).resolve()
                if not target.is_relative_to(tmp.resolve()):
                    raise ValueError(f"{archive}: unsafe path {member!r} in the archive")
            zf.extractall(tmp)
        for entry in tmp.iterdir():
            final = folder / entry.name
            if final.is_dir():
                shutil.rmtree(final)
            os.replace(entry, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fetch_ham10000(
    *,
    data_home: PathLike | None = None,
    size: int | tuple[int, int] | None = 28,
    download_if_missing: bool = True,
    cache: bool = True,
    n_jobs: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    verbose: int = 1,
) -> Bunch:
    """Load HAM10000, downloading the ISIC 2018 Task 3 training set when missing.

    A HAM10000 folder already in the data home (found by
    :func:`resolve_ham10000`: the data home itself or its ``ham10000/``
    sub-folder, official layout) is used as it is. Otherwise the public ISIC
    2018 Task 3 training files (the same 10,015 images, about 2.6 GB) are
    downloaded from ``isic-challenge-data.s3.amazonaws.com`` into
    ``<data home>/isic2018/``, unzipped (the zips are then deleted) and read
    with :func:`load_isic2018`, lesion ids from
    ``ISIC2018_Task3_Training_LesionGroupings.csv``.

    Parameters
    ----------
    data_home : str or path-like, default=None
        See :func:`get_data_home`.
    size : int, (int, int) or None, default=28
        Output image size, see :func:`load_ham10000`.
    download_if_missing : bool, default=True
        When False and the data is missing, raise at once without using the
        network.
    cache : bool, default=True
        Use the decoded-array cache.
    n_jobs : int, default=None
        Threads decoding images.
    timeout : float, default=15.0
        Network timeout in seconds.
    verbose : int, default=1
        Progress bars for downloads and decoding when > 0.

    Returns
    -------
    data : sklearn.utils.Bunch
        See :func:`load_ham10000`.

    Raises
    ------
    DatasetNotAvailableError
        When the data is missing and cannot be downloaded; the message lists
        the files, their URLs and where to put them.

    Examples
    --------
    >>> from fewmed.datasets import fetch_ham10000
    >>> ham = fetch_ham10000(size=28)  # doctest: +SKIP
    >>> ham.images.shape  # doctest: +SKIP
    (10015, 28, 28, 3)
    """
    kwargs: dict[str, Any] = dict(
        size=size, cache=cache, data_home=data_home, n_jobs=n_jobs, verbose=verbose
    )
    home = _data_home_path(data_home)
    folder = home / "isic2018"
    found = resolve_ham10000(data_home=data_home)
    if found is not None:  # a complete copy (HAM10000 layout, or the unzipped ISIC files)
        return load_ham10000(found, **kwargs)
    files = _isic_files(home)
    listing = "; ".join(f"{url} -> {dest / name}" for name, url, dest in files)
    hint = (
        f"the ISIC 2018 Task 3 training files are: {listing} (unzip the zips in {folder}). "
        f"Or download HAM10000 from {HAM10000_URL}, put HAM10000_metadata.csv and the image "
        f"folders in {home / 'ham10000'} (or pass its path to load_ham10000(path)), or set "
        "FEWMED_DATA to a folder whose ham10000/ sub-folder holds them"
    )
    if not download_if_missing:
        raise DatasetNotAvailableError(
            f"HAM10000 is not in {home} and download_if_missing=False: {hint}"
        )
    get_data_home(data_home)
    folder.mkdir(parents=True, exist_ok=True)
    gt = folder / ISIC2018_TRUTH / ISIC2018_GROUND_TRUTH
    for name, url, dest in files:
        if name.endswith(".zip"):
            stem = name[: -len(".zip")]
            if (dest / stem).is_dir() and (stem != ISIC2018_TRUTH or gt.is_file()):
                continue
            archive = download(url, dest / name, timeout=timeout, progress=verbose > 0, hint=hint)
            _extract(archive, dest)
            archive.unlink()
        elif not (dest / name).is_file():
            try:
                download(url, dest / name, timeout=timeout, progress=verbose > 0, hint=hint)
            except DatasetNotAvailableError as exc:
                warnings.warn(
                    f"lesion groupings unavailable ({exc}); groups will be None, so split "
                    "with care: several images show the same lesion",
                    UserWarning,
                    stacklevel=2,
                )
    if not gt.is_file():
        raise DatasetNotAvailableError(f"{gt} is missing after extraction: {hint}")
    return load_ham10000(folder, **kwargs)  # reads the ISIC 2018 layout


# -------------------------------------------------------------------------- list


def list_datasets(data_home: PathLike | None = None) -> list[dict[str, Any]]:
    """Describe the data sets fewmed knows, and whether each is in the data home.

    Nothing is created or downloaded.

    Parameters
    ----------
    data_home : str or path-like, default=None
        See :func:`get_data_home`.

    Returns
    -------
    datasets : list of dict
        One dict per data set with keys ``name``, ``kind`` (task type),
        ``licence``, ``url`` (download or home page), ``cached`` (bool) and
        ``path`` (str: where it is, or would be, in the data home).

    Examples
    --------
    >>> import tempfile
    >>> from fewmed.datasets import list_datasets
    >>> rows = list_datasets(tempfile.mkdtemp())
    >>> rows[0]["name"], rows[0]["cached"]
    ('ham10000', False)
    """
    home = _data_home_path(data_home)
    ham = resolve_ham10000(data_home=data_home)
    isic = home / "isic2018" / ISIC2018_TRUTH / ISIC2018_GROUND_TRUTH
    rows: list[dict[str, Any]] = [
        {
            "name": "ham10000",
            "kind": "multi-class",
            "licence": HAM10000_LICENCE,
            "url": HAM10000_URL,
            "cached": ham is not None,
            "path": str(ham if ham is not None else home / "ham10000"),
        },
        {
            "name": "isic2018",
            "kind": "multi-class",
            "licence": HAM10000_LICENCE,
            "url": f"{ISIC2018_BASE_URL}/{ISIC2018_INPUT}.zip",
            "cached": isic.is_file(),
            "path": str(home / "isic2018"),
        },
    ]
    for flag, info in MEDMNIST_INFO.items():
        path = home / "medmnist" / _medmnist_file(flag, 28)
        rows.append(
            {
                "name": flag,
                "kind": info["task"],
                "licence": info["licence"],
                "url": _medmnist_url(flag, 28),
                "cached": path.is_file(),
                "path": str(path),
            }
        )
    cxr = home / "chestxray14"
    cxr_files = [cxr / "Data_Entry_2017.csv", cxr / "Data_Entry_2017.csv.gz"]
    present = [p for p in cxr_files if p.is_file()]
    rows.append(
        {
            "name": "chestxray14",
            "kind": "multi-label, binary-class",
            "licence": "NIH: unrestricted use, with citation",
            "url": CHESTXRAY14_URL,
            "cached": bool(present),
            "path": str(present[0] if present else cxr_files[0]),
        }
    )
    return rows
