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

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


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
