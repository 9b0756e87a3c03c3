"""The documentation site: every public name has an API page, every example ran.

The API part always runs (the reference is generated from each module's
``__all__``: every public module must be listed in ``docs/conf.py``). The built
site is checked when it exists: ``.ci/run`` builds it into ``docs/_build/html``
before the tests (locally: ``python -m sphinx -W -b html docs docs/_build/html``).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import pkgutil
import re
from pathlib import Path

import pytest
from sklearn.base import BaseEstimator

import fewmed

ROOT = Path(__file__).resolve().parents[1]
HTML = Path(os.environ.get("FEWMED_DOCS_HTML") or ROOT / "docs" / "_build" / "html")
EXAMPLES = sorted((ROOT / "examples").glob("*/plot_*.py"))


def _api_modules() -> dict[str, str]:
    """``API_MODULES`` of docs/conf.py, read without running the configuration."""
    tree = ast.parse((ROOT / "docs" / "conf.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(getattr(t, "id", None) == "API_MODULES" for t in targets):
                return ast.literal_eval(node.value)
    raise AssertionError("docs/conf.py defines no API_MODULES")


def _public_modules() -> list[str]:
    """fewmed's public modules: no ``_`` in the name, not the command line or benchmarks."""
    names = []
    for info in pkgutil.iter_modules(fewmed.__path__, "fewmed."):
        leaf = info.name.rsplit(".", 1)[1]
        if not leaf.startswith("_") and leaf not in ("cli", "benchmarks"):
            names.append(info.name)
    return sorted(names)


def _public_estimators() -> dict[str, str]:
    """Every public estimator class, as ``{name: module where the API documents it}``."""
    found = {}
    for module_name in _api_modules():
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) and issubclass(obj, BaseEstimator):
                found.setdefault(name, module_name)
    return found


def test_every_public_module_is_in_the_api_reference():
    assert sorted(_api_modules()) == _public_modules()


def test_every_top_level_estimator_is_documented():
    estimators = _public_estimators()
    for name in fewmed.__all__:
        if name != "__version__":
            assert name in estimators, f"{name} is exported by fewmed but has no API page"
    assert len(estimators) >= 8


def _built() -> Path:
    if not (HTML / "index.html").is_file():
        pytest.skip(
            "the site is not built: python -m sphinx -W -b html docs docs/_build/html "
            "(.ci/run builds it)"
        )
    return HTML


def test_built_site_has_an_api_page_per_public_name():
    html = _built()
    missing = []
    for module_name in _api_modules():
        module = importlib.import_module(module_name)
        for name in module.__all__:
            page = html / "api" / "generated" / f"{module_name}.{name}.html"
            if not page.is_file():
                missing.append(f"{module_name}.{name}")
    assert not missing, f"no API page for {missing}"
    for name, module_name in _public_estimators().items():
        text = (html / "api" / "generated" / f"{module_name}.{name}.html").read_text()
        assert "Parameters" in text and f"{module_name}.{name}" in text, name


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_ran_and_produced_its_output(script):
    html = _built()
    page = html / "auto_examples" / script.parent.name / f"{script.stem}.html"
    assert page.is_file(), f"{script} has no gallery page"
    text = page.read_text()
    assert "sphx-glr-script-out" in text, f"{script} printed nothing"
    images = sorted((html / "_images").glob(f"sphx_glr_{script.stem}_*.png"))
    assert [p for p in images if "thumb" not in p.name], f"{script} drew no figure"
    # every page says which data it ran on
    assert re.search(r"(data|source|HAM10000|RetinaMNIST)[^<]*:", text)


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_use_the_public_api_only(script):
    tree = ast.parse(script.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fewmed"):
            parts = node.module.split(".") + [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            parts = [
                p for a in node.names if a.name.startswith("fewmed") for p in a.name.split(".")
            ]
        else:
            continue
        private = [p for p in parts if p.startswith("_")]
        assert not private, f"{script.name} imports private {private}"
