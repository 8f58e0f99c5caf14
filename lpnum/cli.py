"""The ``lpnum`` command: ``lpnum formats``, ``lpnum study NAME [--quick] [--out DIR]``, ``lpnum bench NAME``.

Only the command that runs imports JAX and lpnum's modules: ``lpnum --help`` loads neither.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
  from lpnum.formats import Format

__all__ = ["BENCHMARKS", "STUDIES", "formats_table", "main"]


def _fmt_num(v: float) -> str:
  if math.isnan(v):
    return "-"
  if v == 0 or 1e-3 <= abs(v) < 1e6:
    return f"{v:.6g}"
  return f"{v:.4e}"


def formats_table(formats: Sequence[Format] | None = None) -> str:
  """One line per format of ``formats`` (default: every named format) with its facts."""
  if formats is None:
    from lpnum.formats import ALL_FORMATS as formats
  cols = ("name", "bits", "max finite", "min normal", "min subnormal", "epsilon", "finite values", "inf", "NaN")
  rows = []
  for f in formats:
    sub = f.min_positive if f.min_positive < f.min_normal else math.nan
    rows.append((f.name, str(f.bits), _fmt_num(f.max_finite), _fmt_num(f.min_normal), _fmt_num(sub),
                 _fmt_num(f.epsilon), str(f.num_finite), "yes" if f.has_inf else "no",
                 ("NaR" if f.name.startswith("posit") else "yes") if f.has_nan else "no"))
  widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
  line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
  return "\n".join([line(cols), "  ".join("-" * w for w in widths), *map(line, rows)])


#: Studies ``lpnum study NAME`` runs (modules of lpnum.studies, each with ``main(argv)``).
STUDIES = ("formats", "training", "accumulators", "scale_rules", "real_model", "format_search", "unit_scaling", "pam",
           "integer_only")

#: Benchmarks ``lpnum bench NAME`` runs (the scripts of the repository's benchmarks/ folder).
BENCHMARKS = ("kernels", "formats", "scaled", "training_step", "models", "eager", "minilm")


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="lpnum", description="Low-precision number formats for JAX.")
  sub = parser.add_subparsers(dest="command", required=True)
  sub.add_parser("formats", help="print every named format and its facts")
  study = sub.add_parser("study", help="run a study")
  study.add_argument("name", choices=STUDIES, help="which study")
  study.add_argument("options", nargs=argparse.REMAINDER, help="the study's own options (--quick, --out DIR...)")
  bench = sub.add_parser("bench", help="run a benchmark (its options follow the name; see --help after it)")
  bench.add_argument("name", choices=BENCHMARKS, help="which benchmark")
  bench.add_argument("options", nargs=argparse.REMAINDER, help="the benchmark's own options (--quick, --out DIR...)")
  args = parser.parse_args(argv)
  if args.command in ("bench", "study"):
    package = "lpnum.benchmarks" if args.command == "bench" else "lpnum.studies"
    importlib.import_module(f"{package}.{args.name}").main(args.options)
  elif args.command == "formats":
    print(formats_table())
  return 0


if __name__ == "__main__":
  sys.exit(main())
