"""Tests of fewmed.datasets: real-data loaders, caches, downloads, synthetic data."""

from __future__ import annotations

import csv
import gzip
import hashlib
import http.server
import shutil
import threading
import time
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewmed.datasets import (
    HAM10000_CLASSES,
    MEDMNIST_FLAGS,
    MEDMNIST_INFO,
    ChecksumError,
    DatasetNotAvailableError,
    _fetch,
    fetch_ham10000,
    fetch_medmnist,
    get_data_home,
    list_datasets,
    load_ham10000,
    load_image_folder,
    load_isic2018,
    load_medmnist,
    load_multilabel_csv,
    make_synthetic_lesions,
    resolve_ham10000,
)
from fewmed.datasets._medmnist import infer_flag

HAM_COUNTS = {
    "akiec": 327,
    "bcc": 514,
    "bkl": 1099,
    "df": 115,
    "mel": 1113,
    "nv": 6705,
    "vasc": 142,
}


@pytest.fixture(autouse=True)
def _isolated_data_home(tmp_path, monkeypatch):
    """Never let a test read or write the user's real data home."""
    monkeypatch.setenv("FEWMED_DATA", str(tmp_path / "fewmed_home"))


# ------------------------------------------------------------------ helpers


def _ham_rows(ham_dir: Path) -> list[dict[str, str]]:
    with open(ham_dir / "HAM10000_metadata.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _one_per_class(ham_dir: Path) -> list[dict[str, str]]:
    """One metadata row per diagnosis, in sorted dx order."""
    first: dict[str, dict[str, str]] = {}
    for row in _ham_rows(ham_dir):
        first.setdefault(row["dx"], row)
    return [first[dx] for dx in sorted(first)]


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _image_path(ham_dir: Path, image_id: str) -> Path:
    return ham_dir / "images" / f"{image_id}.jpg"


@pytest.fixture
def fake_ham(ham_dir, tmp_path) -> tuple[Path, list[dict[str, str]]]:
    """A tiny official-layout HAM10000 folder with 7 real images over two part folders."""
    rows = _one_per_class(ham_dir)
    root = tmp_path / "ham_small"
    for i, row in enumerate(rows):
        part = root / f"HAM10000_images_part_{1 + i % 2}"
        part.mkdir(parents=True, exist_ok=True)
        shutil.copy(_image_path(ham_dir, row["image_id"]), part)
    header = list(rows[0])
    _write_csv(root / "HAM10000_metadata.csv", header, [[r[h] for h in header] for r in rows])
    return root, rows


def _make_npz(path: Path, *, n=(12, 4, 6), shape=(28, 28, 3), n_classes=5, multilabel=0):
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


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def http_root(tmp_path):
    """A local HTTP server on 127.0.0.1 serving a temporary folder: (folder, base URL)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------ data home


def test_get_data_home_precedence(tmp_path, monkeypatch):
    assert get_data_home(tmp_path / "a") == tmp_path / "a"
    assert (tmp_path / "a").is_dir()
    monkeypatch.setenv("FEWMED_DATA", str(tmp_path / "env"))
    assert get_data_home() == tmp_path / "env"
    monkeypatch.delenv("FEWMED_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert get_data_home() == tmp_path / "home" / "fewmed_data"
    assert get_data_home().is_dir()


# ------------------------------------------------------------------ HAM10000 (real)


@pytest.mark.realdata
@pytest.mark.slow
def test_ham10000_full(ham28):
    assert ham28.images.shape == (10015, 28, 28, 3)
    assert ham28.images.dtype == np.uint8
    assert ham28.target.dtype == np.int64
    assert list(ham28.target_names) == list(HAM10000_CLASSES)
    counts = dict(zip(ham28.target_names.tolist(), np.bincount(ham28.target).tolist()))
    assert counts == HAM_COUNTS
    assert len(np.unique(ham28.groups)) == 7470
    assert len(ham28.image_ids) == len(ham28.filenames) == 10015
    assert set(ham28.metadata) >= {"dx_type", "age", "sex", "localization"}
    assert ham28.metadata["age"].dtype == np.float64
    assert np.isnan(ham28.metadata["age"]).any()
    assert "CC BY-NC 4.0" in ham28.DESCR and "Tschandl" in ham28.DESCR
    assert 40 < ham28.images.mean() < 220  # real pictures, not blank


@pytest.mark.realdata
@pytest.mark.slow
def test_ham10000_cached_reload_is_fast_and_identical(ham28, ham_dir, tmp_path_factory):
    caches = sorted(tmp_path_factory.getbasetemp().glob("fewmed_cache*"))
    caches = [c for c in caches if any(c.glob("ham10000_28x28_*.npz"))]
    if not caches:  # e.g. another fixture layout: make the cache here
        cache_dir = tmp_path_factory.mktemp("ham_cache")
        load_ham10000(ham_dir, size=28, cache_dir=cache_dir)
    else:
        cache_dir = caches[0]
    start = time.perf_counter()
    again = load_ham10000(ham_dir, size=28, cache_dir=cache_dir)
    elapsed = time.perf_counter() - start
    print(f"cached HAM10000 reload: {elapsed:.3f} s")
    assert elapsed < 1.0
    np.testing.assert_array_equal(again.images, ham28.images)
    np.testing.assert_array_equal(again.target, ham28.target)
    np.testing.assert_array_equal(again.groups, ham28.groups)


# ------------------------------------------------------------------ HAM10000 (small layouts)


@pytest.mark.realdata
def test_ham10000_small_layout_sizes_and_cache(fake_ham, tmp_path):
    root, rows = fake_ham
    cache_dir = tmp_path / "cache"
    data = load_ham10000(root, size=(20, 30), cache_dir=cache_dir)
    assert data.images.shape == (7, 20, 30, 3)
    assert data.target.tolist() == list(range(7))  # one image per class, sorted
    assert data.groups.tolist() == [r["lesion_id"] for r in rows]
    assert data.image_ids.tolist() == [r["image_id"] for r in rows]
    assert all(Path(f).is_file() for f in data.filenames)
    assert len(list(cache_dir.glob("*.npz"))) == 1
    again = load_ham10000(root, size=(20, 30), cache_dir=cache_dir)
    np.testing.assert_array_equal(again.images, data.images)
    # original size kept with size=None (the shared copy is 200x150)
    full = load_ham10000(root, size=None, cache=False)
    assert full.images.shape == (7, 150, 200, 3)
    # pointing at the CSV itself works too; cache=False writes nothing
    other = tmp_path / "other_cache"
    direct = load_ham10000(root / "HAM10000_metadata.csv", size=8, cache=False, cache_dir=other)
    assert direct.images.shape == (7, 8, 8, 3) and not other.exists()


@pytest.mark.realdata
def test_ham10000_threads_and_progress_bar(fake_ham, capsys):
    root, _ = fake_ham
    serial = load_ham10000(root, size=8, cache=False)
    capsys.readouterr()
    threaded = load_ham10000(root, size=8, cache=False, n_jobs=2, verbose=1)
    np.testing.assert_array_equal(threaded.images, serial.images)
    assert "7/7" in capsys.readouterr().err


@pytest.mark.realdata
def test_ham10000_cache_invalidated_by_new_metadata(fake_ham, tmp_path):
    root, rows = fake_ham
    cache_dir = tmp_path / "cache"
    load_ham10000(root, size=8, cache_dir=cache_dir)
    header = list(rows[0])
    meta = root / "HAM10000_metadata.csv"
    _write_csv(meta, header, [[r[h] for h in header] for r in rows[:3]])
    data = load_ham10000(root, size=8, cache_dir=cache_dir)
    assert len(data.images) == 3
    assert len(list(cache_dir.glob("*.npz"))) == 2


@pytest.mark.realdata
def test_ham10000_missing_image_names_id_and_folder(fake_ham):
    root, rows = fake_ham
    victim = next(root.rglob(f"{rows[2]['image_id']}.jpg"))
    victim.unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_ham10000(root, cache=False)
    assert rows[2]["image_id"] in str(err.value)
    assert str(root) in str(err.value)


@pytest.mark.realdata
def test_ham10000_corrupt_image_names_file(fake_ham):
    root, rows = fake_ham
    victim = next(root.rglob(f"{rows[4]['image_id']}.jpg"))
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])  # truncated JPEG
    with pytest.raises(ValueError, match=rows[4]["image_id"]) as err:
        load_ham10000(root, cache=False)
    assert str(victim) in str(err.value)
    victim.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="could not decode"):
        load_ham10000(root, cache=False)


def test_ham10000_missing_metadata(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match="HAM10000_metadata.csv"):
        load_ham10000(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_ham10000(tmp_path / "nope")
    with pytest.raises(ValueError, match="size"):
        load_ham10000(tmp_path, size=(28,))


# ------------------------------------------------------------------ ISIC 2018


@pytest.fixture
def fake_isic(ham_dir, tmp_path):
    rows = _one_per_class(ham_dir)[::-1]
    root = tmp_path / "isic"
    images = root / "ISIC2018_Task3_Training_Input"
    images.mkdir(parents=True)
    for r in rows:
        shutil.copy(_image_path(ham_dir, r["image_id"]), images)
    upper = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    gt_rows = [
        [r["image_id"], *[f"{float(c == r['dx'].upper()):.1f}" for c in upper]] for r in rows
    ]
    gt_dir = root / "ISIC2018_Task3_Training_GroundTruth"
    gt_dir.mkdir()
    gt = _write_csv(gt_dir / "ISIC2018_Task3_Training_GroundTruth.csv", ["image", *upper], gt_rows)
    groups = _write_csv(
        root / "ISIC2018_Task3_Training_LesionGroupings.csv",
        ["image", "lesion_id", "diagnosis_confirm_type"],
        [[r["image_id"], r["lesion_id"], r["dx_type"]] for r in rows],
    )
    return root, gt, groups, rows


@pytest.mark.realdata
def test_isic2018_matches_ham_codes(fake_isic, tmp_path):
    root, gt, groups, rows = fake_isic
    data = load_isic2018(gt, root, size=16, lesion_groups_csv=groups, cache_dir=tmp_path / "c")
    assert list(data.target_names) == list(HAM10000_CLASSES)
    assert [data.target_names[t] for t in data.target] == [r["dx"] for r in rows]
    assert data.images.shape == (7, 16, 16, 3)
    assert data.groups.tolist() == [r["lesion_id"] for r in rows]
    assert data.metadata["diagnosis_confirm_type"].tolist() == [r["dx_type"] for r in rows]
    no_groups = load_isic2018(gt, root, size=16, cache=False)
    assert no_groups.groups is None
    np.testing.assert_array_equal(no_groups.images, data.images)
    # a HAM10000 metadata CSV gives the groups too
    meta = _write_csv(
        tmp_path / "meta.csv",
        ["lesion_id", "image_id", "dx"],
        [[r["lesion_id"], r["image_id"], r["dx"]] for r in rows],
    )
    via_meta = load_isic2018(gt, root, size=16, lesion_groups_csv=meta, cache=False)
    assert via_meta.groups.tolist() == data.groups.tolist()
    # load_ham10000 reads an ISIC layout, and resolve_ham10000 accepts it
    assert resolve_ham10000(root) == root
    via_ham = load_ham10000(root, size=16, cache=False)
    assert via_ham.groups.tolist() == data.groups.tolist()


@pytest.mark.realdata
def test_isic2018_bad_inputs(fake_isic, tmp_path):
    root, gt, groups, rows = fake_isic
    text = gt.read_text().splitlines()
    text[1] = text[1].replace("0.0", "1.0", 1)  # two classes on one row
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(text) + "\n")
    with pytest.raises(ValueError, match="not one-hot"):
        load_isic2018(bad, root, cache=False)
    partial_groups = _write_csv(tmp_path / "g.csv", ["image", "lesion_id"], [["ISIC_x", "L"]])
    with pytest.raises(ValueError, match="not listed"):
        load_isic2018(gt, root, lesion_groups_csv=partial_groups, cache=False)


# ------------------------------------------------------------------ resolve_ham10000


def test_resolve_ham10000(tmp_path, monkeypatch):
    assert resolve_ham10000(data_home=tmp_path / "empty") is None
    with pytest.raises(ValueError, match="not a HAM10000 folder"):
        resolve_ham10000(tmp_path)
    home = tmp_path / "home"
    (home / "ham10000").mkdir(parents=True)
    (home / "ham10000" / "HAM10000_metadata.csv").write_text("lesion_id,image_id,dx\n")
    assert resolve_ham10000(data_home=home) == home / "ham10000"
    monkeypatch.setenv("FEWMED_DATA", str(home))
    assert resolve_ham10000() == home / "ham10000"
    explicit = home / "ham10000" / "HAM10000_metadata.csv"
    assert resolve_ham10000(explicit) == home / "ham10000"


@pytest.mark.realdata
def test_resolve_ham10000_shared(shared_data, ham_dir, monkeypatch):
    assert resolve_ham10000(ham_dir) == ham_dir
    monkeypatch.setenv("FEWMED_DATA", str(shared_data))
    assert resolve_ham10000() == shared_data / "ham10000"


# ------------------------------------------------------------------ MedMNIST


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
    data = load_medmnist(_make_npz(tmp_path / "mystery.npz", n_classes=3, shape=(16, 16)))
    assert list(data.target_names) == ["0", "1", "2"]
    assert data.task == "multi-class"
    assert data.train.images.shape == (12, 16, 16, 1)
    ml = load_medmnist(_make_npz(tmp_path / "chestmnist.npz", shape=(28, 28), multilabel=14))
    assert ml.task == "multi-label, binary-class"
    assert ml.train.target.shape == (12, 14)
    forced = load_medmnist(tmp_path / "mystery.npz", flag="breastmnist", split="val")
    assert forced.target_names[0] == "malignant"
    np.savez(tmp_path / "junk.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="train_images"):
        load_medmnist(tmp_path / "junk.npz")


# ------------------------------------------------------------------ image folders


def _png(path: Path, shape, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, value, dtype=np.uint8)).save(path)


def test_load_image_folder(tmp_path):
    root = tmp_path / "folder"
    _png(root / "nevus" / "b.png", (40, 30, 3), 200)
    _png(root / "nevus" / "a.png", (10, 12), 100)  # grayscale
    _png(root / "melanoma" / "deep" / "c.PNG", (28, 28, 4), 50)  # RGBA, nested
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
    _png(tmp_path / "loose.png", (8, 8, 3), 0)
    with pytest.raises(ValueError, match="no class folders"):
        load_image_folder(tmp_path)
    (tmp_path / "empty_class").mkdir()
    _png(tmp_path / "cls" / "x.png", (8, 8, 3), 0)
    with pytest.warns(UserWarning, match="empty_class"):
        data = load_image_folder(tmp_path, size=None)
    assert list(data.target_names) == ["cls"] and data.images.shape == (1, 8, 8, 3)
    with pytest.raises(FileNotFoundError):
        load_image_folder(tmp_path / "missing")


# ------------------------------------------------------------------ multi-label CSV


def test_multilabel_csv_pipe_column(tmp_path):
    rows = [
        ["x1.png", "Mass|Effusion", "7", "PA"],
        ["x2.png", "No Finding", "7", "AP"],
        ["x3.png", "Hernia", "9", "PA"],
        ["x4.png", "Effusion", "11", "PA"],
    ]
    header = ["Image Index", "Finding Labels", "Patient ID", "View Position"]
    path = _write_csv(tmp_path / "labels.csv", header, rows)
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
    _png(image_dir / "batch_1" / "a.png", (30, 30), 10)
    _png(image_dir / "b.png", (20, 20), 200)
    path = _write_csv(
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
    bad = _write_csv(tmp_path / "bad.csv", ["path", "mass"], [["a.png", "-1"]])
    with pytest.raises(ValueError, match="0/1"):
        load_multilabel_csv(bad, path_column="path", label_columns=["mass"])
    missing = _write_csv(tmp_path / "m.csv", ["path", "mass"], [["zz.png", "1"]])
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


# ------------------------------------------------------------------ synthetic


def test_synthetic_reproducible_and_described():
    state = np.random.get_state()[1].copy()  # noqa: NPY002 (checking it stays untouched)
    a = make_synthetic_lesions(n_classes=4, n_per_class=6, size=20, random_state=3)
    b = make_synthetic_lesions(n_classes=4, n_per_class=6, size=20, random_state=3)
    c = make_synthetic_lesions(n_classes=4, n_per_class=6, size=20, random_state=4)
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # noqa: NPY002
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.target, b.target)
    assert not np.array_equal(a.images, c.images)
    assert a.images.shape == (24, 20, 20, 3) and a.images.dtype == np.uint8
    assert list(a.target_names) == [f"synthetic_{k}" for k in range(4)]
    assert len(np.unique(a.groups)) == 24
    assert a.DESCR.startswith("SYNTHETIC") and "NOT real medical images" in a.DESCR
    gen = make_synthetic_lesions(n_classes=2, n_per_class=2, random_state=np.random.default_rng(1))
    assert gen.images.shape == (4, 28, 28, 3)


def test_synthetic_long_tail_and_validation():
    data = make_synthetic_lesions(n_classes=9, class_sizes=[30, 10, 5, 3, 2, 1, 1, 1, 0])
    assert np.bincount(data.target, minlength=9).tolist() == [30, 10, 5, 3, 2, 1, 1, 1, 0]
    with pytest.raises(ValueError, match="class_sizes"):
        make_synthetic_lesions(class_sizes=[3, 2])
    with pytest.raises(ValueError, match="size"):
        make_synthetic_lesions(size=2)


def test_synthetic_learnable_not_trivial():
    from sklearn.linear_model import RidgeClassifier
    from sklearn.model_selection import cross_val_score

    data = make_synthetic_lesions(n_per_class=40, random_state=0)
    pooled = data.images.reshape(-1, 7, 4, 7, 4, 3).mean(axis=(2, 4)) / 255.0  # 7x7 colour
    X = pooled.reshape(len(pooled), -1)
    score = cross_val_score(RidgeClassifier(alpha=1.0), X, data.target, cv=3).mean()
    assert 0.45 < score < 0.99  # chance is 1/7: learnable, but a linear model is not perfect


# ------------------------------------------------------------------ downloads


def test_download_md5_and_progress(http_root, tmp_path, capsys):
    root, base = http_root
    payload = np.random.default_rng(0).bytes(300_000)
    (root / "blob.bin").write_bytes(payload)
    dest = tmp_path / "out" / "blob.bin"
    md5 = hashlib.md5(payload).hexdigest()
    assert _fetch.download(f"{base}/blob.bin", dest, md5=md5, progress=True) == dest
    assert dest.read_bytes() == payload
    assert "blob.bin" in capsys.readouterr().err  # the tqdm bar
    assert list(dest.parent.iterdir()) == [dest]  # no temporary file left


def test_download_bad_md5_removes_file(http_root, tmp_path):
    root, base = http_root
    (root / "blob.bin").write_bytes(b"abc" * 1000)
    dest = tmp_path / "out" / "blob.bin"
    with pytest.raises(ChecksumError, match="MD5"):
        _fetch.download(f"{base}/blob.bin", dest, md5="0" * 32, progress=False)
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_download_offline_fails_at_once_with_instructions(tmp_path):
    dest = tmp_path / "x" / "retinamnist.npz"
    url = "http://127.0.0.1:9/retinamnist.npz"
    start = time.perf_counter()
    with pytest.raises(DatasetNotAvailableError) as err:
        _fetch.download(url, dest, progress=False, timeout=5)
    assert time.perf_counter() - start < 5
    assert isinstance(err.value, OSError)
    assert url in str(err.value) and str(dest) in str(err.value)
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_download_http_error(http_root, tmp_path):
    _, base = http_root
    with pytest.raises(DatasetNotAvailableError, match="Not Found|404"):
        _fetch.download(f"{base}/missing.npz", tmp_path / "m.npz", progress=False)


def test_fetch_medmnist_from_local_server(http_root, tmp_path, monkeypatch):
    root, base = http_root
    served = _make_npz(root / "retinamnist.npz")
    _make_npz(root / "retinamnist_64.npz", shape=(64, 64, 3))
    monkeypatch.setattr(_fetch, "MEDMNIST_BASE_URL", base)
    monkeypatch.setitem(MEDMNIST_INFO["retinamnist"]["md5"], 28, _md5(served))
    monkeypatch.setitem(MEDMNIST_INFO["retinamnist"]["md5"], 64, None)
    home = tmp_path / "home"
    data = fetch_medmnist("retinamnist", data_home=home, verbose=0)
    assert (home / "medmnist" / "retinamnist.npz").is_file()
    assert data.train.images.shape == (12, 28, 28, 3) and data.task == "ordinal-regression"
    big = fetch_medmnist("RetinaMNIST", size=64, data_home=home, split="val", verbose=0)
    assert big.images.shape == (4, 64, 64, 3)
    # now on disk: no network needed
    monkeypatch.setattr(_fetch, "MEDMNIST_BASE_URL", "http://127.0.0.1:9")
    again = fetch_medmnist("retinamnist", data_home=home, download_if_missing=False)
    np.testing.assert_array_equal(again.train.images, data.train.images)
    assert any(r["name"] == "retinamnist" and r["cached"] for r in list_datasets(home))


def test_fetch_medmnist_bad_md5(http_root, tmp_path, monkeypatch):
    root, base = http_root
    _make_npz(root / "breastmnist.npz", shape=(28, 28))  # not the official file
    monkeypatch.setattr(_fetch, "MEDMNIST_BASE_URL", base)
    with pytest.raises(ChecksumError):
        fetch_medmnist("breastmnist", data_home=tmp_path, verbose=0)
    assert not (tmp_path / "medmnist" / "breastmnist.npz").exists()


def test_fetch_medmnist_offline_and_disabled(tmp_path, monkeypatch):
    monkeypatch.setattr(_fetch, "MEDMNIST_BASE_URL", "http://127.0.0.1:9/files")
    dest = tmp_path / "medmnist" / "dermamnist.npz"
    with pytest.raises(DatasetNotAvailableError) as err:
        fetch_medmnist("dermamnist", data_home=tmp_path, verbose=0)
    msg = str(err.value)
    assert "http://127.0.0.1:9/files/dermamnist.npz" in msg and str(dest) in msg
    assert "FEWMED_DATA" in msg

    def no_network(*args, **kwargs):
        raise AssertionError("the network must not be used")

    monkeypatch.setattr(_fetch.urllib.request, "urlopen", no_network)
    with pytest.raises(DatasetNotAvailableError, match="download_if_missing=False") as err:
        fetch_medmnist("dermamnist", data_home=tmp_path, download_if_missing=False)
    assert str(dest) in str(err.value)
    with pytest.raises(ValueError, match="unknown MedMNIST flag"):
        fetch_medmnist("cifar10", data_home=tmp_path)
    with pytest.raises(ValueError, match="size"):
        fetch_medmnist("dermamnist", size=32, data_home=tmp_path)


@pytest.mark.realdata
def test_fetch_ham10000_from_local_server(ham_dir, http_root, tmp_path, monkeypatch):
    root, base = http_root
    rows = _one_per_class(ham_dir)
    with zipfile.ZipFile(root / "ISIC2018_Task3_Training_Input.zip", "w") as zf:
        for r in rows:
            zf.write(
                _image_path(ham_dir, r["image_id"]),
                f"ISIC2018_Task3_Training_Input/{r['image_id']}.jpg",
            )
    upper = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    lines = ["image," + ",".join(upper)]
    lines += [
        r["image_id"] + "," + ",".join("1.0" if c == r["dx"].upper() else "0.0" for c in upper)
        for r in rows
    ]
    with zipfile.ZipFile(root / "ISIC2018_Task3_Training_GroundTruth.zip", "w") as zf:
        zf.writestr(
            "ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv",
            "\n".join(lines) + "\n",
        )
    groupings = ["image,lesion_id,diagnosis_confirm_type"]
    groupings += [f"{r['image_id']},{r['lesion_id']},{r['dx_type']}" for r in rows]
    (root / "ISIC2018_Task3_Training_LesionGroupings.csv").write_text("\n".join(groupings) + "\n")
    monkeypatch.setattr(_fetch, "ISIC2018_BASE_URL", base)
    home = tmp_path / "home"
    data = fetch_ham10000(data_home=home, size=12, verbose=0)
    assert data.images.shape == (7, 12, 12, 3)
    assert [data.target_names[t] for t in data.target] == [r["dx"] for r in rows]
    assert data.groups.tolist() == [r["lesion_id"] for r in rows]
    assert not list((home / "isic2018").glob("*.zip"))  # zips removed after extraction
    assert resolve_ham10000(data_home=home) == home / "isic2018"
    # an interrupted download (images missing) is resumed, not mistaken for a complete set
    shutil.rmtree(home / "isic2018" / "ISIC2018_Task3_Training_Input")
    assert resolve_ham10000(data_home=home) is None
    resumed = fetch_ham10000(data_home=home, size=12, verbose=0)
    np.testing.assert_array_equal(resumed.images, data.images)
    monkeypatch.setattr(_fetch, "ISIC2018_BASE_URL", "http://127.0.0.1:9")
    again = fetch_ham10000(data_home=home, size=12, download_if_missing=False)
    np.testing.assert_array_equal(again.images, data.images)


@pytest.mark.realdata
def test_fetch_ham10000_uses_local_copy(fake_ham, tmp_path, monkeypatch):
    root, rows = fake_ham
    home = tmp_path / "home"
    shutil.copytree(root, home / "ham10000")
    monkeypatch.setattr(_fetch, "ISIC2018_BASE_URL", "http://127.0.0.1:9")
    data = fetch_ham10000(data_home=home, size=10, download_if_missing=False)
    assert data.images.shape == (7, 10, 10, 3)
    assert data.groups.tolist() == [r["lesion_id"] for r in rows]
    assert next(r for r in list_datasets(home) if r["name"] == "ham10000")["cached"]


def test_fetch_ham10000_offline_message(tmp_path, monkeypatch):
    monkeypatch.setattr(_fetch, "ISIC2018_BASE_URL", "http://127.0.0.1:9/2018")
    with pytest.raises(DatasetNotAvailableError) as err:
        fetch_ham10000(data_home=tmp_path, verbose=0)
    msg = str(err.value)
    assert "http://127.0.0.1:9/2018/ISIC2018_Task3_Training_Input.zip" in msg
    assert str(tmp_path / "isic2018") in msg and "HAM10000_metadata.csv" in msg
    with pytest.raises(DatasetNotAvailableError, match="download_if_missing=False"):
        fetch_ham10000(data_home=tmp_path, download_if_missing=False)


# ------------------------------------------------------------------ list_datasets


def test_list_datasets(tmp_path):
    rows = list_datasets(tmp_path)
    names = [r["name"] for r in rows]
    assert names[:2] == ["ham10000", "isic2018"] and names[-1] == "chestxray14"
    assert set(MEDMNIST_FLAGS) <= set(names)
    for r in rows:
        assert set(r) == {"name", "kind", "licence", "url", "cached", "path"}
        assert r["cached"] is False
    assert not any(tmp_path.iterdir())  # nothing created
    (tmp_path / "medmnist").mkdir()
    (tmp_path / "medmnist" / "octmnist.npz").write_bytes(b"")
    oct_row = next(r for r in list_datasets(tmp_path) if r["name"] == "octmnist")
    assert oct_row["cached"] and oct_row["path"] == str(tmp_path / "medmnist" / "octmnist.npz")
    assert oct_row["licence"] == "CC BY 4.0" and oct_row["kind"] == "multi-class"
