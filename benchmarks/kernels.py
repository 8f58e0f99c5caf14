"""Kernel microbenchmarks: packed low-bit matmul and emulated accumulators against jnp.dot.

``python -m benchmarks.kernels [--quick] [--repeats N] [--out DIR]`` (also ``lpnum bench kernels``) times, for a
sweep of shapes (M in 1, 16, 128, 1024; K = N in 1024, 4096, 8192), every kernel side by side in one run with the
unquantized ``jnp.dot`` in float32 and bfloat16 and XLA's own int8 x int8 -> int32 dot, and prints the time, the
effective GB/s of weight bytes read and the TFLOP/s. ``lpnum.kernels.matmul`` runs its default path: the Pallas
kernels on a GPU or TPU, the XLA implementation on the CPU (the JSON records which).

Kernels: weight-only int8 (per channel), int4 (groups of 128), MXFP8, MXFP4 and NVFP4 with float32 x; W8A8 (int8
x per row, int8 W per channel) both with x already quantized (the kernel alone) and quantized in the call. At
512^3 it also times the emulated low-precision accumulators of ``lpnum.kernels.accumulate``.

Targets (CPU, ratios in one run, at M = K = N = 1024 unless said):

- (a) W8A8 with x already quantized: at least the throughput of XLA's int8 x int8 -> int32 dot.
- (b) weight-only int8 and int4: at least 0.9x the throughput of the float32 jnp.dot.
- (c) the emulated float accumulator matmul (bfloat16 and E5M6, nearest-even, sequential): at most 50x the
  float32 jnp.dot at 512^3.

Writes ``kernels.json`` and, when matplotlib is installed, ``kernels.png`` (TFLOP/s against M, one panel per K = N).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import lpnum
from lpnum import kernels

from ._report import (QuickDefault, arg_parser, format_targets, median_s, ms, parse_args, ratio, table, target,
                      times, write_json)
from ._timing import time_fns

FULL_M = (1, 16, 128, 1024)
FULL_SIZES = (1024, 4096, 8192)
QUICK_M = (1, 128)
QUICK_SIZES = (1024,)
TARGET_SHAPE = (1024, 1024, 1024)
ACC_SIZE = 512

WEIGHT_FORMATS = {
    "w int8": lpnum.ScaledFormat("int8", lpnum.per_channel(1)),
    "w int4 g128": lpnum.ScaledFormat("int4", lpnum.per_block(128, 0)),
    "w mxfp8": lpnum.mx.format("mxfp8_e4m3", axis=0),
    "w mxfp4": lpnum.mx.format("mxfp4_e2m1", axis=0),
    "w nvfp4": lpnum.nvfp4.format(axis=0),
}
X_INT8 = lpnum.ScaledFormat("int8", lpnum.per_channel(0))


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
  mm = jax.jit(kernels.matmul)
  for name, fmt in WEIGHT_FORMATS.items():
    pw = kernels.pack_weights(lpnum.quantize_scaled(w, fmt))
    cands[name] = (mm, (x, pw))
    nbytes[name] = pw.nbytes
  pw8 = kernels.pack_weights(lpnum.quantize_scaled(w, WEIGHT_FORMATS["w int8"]))
  xq = lpnum.quantize_scaled(x, X_INT8)
  cands["W8A8 (x quantized)"] = (mm, (xq, pw8))
  cands["W8A8 (x in the call)"] = (jax.jit(lambda x, w: kernels.matmul(x, w, x_format=X_INT8)), (x, pw8))
  nbytes["W8A8 (x quantized)"] = nbytes["W8A8 (x in the call)"] = pw8.nbytes
  return cands, nbytes


def accumulator_candidates(size: int) -> dict:
  """The emulated-accumulator matmuls at ``size``^3 (bfloat16 operands, so that products are exact)."""
  from lpnum.kernels import accumulate

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


def run_matmuls(shapes, repeats: int) -> list[dict]:
  rows = []
  for m, k, n in shapes:
    cands, nbytes = matmul_candidates(m, k, n)
    measured = time_fns(cands, repeats=repeats)
    for name, meas in measured.items():
      t = median_s(meas)
      rows.append({"shape": [m, k, n], "kernel": name, "measurement": meas, "weight_bytes": nbytes[name],
                   "gb_s": None if t is None else nbytes[name] / t / 1e9,
                   "tflop_s": None if t is None else 2 * m * k * n / t / 1e12})
    print(f"M={m} K={k} N={n} done", flush=True)
  return rows


def run_accumulators(size: int, repeats: int) -> dict:
  return time_fns(accumulator_candidates(size), repeats=repeats)


def evaluate_targets(rows: list[dict], acc: dict) -> dict:
  at = {r["kernel"]: median_s(r["measurement"]) for r in rows if tuple(r["shape"]) == TARGET_SHAPE}
  speed = lambda name, base: ratio(at.get(base), at.get(name))  # throughput ratio: base time / kernel time
  f32_acc = median_s(acc.get("f32 dot"))
  return {
      "a": target("a", "W8A8 (x quantized) throughput >= XLA's int8 x int8 -> int32 dot at 1024^3",
                  {"W8A8 (x quantized)": speed("W8A8 (x quantized)", "int8 dot (XLA)")}, 1.0, at_least=True),
      "b": target("b", "weight-only int8/int4 throughput >= 0.9x the float32 jnp.dot at 1024^3",
                  {name: speed(name, "f32 dot") for name in ("w int8", "w int4 g128")}, 0.9, at_least=True),
      "c": target("c", f"emulated float accumulators <= 50x the float32 jnp.dot at {ACC_SIZE}^3",
                  {name: ratio(median_s(meas), f32_acc) for name, meas in acc.items()
                   if name.startswith("float")}, 50.0, at_least=False),
  }


def format_tables(rows: list[dict], acc: dict) -> str:
  lines = []
  for shape in dict.fromkeys(tuple(r["shape"]) for r in rows):
    lines.append(f"\nM={shape[0]} K={shape[1]} N={shape[2]}")
    base = next(median_s(r["measurement"]) for r in rows if tuple(r["shape"]) == shape and r["kernel"] == "f32 dot")
    cells = []
    for r in (r for r in rows if tuple(r["shape"]) == shape):
      t = median_s(r["measurement"])
      cells.append({"kernel": r["kernel"], "ms": ms(r["measurement"]),
                    "weight GB/s": "-" if r["gb_s"] is None else f"{r['gb_s']:.1f}",
                    "TFLOP/s": "-" if r["tflop_s"] is None else f"{r['tflop_s']:.4f}",
                    "vs f32 dot": times(ratio(base, t))})
    lines.append(table(("kernel", "ms", "weight GB/s", "TFLOP/s", "vs f32 dot"), cells))
  f32 = median_s(acc.get("f32 dot"))
  lines.append(f"\nEmulated accumulators, {ACC_SIZE}^3 (bfloat16 operands)")
  lines.append(table(("accumulator", "ms", "x f32 dot"),
                     [{"accumulator": name, "ms": ms(meas), "x f32 dot": times(ratio(median_s(meas), f32))}
                      for name, meas in acc.items()]))
  return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> Path | None:
  """TFLOP/s against M, one panel per K = N; None if matplotlib is not installed."""
  try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return None
  sizes = sorted({r["shape"][1] for r in rows})
  fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4), squeeze=False)
  for ax, size in zip(axes[0], sizes):
    for name in dict.fromkeys(r["kernel"] for r in rows):
      pts = [(r["shape"][0], r["tflop_s"]) for r in rows
             if r["kernel"] == name and r["shape"][1] == size and r["tflop_s"]]
      if pts:
        ax.plot(*zip(*pts), marker="o", label=name)
    ax.set(xscale="log", yscale="log", xlabel="M (rows of x)", ylabel="TFLOP/s", title=f"K = N = {size}")
    ax.grid(True, which="both", alpha=0.3)
  axes[0][-1].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def main(argv=None) -> Path:
  parser = arg_parser("kernels", __doc__, quick="M in (1, 128), K = N = 1024, 3 repeats",
                      repeats=QuickDefault(5, 3))
  args = parse_args(parser, argv)
  sizes, m_values = (QUICK_SIZES, QUICK_M) if args.quick else (FULL_SIZES, FULL_M)
  shapes = [(m, s, s) for s in sizes for m in m_values]
  if TARGET_SHAPE not in shapes:
    shapes.append(TARGET_SHAPE)
  rows = run_matmuls(shapes, args.repeats)
  acc = run_accumulators(ACC_SIZE, args.repeats)
  targets = evaluate_targets(rows, acc)
  print(format_tables(rows, acc))
  print()
  print(format_targets(targets))
  path = write_json("kernels", {"config": {"repeats": args.repeats, "quick": args.quick, "shapes": shapes,
                                           "path": "pallas" if jax.default_backend() in ("gpu", "tpu") else "xla",
                                           "accumulator_size": ACC_SIZE},
                                "matmul": rows, "accumulators": acc, "targets": targets}, args.out)
  png = plot(rows, path.with_suffix(".png"))
  if png is not None:
    print(f"wrote {png}")
  return path


if __name__ == "__main__":
  main()
