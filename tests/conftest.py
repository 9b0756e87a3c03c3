"""Shared fixtures: the real data in ../shared/data (or $FEWMED_SHARED_DATA)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FEWMED_SHARED_DATA", REPO.parent / "shared" / "data"))
HAM_DIR = SHARED_DATA / "ham10000"

THREADS = max(1, min(2, os.cpu_count() or 1))
torch.set_num_threads(THREADS)


@pytest.fixture(autouse=True)
def _torch_global_state():
    """Every test starts with the suite's torch threads and default dtype, and a
    test that changes them (or fails half-way through code that does) cannot leak
    them into the next one: the pinned-seed regression predictions depend on both."""
    torch.set_num_threads(THREADS)
    torch.set_default_dtype(torch.float32)
    yield
    leaked = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_num_threads(THREADS)
    torch.set_default_dtype(torch.float32)
    assert leaked == (THREADS, torch.float32), f"the test left torch at {leaked}"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(
            f"real data not found at {path}: set FEWMED_SHARED_DATA to the folder holding "
            "ham10000/, retinamnist.npz, ... (see ../shared/data/README.md)"
        )
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _need(SHARED_DATA)


@pytest.fixture(scope="session")
def ham_dir() -> Path:
    return _need(HAM_DIR / "HAM10000_metadata.csv").parent


@pytest.fixture(scope="session")
def ham28(ham_dir, tmp_path_factory):
    """HAM10000 at 28 px, decoded once per session into a temporary cache."""
    from fewmed.datasets import load_ham10000

    cache = tmp_path_factory.mktemp("fewmed_cache")
    return load_ham10000(ham_dir, size=28, cache_dir=cache)


@pytest.fixture(scope="session")
def retina_npz() -> Path:
    return _need(SHARED_DATA / "retinamnist.npz")


@pytest.fixture(scope="module")
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def colour_classes(
    sizes: dict,
    *,
    size: int = 16,
    spread: float = 0.05,
    step: float = 0.25,
    start: float = 0.25,
    seed: int = 0,
):
    """Images whose classes differ by brightness: class ``k`` has mean ``start + step * k``.

    ``sizes`` maps each (string) label to its number of images; uint8 ``(n, size, size, 3)``.
    """
    rng = np.random.default_rng(seed)
    X, y = [], []
    for k, (name, count) in enumerate(sizes.items()):
        img = rng.normal(start + step * k, spread, size=(count, size, size, 3))
        X.append(np.clip(img * 255, 0, 255).astype(np.uint8))
        y += [name] * count
    return np.concatenate(X), np.array(y)


@pytest.fixture(scope="module")
def toy():
    """Three colour classes, imbalanced (40 / 16 / 8), 16 px, string labels."""
    return colour_classes({"nv": 40, "mel": 16, "df": 8})


@pytest.fixture(scope="module")
def toy_long_tail():
    """Four colour classes, long-tailed (120 / 40 / 30 / 12), 16 px, string labels."""
    return colour_classes(
        {"nv": 120, "mel": 40, "bkl": 30, "df": 12}, spread=0.08, step=0.2, start=0.2
    )


@pytest.fixture(scope="module")
def lesions():
    """Six synthetic lesion classes x 20 images, 16 px, sorted by class (rows 20c .. 20c+19)."""
    from fewmed.datasets import make_synthetic_lesions

    d = make_synthetic_lesions(n_classes=6, n_per_class=20, size=16, random_state=0)
    order = np.argsort(d.target, kind="stable")
    return d.images[order], d.target[order]


# ------------------------------------------------------------------ data set tests


@pytest.fixture
def isolated_data_home(tmp_path, monkeypatch):
    """Never let a test read or write the user's real data home (``$FEWMED_DATA``)."""
    monkeypatch.setenv("FEWMED_DATA", str(tmp_path / "fewmed_home"))


@pytest.fixture
def fake_ham(ham_dir, tmp_path) -> tuple[Path, list[dict[str, str]]]:
    """A tiny official-layout HAM10000 folder with 7 real images over two part folders."""
    import shutil

    from _helpers import image_path, one_per_class, write_csv

    rows = one_per_class(ham_dir)
    root = tmp_path / "ham_small"
    for i, row in enumerate(rows):
        part = root / f"HAM10000_images_part_{1 + i % 2}"
        part.mkdir(parents=True, exist_ok=True)
        shutil.copy(image_path(ham_dir, row["image_id"]), part)
    header = list(rows[0])
    write_csv(root / "HAM10000_metadata.csv", header, [[r[h] for h in header] for r in rows])
    return root, rows
