"""The data cache never corrupts: an interrupted download leaves nothing at the final
path, a corrupt cached file is detected (MD5) and reported with what to do, and two
processes filling one cache at once both succeed, leaving one valid file. Served by
a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from _helpers import make_npz

from fewmed.datasets import MEDMNIST_INFO, ChecksumError, DatasetNotAvailableError, _fetch

REPO = Path(__file__).resolve().parents[1]
FLAG = "breastmnist"


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.payload`` slowly; with ``server.cut`` it announces the full length,
    sends part of it and closes the connection (a dropped download)."""

    def do_GET(self):  # noqa: N802 - http.server's name
        payload: bytes = self.server.payload
        self.server.hits += 1
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        end = len(payload) // 3 if self.server.cut else len(payload)
        step = max(1, len(payload) // 20)
        for i in range(0, end, step):
            self.wfile.write(payload[i : min(i + step, end)])
            self.wfile.flush()
            time.sleep(self.server.delay)
        if self.server.cut:
            self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    npz = make_npz(tmp_path / "src.npz", n=(40, 10, 10))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.payload, srv.cut, srv.delay, srv.hits = npz.read_bytes(), False, 0.0, 0
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield srv, f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def medmnist_here(server, monkeypatch, tmp_path):
    """fetch_medmnist(FLAG) served by the local server, into tmp_path/home."""
    srv, base = server
    monkeypatch.setattr(_fetch, "MEDMNIST_BASE_URL", base)
    md5 = hashlib.md5(srv.payload).hexdigest()
    monkeypatch.setitem(MEDMNIST_INFO[FLAG]["md5"], 28, md5)
    _fetch._VERIFIED.clear()
    home = tmp_path / "home"
    return srv, base, md5, home, home / "medmnist" / f"{FLAG}.npz"


def test_dropped_download_leaves_nothing_at_the_final_path(medmnist_here):
    srv, _, _, home, dest = medmnist_here
    srv.cut = True
    with pytest.raises(DatasetNotAvailableError, match="could not download"):
        _fetch.fetch_medmnist(FLAG, data_home=home, verbose=0)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # no temporary file either
    srv.cut = False  # the next call downloads it whole
    assert _fetch.fetch_medmnist(FLAG, data_home=home, verbose=0).train.images.shape[0] == 40


def test_interrupted_download_leaves_nothing_at_the_final_path(medmnist_here, monkeypatch):
    srv, _, _, home, dest = medmnist_here
    from tqdm.auto import tqdm

    calls = []

    def interrupt(self, n=1):
        calls.append(n)
        if len(calls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(tqdm, "update", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _fetch.fetch_medmnist(FLAG, data_home=home, verbose=0)
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_corrupt_cached_file_is_detected_and_reported(medmnist_here):
    _, base, md5, home, dest = medmnist_here
    _fetch.fetch_medmnist(FLAG, data_home=home, verbose=0)
    assert hashlib.md5(dest.read_bytes()).hexdigest() == md5
    data = dest.read_bytes()
    dest.write_bytes(data[: len(data) // 2])  # truncated by a crash of another program
    with pytest.raises(ChecksumError) as info:
        _fetch.fetch_medmnist(FLAG, data_home=home, verbose=0)
    message = str(info.value)
    assert str(dest) in message and md5 in message
    assert f"Delete it and call fetch_medmnist('{FLAG}', size=28) again" in message
    assert base in message
    dest.unlink()  # what the message says to do
    assert _fetch.fetch_medmnist(FLAG, data_home=home, verbose=0).train.images.shape[0] == 40


def test_a_good_cached_file_is_hashed_once_per_process(medmnist_here, monkeypatch):
    _, _, _, home, _ = medmnist_here
    _fetch.fetch_medmnist(FLAG, data_home=home, verbose=0)
    hashed = []
    real = _fetch._md5
    monkeypatch.setattr(_fetch, "_md5", lambda p: hashed.append(p) or real(p))
    _fetch._VERIFIED.clear()
    for _ in range(3):
        _fetch.fetch_medmnist(FLAG, data_home=home, verbose=0)
    assert len(hashed) == 1


_CHILD = """
import sys
from fewmed.datasets import MEDMNIST_INFO, _fetch
_fetch.MEDMNIST_BASE_URL = sys.argv[1]
MEDMNIST_INFO[{flag!r}]["md5"][28] = sys.argv[2]
data = _fetch.fetch_medmnist({flag!r}, data_home=sys.argv[3], verbose=0)
print(data.train.images.shape[0])
"""


def test_two_processes_filling_one_cache_at_once_both_succeed(medmnist_here):
    srv, base, md5, home, dest = medmnist_here
    srv.delay = 0.02  # ~0.4 s per download: the two overlap
    env = {**os.environ, "PYTHONPATH": str(REPO), "FEWMED_DATA": str(home)}
    cmd = [sys.executable, "-c", _CHILD.format(flag=FLAG), base, md5, str(home)]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert out.strip() == "40"
    assert srv.hits == 2  # both really downloaded, at the same time
    assert sorted(f.name for f in dest.parent.iterdir()) == [dest.name]  # one file
    assert hashlib.md5(dest.read_bytes()).hexdigest() == md5
    np.testing.assert_array_equal(
        _fetch.fetch_medmnist(FLAG, data_home=home, verbose=0).train.images.shape, (40, 28, 28, 3)
    )
