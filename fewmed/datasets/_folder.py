"""Load a folder of images with one sub-folder per class."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

from ._base import IMAGE_EXTENSIONS, PathLike, SizeLike, _check_color, _check_size, decode_images

_LAYOUT = (
    "expected one sub-folder per class holding that class's images, e.g.\n"
    "  root/melanoma/img001.png\n"
    "  root/melanoma/img002.png\n"
    "  root/nevus/img107.jpg\n"
    "(images may sit deeper inside a class folder; the class is the first-level folder)"
)


def _class_files(folder: Path, exts: set[str]) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in exts:
                files.append(Path(dirpath) / name)
    return files


def load_image_folder(
    root: PathLike,
    *,
    size: SizeLike = 28,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    color: str = "RGB",
    n_jobs: int | None = None,
    verbose: int = 0,
) -> Bunch:
    """Load images stored as one sub-folder per class.

    Class names are the sorted names of the first-level sub-folders of
    ``root`` (hidden folders skipped); each class's images are found
    recursively inside its folder, in sorted path order. Images are resized
    with Pillow's bilinear filter (antialiased when downscaling), as in
    :func:`load_ham10000`.

    Parameters
    ----------
    root : str or path-like
        Folder with one sub-folder per class.
    size : int, (int, int) or None, default=28
        Output size: an int for square images, ``(height, width)``, or None
        to keep the original size (all images must have the same size).
    extensions : sequence of str, default=(".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
        File extensions counted as images (case-insensitive).
    color : {"RGB", "L"}, default="RGB"
        ``"RGB"`` gives (n, H, W, 3), ``"L"`` grayscale (n, H, W, 1).
    n_jobs : int, default=None
        Threads decoding images (joblib; None means 1).
    verbose : int, default=0
        Show a progress bar when > 0.

    Returns
    -------
    data : sklearn.utils.Bunch
        A dictionary-like object with the keys:

        images : ndarray of shape (n_samples, H, W, C), dtype uint8

        target : ndarray of shape (n_samples,), dtype int64

        target_names : ndarray of str
            Sorted class folder names.

        filenames : ndarray of str

        DESCR : str

    Raises
    ------
    FileNotFoundError
        When ``root`` does not exist.
    ValueError
        When ``root`` holds no class folder with images (the message shows the
        expected layout), or an image cannot be decoded.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from PIL import Image
    >>> from fewmed.datasets import load_image_folder
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ["benign", "malignant"]:
    ...     (root / name).mkdir()
    ...     Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(root / name / "a.png")
    >>> data = load_image_folder(root, size=16)
    >>> data.images.shape, data.target_names.tolist()
    ((2, 16, 16, 3), ['benign', 'malignant'])
    """
    root = Path(root).expanduser()
    hw = _check_size(size)
    color = _check_color(color)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    names: list[str] = []
    files: list[Path] = []
    labels: list[int] = []
    empty: list[str] = []
    for folder in class_dirs:
        found = _class_files(folder, exts)
        if not found:
            empty.append(folder.name)
            continue
        labels += [len(names)] * len(found)
        names.append(folder.name)
        files += found
    if not files:
        loose = [p.name for p in root.iterdir() if p.suffix.lower() in exts][:3]
        what = (
            f"found images directly in it ({', '.join(loose)}, ...) but no class folders"
            if loose
            else "found no images with extensions " + ", ".join(sorted(exts))
        )
        raise ValueError(f"{root}: {what}; {_LAYOUT}")
    if empty:
        warnings.warn(
            f"{root}: ignoring sub-folders without images: {empty}", UserWarning, stacklevel=2
        )
    images = decode_images(files, hw, color=color, n_jobs=n_jobs, verbose=verbose)
    target = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(target, minlength=len(names))
    lines = [f"Image folder {root}", "", f"images: {len(files)}", "", "code  images  class"]
    lines += [f"{i:>4}  {c:>6}  {n}" for i, (n, c) in enumerate(zip(names, counts))]
    return Bunch(
        images=images,
        target=target,
        target_names=np.asarray(names, dtype=str),
        filenames=np.asarray([str(f) for f in files], dtype=str),
        DESCR="\n".join(lines),
    )
