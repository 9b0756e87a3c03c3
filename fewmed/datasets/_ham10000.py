"""HAM10000 and ISIC 2018 Task 3 dermoscopy loaders."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.utils import Bunch

from ._base import (
    PathLike,
    SizeLike,
    _check_size,
    _data_home_path,
    cache_file,
    decode_images,
    file_key,
    index_images,
    load_cache,
    read_csv,
    require_columns,
    save_cache,
)

#: The seven HAM10000 diagnoses, sorted; equal to MedMNIST DermaMNIST's label order.
HAM10000_CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")

HAM10000_LONG_NAMES = {
    "akiec": "actinic keratoses and intraepithelial carcinoma (Bowen's disease)",
    "bcc": "basal cell carcinoma",
    "bkl": "benign keratosis-like lesions",
    "df": "dermatofibroma",
    "mel": "melanoma",
    "nv": "melanocytic nevi",
    "vasc": "vascular lesions",
}

HAM10000_METADATA = "HAM10000_metadata.csv"
ISIC2018_GROUND_TRUTH = "ISIC2018_Task3_Training_GroundTruth.csv"
ISIC2018_GROUPINGS = "ISIC2018_Task3_Training_LesionGroupings.csv"
HAM10000_URL = "https://doi.org/10.7910/DVN/DBW86T"
HAM10000_LICENCE = "CC BY-NC 4.0"
HAM10000_CITATION = (
    "Tschandl P., Rosendahl C., Kittler H. The HAM10000 dataset, a large collection of "
    "multi-source dermatoscopic images of common pigmented skin lesions. Scientific Data 5, "
    "180161 (2018). doi:10.1038/sdata.2018.161"
)
ISIC2018_CITATION = (
    "Codella N. et al. Skin Lesion Analysis Toward Melanoma Detection 2018: A Challenge "
    "Hosted by the International Skin Imaging Collaboration (ISIC). arXiv:1902.03368 (2019)"
)
_EXTENSIONS = (".jpg", ".jpeg", ".png")


def _descr(title: str, target: np.ndarray, names: np.ndarray, groups, extra: str) -> str:
    counts = Counter(target.tolist())
    lines = [
        title,
        "=" * len(title),
        "",
        "Dermoscopic images of pigmented skin lesions, 7 diagnoses. Class codes are the",
        "sorted diagnosis names, which is also MedMNIST DermaMNIST's label order.",
        "",
        f"images: {len(target)}",
    ]
    if groups is not None:
        lines += [
            f"lesions (groups): {len(set(groups.tolist()))}; several images may show the same",
            "lesion, so split by group (e.g. StratifiedGroupKFold), never by image.",
        ]
    lines += ["", "code  name   images  diagnosis"]
    for code, name in enumerate(names):
        long = HAM10000_LONG_NAMES.get(str(name), "")
        lines.append(f"{code:>4}  {name:<6} {counts.get(code, 0):>6}  {long}")
    lines += ["", extra, "", f"Licence: {HAM10000_LICENCE} (non-commercial use, attribution)."]
    lines += [f"Cite: {HAM10000_CITATION}"]
    return "\n".join(lines)


def _load_images(
    name: str,
    image_ids: np.ndarray,
    root: Path,
    key: dict[str, Any],
    size: tuple[int, int] | None,
    *,
    cache: bool,
    cache_dir: PathLike | None,
    data_home: PathLike | None,
    n_jobs: int | None,
    verbose: int,
    listed_in: Path,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode (or read from the cache) the images named by ``image_ids`` under ``root``."""
    cpath = cache_file(name, key, size, cache_dir, data_home) if cache else None
    if cpath is not None:
        cached = load_cache(cpath, image_ids)
        if cached is not None:
            return cached["images"], cached["filenames"]
    index = index_images(root, _EXTENSIONS)
    missing = [i for i in image_ids.tolist() if i not in index]
    if missing:
        more = f" (and {len(missing) - 1} other listed images)" if len(missing) > 1 else ""
        raise FileNotFoundError(
            f"image {missing[0]!r}{more} listed in {listed_in} was not found: searched "
            f"{root} recursively for {missing[0]}.jpg/.jpeg/.png"
        )
    filenames = np.asarray([str(index[i]) for i in image_ids.tolist()])
    images = decode_images(filenames, size, n_jobs=n_jobs, verbose=verbose, desc=name)
    if cpath is not None:
        save_cache(cpath, images=images, filenames=filenames, image_ids=image_ids)
    return images, filenames


