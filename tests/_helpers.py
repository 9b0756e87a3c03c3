"""Small file writers shared by the data set tests (CSV, npz, PNG, HAM10000 rows)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image


def ham_rows(ham_dir: Path) -> list[dict[str, str]]:
    """The rows of ``ham_dir/HAM10000_metadata.csv``."""
    with open(ham_dir / "HAM10000_metadata.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def one_per_class(ham_dir: Path) -> list[dict[str, str]]:
    """One metadata row per diagnosis, in sorted dx order."""
    first: dict[str, dict[str, str]] = {}
    for row in ham_rows(ham_dir):
        first.setdefault(row["dx"], row)
    return [first[dx] for dx in sorted(first)]


def image_path(ham_dir: Path, image_id: str) -> Path:
    """The JPEG of ``image_id`` in the shared HAM10000 copy."""
    return ham_dir / "images" / f"{image_id}.jpg"


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    """Write ``header`` then ``rows`` to ``path``; return ``path``."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def make_npz(path: Path, *, n=(12, 4, 6), shape=(28, 28, 3), n_classes=5, multilabel=0):
    """A MedMNIST-layout npz (``{train,val,test}_{images,labels}``) of random uint8 images."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, k in zip(("train", "val", "test"), n):
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(k, *shape), dtype=np.uint8)
        if multilabel:
            arrays[f"{split}_labels"] = rng.integers(0, 2, size=(k, multilabel), dtype=np.uint8)
        else:
            labels = np.arange(k) % n_classes
            arrays[f"{split}_labels"] = labels.reshape(k, 1).astype(np.uint8)
    np.savez(path, **arrays)
    return path


def png(path: Path, shape, value) -> None:
    """A constant-valued PNG of ``shape`` at ``path`` (parent folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, value, dtype=np.uint8)).save(path)
