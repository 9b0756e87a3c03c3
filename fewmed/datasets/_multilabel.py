"""Multi-label image tables (ChestX-ray14's ``Data_Entry_2017.csv`` and the like)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

from ._base import (
    IMAGE_EXTENSIONS,
    PathLike,
    SizeLike,
    _check_color,
    _check_size,
    decode_images,
    read_csv,
    require_columns,
)

CHESTXRAY14_URL = "https://nihcc.app.box.com/v/ChestXray-NIHCC"
CHESTXRAY14_CITATION = (
    "Wang X., Peng Y., Lu L., Lu Z., Bagheri M., Summers R. M. ChestX-ray8: Hospital-scale "
    "Chest X-ray Database and Benchmarks on Weakly-Supervised Classification and Localization "
    "of Common Thorax Diseases. CVPR 2017"
)


def _parse_indicator(value: str, column: str, row: int, path: Path) -> int:
    v = value.strip()
    try:
        f = float(v) if v else 0.0
    except ValueError:
        f = np.nan
    if f not in (0.0, 1.0):
        raise ValueError(
            f"{path}: column {column!r} must hold 0/1 (blank = 0), found {value!r} in data "
            f"row {row + 1}"
        )
    return int(f)


def _resolve_images(image_dir: Path, relpaths: Sequence[str]) -> list[Path]:
    """Image paths relative to ``image_dir``, else found by file name anywhere below it."""
    paths = [image_dir / p for p in relpaths]
    if all(p.is_file() for p in paths):
        return paths
    index: dict[str, Path] = {}
    exts = set(IMAGE_EXTENSIONS)
    for p in sorted(image_dir.rglob("*")):
        if p.suffix.lower() in exts:
            index.setdefault(p.name, p)
    out = []
    for rel, direct in zip(relpaths, paths):
        if direct.is_file():
            out.append(direct)
        elif Path(rel).name in index:
            out.append(index[Path(rel).name])
        else:
            raise FileNotFoundError(
                f"image {rel!r} was not found: searched {image_dir} (and its sub-folders by "
                f"file name {Path(rel).name!r})"
            )
    return out


def load_multilabel_csv(
    csv_path: PathLike,
    image_dir: PathLike | None = None,
    *,
    path_column: str = "Image Index",
    label_column: str = "Finding Labels",
    sep: str = "|",
    label_columns: Sequence[str] | None = None,
    no_finding: str | None = "No Finding",
    group_column: str | None = "Patient ID",
    size: SizeLike = 28,
    load_images: bool = True,
    classes: Sequence[str] | None = None,
    color: str = "RGB",
    n_jobs: int | None = None,
    verbose: int = 0,
) -> Bunch:
    """Load a table of image paths with multi-label annotations.

    Two label formats are read: one column of ``sep``-separated labels (the
    default, ChestX-ray14's ``Finding Labels``: ``"Cardiomegaly|Emphysema"``;
    ``no_finding`` gives an all-zero row and is not a class), or several 0/1
    columns named by ``label_columns`` (blank counts as 0).

    Parameters
    ----------
    csv_path : str or path-like
        The CSV file, optionally gzip-compressed (``.csv.gz``).
    image_dir : str or path-like, default=None
        Folder of the images: ``path_column`` is taken relative to it, and a
        file not found there is searched for by name in its sub-folders (the
        NIH images come split over ``images_001/images/``, ...).
    path_column : str, default="Image Index"
        Column with the image file names.
    label_column : str, default="Finding Labels"
        Column with the ``sep``-separated labels (ignored when
        ``label_columns`` is given).
    sep : str, default="|"
        Separator inside ``label_column``.
    label_columns : sequence of str, default=None
        0/1 indicator columns, one per class, used instead of ``label_column``;
        their order is the order of ``target_names``.
    no_finding : str or None, default="No Finding"
        Label meaning "none of the classes"; not a class.
    group_column : str or None, default="Patient ID"
        Column giving ``groups`` (e.g. the patient) when the CSV has it.
    size : int, (int, int) or None, default=28
        Output image size (see :func:`load_image_folder`).
    load_images : bool, default=True
        Decode the images (needs ``image_dir``). With False, or without
        ``image_dir``, only labels are read.
    classes : sequence of str, default=None
        Classes to keep, in this order (``target_names``); labels outside it
        are dropped. By default every label found, sorted.
    color : {"RGB", "L"}, default="RGB"
        Colour mode of the decoded images (``"L"`` for (n, H, W, 1)).
    n_jobs : int, default=None
        Threads decoding images.
    verbose : int, default=0
        Show a progress bar when > 0.

    Returns
    -------
    data : sklearn.utils.Bunch
        A dictionary-like object with the keys:

        target : ndarray of shape (n_samples, n_classes), dtype uint8
            Indicator matrix.

        target_names : ndarray of str

        groups : ndarray of str or None
            ``group_column`` values, None when the CSV lacks that column.

        filenames : ndarray of str
            ``path_column`` values, joined to ``image_dir`` when it is given.

        metadata : dict of str to ndarray of str
            The remaining columns.

        images : ndarray of shape (n_samples, H, W, C), dtype uint8
            Only when ``load_images`` and ``image_dir`` are given.

        DESCR : str

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from fewmed.datasets import load_multilabel_csv
    >>> csv_file = Path(tempfile.mkdtemp()) / "labels.csv"
    >>> _ = csv_file.write_text(
    ...     "Image Index,Finding Labels,Patient ID\\n"
    ...     "a.png,Effusion|Mass,1\\nb.png,No Finding,1\\nc.png,Mass,2\\n"
    ... )
    >>> data = load_multilabel_csv(csv_file, load_images=False)
    >>> data.target_names.tolist(), data.target.tolist()
    (['Effusion', 'Mass'], [[1, 1], [0, 0], [0, 1]])
    """
    csv_path = Path(csv_path).expanduser()
    header, rows = read_csv(csv_path)
    require_columns(header, [path_column], csv_path)
    if label_columns is not None:
        label_columns = list(label_columns)
        require_columns(header, label_columns, csv_path)
        found = label_columns
        row_labels = [
            {c for c in label_columns if _parse_indicator(r[c] or "", c, i, csv_path)}
            for i, r in enumerate(rows)
        ]
    else:
        require_columns(header, [label_column], csv_path)
        row_labels = []
        for r in rows:
            labels = {s.strip() for s in (r[label_column] or "").split(sep)}
            labels.discard("")
            if no_finding is not None:
                labels.discard(no_finding)
            row_labels.append(labels)
        found = sorted(set().union(*row_labels)) if row_labels else []
    if classes is not None:
        names = list(classes)
        unseen = [c for c in names if c not in set(found)]
        if unseen:
            warnings.warn(
                f"{csv_path}: classes {unseen} never occur in the labels", UserWarning, stacklevel=2
            )
    else:
        names = found
    col = {n: j for j, n in enumerate(names)}
    target = np.zeros((len(rows), len(names)), dtype=np.uint8)
    for i, labels in enumerate(row_labels):
        for lab in labels:
            j = col.get(lab)
            if j is not None:
                target[i, j] = 1
    relpaths = [(r[path_column] or "").strip() for r in rows]
    groups = None
    if group_column is not None and group_column in header:
        groups = np.asarray([(r[group_column] or "").strip() for r in rows], dtype=str)
    used = {path_column, group_column, *(label_columns or [label_column])}
    metadata = {
        c: np.asarray([(r[c] or "") for r in rows], dtype=str) for c in header if c not in used
    }
    bunch = Bunch(
        target=target,
        target_names=np.asarray(names, dtype=str),
        groups=groups,
        metadata=metadata,
    )
    if image_dir is not None:
        image_dir = Path(image_dir).expanduser()
        if load_images:
            paths = _resolve_images(image_dir, relpaths)
            bunch.images = decode_images(
                paths, _check_size(size), color=_check_color(color), n_jobs=n_jobs, verbose=verbose
            )
        else:
            paths = [image_dir / p for p in relpaths]
        bunch.filenames = np.asarray([str(p) for p in paths], dtype=str)
    else:
        bunch.filenames = np.asarray(relpaths, dtype=str)
    counts = target.sum(axis=0)
    lines = [
        f"Multi-label image table {csv_path}",
        "",
        f"rows: {len(rows)}; rows with no label: {int((target.sum(axis=1) == 0).sum())}",
    ]
    if groups is not None:
        lines.append(f"groups ({group_column}): {len(set(groups.tolist()))}")
    lines += ["", "column  positives  label"]
    lines += [f"{j:>6}  {int(c):>9}  {n}" for j, (n, c) in enumerate(zip(names, counts))]
    if csv_path.name.lower().startswith("data_entry_2017") or "chestx" in csv_path.name.lower():
        lines += ["", f"NIH ChestX-ray14 ({CHESTXRAY14_URL}); cite {CHESTXRAY14_CITATION}"]
    bunch.DESCR = "\n".join(lines)
    return bunch