def _find_file(root: Path, name: str) -> Path | None:
    direct = root / name
    if direct.is_file():
        return direct
    return next(iter(sorted(root.rglob(name))), None)


def load_ham10000(
    path: PathLike,
    *,
    size: SizeLike = 28,
    metadata: PathLike = HAM10000_METADATA,
    cache: bool = True,
    data_home: PathLike | None = None,
    cache_dir: PathLike | None = None,
    n_jobs: int | None = None,
    verbose: int = 0,
) -> Bunch:
    """Load HAM10000 (= ISIC 2018 Task 3 training set) from its official layout.

    ``path`` holds the metadata CSV (``lesion_id,image_id,dx,dx_type,age,sex,
    localization``) and the images, found recursively by ``image_id``
    (``.jpg``, ``.jpeg`` or ``.png``): the official
    ``HAM10000_images_part_1/`` and ``HAM10000_images_part_2/`` folders, an
    ``images/`` folder, or any mix. A folder in the ISIC 2018 layout (as
    written by :func:`fetch_ham10000`) is accepted too and read with
    :func:`load_isic2018`.

    Images are converted to RGB and resized with Pillow's bilinear filter
    (``Image.Resampling.BILINEAR``, antialiased when downscaling: its support
    grows with the reduction factor); the aspect ratio is not kept, as in
    MedMNIST's DermaMNIST. The decoded arrays are cached as an uncompressed
    ``.npz`` keyed by the folder, the metadata file's size and modification
    time, and ``size``, so later loads take a fraction of a second. The cache
    does not notice images edited in place: delete it (or pass
    ``cache=False``) after changing image files.

    Parameters
    ----------
    path : str or path-like
        The HAM10000 folder (or the metadata CSV itself).
    size : int, (int, int) or None, default=28
        Output size: an int for square images, ``(height, width)``, or None
        to keep the original size (all images must then have the same size).
    metadata : str or path-like, default="HAM10000_metadata.csv"
        Metadata CSV, relative to ``path`` (also searched for recursively) or
        absolute.
    cache : bool, default=True
        Read and write the decoded-array cache.
    data_home : str or path-like, default=None
        Data home (see :func:`get_data_home`); the cache goes to its
        ``cache/`` sub-folder unless ``cache_dir`` is given.
    cache_dir : str or path-like, default=None
        Folder for the cache file.
    n_jobs : int, default=None
        Threads decoding images (joblib; None means 1, -1 all cores).
    verbose : int, default=0
        Show a progress bar while decoding when > 0.

    Returns
    -------
    data : sklearn.utils.Bunch
        A dictionary-like object with the keys:

        images : ndarray of shape (n_samples, H, W, 3), dtype uint8

        target : ndarray of shape (n_samples,), dtype int64
            Index into ``target_names``.

        target_names : ndarray of str
            The sorted diagnoses ``akiec, bcc, bkl, df, mel, nv, vasc`` (the
            same codes as MedMNIST DermaMNIST's labels 0-6), plus any
            unexpected ``dx`` value found, in sorted order.

        groups : ndarray of str
            ``lesion_id`` of each image: split by it, never by image.

        image_ids : ndarray of str

        filenames : ndarray of str
            Path of each image file.

        metadata : dict of str to ndarray
            The other CSV columns (``dx_type``, ``age`` as float with NaN for
            unknown, ``sex``, ``localization``, ...).

        DESCR : str
            Description, class counts, licence (CC BY-NC 4.0) and citation.

    Raises
    ------
    FileNotFoundError
        When the metadata file or a listed image cannot be found; the message
        names the image id and the folder searched.
    ValueError
        When an image file cannot be decoded (the message names the file) or
        the CSV lacks a required column.

    Examples
    --------
    >>> from fewmed.datasets import load_ham10000
    >>> ham = load_ham10000("data/HAM10000", size=28)  # doctest: +SKIP
    >>> ham.images.shape, str(ham.target_names[ham.target[0]])  # doctest: +SKIP
    ((10015, 28, 28, 3), 'bkl')
    """
    root = Path(path).expanduser()
    hw = _check_size(size)
    if root.is_file():
        meta_path, root = root, root.parent
    elif not root.is_dir():
        raise FileNotFoundError(f"HAM10000 folder not found: {root}")
    else:
        meta = Path(metadata).expanduser()
        meta_path = meta if meta.is_absolute() else _find_file(root, str(meta))
    if meta_path is None or not meta_path.is_file():
        gt = _find_file(root, ISIC2018_GROUND_TRUTH)
        if gt is not None and Path(metadata).name == HAM10000_METADATA:
            return load_isic2018(
                gt,
                root,
                size=size,
                lesion_groups_csv=_find_file(root, ISIC2018_GROUPINGS),
                cache=cache,
                data_home=data_home,
                cache_dir=cache_dir,
                n_jobs=n_jobs,
                verbose=verbose,
            )
        raise FileNotFoundError(
            f"no metadata file {str(metadata)!r} in {root}: expected the official HAM10000 "
            f"layout ({HAM10000_METADATA} next to the image folders) or the ISIC 2018 Task 3 "
            f"layout ({ISIC2018_GROUND_TRUTH})"
        )
    header, rows = read_csv(meta_path)
    require_columns(header, ("lesion_id", "image_id", "dx"), meta_path)
    image_ids = np.asarray([r["image_id"].strip() for r in rows], dtype=str)
    dx = [r["dx"].strip().lower() for r in rows]
    names = np.asarray(sorted(set(HAM10000_CLASSES) | set(dx)), dtype=str)
    codes = {n: i for i, n in enumerate(names.tolist())}
    target = np.asarray([codes[d] for d in dx], dtype=np.int64)
    groups = np.asarray([r["lesion_id"].strip() for r in rows], dtype=str)
    meta_cols: dict[str, np.ndarray] = {}
    for col in header:
        if col in ("lesion_id", "image_id", "dx"):
            continue
        values = [(r.get(col) or "").strip() for r in rows]
        if col == "age":
            meta_cols[col] = np.asarray([float(v) if v else np.nan for v in values])
        else:
            meta_cols[col] = np.asarray(values, dtype=str)
    key = {"root": str(root.resolve()), "csv": file_key(meta_path), "size": hw}
    images, filenames = _load_images(
        "ham10000",
        image_ids,
        root,
        key,
        hw,
        cache=cache,
        cache_dir=cache_dir,
        data_home=data_home,
        n_jobs=n_jobs,
        verbose=verbose,
        listed_in=meta_path,
    )
    descr = _descr(
        "HAM10000 (Human Against Machine with 10000 training images)",
        target,
        names,
        groups,
        f"Loaded from {meta_path}. Official source: {HAM10000_URL}",
    )
    return Bunch(
        images=images,
        target=target,
        target_names=names,
        groups=groups,
        image_ids=image_ids,
        filenames=filenames,
        metadata=meta_cols,
        DESCR=descr,
    )


