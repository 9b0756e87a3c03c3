"""Shared plumbing of the benchmarks: data resolution, output files, tables."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "add_common_arguments",
    "existing_path",
    "positive_int",
    "device_name",
    "write_json",
    "format_table",
    "output_dir",
    "environment",
]


def existing_path(value: str) -> str:
    """argparse type: a file or folder that exists (else a one-line usage error)."""
    import argparse

    if not Path(value).expanduser().exists():
        raise argparse.ArgumentTypeError(f"{value} does not exist")
    return value


def positive_int(value: str) -> int:
    """argparse type: an integer >= 1."""
    import argparse

    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return number


def device_name(value: str) -> str:
    """argparse type: 'cpu', 'auto', 'cuda', 'cuda:N' or 'mps'."""
    import argparse
    import re

    if not re.fullmatch(r"cpu|auto|mps|cuda(:\d+)?", value):
        raise argparse.ArgumentTypeError(
            f"expected 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto', got {value!r}"
        )
    return value


DATA_HELP = (
    "dataset folder or file; without it: FEWMED_DATA, then the cache ~/fewmed_data, then a "
    "download when online, else synthetic lesions (said in the output)"
)


def add_common_arguments(parser, *, default_out: str) -> None:
    """Options every benchmark takes: --quick, --data, --out, --seed, --device, --verbose."""
    parser.add_argument("--quick", action="store_true", help="the CPU profile (minutes)")
    parser.add_argument("--data", default=None, type=existing_path, help=DATA_HELP)
    parser.add_argument("--out", default=default_out, help="folder for the JSON and PNG")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", type=device_name, help="'cpu', 'cuda' or 'auto'")
    parser.add_argument("--size", type=positive_int, default=None, help="image side in pixels")
    parser.add_argument("--synthetic", action="store_true", help="force synthetic lesions")
    parser.add_argument("-v", "--verbose", type=int, default=1)


def environment() -> dict[str, Any]:
    """Machine facts recorded beside every benchmark's numbers."""
    import torch

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def output_dir(out: str | os.PathLike) -> Path:
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def write_json(path: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` (numpy values allowed) as indented JSON; returns the path."""
    path = Path(path)
    path.write_text(json.dumps(_jsonable(payload), indent=2) + "\n")
    return path


def format_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A GitHub-markdown table (printed, and pasteable into docs/benchmarks.md)."""
    cells = [[str(h) for h in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep, *[line(r) for r in cells[1:]]])
