"""What every study shares: its command line (``--quick``, ``--out DIR``, ``--seed``).

A study module ``lpnum/studies/<name>.py`` defines ``main(argv=None) -> dict`` that parses its options with
:func:`arg_parser` / :func:`parse_args`, runs, prints readable tables, and saves ``<name>.json`` (and plots) with
:func:`lpnum.results.write_json` / :func:`lpnum.results.save_figure`; ``lpnum study <name> [options]`` calls it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from lpnum.results import default_out

__all__ = ["arg_parser", "parse_args"]


def arg_parser(name: str, doc: str, *, quick: str) -> argparse.ArgumentParser:
  """The options every study has: ``--quick`` (``quick`` says what it leaves out), ``--out DIR``, ``--seed N``."""
  parser = argparse.ArgumentParser(prog=f"lpnum study {name}", description=doc.strip().splitlines()[0])
  parser.add_argument("--quick", action="store_true", help=quick)
  parser.add_argument("--out", type=Path, default=default_out("study", name),
                      help=f"directory for {name}.json, its CSV files and plots (default %(default)s)")
  parser.add_argument("--seed", type=int, default=0, help="the seed of data, initialization and shuffling")
  return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
  """Parses ``argv`` (None: the command line)."""
  return parser.parse_args(argv)
