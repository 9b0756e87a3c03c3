"""Tests of fewmed.datasets._medmnist: load_medmnist, the MedMNIST table and infer_flag."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import make_npz

from fewmed.datasets import MEDMNIST_FLAGS, MEDMNIST_INFO, load_medmnist
from fewmed.datasets._medmnist import infer_flag

pytestmark = pytest.mark.usefixtures("isolated_data_home")


@pytest.mark.realdata
def test_retinamnist(retina_npz):
    data = load_medmnist(retina_npz)
    assert data.flag == "retinamnist" and data.task == "ordinal-regression"
    assert len(data.target_names) == 5
    for split, n in (("train", 1080), ("val", 120), ("test", 400)):
        part = data[split]
        assert part.images.shape == (n, 28, 28, 3) and part.images.dtype == np.uint8
        assert part.target.shape == (n,) and part.target.dtype == np.int64
        assert set(np.unique(part.target)) <= set(range(5))
    assert "CC BY 4.0" in data.DESCR and "Yang" in data.DESCR
    test = load_medmnist(retina_npz, split="test")
    np.testing.assert_array_equal(test.images, data.test.images)
    assert test.split == "test"
    with pytest.raises(ValueError, match="split"):
        load_medmnist(retina_npz, split="training")


@pytest.mark.realdata
def test_breastmnist_gets_channel_axis(shared_data):
    data = load_medmnist(shared_data / "breastmnist.npz")
    assert data.train.images.shape == (546, 28, 28, 1)
    assert data.task == "binary-class"
    assert list(data.target_names) == ["malignant", "normal, benign"]
    assert len(data.val.images) + len(data.test.images) == 78 + 156


@pytest.mark.realdata
def test_pneumoniamnist_imbalanced(shared_data):
    data = load_medmnist(shared_data / "pneumoniamnist_imbalanced.npz")
    assert data.flag == "pneumoniamnist"
    assert list(data.target_names) == ["normal", "pneumonia"]
    assert np.bincount(data.train.target).tolist() == [388, 3494]
    assert len(data.val.target) == 524 and len(data.test.target) == 624
    assert data.train.images.shape[1:] == (28, 28, 1)


def test_infer_flag():
    assert infer_flag("retinamnist.npz") == "retinamnist"
    assert infer_flag("/x/pneumoniamnist_imbalanced.npz") == "pneumoniamnist"
    assert infer_flag("dermamnist_64.npz") == "dermamnist"
    assert infer_flag("OrganAMNIST_224.npz") == "organamnist"
    assert infer_flag("mystuff_128.npz") == "mystuff"


def test_medmnist_table_complete():
    expected = {
        "pathmnist": 9,
        "chestmnist": 14,
        "dermamnist": 7,
        "octmnist": 4,
        "pneumoniamnist": 2,
        "retinamnist": 5,
        "breastmnist": 2,
        "bloodmnist": 8,
        "tissuemnist": 8,
        "organamnist": 11,
        "organcmnist": 11,
        "organsmnist": 11,
    }
    assert {f: len(MEDMNIST_INFO[f]["labels"]) for f in MEDMNIST_FLAGS} == expected
    assert MEDMNIST_INFO["retinamnist"]["md5"][28] == "bd4c0672f1bba3e3a89f0e4e876791e4"
    assert MEDMNIST_INFO["breastmnist"]["md5"][28] == "750601b1f35ba3300ea97c75c52ff8f6"
    assert MEDMNIST_INFO["chestmnist"]["task"] == "multi-label, binary-class"


def test_medmnist_unknown_flag_and_multilabel(tmp_path):
    data = load_medmnist(make_npz(tmp_path / "mystery.npz", n_classes=3, shape=(16, 16)))
    assert list(data.target_names) == ["0", "1", "2"]
    assert data.task == "multi-class"
    assert data.train.images.shape == (12, 16, 16, 1)
    ml = load_medmnist(make_npz(tmp_path / "chestmnist.npz", shape=(28, 28), multilabel=14))
    assert ml.task == "multi-label, binary-class"
    assert ml.train.target.shape == (12, 14)
    forced = load_medmnist(tmp_path / "mystery.npz", flag="breastmnist", split="val")
    assert forced.target_names[0] == "malignant"
    np.savez(tmp_path / "junk.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="train_images"):
        load_medmnist(tmp_path / "junk.npz")
