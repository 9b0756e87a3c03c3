"""Benchmarks that reproduce the papers' tables: ``python -m fewmed.benchmarks NAME``.

Each benchmark is a module ``fewmed.benchmarks.<name>`` exposing
``add_arguments(parser)`` and ``run(args) -> dict``; it prints its tables, writes a
JSON of its numbers and a PNG plot under ``--out``. ``fewmed benchmark NAME`` is
the same through the command line.
"""

from __future__ import annotations

BENCHMARKS = {
    "daml": "fewmed.benchmarks.daml",
    "cdc": "fewmed.benchmarks.cdc",
    "rskd": "fewmed.benchmarks.rskd",
    "reptile": "fewmed.benchmarks.reptile",
    "inner-loop": "fewmed.benchmarks.inner_loop",
    "scaling": "fewmed.benchmarks.scaling",
    "gpu": "fewmed.benchmarks.gpu",
    "memory": "fewmed.benchmarks.memory",
}

__all__ = ["BENCHMARKS"]
