"""Shared machinery of the dataset loaders: data home, cache, image decoding."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Bumped whenever the decoding changes, so that stale caches are not reused
#: (2: JPEGs are decoded at a reduced DCT scale before resizing, ``decode_image``).
CACHE_VERSION = 2

#: Resampling filter used to resize every image (see ``docs/data.md``).
RESAMPLE = "bilinear"

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

PathLike = str | os.PathLike
SizeLike = int | tuple[int, int] | None


def _data_home_path(data_home: PathLike | None = None) -> Path:
    """Where the data home is, without creating it."""
    if data_home is None:
        data_home = os.environ.get("FEWMED_DATA") or Path("~") / "fewmed_data"
    return Path(data_home).expanduser()


def get_data_home(data_home: PathLike | None = None) -> Path:
    """Return the folder where fewmed keeps downloaded data and caches.

    The folder is, in order of precedence, ``data_home`` when given, the
    ``FEWMED_DATA`` environment variable when set, else ``~/fewmed_data``.
    It is created when it does not exist yet.

    Parameters
    ----------
    data_home : str or path-like, default=None
        Folder to use instead of the default.

    Returns
    -------
    path : pathlib.Path
        The data home, with ``~`` expanded.

    Examples
    --------
    >>> import tempfile
    >>> from fewmed.datasets import get_data_home
    >>> home = get_data_home(tempfile.mkdtemp())
    >>> home.is_dir()
    True
    """
    path = _data_home_path(data_home)
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------- sizes


def _check_size(size: SizeLike) -> tuple[int, int] | None:
    """Normalise ``size`` to ``(height, width)`` or None."""
    if size is None:
        return None
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        hw = (int(size), int(size))
    elif (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size)
    ):
        hw = (int(size[0]), int(size[1]))
    else:
        raise ValueError(f"size must be an int, a (height, width) pair or None, got {size!r}")
    if min(hw) < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return hw


def _check_color(color: str) -> str:
    if color not in ("RGB", "L"):
        raise ValueError(f"color must be 'RGB' or 'L' (grayscale), got {color!r}")
    return color


# ------------------------------------------------------------------------ decoding


def decode_image(path: PathLike, size: tuple[int, int] | None, color: str = "RGB") -> np.ndarray:
    """Decode one image file to a uint8 array of shape (H, W, C).

    Resizing uses Pillow's ``Image.Resampling.BILINEAR``; Pillow widens the
    filter's support by the reduction factor, so downscaling is antialiased
    (a triangle filter over every source pixel), not a 4-pixel interpolation.
    A JPEG that is downscaled is first decoded at the smallest of libjpeg's
    reduced scales (1/2, 1/4, 1/8) that keeps it at least ``size`` (Pillow's
    draft mode; see :func:`_draft`), several times faster than a full decode.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        When the file cannot be decoded (corrupt, truncated, not an image).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            if size is not None:
                _draft(im, size)
            im.load()
            if color == "RGB" and im.mode != "RGB":
                im = im.convert("RGB")
            elif color == "L" and im.mode != "L":
                im = im.convert("L")
            if size is not None and (im.height, im.width) != size:
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"could not decode image file {path}: {exc}") from exc
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


def _draft(im, size: tuple[int, int]) -> None:
    """Let libjpeg decode a JPEG at a reduced scale that stays at least ``size`` (H, W).

    libjpeg's scaled IDCT averages each 8x8 block's frequencies down to 4x4,
    2x2 or 1x1 pixels, so the image that Pillow then resizes with its bilinear
    (triangle) filter is already a box-filtered reduction of the original. On
    HAM10000 (200x150 to 28x28: decoded at 1/4, 50x38) the pixels differ from a
    full decode by 1.14 grey levels on average (``docs/data.md``). Not a JPEG, or
    not a reduction: nothing changes.
    """
    if im.format == "JPEG" and (im.height > size[0] or im.width > size[1]):
        im.draft(im.mode, (size[1], size[0]))


def _decode_chunk(
    paths: Sequence[str], size: tuple[int, int] | None, color: str
) -> list[np.ndarray]:
    return [decode_image(p, size, color) for p in paths]


def _chunks(items: Sequence[str], n: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), n):
        yield items[start : start + n]


