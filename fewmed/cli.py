"""The ``fewmed`` command line: ``fewmed datasets``, ``fewmed benchmark NAME``."""

from __future__ import annotations

import argparse
import importlib
import os
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


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, KeyError):  # str(KeyError) is the quoted key
        text = f"missing {text}"
    return text


def build_parser() -> argparse.ArgumentParser:
    from fewmed.benchmarks import BENCHMARKS

    parser = _Parser(
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
    """Entry point of the ``fewmed`` command.

    A usage error (an unknown option, a bad option value, a path that does not
    exist) and an error of the run (data that is not what was expected, a
    parameter an estimator refuses) print one line on stderr and return 2;
    set ``FEWMED_TRACEBACK=1`` to see the traceback instead.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except (ValueError, TypeError, KeyError, OSError, ImportError) as exc:
        if os.environ.get("FEWMED_TRACEBACK"):
            raise
        prog = f"fewmed {args.command}" + (f" {args.benchmark}" if "benchmark" in args else "")
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
