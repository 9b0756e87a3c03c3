"""Tests of fewmed.datasets._ham10000: HAM10000 and ISIC 2018 loaders, caches, resolve_ham10000."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from _helpers import image_path, one_per_class, write_csv

from fewmed.datasets import HAM10000_CLASSES, load_ham10000, load_isic2018, resolve_ham10000

pytestmark = pytest.mark.usefixtures("isolated_data_home")


HAM_COUNTS = {
    "akiec": 327,
    "bcc": 514,
    "bkl": 1099,
    "df": 115,
    "mel": 1113,
    "nv": 6705,
    "vasc": 142,
}


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
    write_csv(meta, header, [[r[h] for h in header] for r in rows[:3]])
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
    rows = one_per_class(ham_dir)[::-1]
    root = tmp_path / "isic"
    images = root / "ISIC2018_Task3_Training_Input"
    images.mkdir(parents=True)
    for r in rows:
        shutil.copy(image_path(ham_dir, r["image_id"]), images)
    upper = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    gt_rows = [
        [r["image_id"], *[f"{float(c == r['dx'].upper()):.1f}" for c in upper]] for r in rows
    ]
    gt_dir = root / "ISIC2018_Task3_Training_GroundTruth"
    gt_dir.mkdir()
    gt = write_csv(gt_dir / "ISIC2018_Task3_Training_GroundTruth.csv", ["image", *upper], gt_rows)
    groups = write_csv(
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
    meta = write_csv(
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
    partial_groups = write_csv(tmp_path / "g.csv", ["image", "lesion_id"], [["ISIC_x", "L"]])
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
