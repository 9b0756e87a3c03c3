"""Sphinx configuration of the fewmed documentation site.

Build it from the repository root (``pip install -e ".[docs]"`` first)::

    python -m sphinx -W -b html docs docs/_build/html

The gallery (``examples/<topic>/plot_*.py``) is executed during the build;
``-D plot_gallery=0`` builds the site without running it, and
``FEWMED_GALLERY_PATTERN=plot_data`` runs only the matching examples. The API reference
(``docs/api/``) is generated at each build from the ``__all__`` of every
public module, so that every public name has a page.

Examples read real data where it is found (``FEWMED_DATA``, else the project's
``../shared/data``, else the cache ``~/fewmed_data``) and run on synthetic
lesions otherwise, which each gallery page prints.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # document this checkout, not an installed copy

import fewmed  # noqa: E402

project = "fewmed"
author = "fewmed developers"
copyright = "fewmed developers, BSD-3-Clause"  # noqa: A001
version = release = fewmed.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints", "auto_examples/*.md5"]
templates_path = ["_templates"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]

# -- API reference ------------------------------------------------------------

autosummary_generate = True
autodoc_default_options = {"inherited-members": False}
autodoc_typehints = "none"  # numpydoc's Parameters sections carry the types
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_validation_checks: set[str] = set()

#: The public modules and their headings; each module's ``__all__`` is its API.
API_MODULES = {
    "fewmed.fewshot": "Few-shot: meta-learners and baselines",
    "fewmed.longtail": "Long-tailed and imbalanced classification",
    "fewmed.nn": "Networks: backbones, the backbone protocol, augmentation",
    "fewmed.datasets": "Datasets: loaders, downloads, synthetic images",
    "fewmed.model_selection": "Model selection: episodes, class-disjoint and grouped splits",
    "fewmed.metrics": "Metrics and scorers",
    "fewmed.losses": "Losses",
    "fewmed.distributed": "Distributed meta-training (torch.distributed)",
    "fewmed.accelerate": "Data-parallel skorch estimators (Accelerate)",
}


def public_names(module_name: str) -> list[str]:
    """The public names of ``module_name``: its ``__all__``, without dunders."""
    module = importlib.import_module(module_name)
    return [n for n in module.__all__ if not n.startswith("__")]


def write_api_pages(app=None) -> None:
    """Write ``docs/api/index.rst``: one autosummary table per public module."""
    lines = [
        ".. _api:",
        "",
        "API reference",
        "=============",
        "",
        "Every public name of fewmed, by module. The estimators are also importable from",
        "the top level (``from fewmed import DAMLClassifier``). Modules whose name starts",
        "with ``_`` are private.",
        "",
    ]
    for name, title in API_MODULES.items():
        lines += [
            f".. _api-{name}:",
            "",
            f"``{name}``: {title}",
            "-" * (len(name) + len(title) + 6),
            "",
            f".. automodule:: {name}",
            "   :no-members:",
            "   :no-index:",
            "",
            f".. currentmodule:: {name}",
            "",
            ".. autosummary::",
            "   :toctree: generated/",
            "   :nosignatures:",
            "",
            *[f"   {n}" for n in sorted(public_names(name), key=str.lower)],
            "",
        ]
    out = DOCS / "api"
    out.mkdir(exist_ok=True)
    text = "\n".join(lines) + "\n"
    index = out / "index.rst"
    if not index.is_file() or index.read_text() != text:
        index.write_text(text)


write_api_pages()


def write_benchmark_plots() -> None:
    """Write ``docs/benchmark_plots.md``: every PNG under ``docs/images/benchmarks/``.

    Whoever records a benchmark run in ``docs/benchmarks.md`` copies its PNG
    (``fewmed_results/NAME/NAME.png``) there; the page shows them all.
    """
    folder = DOCS / "images" / "benchmarks"
    plots = sorted(folder.glob("*.png")) if folder.is_dir() else []
    lines = [
        "# Benchmark plots",
        "",
        "The figures written by `fewmed benchmark NAME` (beside its JSON) for the runs",
        "recorded in [Benchmarks](benchmarks.md), with their commands and numbers there.",
        "",
    ]
    for png in plots:
        rel = png.relative_to(DOCS).as_posix()
        lines += [f"## `{png.stem}`", "", f"```{{image}} {rel}", f":alt: {png.stem}", "```", ""]
    if not plots:
        lines += [
            "No plot is recorded yet: run a benchmark and copy its PNG",
            "(`fewmed_results/NAME/NAME.png`) to `docs/images/benchmarks/`.",
            "",
        ]
    page = DOCS / "benchmark_plots.md"
    text = "\n".join(lines)
    if not page.is_file() or page.read_text() != text:
        page.write_text(text)


write_benchmark_plots()

_SKIPPED = ("get_metadata_routing",)


def _skip_member(app, what, name, obj, skip, options):
    """Leave out scikit-learn's metadata-routing helpers (their docstrings are sklearn's)."""
    if name in _SKIPPED or (name.startswith("set_") and name.endswith("_request")):
        return True
    return None


def _clean_signature(app, what, name, obj, options, signature, return_annotation):
    """Defaults that are functions or classes by name: ``softmax``, not ``<function ... 0x..>``."""
    if signature:
        signature = re.sub(
            r"<(?:function|class) '?([\w.]+?)'?(?: at 0x[0-9a-f]+)?>", r"\1", signature
        )
    return signature, return_annotation


def setup(app):
    app.connect("autodoc-skip-member", _skip_member)
    app.connect("autodoc-process-signature", _clean_signature)


# -- gallery ------------------------------------------------------------------


def _examples_data_home() -> None:
    """Point the examples at real data when the project's ../shared/data is there.

    A folder of links to it in the temporary directory is the data home, so that
    decoded-image caches are written there, not into the shared folder.
    """
    shared = ROOT.parent / "shared" / "data"
    if os.environ.get("FEWMED_DATA") or not shared.is_dir():
        return
    home = Path(tempfile.gettempdir()) / "fewmed_docs_data"
    home.mkdir(exist_ok=True)
    for entry in shared.iterdir():
        if entry.name == "cache":  # caches are written to the home's own cache/
            continue
        link = home / entry.name
        if not link.exists() and not link.is_symlink():
            link.symlink_to(entry)
    os.environ["FEWMED_DATA"] = str(home)


_examples_data_home()
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("FEWMED_DOCS_BUILD", "1")

sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    # FEWMED_GALLERY_PATTERN=plot_data runs only the examples whose path matches
    "filename_pattern": os.environ.get("FEWMED_GALLERY_PATTERN") or r"/plot_",
    "ignore_pattern": r"__init__\.py",
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "doc_module": ("fewmed",),
    "backreferences_dir": "generated/backreferences",
    "min_reported_time": 0,
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "matplotlib_animations": False,
}

# -- HTML -----------------------------------------------------------------------

html_theme = "pydata_sphinx_theme"
html_title = f"fewmed {release}"
html_static_path = ["_static"]
html_css_files = ["fewmed.css"]
html_show_sourcelink = False
html_theme_options = {
    "navbar_align": "left",
    "header_links_before_dropdown": 7,
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_context = {"default_mode": "light"}
