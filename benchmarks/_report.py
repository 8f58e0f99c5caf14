"""Reporting shared by the benchmarks: figures, tables, targets, the command line and the JSON file.

A benchmark measures with ``benchmarks._timing`` and reports with this module, for example::

  from ._report import (arg_parser, format_targets, median_s, ms, parse_args, ratio, table, target,
                                  times, write_json)
  from ._timing import time_fns

  def main(argv=None):
    args = parse_args(arg_parser("kernels", __doc__, quick="small shapes, 3 repeats"), argv)
    measured = time_fns({"floor": ..., "lpnum": ...}, repeats=args.repeats)
    cost = ratio(median_s(measured["lpnum"]), median_s(measured["floor"]))
    print(table(("kernel", "lpnum ms", "lpnum/floor"),
                [{"kernel": "dot", "lpnum ms": ms(measured["lpnum"]), "lpnum/floor": times(cost)}]))
    targets = {"vs_floor": target("a", "lpnum <= 2x the floor", {"dot": cost}, 2.0, at_least=False)}
    print(format_targets(targets))
    return write_json("kernels", {"config": {"repeats": args.repeats}, "targets": targets}, args.out)

``lpnum bench kernels [--quick] [--repeats N] [--out DIR]`` then prints the table and the verdicts and writes
``lpnum-results/bench/kernels/kernels.json`` (:func:`lpnum.results.default_out`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

import lpnum
from lpnum.results import default_out, write_csv

__all__ = ["QuickDefault", "arg_parser", "figure_values", "format_targets", "lpnum_revision", "machine_info",
           "median_s", "ms", "parse_args", "ratio", "table", "target", "times", "write_json"]


# ---- figures ----------------------------------------------------------------------------------------------------
def median_s(measurement: Mapping[str, Any] | None) -> float | None:
  """Median seconds of a measurement for the full input (times ``scale`` if it was timed on part of it).

  Returns None if there is no measurement or its status is not ``ok``.
  """
  if measurement is None or measurement["status"] != "ok":
    return None
  return measurement["median_s"] * measurement.get("scale", 1.0)


def ratio(num: float | None, den: float | None) -> float | None:
  """``num / den``, or None if either side was not measured."""
  return None if num is None or den is None else num / den


def figure_values(records: Iterable[Mapping[str, Any]], figure: Callable[[Mapping[str, Any]], float | None], *,
                  key: str = "format") -> dict[str, float | None]:
  """``figure(record["figures"])`` by ``record[key]``: the ``values`` of a target; None for a record without figures."""
  return {r[key]: figure(r["figures"]) if "figures" in r else None for r in records}


# ---- printing ---------------------------------------------------------------------------------------------------
def ms(measurement: Mapping[str, Any] | None, *, places: int | None = None) -> str:
  """A table cell for a measurement: its median in milliseconds.

  ``*`` marks a figure scaled up from part of the input, ``-`` a missing measurement; a measurement that is not
  ``ok`` shows its status (``unsupported`` as ``unsup.``).

  Args:
    measurement: a measurement of ``benchmarks._timing``, or None.
    places: decimal places; by default 2, and 1 from 100 ms.
  """
  if measurement is None:
    return "-"
  if measurement["status"] != "ok":
    return {"unsupported": "unsup."}.get(measurement["status"], measurement["status"])
  value = 1e3 * median_s(measurement)
  if places is None:
    places = 1 if value >= 100 else 2
  scaled = "*" if measurement.get("scale", 1.0) != 1.0 else ""
  return f"{value:.{places}f}{scaled}"


def times(value: float | None) -> str:
  """A table cell for a ratio: ``1.23x``, or ``-`` if it was not measured."""
  return "-" if value is None else f"{value:.2f}x"


def table(columns: Sequence[str], rows: Iterable[Mapping[str, Any] | Sequence[Any]], *, left: int = 1) -> str:
  """An aligned text table: the headers, a rule of dashes, and one line per row.

  Args:
    columns: the column headers.
    rows: each a mapping from header to cell (a missing cell is blank) or the cells in column order; cells are
      printed with ``str``.
    left: how many leading columns are left-aligned; the others are right-aligned.
  """
  cells = [[str(row.get(c, "")) for c in columns] if isinstance(row, Mapping) else [str(v) for v in row]
           for row in rows]
  widths = [max([len(col), *(len(row[i]) for row in cells)]) for i, col in enumerate(columns)]

  def line(values: Sequence[str]) -> str:
    return "  ".join(v.ljust(w) if i < left else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths))).rstrip()
  return "\n".join([line(columns), "  ".join("-" * w for w in widths), *map(line, cells)])


# ---- targets ----------------------------------------------------------------------------------------------------
#: What a target measures, as its printed line names it: timings and memory peaks depend on the machine and its
#: load (indicative), sizes do not.
_TARGET_KINDS = {"speed": "speed target", "memory": "memory target", "size": "size target"}

#: The printed verdict of a target's ``status``.
_VERDICTS = {"PASS": "met", "FAIL": "missed", "N/A": "not measured"}


def target(label: str, description: str, values: Mapping[str, float | None], threshold: float, *, at_least: bool,
           reasons: Mapping[str, str] | None = None, kind: str = "speed") -> dict[str, Any]:
  """The verdict of one target over named figures (formats, ``model/variant``s, ...).

  Args:
    label: the target's short name, printed as ``(label)``.
    description: what the target asks.
    values: the figure of every name the target covers, None where it was not measured.
    threshold: the limit.
    at_least: a figure passes at or above ``threshold`` (a speedup); otherwise at or below it (a cost).
    reasons: why a name may have no figure; if given, ``not_measured`` maps each such name to its reason.
    kind: what the figures measure: ``"speed"`` (timings), ``"memory"`` (peaks) or ``"size"`` (bytes).

  Returns:
    The target's JSON record: ``label``, ``kind``, ``description``, ``threshold``; ``status`` ``PASS``,
    ``FAIL``, or ``N/A`` when nothing was measured; ``values`` and ``failures`` (name -> figure); ``worst``
    (``{"format": name, "value": figure}``, or None); ``not_measured``: the names without a figure, sorted (or
    mapped to ``reasons``).

  Raises:
    ValueError: an unknown ``kind``.
  """
  if kind not in _TARGET_KINDS:
    raise ValueError(f"kind={kind!r}; expected one of {sorted(_TARGET_KINDS)}")
  measured = {name: v for name, v in values.items() if v is not None}
  ok = (lambda v: v >= threshold) if at_least else (lambda v: v <= threshold)
  failures = {name: v for name, v in measured.items() if not ok(v)}
  worst = (min if at_least else max)(measured.items(), key=lambda item: item[1], default=None)
  missing = [name for name, v in values.items() if v is None]
  return {
      "label": label, "kind": kind, "description": description, "threshold": threshold,
      "status": "N/A" if not measured else ("FAIL" if failures else "PASS"),
      "values": measured, "failures": failures,
      "worst": None if worst is None else {"format": worst[0], "value": worst[1]},
      "not_measured": sorted(missing) if reasons is None else {name: reasons[name] for name in missing},
  }


def format_targets(targets: Mapping[str, Mapping[str, Any]]) -> str:
  """One line per target record: what kind of target it is, met or missed, its worst figure, the names that miss
  it and those not measured.

  Speed and memory targets say they are indicative and name the backend they were measured on: a shared or loaded
  machine moves them, e.g. ``(a) speed target (cpu; indicative, machine load moves it): lpnum <= 2x the floor:
  missed -- 3/5 meet it; worst int4 2.310x``.
  """
  lines = []
  for t in targets.values():
    kind = t.get("kind", "speed")
    where = "" if kind == "size" else f" ({jax.default_backend()}; indicative, machine load moves it)"
    text = f"({t['label']}) {_TARGET_KINDS[kind]}{where}: {t['description']}: {_VERDICTS[t['status']]}"
    if t["worst"] is not None:
      text += (f" -- {len(t['values']) - len(t['failures'])}/{len(t['values'])} meet it; "
               f"worst {t['worst']['format']} {t['worst']['value']:.3f}x")
    if t["failures"]:
      text += "\n      misses: " + ", ".join(f"{name} {v:.3f}x" for name, v in t["failures"].items())
    missing = t["not_measured"]
    if missing:
      text += "\n      not measured: " + ", ".join(
          (f"{name} ({why})" for name, why in missing.items()) if isinstance(missing, Mapping) else missing)
    lines.append(text)
  return "\n".join(lines)


# ---- command line -----------------------------------------------------------------------------------------------
class QuickDefault(NamedTuple):
  """The default of an option: ``full``, or ``quick`` with ``--quick`` (chosen by ``parse_args``)."""

  full: int
  quick: int


def arg_parser(name: str, doc: str, *, quick: str, repeats: QuickDefault = QuickDefault(15, 3),
               repeats_help: str = "timed calls per candidate") -> argparse.ArgumentParser:
  """The options every benchmark has: ``--quick``, ``--repeats N`` and ``--out DIR``.

  A script may add its own options (with a ``QuickDefault`` default to depend on ``--quick``) before
  ``parse_args``.

  Args:
    name: the benchmark: ``python -m benchmarks.<name>``, writing ``<name>.json``.
    doc: the script's docstring; its first line describes the command.
    quick: the help of ``--quick``: what a quick run leaves out.
    repeats: the default of ``--repeats``.
    repeats_help: what ``--repeats`` counts.
  """
  parser = argparse.ArgumentParser(prog=f"lpnum bench {name}", description=doc.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help=quick)
  parser.add_argument("--repeats", type=int, default=repeats,
                      help=f"{repeats_help} (default {repeats.full}, {repeats.quick} with --quick)")
  parser.add_argument("--out", type=Path, default=default_out("bench", name),
                      help=f"directory for {name}.json and its CSV files (default %(default)s)")
  return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
  """Parses ``argv`` (None: the command line), resolves every ``QuickDefault`` and checks ``--repeats >= 1``."""
  args = parser.parse_args(argv)
  for dest, value in vars(args).items():
    if isinstance(value, QuickDefault):
      setattr(args, dest, value.quick if args.quick else value.full)
  if args.repeats < 1:
    parser.error("--repeats must be >= 1")
  return args


# ---- JSON -------------------------------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
  """The software and hardware a result was measured on."""
  device = jax.devices()[0]
  return {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "jax": jax.__version__,
      "numpy": np.__version__,
      "python": platform.python_version(),
      "platform": platform.platform(),
      "backend": jax.default_backend(),
      "device": str(device),
      "device_kind": device.device_kind,
      "device_count": jax.device_count(),
      "cpu_count": os.cpu_count(),
      "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
  }


def lpnum_revision() -> str | None:
  """``git describe --always --dirty`` of the lpnum checkout (the code being timed), or None outside git."""
  try:
    done = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10,
                          cwd=Path(lpnum.__file__).resolve().parent, check=True)
  except (OSError, subprocess.SubprocessError):
    return None
  return done.stdout.strip() or None


def write_json(name: str, payload: Mapping[str, Any], out_dir: str | Path | None = None) -> Path:
  """Writes ``{"benchmark": name, "machine": machine_info(), "results": payload}`` to ``<out_dir>/<name>.json``,
  and each top-level list of records in ``payload`` as ``<out_dir>/<name>_<key>.csv``
  (:func:`lpnum.results.write_csv`).

  ``out_dir`` defaults to ``lpnum-results/bench/<name>``; it is created if needed. Prints and returns the JSON's
  path.
  """
  directory = Path(out_dir) if out_dir is not None else default_out("bench", name)
  directory.mkdir(parents=True, exist_ok=True)
  path = directory / f"{name}.json"
  document = {"benchmark": name, "machine": machine_info(), "results": payload}
  path.write_text(json.dumps(document, indent=1, allow_nan=False) + "\n")
  csvs = write_csv(name, dict(payload), directory)
  print(f"\nwrote {path}" + "".join(f", {p.name}" for p in csvs))
  return path
