"""Kernel microbenchmarks: packed low-bit matmul and emulated accumulators against jnp.dot.

``python -m benchmarks.kernels [--quick] [--repeats N] [--out DIR]`` (also ``lpnum bench kernels``) times, for a
sweep of shapes (M in 1, 16, 128, 1024; K = N in 1024, 4096, 8192), every kernel side by side in one run with the
unquantized ``jnp.dot`` in float32 and bfloat16 and XLA's own int8 x int8 -> int32 dot (alone, and followed by the
per-row and per-column scaling W8A8 does), and prints the time, the effective GB/s of weight bytes read and the
TFLOP/s. ``lpnum.kernels.matmul`` runs its default path: the Pallas kernels on a GPU or TPU; on the CPU the native
kernel (C++ through XLA's FFI) for few rows of x (``cpu_matmul.NATIVE_ROWS``) and the XLA implementation
otherwise (the JSON records which). On the CPU, shapes below 128 rows also time each weight-only format's XLA path
("(XLA path)").

Kernels: weight-only int8 (per channel), int4 (groups of 128), MXFP8, MXFP4 and NVFP4 with float32 x; W8A8 (int8
x per row, int8 W per channel) both with x already quantized (the kernel alone) and quantized in the call. At
512^3 it also times the emulated low-precision accumulators of ``lpnum.kernels.accumulate``.

Grouped matmul (mixture of experts): ``lpnum.kernels.grouped_matmul`` with packed per-expert weights (int8 per
channel, int4 per group of 128, MXFP4, NVFP4, FP8 E4M3 per channel) side by side with its XLA baselines on the same
shapes: ``jax.lax.ragged_dot`` in float32 and bfloat16 and a float32 loop over the experts (each expert's product
kept for its rows). E = 8 experts with ragged group sizes (one empty; at decode, M = 8, most are empty), M tokens in
(8, 64, 512), K = N = 4096 (quick: M in (8, 64), K = N = 1024); the table gives the time, the speed against
``ragged_dot`` in float32 and the weight bytes. On the CPU, shapes below 128 rows also time each format's XLA path
("(XLA path)"), beside the default (the native kernel below its rows, :mod:`lpnum.kernels.cpu_matmul`).

Targets (CPU, ratios in one run, at M = K = N = 1024 unless said):

- (a) W8A8 with x already quantized: at least the throughput of XLA's int8 x int8 -> int32 dot, and of that dot
  followed by the output scaling (the int8 weights are multiplied as stored, with no copy).
- (b) weight-only int8 and int4: at least 0.9x the throughput of the float32 jnp.dot.
- (c) the emulated float accumulator matmul (bfloat16 and E5M6, nearest-even, sequential): at most 50x the
  float32 jnp.dot at 512^3.
- (d) decode, M = 1, K = N = 8192: weight-only int4, MXFP4 and NVFP4 at least 3x the float32 jnp.dot's throughput,
  int8 at least 2x.
- (e) decode, M = 16, K = N = 8192: every weight-only format at least the float32 jnp.dot's throughput.

The decode regime (M in 1, 4, 16; K = N in 4096, 8192) runs in quick mode too.

Roofline: each (kernel, shape) has an arithmetic intensity, ``2 M K N`` FLOPs over the bytes it moves at least
once: its operands as stored (float32 or bfloat16 x, int8 codes and their scales, packed weights with their scales)
and its output. The run measures the machine's two roofs: memory bandwidth from a copy ``x * 2`` of a
``BANDWIDTH_BYTES`` float32 array (bytes read and written over its median time) and compute, the best float32
``jnp.dot`` FLOP/s of the sweep. A kernel below the bandwidth roof at low intensity is limited by what it reads,
so packed weights pay off there (small M); at high intensity the compute roof rules, and dequantization costs.
Operands that fit in cache can beat the copy's bandwidth, and integer dots can beat the float32 compute roof.

Casts (``lpnum.kernels.quantize``): for each cast of a bfloat16 ``(N, N)`` tensor (MXFP8, MXFP6, MXFP4, MXINT8,
NVFP4 along rows; MXFP8 of ``x`` and ``x.T`` from one read, as training needs; FP8 per tensor with a given scale;
int8 per row), the bytes moved per element by the XLA face and by the Pallas face against the ideal (one read of
the input, one write of the codes and scales). XLA: ``bytes accessed`` of the compiled CPU program's cost analysis
(XLA's count over its fused ops). Pallas: the program traced for TPU, counting each ``pallas_call``'s operands and
results once (its BlockSpecs tile them without overlap) plus the XLA glue around it (reductions read their input;
transposes and concatenations read and write). Counted at N = 8192 (lowering only); timed at N = 2048 (quick) or
8192, the Pallas face only where a GPU or TPU is present.

Writes ``kernels.json`` (each row's ``bytes_moved`` and ``intensity``, and the measured ``roofs``) and, when
matplotlib is installed, ``kernels.png``: the roofline (achieved FLOP/s against intensity, log-log, one marker per
kernel and shape, the two roofs drawn), then TFLOP/s against M, one panel per K = N.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import lpnum
from lpnum import kernels
from lpnum.kernels import accumulate
from lpnum.kernels import cpu_matmul as packed_cpu
from lpnum.kernels import grouped_matmul as gm
from lpnum.results import progress

from ._report import (QuickDefault, arg_parser, format_targets, median_s, ms, parse_args, ratio, table, target,
                      times, write_json)
from ._timing import time_fns

FULL_M = (1, 16, 128, 1024)
FULL_SIZES = (1024, 4096, 8192)
QUICK_M = (1, 128)
QUICK_SIZES = (1024,)
#: The decode regime (few rows of x, large weights: bound by the weight bytes), in quick and full mode.
DECODE_M = (1, 4, 16)
DECODE_SIZES = (4096, 8192)
TARGET_SHAPE = (1024, 1024, 1024)
ACC_SIZE = 512
#: Bytes of the float32 array copied (``x * 2``) to measure the memory-bandwidth roof.
BANDWIDTH_BYTES = 2**26
#: Seconds between two timed matmul calls (``time_fns``' ``settle_s``): XLA's int8 and bfloat16 dots leave worker
#: threads spinning after they return, which slowed the next candidate by up to 2x on a 2-core CPU (measured: the
#: native int8 kernel at M = 1, K = N = 8192 took 14 ms right after XLA's int8 dot, 8 ms after a 50 ms pause).
SETTLE_S = 0.05
#: Seconds of untimed calls of a candidate right before each of its timed calls (``time_fns``' ``lead_s``): the
#: timed call is one step of a loop of itself, as in a decode loop. Without them, on a 2-core VM whose idle virtual
#: CPUs sleep during the pause above, the 2-ms decode matmuls ran about 2x slower for their first 10-20 ms of work
#: (the native kernel's second thread started 3-4 ms late), while the 9-ms float32 dot barely changed.
LEAD_S = 0.03

WEIGHT_FORMATS = {
    "w int8": lpnum.ScaledFormat("int8", lpnum.per_channel(1)),
    "w int4 g128": lpnum.ScaledFormat("int4", lpnum.per_block(128, 0)),
    "w mxfp8": lpnum.mx.format("mxfp8_e4m3", axis=0),
    "w mxfp4": lpnum.mx.format("mxfp4_e2m1", axis=0),
    "w nvfp4": lpnum.nvfp4.format(axis=0),
}
X_INT8 = lpnum.ScaledFormat("int8", lpnum.per_channel(0))


def times_xla_path(m: int) -> bool:
  """Whether a shape of ``m`` rows also times each format's XLA path ("(XLA path)"): on the CPU below 128 rows,
  where the default may be the native kernel."""
  return jax.default_backend() == "cpu" and m < 128


def matmul_path() -> str:
  """What ``kernels.matmul``'s default runs here: ``"pallas"`` on a GPU or TPU; on the CPU the native kernel below
  ``cpu_matmul.NATIVE_ROWS`` rows for this CPU's instruction set (4-bit codes, 8-bit integers and FP8; where it
  builds with AVX2 or AVX-512) and XLA's path otherwise."""
  if jax.default_backend() in ("gpu", "tpu"):
    return "pallas"
  isa = packed_cpu.isa()
  if isa not in packed_cpu.NATIVE_ROWS:
    return "xla"
  codes = {4: "4-bit codes", 8: "8-bit integers", "fp8": "FP8 codes"}
  return (f"native ({isa}) below " + ", ".join(f"{rows} rows for {codes[key]}" for key, rows in
                                               packed_cpu.NATIVE_ROWS[isa].items()) + ", xla otherwise")