def load_isic2018(
    ground_truth_csv: PathLike,
    image_dir: PathLike,
    *,
    size: SizeLike = 28,
    lesion_groups_csv: PathLike | None = None,
    cache: bool = True,
    data_home: PathLike | None = None,
    cache_dir: PathLike | None = None,
    n_jobs: int | None = None,
    verbose: int = 0,
) -> Bunch:
    """Load ISIC 2018 Task 3 images from the challenge's one-hot ground-truth CSV.

    The ground truth has the columns ``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC``
    with one 1.0 per row; images (``<image>.jpg``, ``.jpeg`` or ``.png``) are
    found recursively under ``image_dir``. The result has the same form as
    :func:`load_ham10000`: lower-case ``target_names`` in sorted order, equal to
    MedMNIST DermaMNIST's label order. Resizing and caching work as in
    :func:`load_ham10000`.

    Parameters
    ----------
    ground_truth_csv : str or path-like
        ``ISIC2018_Task3_Training_GroundTruth.csv`` (or the validation/test one).
    image_dir : str or path-like
        Folder holding the images (searched recursively).
    size : int, (int, int) or None, default=28
        Output size, see :func:`load_ham10000`.
    lesion_groups_csv : str or path-like, default=None
        ``ISIC2018_Task3_Training_LesionGroupings.csv`` (``image,lesion_id,...``)
        or a HAM10000 metadata CSV (``image_id,lesion_id,...``); gives
        ``groups``. Without it ``groups`` is None.
    cache : bool, default=True
        Read and write the decoded-array cache.
    data_home : str or path-like, default=None
        Data home for the default cache folder.
    cache_dir : str or path-like, default=None
        Folder for the cache file.
    n_jobs : int, default=None
        Threads decoding images.
    verbose : int, default=0
        Show a progress bar when > 0.

    Returns
    -------
    data : sklearn.utils.Bunch
        A dictionary-like object with the keys:

        ``images``, ``target``, ``target_names``, ``groups`` (or None),
        ``image_ids``, ``filenames``, ``metadata`` (the other columns of the
        lesion-groups CSV, e.g. ``diagnosis_confirm_type``) and ``DESCR``.

    Raises
    ------
    ValueError
        When a row is not one-hot, a class column is missing, an image is
        absent from ``lesion_groups_csv``, or an image cannot be decoded.
    FileNotFoundError
        When a listed image is missing.

    Examples
    --------
    >>> from fewmed.datasets import load_isic2018
    >>> isic = load_isic2018(
    ...     "ISIC2018_Task3_Training_GroundTruth.csv",
    ...     "ISIC2018_Task3_Training_Input",
    ...     lesion_groups_csv="ISIC2018_Task3_Training_LesionGroupings.csv",
    ... )  # doctest: +SKIP
    >>> isic.target_names.tolist()  # doctest: +SKIP
    ['akiec', 'bcc', 'bkl', 'df', 'mel', 'nv', 'vasc']
    """
    gt_path = Path(ground_truth_csv).expanduser()
    root = Path(image_dir).expanduser()
    hw = _check_size(size)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    header, rows = read_csv(gt_path)
    upper = [c.upper() for c in HAM10000_CLASSES]
    require_columns(header, ["image", *upper], gt_path)
    image_ids = np.asarray([r["image"].strip() for r in rows], dtype=str)
    try:
        onehot = np.asarray([[float(r[c] or 0) for c in upper] for r in rows], dtype=float)
    except ValueError as exc:
        raise ValueError(f"{gt_path}: the class columns {upper} must hold 0/1: {exc}") from None
    valid = np.isin(onehot, (0.0, 1.0)).all(axis=1) & (onehot.sum(axis=1) == 1)
    bad = np.flatnonzero(~valid)
    if bad.size:
        raise ValueError(
            f"{gt_path}: row for image {image_ids[bad[0]]!r} is not one-hot over {upper} "
            f"({bad.size} such rows)"
        )
    target = onehot.argmax(axis=1).astype(np.int64)
    names = np.asarray(HAM10000_CLASSES, dtype=str)
    groups = None
    meta_cols: dict[str, np.ndarray] = {}
    if lesion_groups_csv is not None:
        groups_path = Path(lesion_groups_csv).expanduser()
        gheader, grows = read_csv(groups_path)
        id_col = "image" if "image" in gheader else "image_id"
        require_columns(gheader, [id_col, "lesion_id"], groups_path)
        by_id = {r[id_col].strip(): r for r in grows}
        absent = [i for i in image_ids.tolist() if i not in by_id]
        if absent:
            raise ValueError(
                f"image {absent[0]!r} ({len(absent)} in all) is not listed in {groups_path}"
            )
        groups = np.asarray([by_id[i]["lesion_id"].strip() for i in image_ids.tolist()])
        for col in gheader:
            if col not in (id_col, "lesion_id"):
                values = [(by_id[i].get(col) or "").strip() for i in image_ids.tolist()]
                meta_cols[col] = np.asarray(values, dtype=str)
    key = {"root": str(root.resolve()), "csv": file_key(gt_path), "size": hw}
    images, filenames = _load_images(
        "isic2018",
        image_ids,
        root,
        key,
        hw,
        cache=cache,
        cache_dir=cache_dir,
        data_home=data_home,
        n_jobs=n_jobs,
        verbose=verbose,
        listed_in=gt_path,
    )
    descr = _descr(
        "ISIC 2018 Task 3 (lesion diagnosis)",
        target,
        names,
        groups,
        f"Loaded from {gt_path}. The training set is HAM10000. Also cite: {ISIC2018_CITATION}",
    )
    return Bunch(
        images=images,
        target=target,
        target_names=names,
        groups=groups,
        image_ids=image_ids,
        filenames=filenames,
        metadata=meta_cols,
        DESCR=descr,
    )