def decode_images(
    paths: Sequence[PathLike],
    size: tuple[int, int] | None,
    *,
    color: str = "RGB",
    n_jobs: int | None = None,
    verbose: int = 0,
    desc: str = "decoding images",
) -> np.ndarray:
    """Decode many image files into one uint8 array (n, H, W, C).

    Pillow releases the GIL while decoding and resizing, so ``n_jobs`` runs
    joblib threads. ``verbose > 0`` shows a tqdm progress bar. With
    ``size=None`` all images must have the same size.
    """
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    paths = [str(p) for p in paths]
    n_channels = 3 if color == "RGB" else 1
    if not paths:
        shape = (0, *(size or (0, 0)), n_channels)
        return np.zeros(shape, dtype=np.uint8)
    chunk = 64
    out: np.ndarray | None = None
    shapes: dict[tuple[int, ...], str] = {}
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=verbose <= 0)
    parallel = Parallel(n_jobs=n_jobs, prefer="threads", return_as="generator")
    results = parallel(delayed(_decode_chunk)(c, size, color) for c in _chunks(paths, chunk))
    i = 0
    with bar:
        for arrays in results:
            for arr in arrays:
                if out is None:
                    out = np.empty((len(paths), *arr.shape), dtype=np.uint8)
                if arr.shape != out.shape[1:]:
                    shapes.setdefault(arr.shape, paths[i])
                else:
                    out[i] = arr
                i += 1
            bar.update(len(arrays))
    if shapes:
        found = {out.shape[1:]: paths[0], **shapes}
        listing = "; ".join(f"{s[1]}x{s[0]} (e.g. {p})" for s, p in list(found.items())[:5])
        raise ValueError(
            f"size=None keeps the original image sizes, but the images differ in size: "
            f"{listing}. Pass size=28 or size=(height, width) to resize them."
        )
    return out


def index_images(root: Path, extensions: Iterable[str]) -> dict[str, Path]:
    """Map the file stem of every image under ``root`` (recursively) to its path.

    Folders and files are visited in sorted order, so when the same stem
    occurs twice the first one in that order wins.
    """
    exts = {e.lower() for e in extensions}
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext.lower() in exts and stem not in found:
                found[stem] = Path(dirpath) / name
    return found


# -------------------------------------------------------------------------- CSV


def read_csv(path: PathLike) -> tuple[list[str], list[dict[str, str]]]:
    """Read a (possibly gzip-compressed) CSV file into its header and rows."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV file not found: {path}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    text = raw.decode("utf-8-sig")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = list(reader)
    header = [h.strip() for h in (reader.fieldnames or [])]
    if reader.fieldnames and header != reader.fieldnames:
        rows = [{k.strip() if k else k: v for k, v in r.items()} for r in rows]
    return header, rows


def require_columns(header: Sequence[str], columns: Iterable[str], path: PathLike) -> None:
    missing = [c for c in columns if c not in header]
    if missing:
        raise ValueError(f"{path} has no column(s) {missing}; its columns are {list(header)}")


# ------------------------------------------------------------------------ cache


def _cache_dir(cache_dir: PathLike | None, data_home: PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return _data_home_path(data_home) / "cache"


def cache_file(
    name: str,
    key: dict[str, Any],
    size: tuple[int, int] | None,
    cache_dir: PathLike | None,
    data_home: PathLike | None,
) -> Path:
    """Path of the cache file for a loader call described by ``key``."""
    payload = json.dumps({"version": CACHE_VERSION, "resample": RESAMPLE, **key}, sort_keys=True)
    digest = hashlib.sha1(payload.encode()).hexdigest()[:16]
    tag = "orig" if size is None else f"{size[0]}x{size[1]}"
    return _cache_dir(cache_dir, data_home) / f"{name}_{tag}_{digest}.npz"


def file_key(path: Path) -> dict[str, Any]:
    """What identifies a file's content cheaply: resolved path, size and mtime."""
    st = path.stat()
    return {"path": str(path.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def load_cache(path: Path, image_ids: np.ndarray) -> dict[str, np.ndarray] | None:
    """Arrays from a cache file, or None when missing, unreadable or stale."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, KeyError) as exc:
        warnings.warn(f"ignoring unreadable cache file {path}: {exc}", UserWarning, stacklevel=3)
        return None
    if "image_ids" not in arrays or not np.array_equal(arrays["image_ids"], image_ids):
        return None
    return arrays


def save_cache(path: Path, **arrays: np.ndarray) -> None:
    """Write an uncompressed ``.npz`` atomically; warn (don't fail) when impossible."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        warnings.warn(
            f"could not write the cache file {path} ({exc}); the images will be decoded "
            "again next time. Pass cache_dir= or set FEWMED_DATA to a writable folder.",
            UserWarning,
            stacklevel=3,
        )
