"""Eager calls of lpnum's public operations against jitted ones: time and peak memory.

Most notebook users call ``lpnum.quantize(x, fmt)`` outside ``jax.jit``. Each public operation checks its
arguments in Python and then runs one computation compiled once per static configuration, so an eager call after
the first should cost about what the jitted call costs. Per operation and format, two candidates are compiled (for
eager, a first call) and then timed side by side (interleaved rounds, medians):

* ``eager``: the call as a user makes it, e.g. ``lpnum.quantize(x, fmt)``;
* ``jit``: ``jax.jit(lambda v: lpnum.quantize(v, fmt))``.

Operations: ``quantize``, ``encode`` and ``decode`` (of the codes of ``x``) for every format of the formats
benchmark (``lpnum.ALL_FORMATS``; input ``jax.random.normal * spread(fmt)``, float32); ``quantize_scaled``,
``dequantize`` (of the QArray of ``x``) and ``fake_quantize`` for the cases of the scaled benchmark on a
``(4096, 4096)`` standard-normal float32 array. Formats that refuse float32 input are skipped.

Peak memory (``benchmarks._timing.peak_growth``): how much the process's resident set grows at its peak during one
call, result included, over the size of the float32 array of the call (its input ``x``; for ``decode`` and
``dequantize``, their float32 output).

Run ``python -m benchmarks.eager [--quick] [--repeats N] [--size-log2 N] [--out DIR]``; results go to
``lpnum-results/bench/eager/eager.json`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import lpnum
from lpnum.carrier import F32
from lpnum.results import progress

from ._report import (QuickDefault, arg_parser, figure_values, format_targets, lpnum_revision, median_s, ms,
                      parse_args, ratio, table, target, times, write_json)
from ._timing import Candidate, failure, peak_growth, time_fns
from .formats import FAMILIES, REPRESENTATIVE, spread
from .scaled import CASES, Case

#: Operations on a plain format, and on a block-scaled one.
FORMAT_OPS: tuple[str, ...] = ("quantize", "encode", "decode")
SCALED_OPS: tuple[str, ...] = ("quantize_scaled", "dequantize", "fake_quantize")
#: Shapes of the scaled cases.
SCALED_SHAPE: tuple[int, int] = (4096, 4096)
QUICK_SCALED_SHAPE: tuple[int, int] = (256, 256)
#: The scaled cases of ``--quick``.
QUICK_CASES: tuple[str, ...] = ("mxfp4_e2m1", "nvfp4")
#: Peak memory is the median of this many calls.
PEAK_REPEATS = 3

#: Target thresholds of the issue.
TIME_MAX = 1.5
PEAK_MAX = 3.0


# ---- candidates -------------------------------------------------------------------------------------------------
def _format_op(op: str, fmt: lpnum.Format) -> Callable[[jax.Array], jax.Array]:
  if op == "quantize":
    return lambda v: lpnum.quantize(v, fmt)
  if op == "encode":
    return lambda v: lpnum.encode(v, fmt)
  return lambda codes: lpnum.decode(codes, fmt)


def _scaled_op(op: str, fmt: str | lpnum.ScaledFormat) -> Callable[[Any], Any]:
  if op == "quantize_scaled":
    return lambda v: lpnum.quantize_scaled(v, fmt)
  if op == "dequantize":
    return lpnum.dequantize
  return lambda v: lpnum.fake_quantize(v, fmt)


def measure(fn: Callable[..., Any], arg: Any, values: int, *, repeats: int) -> dict[str, Any]:
  """Times ``fn`` eager and jitted on ``arg``, then their peak memory; returns the operation's JSON record.

  ``values`` is the number of float32 values the peaks are compared with.
  """
  candidates: dict[str, Candidate] = {"eager": (fn, (arg,)), "jit": (jax.jit(fn), (arg,))}
  measured = time_fns(candidates, repeats=repeats)
  record: dict[str, Any] = {"candidates": measured}
  float_bytes = 4 * values
  for name, (call, args) in candidates.items():
    if measured[name]["status"] == "ok":
      peak = peak_growth(call, *args, repeats=PEAK_REPEATS)
      measured[name]["peak_bytes"] = peak
      measured[name]["peak_over_array"] = None if peak is None else peak / float_bytes
  eager, jitted = measured["eager"], measured["jit"]
  record["figures"] = {
      "eager_over_jit": ratio(median_s(eager), median_s(jitted)),
      "eager_peak_over_array": eager.get("peak_over_array"),
      "jit_peak_over_array": jitted.get("peak_over_array"),
  }
  return record


def bench_format(fmt: lpnum.Format, base: jax.Array, *, repeats: int) -> list[dict[str, Any]]:
  """The records of ``quantize``, ``encode`` and ``decode`` for one format (in that order, so that each eager first
  call is the first of its operation)."""
  x = jax.block_until_ready(base * np.float32(spread(fmt)))
  head = {"format": fmt.name, "family": FAMILIES[type(fmt)], "bits": fmt.bits, "values": int(x.size)}
  why = fmt.carrier_problem(F32)
  if why is not None:  # the format refuses float32 input
    return [{**head, "op": op, "candidates": {"eager": failure("skipped", why)}} for op in FORMAT_OPS]
  records = []
  for op in FORMAT_OPS:
    arg = jax.block_until_ready(lpnum.encode(x, fmt)) if op == "decode" else x
    records.append({**head, "op": op, **measure(_format_op(op, fmt), arg, x.size, repeats=repeats)})
  return records


def bench_case(case: Case, x: jax.Array, *, repeats: int) -> list[dict[str, Any]]:
  """The records of ``quantize_scaled``, ``dequantize`` and ``fake_quantize`` for one scaled case."""
  head = {"format": case.name, "family": case.kind, "values": int(x.size)}
  records = []
  for op in SCALED_OPS:
    arg = jax.block_until_ready(lpnum.quantize_scaled(x, case.fmt)) if op == "dequantize" else x
    records.append({**head, "op": op, **measure(_scaled_op(op, case.fmt), arg, x.size, repeats=repeats)})
  return records


# ---- targets and printing ---------------------------------------------------------------------------------------
def _name(record: dict[str, Any]) -> str:
  return f"{record['format']}/{record['op']}"


def evaluate_targets(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
  """The issue's targets: eager time over jit time, and eager peak over the float32 array, for every record."""
  named = [{**r, "name": _name(r)} for r in records]
  return {
      "eager_time": target("a", f"eager call <= {TIME_MAX}x the jitted call (eager / jit, medians)",
                           figure_values(named, lambda f: f["eager_over_jit"], key="name"), TIME_MAX,
                           at_least=False),
      "eager_peak": target("b", f"eager peak memory <= {PEAK_MAX}x the float32 array (peak growth / array bytes)",
                           figure_values(named, lambda f: f["eager_peak_over_array"], key="name"), PEAK_MAX,
                           at_least=False, kind="memory"),
  }


def _peak(m: dict[str, Any]) -> str:
  value = m.get("peak_over_array")
  return "-" if value is None else f"{value:.2f}x"


def format_table(records: list[dict[str, Any]]) -> str:
  """One line per (format, operation): medians, the eager/jit ratio, both peaks; then what was skipped."""
  cols = ("format", "op", "eager ms", "jit ms", "eager/jit", "eager first call s", "eager peak", "jit peak")
  rows, notes = [], []
  for r in records:
    c = r["candidates"]
    if "figures" not in r:
      notes.append(f"{_name(r)}: {c['eager']['status']}: {c['eager']['reason']}")
      continue
    eager, jitted = c["eager"], c["jit"]
    first = f"{eager['compile_s']:.2f}" if eager["status"] == "ok" else eager["status"]
    rows.append((r["format"], r["op"], ms(eager), ms(jitted), times(r["figures"]["eager_over_jit"]), first,
                 _peak(eager), _peak(jitted)))
  return "\n".join([table(cols, rows, left=2), *notes])


# ---- entry point ------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> Path:
  """Runs the benchmark, prints the table and the target verdicts, and returns the JSON file written."""
  quick = (f"2^16 values, 3 repeats, only {', '.join(REPRESENTATIVE)} and the scaled cases "
           f"{', '.join(QUICK_CASES)} on a {QUICK_SCALED_SHAPE} array")
  parser = arg_parser("eager", __doc__, quick=quick, repeats=QuickDefault(10, 3))
  parser.add_argument("--size-log2", type=int, default=QuickDefault(24, 16),
                      help="log2 of the number of values of the plain formats (default 24, 16 with --quick)")
  args = parse_args(parser, argv)
  if not 0 <= args.size_log2 <= 28:
    parser.error("--size-log2 must be in [0, 28]")
  formats = [lpnum.get_format(n) for n in REPRESENTATIVE] if args.quick else list(lpnum.ALL_FORMATS)
  cases = [c for c in CASES if c.name in QUICK_CASES] if args.quick else list(CASES)
  shape = QUICK_SCALED_SHAPE if args.quick else SCALED_SHAPE
  size = 1 << args.size_log2
  base = jax.block_until_ready(jax.random.normal(jax.random.key(0), (size,), jnp.float32))
  records = [r for fmt in progress(formats, "formats") for r in bench_format(fmt, base, repeats=args.repeats)]
  del base
  x = jax.block_until_ready(jax.random.normal(jax.random.key(0), shape, jnp.float32))
  records += [r for case in progress(cases, "scaled cases") for r in bench_case(case, x, repeats=args.repeats)]
  targets = evaluate_targets(records)

  print(f"lpnum's public operations called eagerly and under jax.jit on {jax.devices()[0]}: 2^{args.size_log2} "
        f"float32 values per plain format, a {shape[0]}x{shape[1]} array per scaled case; median of {args.repeats} "
        "interleaved calls; the eager first call (which compiles) apart. Peak: resident-set growth during one call "
        "(result included) over the float32 array's bytes.")
  print(format_table(records))
  print("\nTargets:")
  print(format_targets(targets))

  payload = {
      "config": {"lpnum_revision": lpnum_revision(), "values": size, "size_log2": args.size_log2,
                 "scaled_shape": list(shape), "repeats": args.repeats, "quick": args.quick,
                 "peak_repeats": PEAK_REPEATS,
                 "input": "jax.random.normal(key(0)) * spread(format), float32; scaled: jax.random.normal(key(0), "
                          "shape, float32)"},
      "records": records,
      "targets": targets,
  }
  return write_json("eager", payload, args.out)


if __name__ == "__main__":
  main()
