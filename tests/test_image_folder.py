"""Tests of fewmed.datasets._folder: load_image_folder (one sub-folder per class)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _helpers import png

from fewmed.datasets import load_image_folder

pytestmark = pytest.mark.usefixtures("isolated_data_home")


def test_load_image_folder(tmp_path):
    root = tmp_path / "folder"
    png(root / "nevus" / "b.png", (40, 30, 3), 200)
    png(root / "nevus" / "a.png", (10, 12), 100)  # grayscale
    png(root / "melanoma" / "deep" / "c.PNG", (28, 28, 4), 50)  # RGBA, nested
    (root / "melanoma" / "notes.txt").write_text("not an image")
    data = load_image_folder(root, size=16)
    assert data.images.shape == (3, 16, 16, 3) and data.images.dtype == np.uint8
    assert list(data.target_names) == ["melanoma", "nevus"]
    assert data.target.tolist() == [0, 1, 1]
    assert [Path(f).name for f in data.filenames] == ["c.PNG", "a.png", "b.png"]
    assert data.images[1].max() == 100 and data.images[2].min() == 200
    gray = load_image_folder(root, size=(8, 10), color="L")
    assert gray.images.shape == (3, 8, 10, 1)
    with pytest.raises(ValueError, match="differ in size"):
        load_image_folder(root, size=None)
    with pytest.raises(ValueError, match="color"):
        load_image_folder(root, color="CMYK")


def test_load_image_folder_bad_layouts(tmp_path):
    with pytest.raises(ValueError, match="one sub-folder per class"):
        load_image_folder(tmp_path)
    png(tmp_path / "loose.png", (8, 8, 3), 0)
    with pytest.raises(ValueError, match="no class folders"):
        load_image_folder(tmp_path)
    (tmp_path / "empty_class").mkdir()
    png(tmp_path / "cls" / "x.png", (8, 8, 3), 0)
    with pytest.warns(UserWarning, match="empty_class"):
        data = load_image_folder(tmp_path, size=None)
    assert list(data.target_names) == ["cls"] and data.images.shape == (1, 8, 8, 3)
    with pytest.raises(FileNotFoundError):
        load_image_folder(tmp_path / "missing")