def matmul_candidates(m: int, k: int, n: int) -> tuple[dict, dict]:
  """The candidates at one shape and the weight bytes each reads."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(m, k)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, n)), jnp.float32)
  xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  xi = jnp.asarray(rng.integers(-127, 128, (m, k)), jnp.int8)
  wi = jnp.asarray(rng.integers(-127, 128, (k, n)), jnp.int8)
  dot = jax.jit(lambda a, b: jnp.dot(a, b))
  int_dot = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.int32))
  cands = {"f32 dot": (dot, (x, w)), "bf16 dot": (dot, (xb, wb)), "int8 dot (XLA)": (int_dot, (xi, wi))}
  nbytes = {"f32 dot": 4 * k * n, "bf16 dot": 2 * k * n, "int8 dot (XLA)": k * n}
  sx, sw = jnp.asarray(rng.random((m, 1)), jnp.float32), jnp.asarray(rng.random((1, n)), jnp.float32)
  cands["int8 dot + scales (XLA)"] = (jax.jit(lambda a, b, sa, sb: (int_dot(a, b).astype(jnp.float32) * sa) * sb),
                                      (xi, wi, sx, sw))
  nbytes["int8 dot + scales (XLA)"] = k * n
  mm = jax.jit(kernels.matmul)
  mm_xla = jax.jit(lambda x, w: kernels.matmul(x, w, implementation="xla"))
  native_face = times_xla_path(m)
  for name, fmt in WEIGHT_FORMATS.items():
    pw = kernels.pack_weights(lpnum.quantize_scaled(w, fmt))
    cands[name] = (mm, (x, pw))
    nbytes[name] = pw.nbytes
    if native_face:
      cands[f"{name} (XLA path)"] = (mm_xla, (x, pw))
      nbytes[f"{name} (XLA path)"] = pw.nbytes
  pw8 = kernels.pack_weights(lpnum.quantize_scaled(w, WEIGHT_FORMATS["w int8"]))
  xq = lpnum.quantize_scaled(x, X_INT8)
  cands["W8A8 (x quantized)"] = (mm, (xq, pw8))
  cands["W8A8 (x in the call)"] = (jax.jit(lambda x, w: kernels.matmul(x, w, x_format=X_INT8)), (x, pw8))
  nbytes["W8A8 (x quantized)"] = nbytes["W8A8 (x in the call)"] = pw8.nbytes
  return cands, nbytes


def accumulator_candidates(size: int) -> dict:
  """The emulated-accumulator matmuls at ``size``^3 (bfloat16 operands, so that products are exact)."""
  rng = np.random.default_rng(1)
  a = jnp.asarray(rng.normal(size=(size, size)), jnp.bfloat16)
  b = jnp.asarray(rng.normal(size=(size, size)), jnp.bfloat16)
  dot = jax.jit(lambda a, b: jnp.dot(a.astype(jnp.float32), b.astype(jnp.float32)))
  cands = {"f32 dot": (dot, (a, b))}
  accumulators = {"float bfloat16": accumulate.FloatAccumulator("bfloat16"),
                  "float E5M6": accumulate.FloatAccumulator.ieee(5, 6),
                  "int16 saturate": accumulate.IntAccumulator(16, "saturate"),
                  "aligned 14b/32": accumulate.AlignedAccumulator(14, 32)}
  a_int = jnp.asarray(rng.integers(-8, 8, (size, size)), jnp.int8)
  b_int = jnp.asarray(rng.integers(-8, 8, (size, size)), jnp.int8)
  for name, acc in accumulators.items():
    args = (a_int, b_int) if name.startswith("int") else (a, b)
    cands[name] = (jax.jit(lambda a, b, acc=acc: accumulate.matmul(a, b, acc)), args)
  return cands


def bytes_moved(fn, args) -> int:
  """Bytes of ``fn``'s operands as stored (every array of ``args``, packed codes and scales included) and of its
  output: what one call reads and writes at least once."""
  arrays = jax.tree.leaves(args) + jax.tree.leaves(jax.eval_shape(fn, *args))
  return sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in arrays)


def run_matmuls(shapes, repeats: int) -> list[dict]:
  rows = []
  for m, k, n in progress(shapes, "matmul shapes"):
    cands, nbytes = matmul_candidates(m, k, n)
    measured = time_fns(cands, repeats=repeats, settle_s=SETTLE_S, lead_s=LEAD_S)
    flops = 2 * m * k * n
    for name, meas in measured.items():
      t = median_s(meas)
      moved = bytes_moved(*cands[name])
      rows.append({"shape": [m, k, n], "kernel": name, "measurement": meas, "weight_bytes": nbytes[name],
                   "bytes_moved": moved, "intensity": flops / moved,
                   "gb_s": None if t is None else nbytes[name] / t / 1e9,
                   "tflop_s": None if t is None else flops / t / 1e12})
    print(f"M={m} K={k} N={n} done", flush=True)
  return rows


def measure_roofs(rows: list[dict], repeats: int) -> dict:
  """The roofs of this run: memory bandwidth from a timed ``x * 2`` copy of ``BANDWIDTH_BYTES`` (bytes read plus
  written over the median time), and compute, the best float32 ``jnp.dot`` FLOP/s among ``rows``."""
  x = jnp.ones(BANDWIDTH_BYTES // 4, jnp.float32)
  meas = time_fns({"copy x * 2": (jax.jit(lambda x: x * 2), (x,))}, repeats=repeats)["copy x * 2"]
  t = median_s(meas)
  dots = [r for r in rows if r["kernel"] == "f32 dot" and r["tflop_s"]]
  best = max(dots, key=lambda r: r["tflop_s"], default=None)
  return {"bandwidth_bytes_s": None if t is None else 2 * x.nbytes / t, "bandwidth_measurement": meas,
          "bandwidth_array_bytes": int(x.nbytes),
          "compute_flop_s": None if best is None else best["tflop_s"] * 1e12,
          "compute_from": None if best is None else {"kernel": best["kernel"], "shape": best["shape"]}}


def run_accumulators(size: int, repeats: int) -> dict:
  return time_fns(accumulator_candidates(size), repeats=repeats)


def evaluate_targets(rows: list[dict], acc: dict) -> dict:
  at = {r["kernel"]: median_s(r["measurement"]) for r in rows if tuple(r["shape"]) == TARGET_SHAPE}
  speed = lambda name, base: ratio(at.get(base), at.get(name))  # throughput ratio: base time / kernel time
  f32_acc = median_s(acc.get("f32 dot"))
  return {
      "a": target("a", "W8A8 (x quantized) throughput >= XLA's int8 x int8 -> int32 dot (alone, and followed by "
                  "the output scaling) at 1024^3",
                  {"W8A8 (x quantized)": speed("W8A8 (x quantized)", "int8 dot (XLA)"),
                   "W8A8 (x quantized) vs int8 dot + scales": speed("W8A8 (x quantized)", "int8 dot + scales (XLA)")},
                  1.0, at_least=True),
      "b": target("b", "weight-only int8/int4 throughput >= 0.9x the float32 jnp.dot at 1024^3",
                  {name: speed(name, "f32 dot") for name in ("w int8", "w int4 g128")}, 0.9, at_least=True),
      "c": target("c", f"emulated float accumulators <= 50x the float32 jnp.dot at {ACC_SIZE}^3",
                  {name: ratio(median_s(meas), f32_acc) for name, meas in acc.items()
                   if name.startswith("float")}, 50.0, at_least=False),
      **decode_targets(rows),
  }


def decode_targets(rows: list[dict]) -> dict:
  """Targets (d) and (e): weight-only throughput against the float32 dot at M = 1 and M = 16, K = N = the largest
  decode size (absent when the run has no such shape)."""
  size = max(DECODE_SIZES)
  at = {m: {r["kernel"]: median_s(r["measurement"]) for r in rows if tuple(r["shape"]) == (m, size, size)}
        for m in (1, 16)}
  speed = lambda m, name: ratio(at[m].get("f32 dot"), at[m].get(name))
  out = {}
  if at[1]:
    out["d_int8"] = target("d", f"decode M=1 K=N={size}: weight-only int8 throughput >= 2x the float32 jnp.dot",
                           {"w int8": speed(1, "w int8")}, 2.0, at_least=True)
    out["d_4bit"] = target("d", f"decode M=1 K=N={size}: int4, MXFP4, NVFP4 throughput >= 3x the float32 jnp.dot",
                           {name: speed(1, name) for name in ("w int4 g128", "w mxfp4", "w nvfp4")}, 3.0, at_least=True)
  if at[16]:
    out["e"] = target("e", f"decode M=16 K=N={size}: every weight-only format >= the float32 jnp.dot",
                      {name: speed(16, name) for name in WEIGHT_FORMATS}, 1.0, at_least=True)
  return out


def format_tables(rows: list[dict], acc: dict, roofs: dict) -> str:
  bandwidth, compute = roofs["bandwidth_bytes_s"], roofs["compute_flop_s"]
  lines = [f"Roofs of this run: bandwidth {'-' if bandwidth is None else f'{bandwidth / 1e9:.1f} GB/s'} (copy of "
           f"{roofs['bandwidth_array_bytes'] / 2**20:.0f} MiB), compute "
           f"{'-' if compute is None else f'{compute / 1e12:.4f} TFLOP/s'} (best float32 dot); ridge at "
           f"{'-' if not (bandwidth and compute) else f'{compute / bandwidth:.1f}'} FLOP/B"]
  for shape in dict.fromkeys(tuple(r["shape"]) for r in rows):
    lines.append(f"\nM={shape[0]} K={shape[1]} N={shape[2]}")
    base = next(median_s(r["measurement"]) for r in rows if tuple(r["shape"]) == shape and r["kernel"] == "f32 dot")
    cells = []
    for r in (r for r in rows if tuple(r["shape"]) == shape):
      t = median_s(r["measurement"])
      cells.append({"kernel": r["kernel"], "ms": ms(r["measurement"]), "FLOP/B": f"{r['intensity']:.1f}",
                    "weight GB/s": "-" if r["gb_s"] is None else f"{r['gb_s']:.1f}",
                    "TFLOP/s": "-" if r["tflop_s"] is None else f"{r['tflop_s']:.4f}",
                    "vs f32 dot": times(ratio(base, t))})
    lines.append(table(("kernel", "ms", "FLOP/B", "weight GB/s", "TFLOP/s", "vs f32 dot"), cells))
  f32 = median_s(acc.get("f32 dot"))
  lines.append(f"\nEmulated accumulators, {ACC_SIZE}^3 (bfloat16 operands)")
  lines.append(table(("accumulator", "ms", "x f32 dot"),
                     [{"accumulator": name, "ms": ms(meas), "x f32 dot": times(ratio(median_s(meas), f32))}
                      for name, meas in acc.items()]))
  return "\n".join(lines)


def plot(rows: list[dict], roofs: dict, path: Path) -> Path | None:
  """The roofline (achieved FLOP/s against FLOPs per byte moved, the measured roofs drawn), then TFLOP/s against
  M, one panel per K = N; None if matplotlib is not installed."""
  try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return None
  sizes = sorted({r["shape"][1] for r in rows})
  kernels_ = list(dict.fromkeys(r["kernel"] for r in rows))
  colors = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(kernels_)}
  markers = dict(zip(sorted({r["shape"][0] for r in rows}), "os^Dv<>ph*"))
  fig, axes = plt.subplots(1, 1 + len(sizes), figsize=(5 * (1 + len(sizes)), 4), squeeze=False)
  roof = axes[0][0]
  done = [r for r in rows if r["tflop_s"]]
  for r in done:
    roof.scatter(r["intensity"], r["tflop_s"] * 1e12, color=colors[r["kernel"]], marker=markers[r["shape"][0]],
                 s=18 + 6 * sizes.index(r["shape"][1]), alpha=0.8)
  bandwidth, compute = roofs["bandwidth_bytes_s"], roofs["compute_flop_s"]
  if bandwidth and compute and done:
    lo = min(r["intensity"] for r in done) / 2
    hi = max(max(r["intensity"] for r in done) * 2, 2 * compute / bandwidth)
    grid = np.geomspace(lo, hi, 200)
    roof.plot(grid, np.minimum(bandwidth * grid, compute), color="black", lw=1,
              label=f"roofs: {bandwidth / 1e9:.1f} GB/s copy, {compute / 1e9:.1f} GFLOP/s f32 dot")
  for name in kernels_:
    roof.scatter([], [], color=colors[name], marker="o", label=name)
  for m, marker in markers.items():
    roof.scatter([], [], color="gray", marker=marker, label=f"M = {m}")
  roof.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOPs per byte moved)",
           ylabel="achieved FLOP/s", title="Roofline (marker size grows with K = N)")
  roof.grid(True, which="both", alpha=0.3)
  roof.legend(fontsize=6, loc="upper left")  # above the bandwidth roof, where no kernel goes
  for ax, size in zip(axes[0][1:], sizes):
    for name in kernels_:
      pts = [(r["shape"][0], r["tflop_s"]) for r in rows
             if r["kernel"] == name and r["shape"][1] == size and r["tflop_s"]]
      if pts:
        ax.plot(*zip(*pts), marker="o", color=colors[name], label=name)
    ax.set(xscale="log", yscale="log", xlabel="M (rows of x)", ylabel="TFLOP/s", title=f"K = N = {size}")
    ax.grid(True, which="both", alpha=0.3)
  axes[0][-1].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


CAST_COUNT_SIZE = 8192
CAST_SIZES = {True: 2048, False: 8192}


def cast_candidates() -> dict:
  """``name -> (fmt, keyword arguments of kernels.quantize.quantize)`` for the cast benchmark."""
  return {
      "mxfp8_e4m3": (lpnum.mx.format("mxfp8_e4m3"), {}),
      "mxfp8_e4m3 x and x.T": (lpnum.mx.format("mxfp8_e4m3"), {"transpose": "both"}),
      "mxfp6_e2m3": (lpnum.mx.format("mxfp6_e2m3"), {}),
      "mxfp4_e2m1": (lpnum.mx.format("mxfp4_e2m1"), {}),
      "mxint8": (lpnum.mx.format("mxint8"), {}),
      "nvfp4 (tensor_amax given)": (lpnum.nvfp4.format(), {"tensor_amax": np.float32(8.0)}),
      "nvfp4 (amax pass)": (lpnum.nvfp4.format(), {}),
      "fp8 e4m3 per tensor (scale given)": (lpnum.ScaledFormat("float8_e4m3fn", lpnum.per_tensor()),
                                            {"scale": np.float32(0.01)}),
      "int8 per row": (lpnum.ScaledFormat("int8", lpnum.per_channel(0)), {}),
  }


def ideal_cast_bytes(fmt, shape, dtype, sides: int) -> float:
  """One read of the input and one write of the codes and scales (per side: ``x`` and/or ``x.T``), per element."""
  block = fmt.granularity.block_shape(shape)
  per_scale = np.dtype(fmt.scale_format.code_dtype).itemsize / np.prod(block)
  return np.dtype(dtype).itemsize + sides * (fmt.element.bits / 8 + per_scale)


def _traced_traffic(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    inner = eqn.params.get("jaxpr")
    if eqn.primitive.name in ("pjit", "jit", "closed_call"):
      total += _traced_traffic(getattr(inner, "jaxpr", inner))
      continue
    size = lambda vs: sum(int(np.prod(v.aval.shape)) * np.dtype(v.aval.dtype).itemsize for v in vs
                          if hasattr(v.aval, "shape"))
    if eqn.primitive.name in ("pallas_call", "transpose", "concatenate"):
      total += size(eqn.invars) + size(eqn.outvars)
    elif eqn.primitive.name.startswith("reduce"):
      total += size(eqn.invars)
  return total


def cast_bytes(fmt, kw: dict, n: int) -> dict:
  """Bytes per element moved by each face of one cast of a bfloat16 ``(n, n)`` tensor (see the module docstring)."""
  x = jax.ShapeDtypeStruct((n, n), jnp.bfloat16)
  xla = jax.jit(lambda x: kernels.quantize.quantize(x, fmt, implementation="xla", **kw)).lower(x).compile()
  analysis = xla.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, list) else analysis
  pallas = jax.make_jaxpr(lambda x: kernels.quantize.quantize(x, fmt, implementation="pallas", platform="tpu",
                                                              **kw))(x)
  sides = 2 if kw.get("transpose") == "both" else 1
  return {"ideal": ideal_cast_bytes(fmt, (n, n), jnp.bfloat16, sides),
          "xla": float(analysis["bytes accessed"]) / n / n, "pallas": _traced_traffic(pallas.jaxpr) / n / n}


def run_casts(quick: bool, repeats: int) -> list[dict]:
  n = CAST_SIZES[quick]
  x = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
  accelerator = jax.default_backend() in ("gpu", "tpu")
  cands, rows = {}, []
  for name, (fmt, kw) in progress(cast_candidates().items(), "casts"):
    cands[f"{name} / xla"] = (jax.jit(lambda x, fmt=fmt, kw=kw: kernels.quantize.quantize(
        x, fmt, implementation="xla", **kw)), (x,))
    if accelerator:
      cands[f"{name} / pallas"] = (jax.jit(lambda x, fmt=fmt, kw=kw: kernels.quantize.quantize(
          x, fmt, implementation="pallas", **kw)), (x,))
    rows.append({"cast": name, "bytes_per_element": cast_bytes(fmt, kw, CAST_COUNT_SIZE), "size": n})
  measured = time_fns(cands, repeats=repeats)
  for r in rows:
    r["measurement"] = {face: measured.get(f"{r['cast']} / {face}") for face in ("xla", "pallas")}
  return rows


def format_casts(rows: list[dict]) -> str:
  n = rows[0]["size"] if rows else 0
  lines = [f"Casts of a bfloat16 tensor: bytes moved per element at {CAST_COUNT_SIZE}^2 (ideal: one read of x, one "
           f"write of codes and scales); time at {n}^2"]
  cells = []
  for r in rows:
    b, m = r["bytes_per_element"], r["measurement"]
    cells.append({"cast": r["cast"], "ideal B/el": f"{b['ideal']:.3f}", "xla B/el": f"{b['xla']:.3f}",
                  "xla / ideal": f"{b['xla'] / b['ideal']:.2f}", "pallas B/el": f"{b['pallas']:.3f}",
                  "pallas / ideal": f"{b['pallas'] / b['ideal']:.2f}", "xla ms": ms(m["xla"]),
                  "pallas ms": ms(m["pallas"])})
  lines.append(table(("cast", "ideal B/el", "xla B/el", "xla / ideal", "pallas B/el", "pallas / ideal", "xla ms",
                      "pallas ms"), cells))
  return "\n".join(lines)


GROUPED_EXPERTS = 8
#: ``(M tokens, K = N)`` of the grouped-matmul section.
GROUPED_FULL = ((8, 4096), (64, 4096), (512, 4096))
GROUPED_QUICK = ((8, 1024), (64, 1024))
#: Relative group sizes of the experts: ragged, one expert without tokens.
GROUP_WEIGHTS = (3, 1, 0, 2, 5, 1, 4, 2)
GROUPED_FORMATS = {
    "int8": lpnum.ScaledFormat("int8", lpnum.per_channel(1)),
    "int4 g128": lpnum.ScaledFormat("int4", lpnum.per_block(128, 0)),
    "mxfp4": lpnum.mx.format("mxfp4_e2m1", axis=0),
    "nvfp4": lpnum.nvfp4.format(axis=0),
    "fp8 e4m3": lpnum.ScaledFormat("float8_e4m3fn", lpnum.per_channel(1)),
}


def group_sizes(m: int, experts: int) -> np.ndarray:
  """``m`` rows split over ``experts`` in the proportions of ``GROUP_WEIGHTS`` (cycled), the remainder to the last."""
  weights = np.resize(np.asarray(GROUP_WEIGHTS), experts)
  sizes = m * weights // weights.sum()
  sizes[-1] += m - sizes.sum()
  return sizes.astype(np.int32)


def _expert_loop(x: jax.Array, w: jax.Array, sizes: jax.Array) -> jax.Array:
  """The float32 loop over experts: each expert's product with every row, kept for its rows."""
  ends = jnp.cumsum(sizes)
  rows = jnp.arange(x.shape[0])[:, None]
  y = jnp.zeros((x.shape[0], w.shape[2]), jnp.float32)
  for e in range(w.shape[0]):
    y = jnp.where((rows >= ends[e] - sizes[e]) & (rows < ends[e]), jnp.dot(x, w[e]), y)
  return y


