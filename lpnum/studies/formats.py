"""Format accuracy study: quantization SQNR of every named format on heavy- and light-tailed data.

Each tensor is scaled per tensor before rounding: absmax onto the format's max finite value (integers,
floats, power-of-two formats; never by less than 2^-64, which keeps wide formats such as bfloat16 in range),
RMS onto 1 for posits, whose precision is densest around 1, and mean |x| for binary (XNOR-Net's scale).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lpnum import _bits
from lpnum.formats import ALL_FORMATS, BinaryFormat, Format, PositFormat
from lpnum.quantize import quantize

#: Distributions sampled by the study, by name.
DISTRIBUTIONS = ("gaussian", "laplace", "student_t3")


def sample(name: str, n: int, seed: int = 0) -> np.ndarray:
  """``n`` float32 samples of a named distribution (numpy's generator, fixed seed)."""
  rng = np.random.default_rng(seed)
  if name == "gaussian":
    x = rng.standard_normal(n)
  elif name == "laplace":
    x = rng.laplace(size=n)
  elif name == "student_t3":
    x = rng.standard_t(3, size=n)
  else:
    raise ValueError(f"distribution={name!r}; expected one of {list(DISTRIBUTIONS)}")
  return x.astype(np.float32)


def sqnr_db(x: np.ndarray, q: np.ndarray) -> float:
  """Signal-to-quantization-noise ratio ``10 log10(sum x^2 / sum (x - q)^2)`` in dB, computed in float64."""
  x64, q64 = np.asarray(x, np.float64), np.asarray(q, np.float64)
  noise = float(np.sum((x64 - q64) ** 2))
  signal = float(np.sum(x64**2))
  return math.inf if noise == 0 else 10.0 * math.log10(signal / noise)


@dataclasses.dataclass(frozen=True)
class Row:
  format: str
  bits: int
  distribution: str
  sqnr_db: float

  @property
  def sqnr_per_bit(self) -> float:
    return self.sqnr_db / self.bits


def _scale(fmt: Format, x: jax.Array) -> jax.Array:
  if isinstance(fmt, PositFormat):
    return jnp.sqrt(jnp.mean(x * x))
  if isinstance(fmt, BinaryFormat):
    return jnp.mean(jnp.abs(x))
  return jnp.maximum(jnp.max(jnp.abs(x)) / np.float32(fmt.max_finite), np.float32(2.0**-64))


def run(formats: Sequence[Format] = ALL_FORMATS, n: int = 1 << 16, seed: int = 0) -> list[Row]:
  """SQNR of each format on each distribution; formats that cannot hold float32 values are skipped."""
  rows = []
  data = {d: jnp.asarray(sample(d, n, seed)) for d in DISTRIBUTIONS}
  for fmt in formats:
    if fmt._fits(_bits.F32) is not None:
      continue

    @jax.jit
    def fake_quant(x, fmt=fmt):
      s = _scale(fmt, x)
      return quantize(x / s, fmt) * s

    for dist, x in data.items():
      rows.append(Row(fmt.name, fmt.bits, dist, sqnr_db(np.asarray(x), np.asarray(fake_quant(x)))))
  return rows


def table(rows: Sequence[Row]) -> str:
  """A text table: one line per format, SQNR per distribution, ranked by mean SQNR per bit."""
  by_fmt: dict[str, dict[str, float]] = {}
  bits: dict[str, int] = {}
  for r in rows:
    by_fmt.setdefault(r.format, {})[r.distribution] = r.sqnr_db
    bits[r.format] = r.bits
  order = sorted(by_fmt, key=lambda f: -np.mean([v / bits[f] for v in by_fmt[f].values()]))
  head = f"{'format':<22}{'bits':>5}" + "".join(f"{d:>13}" for d in DISTRIBUTIONS) + f"{'dB/bit':>9}"
  lines = [head, "-" * len(head)]
  for f in order:
    vals = [by_fmt[f].get(d, math.nan) for d in DISTRIBUTIONS]
    per_bit = float(np.mean(vals)) / bits[f]
    lines.append(f"{f:<22}{bits[f]:>5}" + "".join(f"{v:>13.2f}" for v in vals) + f"{per_bit:>9.2f}")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[Row]:
  """``lpnum study formats [--quick] [--out DIR]``."""
  from lpnum.studies._common import arg_parser, parse_args

  args = parse_args(arg_parser("formats", __doc__, quick="2^14 values per distribution instead of 2^20"), argv)
  quick, out = args.quick, args.out
  start = time.perf_counter()
  rows = run(n=1 << 14 if quick else 1 << 20, seed=args.seed)
  print("SQNR (dB) after per-tensor scaling; ranked by SQNR per bit")
  print(table(rows))
  print(f"({time.perf_counter() - start:.1f} s)")
  if out:
    import pathlib

    path = pathlib.Path(out)
    path.mkdir(parents=True, exist_ok=True)
    (path / "formats_study.json").write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=1))
  return rows