def _is_ham_folder(path: Path) -> bool:
    if not path.is_dir():
        return False
    if (path / HAM10000_METADATA).is_file() or (path / ISIC2018_GROUND_TRUTH).is_file():
        return True
    # the layout of the unzipped ISIC 2018 training files (fetch_ham10000)
    truth = path / "ISIC2018_Task3_Training_GroundTruth" / ISIC2018_GROUND_TRUTH
    return truth.is_file() and (path / "ISIC2018_Task3_Training_Input").is_dir()


def resolve_ham10000(
    path: PathLike | None = None, data_home: PathLike | None = None
) -> Path | None:
    """Find a HAM10000 folder for benchmarks and examples.

    Parameters
    ----------
    path : str or path-like, default=None
        A folder holding ``HAM10000_metadata.csv`` at its top level (or the
        ISIC 2018 Task 3 ground truth, as written by :func:`fetch_ham10000`).
        When given it must be such a folder.
    data_home : str or path-like, default=None
        Data home to search when ``path`` is None (default: ``FEWMED_DATA``,
        else ``~/fewmed_data``): the folder itself and its ``ham10000/``,
        ``HAM10000/`` and ``isic2018/`` sub-folders are tried in that order.

    Returns
    -------
    path : pathlib.Path or None
        The folder to pass to :func:`load_ham10000`, or None when nothing is
        found.

    Raises
    ------
    ValueError
        When an explicit ``path`` is not a HAM10000 / ISIC 2018 folder.

    Examples
    --------
    >>> import tempfile
    >>> from fewmed.datasets import resolve_ham10000
    >>> resolve_ham10000(data_home=tempfile.mkdtemp()) is None
    True
    """
    if path is not None:
        p = Path(path).expanduser()
        if p.is_file() and p.name == HAM10000_METADATA:
            p = p.parent
        if not _is_ham_folder(p):
            raise ValueError(
                f"{p} is not a HAM10000 folder: expected {HAM10000_METADATA} at its top level "
                f"(official layout, {HAM10000_URL}) or {ISIC2018_GROUND_TRUTH} (ISIC 2018 Task 3)"
            )
        return p
    home = _data_home_path(data_home)
    for candidate in (home, home / "ham10000", home / "HAM10000", home / "isic2018"):
        if _is_ham_folder(candidate):
            return candidate
    return None