def grouped_candidates(experts: int, m: int, k: int, n: int) -> tuple[dict, dict]:
  """The grouped-matmul candidates at one shape and the weight bytes each reads."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(m, k)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(experts, k, n)), jnp.float32)
  sizes = jnp.asarray(group_sizes(m, experts))
  ragged = jax.jit(lambda x, w, s: jax.lax.ragged_dot(x, w, s))
  cands = {"ragged_dot f32": (ragged, (x, w, sizes)),
           "ragged_dot bf16": (ragged, (x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), sizes)),
           "f32 expert loop": (jax.jit(_expert_loop), (x, w, sizes))}
  nbytes = {"ragged_dot f32": 4 * w.size, "ragged_dot bf16": 2 * w.size, "f32 expert loop": 4 * w.size}
  grouped = jax.jit(gm.grouped_matmul)
  grouped_xla = jax.jit(lambda x, w, s: gm.grouped_matmul(x, w, s, implementation="xla"))
  for name, fmt in GROUPED_FORMATS.items():
    gw = gm.pack_experts(gm.quantize_experts(w, fmt))
    cands[f"grouped {name}"] = (grouped, (x, gw, sizes))
    nbytes[f"grouped {name}"] = gw.nbytes
    if times_xla_path(m):
      cands[f"grouped {name} (XLA path)"] = (grouped_xla, (x, gw, sizes))
      nbytes[f"grouped {name} (XLA path)"] = gw.nbytes
  return cands, nbytes


def run_grouped(shapes, experts: int, repeats: int) -> list[dict]:
  rows = []
  for m, size in progress(shapes, "grouped matmul shapes"):
    cands, nbytes = grouped_candidates(experts, m, size, size)
    for name, meas in time_fns(cands, repeats=repeats, settle_s=SETTLE_S, lead_s=LEAD_S).items():
      rows.append({"shape": [experts, m, size, size], "kernel": name, "measurement": meas,
                   "weight_bytes": nbytes[name], "group_sizes": group_sizes(m, experts).tolist()})
    print(f"grouped E={experts} M={m} K=N={size} done", flush=True)
  return rows


def format_grouped(rows: list[dict]) -> str:
  lines = []
  for shape in dict.fromkeys(tuple(r["shape"]) for r in rows):
    e, m, k, n = shape
    at = [r for r in rows if tuple(r["shape"]) == shape]
    lines.append(f"\nGrouped matmul, E={e} experts, M={m} tokens (group sizes {at[0]['group_sizes']}), K={k} N={n}")
    base = next(median_s(r["measurement"]) for r in at if r["kernel"] == "ragged_dot f32")
    lines.append(table(("kernel", "ms", "vs ragged_dot f32", "weight MB"),
                       [{"kernel": r["kernel"], "ms": ms(r["measurement"]),
                         "vs ragged_dot f32": times(ratio(base, median_s(r["measurement"]))),
                         "weight MB": f"{r['weight_bytes'] / 2**20:.1f}"} for r in at]))
  return "\n".join(lines)


def main(argv=None) -> Path:
  parser = arg_parser("kernels", __doc__, quick="M in (1, 128), K = N = 1024, and the decode regime; 3 repeats",
                      repeats=QuickDefault(5, 3))
  args = parse_args(parser, argv)
  sizes, m_values = (QUICK_SIZES, QUICK_M) if args.quick else (FULL_SIZES, FULL_M)
  shapes = [(m, s, s) for s in sizes for m in m_values]
  shapes += [(m, s, s) for s in DECODE_SIZES for m in DECODE_M if (m, s, s) not in shapes]
  if TARGET_SHAPE not in shapes:
    shapes.append(TARGET_SHAPE)
  rows = run_matmuls(shapes, args.repeats)
  roofs = measure_roofs(rows, args.repeats)
  acc = run_accumulators(ACC_SIZE, args.repeats)
  grouped = run_grouped(GROUPED_QUICK if args.quick else GROUPED_FULL, GROUPED_EXPERTS, args.repeats)
  targets = evaluate_targets(rows, acc)
  casts = run_casts(args.quick, args.repeats)
  print(format_tables(rows, acc, roofs))
  print()
  print(format_grouped(grouped))
  print()
  print(format_casts(casts))
  print()
  print(format_targets(targets))
  path = write_json("kernels", {"config": {"repeats": args.repeats, "quick": args.quick, "shapes": shapes,
                                           "path": matmul_path(),
                                           "accumulator_size": ACC_SIZE},
                                "roofs": roofs, "matmul": rows, "accumulators": acc, "targets": targets,
                                "casts": casts, "grouped": grouped}, args.out)
  png = plot(rows, roofs, path.with_suffix(".png"))
  if png is not None:
    print(f"wrote {png}")
  return path


if __name__ == "__main__":
  main()
