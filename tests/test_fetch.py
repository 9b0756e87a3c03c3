"""Tests of fewmed.datasets._fetch: downloads, fetch_medmnist, fetch_ham10000, list_datasets."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import threading
import time
import urllib.request
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from _helpers import image_path, make_npz, one_per_class

from fewmed.datasets import (
    MEDMNIST_FLAGS,
    MEDMNIST_INFO,
    ChecksumError,
    DatasetNotAvailableError,
    _fetch,
    fetch_ham10000,
    fetch_medmnist,
    list_datasets,
    resolve_ham10000,
)

pytestmark = pytest.mark.usefixtures("isolated_data_home")


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


# ------------------------------------------------------------------ fetch_medmnist


def test_fetch_medmnist_from_local_server(http_root, tmp_path, monkeypatch):
    root, base = http_root
    served = make_npz(root / "retinamnist.npz")
    make_npz(root / "retinamnist_64.npz", shape=(64, 64, 3))
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
    make_npz(root / "breastmnist.npz", shape=(28, 28))  # not the official file
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

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(DatasetNotAvailableError, match="download_if_missing=False") as err:
        fetch_medmnist("dermamnist", data_home=tmp_path, download_if_missing=False)
    assert str(dest) in str(err.value)
    with pytest.raises(ValueError, match="unknown MedMNIST flag"):
        fetch_medmnist("cifar10", data_home=tmp_path)
    with pytest.raises(ValueError, match="size"):
        fetch_medmnist("dermamnist", size=32, data_home=tmp_path)


# ------------------------------------------------------------------ fetch_ham10000


@pytest.mark.realdata
def test_fetch_ham10000_from_local_server(ham_dir, http_root, tmp_path, monkeypatch):
    root, base = http_root
    rows = one_per_class(ham_dir)
    with zipfile.ZipFile(root / "ISIC2018_Task3_Training_Input.zip", "w") as zf:
        for r in rows:
            zf.write(
                image_path(ham_dir, r["image_id"]),
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
