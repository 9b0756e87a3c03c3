"""Tests of fewmed.datasets._base: the data home folder (get_data_home)."""

from __future__ import annotations

import pytest

from fewmed.datasets import get_data_home

pytestmark = pytest.mark.usefixtures("isolated_data_home")


def test_get_data_home_precedence(tmp_path, monkeypatch):
    assert get_data_home(tmp_path / "a") == tmp_path / "a"
    assert (tmp_path / "a").is_dir()
    monkeypatch.setenv("FEWMED_DATA", str(tmp_path / "env"))
    assert get_data_home() == tmp_path / "env"
    monkeypatch.delenv("FEWMED_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert get_data_home() == tmp_path / "home" / "fewmed_data"
    assert get_data_home().is_dir()
