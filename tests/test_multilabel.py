"""Tests of fewmed.datasets._multilabel: load_multilabel_csv."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from _helpers import png, write_csv

from fewmed.datasets import load_multilabel_csv

pytestmark = pytest.mark.usefixtures("isolated_data_home")


def test_multilabel_csv_pipe_column(tmp_path):
    rows = [
        ["x1.png", "Mass|Effusion", "7", "PA"],
        ["x2.png", "No Finding", "7", "AP"],
        ["x3.png", "Hernia", "9", "PA"],
        ["x4.png", "Effusion", "11", "PA"],
    ]
    header = ["Image Index", "Finding Labels", "Patient ID", "View Position"]
    path = write_csv(tmp_path / "labels.csv", header, rows)
    data = load_multilabel_csv(path, load_images=False)
    assert list(data.target_names) == ["Effusion", "Hernia", "Mass"]
    assert data.target.tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0], [1, 0, 0]]
    assert data.groups.tolist() == ["7", "7", "9", "11"]
    assert data.filenames.tolist() == ["x1.png", "x2.png", "x3.png", "x4.png"]
    assert data.metadata["View Position"].tolist() == ["PA", "AP", "PA", "PA"]
    assert "images" not in data
    chosen = load_multilabel_csv(path, classes=["Mass", "Effusion"], load_images=False)
    assert chosen.target.tolist() == [[1, 1], [0, 0], [0, 0], [0, 1]]
    with pytest.warns(UserWarning, match="Typo"):
        load_multilabel_csv(path, classes=["Typo", "Mass"], load_images=False)
    gz = tmp_path / "labels.csv.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    np.testing.assert_array_equal(load_multilabel_csv(gz, load_images=False).target, data.target)
    with pytest.raises(ValueError, match="Finding"):
        load_multilabel_csv(path, label_column="Finding", load_images=False)


def test_multilabel_csv_indicator_columns_and_images(tmp_path):
    image_dir = tmp_path / "imgs"
    png(image_dir / "batch_1" / "a.png", (30, 30), 10)
    png(image_dir / "b.png", (20, 20), 200)
    path = write_csv(
        tmp_path / "t.csv",
        ["path", "effusion", "mass", "patient"],
        [["a.png", "1", "0.0", "p1"], ["b.png", "", "1", "p2"]],
    )
    data = load_multilabel_csv(
        path,
        image_dir,
        path_column="path",
        label_columns=["mass", "effusion"],
        group_column="patient",
        size=8,
        color="L",
    )
    assert list(data.target_names) == ["mass", "effusion"]
    assert data.target.tolist() == [[0, 1], [1, 0]]
    assert data.images.shape == (2, 8, 8, 1)
    assert data.images[0].max() == 10 and data.images[1].min() == 200
    assert Path(data.filenames[0]) == image_dir / "batch_1" / "a.png"
    no_groups = load_multilabel_csv(path, path_column="path", label_columns=["mass"])
    assert no_groups.groups is None  # "Patient ID" not in this CSV
    bad = write_csv(tmp_path / "bad.csv", ["path", "mass"], [["a.png", "-1"]])
    with pytest.raises(ValueError, match="0/1"):
        load_multilabel_csv(bad, path_column="path", label_columns=["mass"])
    missing = write_csv(tmp_path / "m.csv", ["path", "mass"], [["zz.png", "1"]])
    with pytest.raises(FileNotFoundError, match="zz.png"):
        load_multilabel_csv(missing, image_dir, path_column="path", label_columns=["mass"])


@pytest.mark.realdata
def test_multilabel_csv_nih_table(shared_data):
    data = load_multilabel_csv(shared_data / "nih_chestxray14_labels.csv.gz", load_images=False)
    assert data.target.shape == (112120, 14)
    assert "No Finding" not in data.target_names
    assert list(data.target_names) == sorted(data.target_names)
    assert {"Hernia", "Pleural_Thickening", "Infiltration"} <= set(data.target_names)
    assert int((data.target.sum(axis=1) == 0).sum()) == 60361
    assert len(np.unique(data.groups)) == 30805
    assert data.filenames[0] == "00000001_000.png"
    assert "ChestX-ray14" in data.DESCR
