"""Data resolution of benchmarks and examples: --data, FEWMED_DATA, the cache, a download
(from a local HTTP server on 127.0.0.1 only), synthetic lesions said loudly."""

from __future__ import annotations

import hashlib
import http.server
import threading
import warnings
from functools import partial

import numpy as np
import pytest
from _helpers import make_npz

from fewmed.datasets import (
    MEDMNIST_INFO,
    _fetch,
    data_homes,
    load_ham10000_or_synthetic,
    load_medmnist_or_synthetic,
)

OFFLINE = "http://127.0.0.1:9/files"  # nothing listens on port 9: refused at once


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving a temporary folder: (folder, base URL)."""
    root = tmp_path / "served"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(_QuietHandler, directory=str(root))
    )
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def homes(tmp_path, monkeypatch):
    """An empty FEWMED_DATA folder and an empty user home (the cache ~/fewmed_data)."""
    env, user = tmp_path / "env_home", tmp_path / "user"
    env.mkdir()
    user.mkdir()
    monkeypatch.setenv("FEWMED_DATA", str(env))
    monkeypatch.setenv("HOME", str(user))
    monkeypatch.delenv("FEWMED_OFFLINE", raising=False)
    monkeypatch.setattr(_fetch, "MEDMNIST_BASE_URL", OFFLINE)
    return env, user / "fewmed_data"


def test_nothing_found_offline_gives_synthetic_lesions_with_a_loud_warning(homes):
    with pytest.warns(UserWarning, match="^SYNTHETIC DATA: HAM10000") as record:
        bunch, synthetic = load_ham10000_or_synthetic(size=12)
    assert synthetic and bunch.source.startswith("SYNTHETIC")
    assert bunch.images.shape[1:] == (12, 12, 3) and bunch.target_names[0] == "akiec"
    # the warning says how to get the real data and why the download failed
    text = str(record[-1].message)
    assert "--data PATH or set FEWMED_DATA" in text and "127.0.0.1:9" in text


def test_fewmed_offline_skips_the_download(homes, monkeypatch):
    monkeypatch.setenv("FEWMED_OFFLINE", "1")
    monkeypatch.setattr(_fetch, "download", pytest.fail)  # never called
    with pytest.warns(UserWarning, match="downloads are off"):
        _, synthetic = load_ham10000_or_synthetic(size=12)
    assert synthetic


def test_dermamnist_downloaded_then_read_from_the_cache(homes, server, monkeypatch):
    env, _ = homes
    root, base = server
    served = make_npz(root / "dermamnist.npz", n=(14, 7, 7), n_classes=7)
    monkeypatch.setattr(_fetch, "MEDMNIST_BASE_URL", base)
    md5 = hashlib.md5(served.read_bytes()).hexdigest()
    monkeypatch.setitem(MEDMNIST_INFO["dermamnist"]["md5"], 28, md5)
    with pytest.warns(UserWarning, match="DermaMNIST .* WITHOUT lesion ids"):
        bunch, synthetic = load_ham10000_or_synthetic(size=28, verbose=0)
    assert not synthetic and "DermaMNIST" in bunch.source
    assert (env / "medmnist" / "dermamnist.npz").is_file()  # downloaded into FEWMED_DATA
    assert bunch.images.shape == (28, 28, 28, 3) and bunch.groups is None
    # the three splits, labels 0-6 named with HAM10000's codes in DermaMNIST's order
    np.testing.assert_array_equal(bunch.target[:14], np.arange(14) % 7)
    assert bunch.target_names.tolist() == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    # offline now: the cached file is used, resized on request
    monkeypatch.setattr(_fetch, "MEDMNIST_BASE_URL", OFFLINE)
    with pytest.warns(UserWarning, match="DermaMNIST"):
        small, synthetic = load_ham10000_or_synthetic(size=16, verbose=0)
    assert not synthetic and small.images.shape == (28, 16, 16, 3)


def test_ham10000_found_in_fewmed_data_before_anything_else(homes, fake_ham, monkeypatch):
    env, _ = homes
    monkeypatch.setenv("FEWMED_DATA", str(fake_ham[0]))
    monkeypatch.setattr(_fetch, "download", pytest.fail)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bunch, synthetic = load_ham10000_or_synthetic(size=8, verbose=0)
    assert not synthetic and bunch.source == f"HAM10000 at {fake_ham[0]}"
    assert len(bunch.target) == 7 and bunch.groups is not None


def test_explicit_data_must_be_the_data_set(homes, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_ham10000_or_synthetic(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="is not a HAM10000 folder"):
        load_ham10000_or_synthetic(tmp_path)
    with pytest.raises(FileNotFoundError, match="holds no retinamnist.npz"):
        load_medmnist_or_synthetic("retinamnist", tmp_path)


def test_missing_fewmed_data_falls_back_to_the_cache(homes, monkeypatch, tmp_path):
    _, cache = homes
    monkeypatch.setenv("FEWMED_DATA", str(tmp_path / "not_there"))
    make_npz(
        (cache / "medmnist").mkdir(parents=True) or cache / "medmnist" / "breastmnist.npz",
        shape=(28, 28),
        n_classes=2,
    )
    with pytest.warns(UserWarning, match="is not a folder; ignoring it"):
        assert data_homes() == [cache]
    with pytest.warns(UserWarning, match="is not a folder"):
        breast, synthetic = load_medmnist_or_synthetic("breastmnist")
    assert not synthetic and str(cache) in breast.source
    assert breast.train.images.shape == (12, 28, 28, 1)
    assert not (tmp_path / "not_there").exists()  # never created


def test_medmnist_imbalanced_file_and_synthetic_stand_in(homes):
    env, _ = homes
    make_npz(env / "pneumoniamnist_imbalanced.npz", shape=(28, 28), n_classes=2)
    pneu, synthetic = load_medmnist_or_synthetic("pneumoniamnist", verbose=0)
    assert not synthetic and "pneumoniamnist_imbalanced.npz" in pneu.source
    with pytest.warns(UserWarning, match="SYNTHETIC DATA: retinamnist"):
        retina, synthetic = load_medmnist_or_synthetic("retinamnist", n_per_split=(4, 2, 3))
    assert synthetic and retina.task == "ordinal-regression"
    assert [len(retina[s].target) for s in ("train", "val", "test")] == [20, 10, 15]
    breast, _ = load_medmnist_or_synthetic("breastmnist", synthetic=True)
    assert breast.train.images.shape[-1] == 1  # the set's channels
