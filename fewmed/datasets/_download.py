"""Downloading one file: through a private temporary file, checked, renamed into place.

The cache never holds a partial file under its final name: :func:`download` writes
to a private temporary file in the same folder, checks it (MD5) and then renames it
into place (:func:`os.replace`, atomic), so an interrupted download leaves nothing at
the final path and two processes filling the same cache at once both succeed, the
last rename leaving one complete file. The fetchers of known data sets are in
``fewmed.datasets._fetch``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from ._base import PathLike

#: Socket timeout of downloads, in seconds: an offline machine fails at once.
DEFAULT_TIMEOUT = 15.0

_NETWORK_ERRORS = (
    urllib.error.URLError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
)


class DatasetNotAvailableError(OSError):
    """A data set is neither on disk nor downloadable (offline, or downloads disabled).

    The message says which file to download from which URL and the exact path
    to save it to, or how to point fewmed at an existing copy.
    """


class ChecksumError(OSError):
    """A downloaded or cached file does not have the expected MD5 sum.

    A download is deleted; a cached file is reported with what to do (delete it and
    call again, or replace it with a good copy).
    """


def _manual_hint(url: str, dest: Path) -> str:
    return f"download {url} yourself and save it as {dest}"


def download(
    url: str,
    dest: PathLike,
    md5: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    *,
    progress: bool = True,
    hint: str | None = None,
) -> Path:
    """Download ``url`` to ``dest`` through a temporary file, then rename it.

    Parameters
    ----------
    url : str
        The URL.
    dest : str or path-like
        Final path; its folder is created.
    md5 : str, default=None
        Expected MD5 sum; on mismatch the file is deleted and
        :class:`ChecksumError` raised.
    timeout : float, default=15.0
        Socket timeout in seconds, so that an offline machine fails at once.
    progress : bool, default=True
        Show a tqdm progress bar.
    hint : str, default=None
        Extra advice appended to the error message when the download fails.

    Returns
    -------
    dest : pathlib.Path

    Raises
    ------
    DatasetNotAvailableError
        On any network error (offline, refused, timeout, HTTP error); the
        message names the URL and the exact path to save the file to.
    ChecksumError
        When the MD5 sum differs.

    Examples
    --------
    >>> from fewmed.datasets._download import download
    >>> download(
    ...     "https://zenodo.org/records/10519652/files/breastmnist.npz?download=1",
    ...     "breastmnist.npz",
    ...     md5="750601b1f35ba3300ea97c75c52ff8f6",
    ... )  # doctest: +SKIP
    PosixPath('breastmnist.npz')
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    tmp = Path(tmp_name)
    h = hashlib.md5()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                request = urllib.request.Request(url, headers={"User-Agent": "fewmed"})
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    total = int(response.headers.get("Content-Length") or 0) or None
                    with tqdm(
                        total=total,
                        unit="B",
                        unit_scale=True,
                        unit_divisor=1024,
                        desc=dest.name,
                        disable=not progress,
                    ) as bar:
                        received = 0
                        for block in iter(lambda: response.read(1 << 16), b""):
                            out.write(block)
                            h.update(block)
                            received += len(block)
                            bar.update(len(block))
                    if total is not None and received < total:  # the connection dropped
                        raise http.client.IncompleteRead(b"", total - received)
            except _NETWORK_ERRORS as exc:
                if isinstance(exc, urllib.error.HTTPError):
                    reason = f"HTTP {exc.code} {exc.reason}"
                elif isinstance(exc, http.client.IncompleteRead):
                    reason = f"the connection dropped {exc.expected} bytes short; try again"
                else:
                    reason = getattr(exc, "reason", None) or exc
                msg = f"could not download {url} ({reason}): {_manual_hint(url, dest)}"
                raise DatasetNotAvailableError(msg + (f"; {hint}" if hint else "")) from exc
        if md5 is not None and h.hexdigest() != md5:
            raise ChecksumError(
                f"{url} downloaded with MD5 {h.hexdigest()}, expected {md5}: the file may be "
                "corrupted or changed upstream; it has been deleted, try again"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest
