"""Speed of ``lpnum.quantize`` on float32 input for every format, against a memory floor and other libraries.

For each format, these candidates are compiled and then timed side by side (interleaved rounds, medians):

* ``lpnum/<rounding>``: ``jax.jit`` of ``lpnum.quantize`` (``nearest_even`` for every format; all seven rounding
  modes for a representative subset; the stochastic key is an argument of the jitted function);
* ``floor``: jitted ``x * 2``, one read and one write of the array, the memory floor;
* ``xla_astype``: jitted ``x.astype(fmt.dtype).astype(float32)`` where the format has a native dtype (XLA's own
  conversion; integer casts truncate rather than round);
* ``xla_e4m3fn_ref`` (float formats): the same round trip through ``float8_e4m3fn``, the reference of target (b);
* ``ml_dtypes``: the numpy ``astype`` round trip through the ml_dtypes dtype, not jitted, timed on at most
  ``2^22`` values and scaled to the full size;
* ``gfloat``: jitted ``gfloat.round_ndarray(fi, x, sat=True)`` (ties to even, saturating like lpnum's default) for
  the formats gfloat has presets for.

Run ``python -m benchmarks.formats [--quick] [--repeats N] [--size-log2 N] [--out DIR]``; results go to
``lpnum-results/bench/formats/formats.json`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gfloat
import gfloat.formats as gff
import jax
import jax.numpy as jnp
import numpy as np

import lpnum
from lpnum.results import progress
from ._report import (QuickDefault, arg_parser, figure_values, format_targets, median_s, ms, parse_args,
                                ratio, table, target, times, write_json)
from ._timing import Candidate, failure, time_fns

ROUNDINGS: tuple[str, ...] = tuple(r.value for r in lpnum.Rounding)
#: Formats timed under every rounding mode (and, with ``--quick``, the only formats timed).
REPRESENTATIVE: tuple[str, ...] = ("float8_e4m3fn", "float4_e2m1fn", "bfloat16", "int8", "posit16", "shift4")
#: Rounding modes timed with ``--quick``.
QUICK_ROUNDINGS: tuple[str, ...] = ("nearest_even", "stochastic")
#: ml_dtypes (numpy, single-threaded) is timed on at most this many values and scaled up.
ML_DTYPES_MAX_LOG2 = 22

FAMILIES: dict[type, str] = {lpnum.FloatFormat: "float", lpnum.IntFormat: "int", lpnum.PositFormat: "posit",
                             lpnum.ShiftFormat: "shift", lpnum.BinaryFormat: "binary"}

_P3109 = {f"binary8p{p}{s}{d}": gff.format_info_p3109(8, p, sign, domain)
          for p in (3, 4)
          for s, sign in (("s", gfloat.Signedness.Signed), ("u", gfloat.Signedness.Unsigned))
          for d, domain in (("f", gfloat.Domain.Finite), ("e", gfloat.Domain.Extended))}
#: gfloat presets of lpnum formats, by lpnum name.
GFLOAT_FORMATS: dict[str, gfloat.FormatInfo] = {
    "float8_e4m3fn": gff.format_info_ocp_e4m3, "float8_e5m2": gff.format_info_ocp_e5m2,
    "float6_e3m2fn": gff.format_info_ocp_e3m2, "float6_e2m3fn": gff.format_info_ocp_e2m3,
    "float4_e2m1fn": gff.format_info_ocp_e2m1, "float8_e8m0fnu": gff.format_info_ocp_e8m0,
    "bfloat16": gff.format_info_bfloat16, "float16": gff.format_info_binary16,
    **{name: _P3109[name] for name in ("binary8p3sf", "binary8p4sf", "binary8p3se", "binary8p4se", "binary8p3uf",
                                       "binary8p4ue")},
}

#: Target thresholds of the issue.
FLOAT_FLOOR_MAX = 1.5
POSIT_SHIFT_FLOOR_MAX = 3.0
STOCHASTIC_MAX = 2.0
GFLOAT_SPEEDUP_MIN = 5.0


# ---- candidates -------------------------------------------------------------------------------------------------
def spread(fmt: lpnum.Format) -> float:
  """Scale of the standard-normal input: the geometric middle of the format's normal range."""
  return math.sqrt(fmt.min_normal * fmt.max_finite)


def _lpnum_candidate(fmt: lpnum.Format, rounding: str, x: jax.Array, key: jax.Array) -> Candidate:
  if rounding == "stochastic":
    return jax.jit(lambda v, k: lpnum.quantize(v, fmt, rounding=rounding, key=k)), (x, key)
  return jax.jit(lambda v: lpnum.quantize(v, fmt, rounding=rounding)), (x,)


def _xla_round_trip(dtype: Any) -> Callable[[jax.Array], jax.Array]:
  return jax.jit(lambda v: v.astype(dtype).astype(jnp.float32))


def _ml_dtypes_round_trip(dtype: np.dtype) -> Callable[[np.ndarray], np.ndarray]:
  def round_trip(v: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
      return v.astype(dtype).astype(np.float32)
  return round_trip


def _gfloat_round(fi: gfloat.FormatInfo) -> Callable[[jax.Array], jax.Array]:
  def round_nearest_even(v: jax.Array) -> jax.Array:
    with warnings.catch_warnings():  # gfloat asks for int64 on wide formats; jax gives int32, enough for 16 bits
      warnings.filterwarnings("ignore", message="Explicitly requested dtype int64")
      return gfloat.round_ndarray(fi, v, sat=True)
  return jax.jit(round_nearest_even)


def _float32_unsupported(fmt: lpnum.Format, x: jax.Array) -> str | None:
  """Why ``lpnum.quantize`` refuses float32 input for ``fmt``, or None."""
  try:
    jax.eval_shape(lambda v: lpnum.quantize(v, fmt), x)
  except ValueError as e:
    return str(e)
  return None


def bench_format(fmt: lpnum.Format, base: jax.Array, roundings: Sequence[str], *, repeats: int,
                 key: jax.Array) -> dict[str, Any]:
  """Times every candidate of one format on ``base * spread(fmt)``; returns the format's JSON record."""
  scale = spread(fmt)
  x = jax.block_until_ready(base * np.float32(scale))
  record: dict[str, Any] = {"format": fmt.name, "family": FAMILIES[type(fmt)], "bits": fmt.bits, "spread": scale,
                            "values": int(x.size)}
  reason = _float32_unsupported(fmt, x)
  if reason is not None:
    record["candidates"] = {f"lpnum/{r}": failure("skipped", reason) for r in roundings}
    return record
  candidates: dict[str, Candidate] = {"floor": (jax.jit(lambda v: v * 2), (x,))}
  for rounding in roundings:
    candidates[f"lpnum/{rounding}"] = _lpnum_candidate(fmt, rounding, x, key)
  ml_values = min(x.size, 1 << ML_DTYPES_MAX_LOG2)
  if fmt.dtype is not None:
    candidates["xla_astype"] = (_xla_round_trip(fmt.dtype), (x,))
    candidates["ml_dtypes"] = (_ml_dtypes_round_trip(fmt.dtype), (np.asarray(x[:ml_values]),))
  if isinstance(fmt, lpnum.FloatFormat):
    candidates["xla_e4m3fn_ref"] = (_xla_round_trip(jnp.float8_e4m3fn), (x,))
  if fmt.name in GFLOAT_FORMATS:
    candidates["gfloat"] = (_gfloat_round(GFLOAT_FORMATS[fmt.name]), (x,))
  measured = time_fns(candidates, repeats=repeats)
  if "ml_dtypes" in measured and measured["ml_dtypes"]["status"] == "ok":
    measured["ml_dtypes"].update(values=ml_values, scale=x.size / ml_values)
  record["candidates"] = measured
  record["figures"] = figures(measured)
  return record


# ---- figures and targets ----------------------------------------------------------------------------------------
def figures(measured: dict[str, dict[str, Any]]) -> dict[str, Any]:
  """Ratios derived from one format's medians (None where a side was not measured)."""
  floor = median_s(measured["floor"])
  nearest = median_s(measured.get("lpnum/nearest_even"))
  lpnum_modes = [name.removeprefix("lpnum/") for name in measured if name.startswith("lpnum/")]
  return {
      "ratio_to_floor": {mode: ratio(median_s(measured[f"lpnum/{mode}"]), floor) for mode in lpnum_modes},
      "ratio_to_xla_e4m3fn": ratio(nearest, median_s(measured.get("xla_e4m3fn_ref"))),
      "stochastic_over_nearest_even": ratio(median_s(measured.get("lpnum/stochastic")), nearest),
      "speedup_vs_gfloat": ratio(median_s(measured.get("gfloat")), nearest),
  }


def evaluate_targets(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
  """The issue's speed targets, judged on ``nearest_even`` (and, for (d), ``stochastic``) medians."""
  floats = [r for r in records if r["family"] == "float"]
  to_floor = lambda f: f["ratio_to_floor"].get("nearest_even")
  return {
      "float_vs_floor": target(
          "a", f"every float format <= {FLOAT_FLOOR_MAX}x the x*2 floor (lpnum / floor)",
          figure_values(floats, to_floor), FLOAT_FLOOR_MAX, at_least=False),
      "float_vs_xla_e4m3fn": target(
          "b", "every float format at least as fast as XLA's float8_e4m3fn round trip (lpnum / XLA <= 1)",
          figure_values(floats, lambda f: f["ratio_to_xla_e4m3fn"]), 1.0, at_least=False),
      "posit_shift_vs_floor": target(
          "c", f"posits and shift formats <= {POSIT_SHIFT_FLOOR_MAX}x the x*2 floor (lpnum / floor)",
          figure_values([r for r in records if r["family"] in ("posit", "shift")], to_floor),
          POSIT_SHIFT_FLOOR_MAX, at_least=False),
      "stochastic_vs_nearest_even": target(
          "d", f"stochastic <= {STOCHASTIC_MAX}x nearest_even of the same format (stochastic / nearest_even)",
          figure_values([r for r in records if "lpnum/stochastic" in r["candidates"]],
                        lambda f: f["stochastic_over_nearest_even"]), STOCHASTIC_MAX, at_least=False),
      "vs_gfloat": target(
          "e", f"every format >= {GFLOAT_SPEEDUP_MIN}x faster than gfloat where gfloat has it (gfloat / lpnum)",
          figure_values([r for r in records if "gfloat" in r["candidates"]], lambda f: f["speedup_vs_gfloat"]),
          GFLOAT_SPEEDUP_MIN, at_least=True),
  }


# ---- printing ---------------------------------------------------------------------------------------------------
def format_table(records: list[dict[str, Any]]) -> str:
  """One line per (format, rounding mode), baselines on the ``nearest_even`` lines; then why any were skipped."""
  cols = ("format", "rounding", "lpnum ms", "ratio to x*2 floor", "XLA astype ms", "ml_dtypes ms", "gfloat ms",
          "speedup vs gfloat")
  rows, notes = [], []
  for r in records:
    c = r["candidates"]
    for name in (n for n in c if n.startswith("lpnum/")):
      mode = name.removeprefix("lpnum/")
      if c[name]["status"] != "ok":
        rows.append((r["format"], mode, c[name]["status"], *("-",) * 5))
        notes.append(f"{r['format']} {mode}: {c[name]['status']}: {c[name]['reason']}")
        continue
      baselines = ((ms(c.get("xla_astype"), places=2), ms(c.get("ml_dtypes"), places=2),
                    ms(c.get("gfloat"), places=2), times(r["figures"]["speedup_vs_gfloat"]))
                   if mode == "nearest_even" else ("",) * 4)
      rows.append((r["format"], mode, ms(c[name], places=2), times(r["figures"]["ratio_to_floor"][mode]), *baselines))
  return "\n".join([table(cols, rows, left=2), *notes])


# ---- entry point ------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> Path:
  """Runs the benchmark, prints the table and the target verdicts, and returns the JSON file written."""
  parser = arg_parser("formats", __doc__, quick=f"2^20 values, 3 repeats, only {', '.join(REPRESENTATIVE)} "
                                                f"with {' and '.join(QUICK_ROUNDINGS)}")
  parser.add_argument("--size-log2", type=int, default=QuickDefault(24, 20),
                      help="log2 of the number of values (default 24, 20 with --quick)")
  args = parse_args(parser, argv)
  if not 0 <= args.size_log2 <= 28:
    parser.error("--size-log2 must be in [0, 28]")
  if args.quick:
    plan = [(lpnum.get_format(name), QUICK_ROUNDINGS) for name in REPRESENTATIVE]
  else:
    plan = [(fmt, ROUNDINGS if fmt.name in REPRESENTATIVE else ("nearest_even",)) for fmt in lpnum.ALL_FORMATS]
  size = 1 << args.size_log2
  base = jax.random.normal(jax.random.key(0), (size,), jnp.float32)
  key = jax.random.key(0)
  records = [bench_format(fmt, base, roundings, repeats=args.repeats, key=key)
             for fmt, roundings in progress(plan, "formats")]
  targets = evaluate_targets(records)

  ml_log2 = min(args.size_log2, ML_DTYPES_MAX_LOG2)
  print(f"lpnum.quantize on 2^{args.size_log2} float32 values (standard normal x format spread), jax.jit on "
        f"{jax.devices()[0]}; median of {args.repeats} interleaved calls per candidate, compile excluded.")
  print(format_table(records))
  floors = sorted(median_s(r["candidates"]["floor"]) for r in records if "floor" in r["candidates"])
  if floors:
    print(f"x*2 floor: median {1e3 * floors[len(floors) // 2]:.2f} ms over the formats' runs "
          f"(range {1e3 * floors[0]:.2f}-{1e3 * floors[-1]:.2f} ms); each ratio uses its own format's floor.")
  if ml_log2 < args.size_log2:
    print(f"* ml_dtypes (numpy astype round trip, not jitted) timed on 2^{ml_log2} values and scaled "
          f"x{1 << (args.size_log2 - ml_log2)}.")
  print("XLA astype of integer dtypes truncates (a cast, not a rounding); gfloat runs ties-to-even, saturating.")
  print("\nTargets (nearest_even; (d) compares stochastic with nearest_even):")
  print(format_targets(targets))

  payload = {
      "config": {"values": size, "size_log2": args.size_log2, "repeats": args.repeats, "quick": args.quick,
                 "ml_dtypes_values": 1 << ml_log2, "input": "jax.random.normal(key(0)) * spread(format), float32"},
      "formats": records,
      "targets": targets,
  }
  return write_json("formats", payload, args.out)


if __name__ == "__main__":
  main()
