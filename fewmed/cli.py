"""The ``fewmed`` command line: ``fewmed datasets``, ``fewmed benchmark NAME``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from fewmed import __version__


def _cmd_datasets(args: argparse.Namespace) -> int:
    from fewmed.benchmarks._common import format_table
    from fewmed.datasets import get_data_home, list_datasets

    rows = [
        [d["name"], d["kind"], "yes" if d["cached"] else "no", d["licence"], d["path"]]
        for d in list_datasets(args.data_home)
    ]
    print(f"fewmed data home: {get_data_home(args.data_home)} (set FEWMED_DATA to change)")
    print(format_table(rows, ["dataset", "kind", "cached", "licence", "path"]))
    print(
        "\nLoad local copies with fewmed.datasets.load_* (no network); fetch_* downloads the "
        "public ones into the data home when online."
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from fewmed.benchmarks import BENCHMARKS

    parser = argparse.ArgumentParser(
        prog="fewmed",
        description="few-shot and long-tailed medical image classification",
    )
    parser.add_argument("--version", action="version", version=f"fewmed {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("datasets", help="list the datasets fewmed knows and which are cached")
    p.add_argument("--data-home", default=None, help="cache folder (default: FEWMED_DATA)")
    p.set_defaults(func=_cmd_datasets)

    bench = sub.add_parser("benchmark", help="reproduce a paper's tables")
    bsub = bench.add_subparsers(dest="benchmark", required=True)
    for name, modname in BENCHMARKS.items():
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name != modname:
                raise
            continue
        summary = (mod.__doc__ or "").strip().splitlines()[0]
        # argparse %-formats help strings, not descriptions
        bp = bsub.add_parser(name, help=summary.replace("%", "%%"), description=summary)
        mod.add_arguments(bp)
        bp.set_defaults(func=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fewmed`` command."""
    args = build_parser().parse_args(argv)
    result = args.func(args)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
