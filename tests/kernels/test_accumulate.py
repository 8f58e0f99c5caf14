"""Emulated accumulators (lpnum.kernels.accumulate) against an independent pure-Python reference.

The reference here knows nothing of the implementation: products and sums are exact ``fractions.Fraction``s,
integer accumulators are Python ints wrapped or clamped after every addition, and rounding to an (e, m) format is
written out the obvious way (scale to the grid step of the value's binade, round half to even, inf beyond the
largest finite value). Float32 steps (products of float32 inputs, chunk sums) are rounded to (8, 23) the same way.
Every backend (reference, XLA, both Pallas kernels in interpret mode) must match it bit for bit; float results are
compared as bit patterns. Inputs keep every float32 product and sum out of float32's subnormal range, which XLA
on the CPU flushes to zero (the emulation documents that).

Stochastic rounding is checked statistically: the mean of N = 2000 independent results (keys split from one key)
of a dot product whose partial sums fall strictly between bfloat16 neighbours must be within 5 standard errors of
the exact value (a false failure about once in 3.5 million runs with fixed keys). Float32 accumulators (m = 23)
are checked one addition at a time against the exact sum's two float32 neighbours and the exact probability of
the upper one (``fractions.Fraction``): every result is a neighbour, exact sums never move, and the count of N =
20000 draws going up is within 5 standard deviations of N p.

``-m slow`` adds the widest exact accumulators, more kernel configurations and more lowering variants.
"""

from __future__ import annotations

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lpnum
from lpnum.kernels.accumulate import (AccumulatorStats, AlignedAccumulator, ExactAccumulator, FloatAccumulator,
                                      IntAccumulator, a2q_bound, matmul, reference_matmul)

IMPLEMENTATIONS = ["reference", "xla", "pallas_tpu", "pallas_gpu"]
FAST = ["reference", "xla"]


# ---- the independent reference -----------------------------------------------------------------------------
def round_to(x: Fraction, e: int, m: int, bias: int) -> float:
  """Nearest-even rounding of a nonzero exact value to the IEEE-style format (e, m, bias); +-inf on overflow."""
  sign = -1 if x < 0 else 1
  mag = abs(x)
  exp = mag.numerator.bit_length() - mag.denominator.bit_length()
  if Fraction(2) ** exp > mag:
    exp -= 1
  emin, emax = 1 - bias, (1 << e) - 2 - bias
  step = Fraction(2) ** (max(exp, emin) - m)
  n = mag / step
  q = math.floor(n)
  if n - q > Fraction(1, 2) or (n - q == Fraction(1, 2) and q % 2 == 1):
    q += 1
  value = q * step
  if value > (2 - Fraction(1, 2**m)) * Fraction(2) ** emax:
    return sign * math.inf
  return sign * float(value) if value else (-0.0 if sign < 0 else 0.0)


def ieee_add(x: float, y: float, e: int, m: int, bias: int) -> float:
  """``x + y`` rounded once to (e, m, bias) with IEEE signed zeros and specials."""
  if not (math.isfinite(x) and math.isfinite(y)):
    return x + y
  exact = Fraction(x) + Fraction(y)
  if exact == 0:
    return -0.0 if math.copysign(1, x) < 0 and math.copysign(1, y) < 0 else 0.0
  return round_to(exact, e, m, bias)


def f32_add(x: float, y: float) -> float:
  return ieee_add(x, y, 8, 23, 127)


def product(x, y) -> float:
  """The float32 product of two float32-representable values (rounded once, nearest even)."""
  if not (math.isfinite(x) and math.isfinite(y)):
    return float(np.float32(x) * np.float32(y))
  exact = Fraction(x) * Fraction(y)
  if exact == 0:
    return -0.0 if (math.copysign(1, x) < 0) != (math.copysign(1, y) < 0) else 0.0
  return round_to(exact, 8, 23, 127)


def chunks(k: int, c: int | None) -> list[range]:
  c = c or k
  return [range(lo, min(lo + c, k)) for lo in range(0, k, c)]


def py_int(a: np.ndarray, b: np.ndarray, bits: int, overflow: str, chunk=None, order="sequential"):
  lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1

  def add(x, y):
    s = x + y
    if lo <= s <= hi:
      return s, False
    if overflow == "saturate":
      return min(max(s, lo), hi), True
    return (s - lo) % (1 << bits) + lo, True

  m, k = a.shape
  n = b.shape[1]
  out, over = np.zeros((m, n), np.int64), np.zeros((m, n), bool)
  for i in range(m):
    for j in range(n):
      p = [int(a[i, t]) * int(b[t, j]) for t in range(k)]
      flag = False
      if order == "pairwise":
        nodes = []
        for v in p:
          v, f = add(0, v)
          nodes.append(v)
          flag |= f
        while len(nodes) > 1:
          level = []
          for t in range(0, len(nodes) - 1, 2):
            v, f = add(nodes[t], nodes[t + 1])
            level.append(v)
            flag |= f
          nodes = level + nodes[len(nodes) - len(nodes) % 2:]
        total = nodes[0] if nodes else 0
      else:
        total = 0
        for r in chunks(k, chunk):
          inner = 0
          for t in r:
            inner, f = add(inner, p[t])
            flag |= f
          if chunk is None:
            total = inner
          else:
            total, f = add(total, inner)
            flag |= f
      out[i, j], over[i, j] = total, flag
  return out, over


def py_float(a, b, e: int, m: int, bias: int, chunk=None):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  rows, k = a.shape
  out, over = np.zeros((rows, b.shape[1])), np.zeros((rows, b.shape[1]), bool)
  for i in range(rows):
    for j in range(b.shape[1]):
      total, flag = 0.0, False
      for r in chunks(k, chunk):
        inner = 0.0
        for t in r:
          p = product(a[i, t], b[t, j])
          new = ieee_add(inner, p, e, m, bias)
          flag |= math.isfinite(inner) and math.isfinite(p) and not math.isfinite(new)
          inner = new
        if chunk is None:
          total = inner
        else:
          new = f32_add(total, inner)
          flag |= math.isfinite(total) and math.isfinite(inner) and not math.isfinite(new)
          total = new
      out[i, j], over[i, j] = total, flag
  return out.astype(np.float32), over


def py_aligned(a, b, product_bits: int, chunk: int):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  rows, k = a.shape
  out = np.zeros((rows, b.shape[1]))
  for i in range(rows):
    for j in range(b.shape[1]):
      total = 0.0
      for r in chunks(k, chunk):
        p = [Fraction(a[i, t]) * Fraction(b[t, j]) for t in r]
        nonzero = [abs(v) for v in p if v]
        if not nonzero:
          total = f32_add(total, 0.0)
          continue
        emax = max(math.floor(math.log2(v)) for v in nonzero)
        while any(Fraction(2) ** (emax + 1) <= v for v in nonzero):  # guard the float log2 at binade edges
          emax += 1
        while all(Fraction(2) ** emax > v for v in nonzero):
          emax -= 1
        unit = Fraction(2) ** (emax - product_bits)
        units = sum(int(v / unit) for v in p)  # int() of a Fraction truncates toward zero
        s = round_to(units * unit, 8, 23, 127) if units else 0.0
        total = f32_add(total, s)
      out[i, j] = total
  return out.astype(np.float32)


def py_exact(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  out = np.zeros((a.shape[0], b.shape[1]))
  for i in range(a.shape[0]):
    for j in range(b.shape[1]):
      terms = [float(a[i, t]) * float(b[t, j]) for t in range(a.shape[1])
               if not (math.isfinite(a[i, t]) and math.isfinite(b[t, j]))]
      if terms:
        out[i, j] = sum(terms)
        continue
      s = sum((Fraction(a[i, t]) * Fraction(b[t, j]) for t in range(a.shape[1])), Fraction(0))
      out[i, j] = round_to(s, 8, 23, 127) if s else 0.0
  return out.astype(np.float32)


# ---- helpers -----------------------------------------------------------------------------------------------
def bits_of(x) -> np.ndarray:
  x = np.asarray(x)
  return x.view(np.uint32) if x.dtype == np.float32 else x.astype(np.int64)


def assert_same(got, want, what=""):
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape, (what, got.shape, want.shape)
  np.testing.assert_array_equal(bits_of(got), bits_of(want), err_msg=what)


def run(a, b, acc, backend, **kw):
  """``matmul`` on one backend (Pallas in interpret mode), returning (out, overflowed)."""
  if backend.startswith("pallas"):
    kw["interpret"] = True
  if backend == "reference":
    out, stats = reference_matmul(a, b, acc, return_stats=True, **kw)
  else:
    out, stats = matmul(a, b, acc, implementation=backend, return_stats=True, **kw)
  return np.asarray(out), np.asarray(stats.overflowed)


def check_all(a, b, acc, want, want_over=None, backends=IMPLEMENTATIONS, **kw):
  for backend in backends:
    out, over = run(a, b, acc, backend, **kw)
    assert_same(out, want, backend)
    if want_over is not None:
      np.testing.assert_array_equal(over, want_over, err_msg=backend)


rng = np.random.default_rng(1234)


def ints(shape, lo=-128, hi=127, dtype=np.int8):
  return rng.integers(lo, hi + 1, shape).astype(dtype)


def floats(shape, dtype, scale=1.0):
  return (rng.standard_normal(shape) * scale).astype(dtype)


# ---- the Python reference itself -----------------------------------------------------------------------------
def test_python_rounding_matches_ml_dtypes():
  x = floats((4000,), np.float64, 3.0) * np.exp2(rng.integers(-20, 12, 4000))
  for e, m, bias, dt in ((5, 10, 15, np.float16), (8, 7, 127, ml_dtypes.bfloat16), (4, 3, 7, ml_dtypes.float8_e4m3),
                         (8, 23, 127, np.float32)):
    want = x.astype(dt).astype(np.float64)
    got = np.array([round_to(Fraction(v), e, m, bias) for v in x])
    np.testing.assert_array_equal(got, want, err_msg=str(dt))


# ---- integer accumulators ----------------------------------------------------------------------------------
@pytest.mark.parametrize("bits, overflow, chunk, order, backends", [
    (12, "saturate", None, "sequential", IMPLEMENTATIONS),
    (13, "saturate", 5, "sequential", FAST),
    (12, "saturate", None, "pairwise", ["reference", "xla", "pallas_gpu"]),
    (12, "wrap", None, "sequential", FAST),
    (10, "wrap", 5, "sequential", ["xla"]),
    (10, "wrap", None, "pairwise", ["xla"]),
])
def test_int_matches_python(bits, overflow, chunk, order, backends):
  a, b = ints((3, 37), -40, 40), ints((37, 4), -40, 40)
  a[0] = ints(37, -1, 1)  # a row that stays in range
  want, want_over = py_int(a, b, bits, overflow, chunk, order)
  assert want_over.any() and not want_over.all()
  check_all(a, b, IntAccumulator(bits, overflow), want, want_over, backends, chunk=chunk, order=order)


@pytest.mark.parametrize("bits, overflow, order", [(3, "wrap", "pairwise"), (3, "saturate", "sequential"),
                                                   (32, "wrap", "sequential"), (32, "saturate", "pairwise")])
def test_int_extreme_widths(bits, overflow, order):
  hi = 2**15 - 1 if bits == 32 else 3
  a, b = ints((2, 19), -hi - 1, hi, np.int16), ints((19, 3), -hi - 1, hi, np.int16)
  a[0, :] = -hi - 1  # products at the extremes: the int32 sum itself wraps for bits=32
  want, want_over = py_int(a, b, bits, overflow, None, order)
  assert want_over.any()
  check_all(a, b, IntAccumulator(bits, overflow), want, want_over, ["xla"], order=order)


def test_saturation_depends_on_the_order_wrap_does_not():
  a = np.array([[100, 100, -100, -100, 50]], np.int8)
  b = np.ones((5, 1), np.int8)
  sat, wrap = IntAccumulator(8, "saturate"), IntAccumulator(8, "wrap")
  results = {order: int(matmul(a, b, sat, order=order)[0, 0]) for order in ("sequential", "pairwise")}
  assert results == {"sequential": -23, "pairwise": 49}
  assert int(matmul(a, b, sat, chunk=2)[0, 0]) == 49
  wrapped = {int(matmul(a, b, wrap, order=o)[0, 0]) for o in ("sequential", "pairwise")}
  assert wrapped == {int(matmul(a, b, wrap, chunk=2)[0, 0])} == {50}


def test_int_unsigned_and_mixed_inputs():
  a = ints((3, 21), 0, 255, np.uint8)
  b = ints((21, 2), -2**15, 2**15 - 1, np.int16)
  want, want_over = py_int(a, b, 24, "saturate")
  check_all(a, b, IntAccumulator(24, "saturate"), want, want_over, ["xla"])


def test_int_wrap_fast_path_matches_the_loop():
  a, b = ints((6, 300)), ints((300, 5))
  acc = IntAccumulator(9, "wrap")
  want, _ = py_int(a, b, 9, "wrap")
  assert_same(matmul(a, b, acc, implementation="xla"), want)  # int32 dot, then wrapped
  assert_same(run(a, b, acc, "xla")[0], want)  # the loop (stats force it)


# ---- float accumulators ------------------------------------------------------------------------------------
def float16_cases():
  """Random rows, then one row per edge case; the edge rows see zeros for the first 21 products and their case in
  the last 8 (column 3 negates them). K = 29 is padded inside the kernels."""
  big, near = 49152.0, 1 + 2.0**-7
  cases = [
      [1.0, -1.0],  # cancellation: +0
      [-0.0] * 8,  # -0 products, but the accumulator starts at +0: +0
      [-2.0**-30] + [-0.0] * 7,  # underflows to -0 in float16 and stays -0 (not turned +0 by padding)
      [2048.0, 1.0, 1.0, 1.0],  # ties to even: 2048, 2048, 2048
      [2048.0, 2.0, 1.0],  # 2050, then the tie 2051 goes up to the even 2052
      [2048.0, 2.0, 0, 0, 0, 0, 0, near],  # + (1 - 2^-14): 2050 (rounding the float32 sum again gives 2052)
      [big, big, -big],  # overflow to inf (flagged), inf - big stays inf
      [1.0, np.inf, 1.0],  # inf product: inf, not an overflow
      [np.inf, -np.inf, 1.0],  # NaN
      [np.nan, 1.0],  # NaN
  ]
  a = np.zeros((3 + len(cases), 29))
  a[:3, :21] = rng.standard_normal((3, 21)) * 8
  for i, case in enumerate(cases):
    a[3 + i, 21:21 + len(case)] = case
  b = np.zeros((29, 4))
  b[:21] = rng.standard_normal((21, 4)) * 8
  b[21:] = 1.0
  b[28] = 1 - 2.0**-7
  b[21:, 3] *= -1
  return a.astype(ml_dtypes.bfloat16), b.astype(ml_dtypes.bfloat16)


def test_float16_matches_python_with_edge_cases():
  a, b = float16_cases()
  want, want_over = py_float(a, b, 5, 10, 15)
  edge = want[3:, 0]
  assert not np.signbit(edge[1]) and edge[1] == 0 and np.signbit(edge[2]) and edge[2] == 0
  assert list(edge[3:6]) == [2048, 2052, 2050] and edge[6] == np.inf and edge[7] == np.inf
  assert np.isnan(edge[8:]).all() and want[3 + 6, 3] == -np.inf
  np.testing.assert_array_equal(want_over[3:, 0], [i == 6 for i in range(10)])
  check_all(a, b, FloatAccumulator("float16"), want, want_over)


def test_chunked_batched_matches_python():
  """E5M6 with chunks of 8 over K = 29 (a last chunk of 5), batch dims (2, 2)."""
  a, b = floats((2, 2, 3, 29), ml_dtypes.bfloat16, 6.0), floats((29, 5), ml_dtypes.bfloat16, 6.0)
  want, want_over = py_float(a.reshape(-1, 29), b, 5, 6, 15, 8)
  check_all(a, b, FloatAccumulator.ieee(5, 6), want.reshape(2, 2, 3, 5), want_over.reshape(2, 2, 3, 5),
            ["reference", "xla", "pallas_tpu"], chunk=8)


@pytest.mark.parametrize("emb, dtype, chunk, scale", [
    ((4, 7, 7), ml_dtypes.bfloat16, 6, 1.0),
    ((8, 7, 127), np.float32, None, 3.0),  # float32 inputs: each product rounded once to float32
    ((5, 6, 15), ml_dtypes.bfloat16, 4, 60.0),  # chunks overflow to inf
])
def test_float_matches_python(emb, dtype, chunk, scale):
  e, m, bias = emb
  a, b = floats((3, 29), dtype, scale), floats((29, 4), dtype, scale)
  want, want_over = py_float(a, b, e, m, bias, chunk)
  check_all(a, b, FloatAccumulator((e, m)), want, want_over, ["xla"], chunk=chunk)


def test_other_float_formats_and_integer_inputs():
  fmt = lpnum.get_format("float8_e4m3fn")  # no inf: overflow gives NaN
  a = np.array([[300, 300, 1]], np.int16)
  b = np.ones((3, 1), np.int16)
  out, stats = matmul(a, b, FloatAccumulator(fmt), return_stats=True)
  assert np.isnan(out[0, 0]) and bool(stats.overflowed[0, 0])
  assert_same(matmul(a[:, :1], b[:1], FloatAccumulator(fmt)), np.array([[288.0]], np.float32))


# ---- stochastic rounding -----------------------------------------------------------------------------------
def test_stochastic_same_key_same_result_on_every_backend_and_keys_differ():
  a, b = floats((3, 40), ml_dtypes.bfloat16), floats((40, 5), ml_dtypes.bfloat16)
  acc = FloatAccumulator("bfloat16", "stochastic")
  key = jax.random.key(7)
  first = run(a, b, acc, "reference", key=key)[0]
  for backend in IMPLEMENTATIONS:
    assert_same(run(a, b, acc, backend, key=key)[0], first, backend)
  assert (np.asarray(matmul(a, b, acc, key=jax.random.key(8))) != first).any()
  assert_same(matmul(a, b, acc, key=jax.random.PRNGKey(7)), matmul(a, b, acc, key=jax.random.key(7)))


def test_stochastic_rounding_is_unbiased():
  # 1, then + 2^-9 and + 2^-10: each addition lands between bfloat16 neighbours 2^-7 apart.
  a = np.array([[1.0, 2.0**-9, 2.0**-10]], ml_dtypes.bfloat16)
  b = np.ones((3, 1), ml_dtypes.bfloat16)
  acc = FloatAccumulator("bfloat16", "stochastic")
  n = 2000
  f = jax.jit(jax.vmap(lambda key: matmul(a, b, acc, key=key)[0, 0]))
  vals = np.asarray(f(jax.random.split(jax.random.key(0), n)), np.float64)
  assert set(np.unique(vals)) == {1.0, 1.0 + 2.0**-7, 1.0 + 2.0**-6}
  exact = 1 + 2.0**-9 + 2.0**-10
  # Two independent Bernoulli steps of 2^-7 (p = 1/4, then 1/8): standard error of the mean.
  stderr = 2.0**-7 * np.sqrt((0.25 * 0.75 + 0.125 * 0.875) / n)
  assert abs(vals.mean() - exact) < 5 * stderr, (vals.mean(), exact)


F32_MAX = float(np.finfo(np.float32).max)


def float32_neighbours(x: Fraction) -> tuple[float, float, Fraction]:
  """``(lower, upper, p)``: the float32 values either side of the exact ``x`` (in magnitude: lower is the one
  nearer zero; +-inf above the largest finite value) and the probability of ``upper``, ``|x - lower| / gap``."""
  sign = -1 if x < 0 else 1
  mag = abs(x)
  exp = mag.numerator.bit_length() - mag.denominator.bit_length()
  if Fraction(2) ** exp > mag:
    exp -= 1
  step = Fraction(2) ** (max(exp, -126) - 23)
  lower = math.floor(mag / step) * step
  upper = lower + step if lower != mag else lower
  p = (mag - lower) / step
  top = (lambda v: math.inf if v > F32_MAX else float(v))
  return sign * top(lower), sign * top(upper), p


# (x, y): x + y in float32 with stochastic rounding; float32 operands, float32 sums out of the subnormal range.
STOCHASTIC32_SUMS = [
    (1.0, 2.0**-24 + 2.0**-26),  # error 5/8 of the gap above s = 1
    (1.0, 2.0**-24),  # a tie: nearest even gives 1, stochastic halves
    (1.0, -(2.0**-26)),  # just below a power of two: the gap below 1 is 2^-24
    (2 - 2.0**-23, 1.5 * 2.0**-24),  # s rounds up to 2, the exact sum lies a quarter of the gap below it
    (-3.0, -(2.0**-24 + 2.0**-25)),  # negative: 3/8 of the gap 2^-22 away from zero
    (2.0**20, 2.0**-10),  # a small fraction, 2^-7
    (1.0, 2.0**-60),  # 2^-37 of a gap: beyond the 32 random bits, never rounds up
    (F32_MAX, 2.0**102),  # a quarter of the gap beyond the largest finite value: inf with p = 1/4
    (F32_MAX, 1.5 * 2.0**103),  # the float32 sum overflows; the exact one is 3/4 of a gap past max: p = 3/4
    (-F32_MAX, -(2.0**103)),  # a tie at the top: -inf with p = 1/2
    (F32_MAX, F32_MAX),  # beyond 2^128: always inf
    (1.0, 2.0**-23), (3.0, 5.0), (7.5, -7.5), (2.0**100, -(2.0**-100)), (2.0**-100, 2.0**-120),
]


@pytest.mark.parametrize("x, y", STOCHASTIC32_SUMS)
def test_float32_stochastic_sum_matches_the_exact_probability(x, y):
  n = 20000
  a = np.tile(np.array([[x, y]], np.float32), (n, 1))  # n outputs, each with its own random bits
  got = np.asarray(matmul(a, np.ones((2, 1), np.float32), FloatAccumulator("float32", "stochastic"),
                          key=jax.random.key(3)), np.float64)[:, 0]
  exact = Fraction(x) + Fraction(y)
  if exact == 0:
    assert (got == 0).all() and not np.signbit(got).any()
    return
  lower, upper, p = float32_neighbours(exact)
  assert set(np.unique(got)) <= {lower, upper}
  if p == 0:
    assert (got == lower).all()
    return
  ups = int(np.sum(got == upper))
  if p < Fraction(1, 2**32):  # below the resolution of the 32 random bits: truncated to 0, never rounds up
    assert ups == 0
  else:
    p = float(p)
    assert abs(ups - n * p) <= 5 * math.sqrt(n * p * (1 - p)), (ups, n * p)


def test_float32_accumulator_rounds_each_addition_and_agrees_on_every_backend():
  a, b = floats((3, 37), np.float32, 3.0), floats((37, 5), np.float32)
  nearest = FloatAccumulator((8, 23))
  want, want_over = py_float(a, b, 8, 23, 127)
  check_all(a, b, nearest, want, want_over)
  acc = FloatAccumulator("float32", "stochastic")
  key = jax.random.key(5)
  first = run(a, b, acc, "reference", key=key)[0]
  for backend in IMPLEMENTATIONS:
    assert_same(run(a, b, acc, backend, key=key)[0], first, backend)
  assert_same(run(a, b, acc, "xla", key=key, chunk=8)[0], run(a, b, acc, "pallas_tpu", key=key, chunk=8)[0])
  # Each of the 37 additions moves by less than an ulp of its partial sum, whose magnitude is at most sum |a b|.
  bound = 2 * 37 * np.spacing((np.abs(a) @ np.abs(b)).astype(np.float32))
  assert (first != want).any() and np.all(np.abs(first - want) <= bound)
  specials = np.array([[np.inf, 1.0], [np.nan, 1.0], [F32_MAX, F32_MAX]], np.float32)
  out, over = run(specials, np.ones((2, 1), np.float32), acc, "xla", key=key)
  assert np.isposinf(out[0, 0]) and np.isnan(out[1, 0]) and np.isposinf(out[2, 0])
  assert over.ravel().tolist() == [False, False, True]


def test_stochastic_needs_a_key():
  with pytest.raises(ValueError, match="key"):
    matmul(np.ones((1, 2), np.float32), np.ones((2, 1), np.float32), FloatAccumulator("float16", "stochastic"))


# ---- aligned and exact accumulators ------------------------------------------------------------------------
@pytest.mark.parametrize("product_bits, chunk, dtype, backends", [
    (6, 8, ml_dtypes.bfloat16, IMPLEMENTATIONS),
    (14, 5, ml_dtypes.float8_e4m3fn, ["xla"]),
    (3, 32, ml_dtypes.float8_e5m2, ["xla"]),
])
def test_aligned_matches_python(product_bits, chunk, dtype, backends):
  a, b = floats((3, 45), dtype, 2.0), floats((45, 4), dtype, 2.0)
  a[0, :chunk] = 0  # one all-zero chunk
  want = py_aligned(a, b, product_bits, chunk)
  check_all(a, b, AlignedAccumulator(product_bits, chunk), want, np.zeros(want.shape, bool), backends)


def test_aligned_specials_and_overflow():
  a = np.array([[np.inf, 1.0, 0.0, 0.0], [np.nan, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0**126, 2.0**126]], np.float32)
  b = np.array([[1.0], [1.0], [2.0], [2.0]], np.float32)
  for backend in FAST:
    out, over = run(a, b, AlignedAccumulator(14, 2), backend)
    assert out[0, 0] == np.inf and np.isnan(out[1, 0]) and out[2, 0] == np.inf  # 2^127 + 2^127 overflows
    np.testing.assert_array_equal(over, [[False], [False], [True]])


@pytest.mark.parametrize("da, db, scale, backends", [
    (np.int8, np.int8, 50.0, IMPLEMENTATIONS),
    (ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e4m3fn, 30.0, ["xla"]),
    (ml_dtypes.float8_e5m2, ml_dtypes.bfloat16, 1e3, ["xla"]),
    (np.float16, np.float16, 1e4, ["xla"]),
    (np.uint8, np.int16, 50.0, ["xla"]),
], ids=["int8", "e4m3", "e5m2-bf16", "f16", "u8-i16"])
def test_exact_matches_python(da, db, scale, backends):
  a, b = floats((3, 41), np.float64, scale), floats((41, 3), np.float64, 1.0)
  a = np.clip(a, 0 if da == np.uint8 else -127, 127).astype(da) if da in (np.int8, np.uint8) else a.astype(da)
  b = np.clip(b * 300, -127 if db == np.int8 else -2**15, 127).astype(db) if db in (np.int8, np.int16) else b.astype(db)
  want = py_exact(a, b)
  check_all(a, b, ExactAccumulator(), want, np.zeros(want.shape, bool), backends)


def wide_range(dtype):
  """Cancellation across the whole exponent range, a float32-subnormal result, overflow and specials."""
  top = 2.0**127 if dtype == np.float32 else 1.5 * 2.0**127
  a = np.array([
      [top, 3.0, -top, 2.0**-100, 0.0],
      [2.0**-100, 0.0, -2.0**-100, 2.0**-100, 0.0],  # 2^-140: a float32 subnormal
      [top, top, 1.0, 0.0, 0.0],  # beyond float32: inf
      [np.inf, 1.0, -np.inf, 0.0, 0.0],  # NaN
      [1.0, 2.0**-60, -1.0, 0.0, 2.0**-70],
  ]).astype(dtype)
  b = np.array([[1.0, 1.0, 1.0, 2.0**-40, 2.0**-70]]).T
  return a, np.concatenate([b, -b], axis=1).astype(dtype)


@pytest.mark.parametrize("dtype", [pytest.param(ml_dtypes.bfloat16, marks=pytest.mark.slow), np.float32])
def test_exact_wide_range(dtype):
  a, b = wide_range(dtype)
  want = py_exact(a, b)
  assert want[1, 0] != 0 and abs(want[1, 0]) < 2.0**-126 and want[2, 0] == np.inf and np.isnan(want[3, 0])
  want_over = np.zeros(want.shape, bool)
  want_over[2] = True
  check_all(a, b, ExactAccumulator(), want, want_over, ["xla"])


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float32])
def test_exact_wide_range_kernels(dtype):
  a, b = wide_range(dtype)
  check_all(a, b, ExactAccumulator(), py_exact(a, b), backends=["reference", "pallas_tpu", "pallas_gpu"])
  a = (floats((3, 20), np.float64) * np.exp2(rng.integers(-120, 120, (3, 20)))).astype(dtype)
  b = (floats((20, 2), np.float64) * np.exp2(rng.integers(-120, 120, (20, 2)))).astype(dtype)
  check_all(a, b, ExactAccumulator(), py_exact(a, b))


@pytest.mark.slow
@pytest.mark.parametrize("bits, overflow, chunk, order", [
    (8, "wrap", None, "pairwise"), (16, "saturate", 3, "sequential"), (32, "saturate", None, "pairwise")])
def test_int_kernels_more(bits, overflow, chunk, order):
  a, b = ints((5, 70)), ints((70, 3))
  want, want_over = py_int(a, b, bits, overflow, chunk, order)
  check_all(a, b, IntAccumulator(bits, overflow), want, want_over, chunk=chunk, order=order)


@pytest.mark.slow
@pytest.mark.parametrize("emb, dtype, chunk", [((4, 7, 7), np.float32, 6), ((8, 7, 127), np.float16, None),
                                               ((5, 10, 15), ml_dtypes.float8_e5m2, 32)])
def test_float_kernels_more(emb, dtype, chunk):
  e, m, bias = emb
  a, b = floats((5, 70), dtype, 3.0), floats((70, 3), dtype, 3.0)
  want, want_over = py_float(a, b, e, m, bias, chunk)
  check_all(a, b, FloatAccumulator((e, m)), want, want_over, chunk=chunk)


# ---- shapes, batching, transforms --------------------------------------------------------------------------
def test_empty_k_and_empty_outputs():
  for acc, zero in ((IntAccumulator(8), 0), (FloatAccumulator("float16"), 0.0), (ExactAccumulator(), 0.0)):
    dt = np.int8 if isinstance(acc, IntAccumulator) else np.float32
    out, stats = matmul(np.zeros((2, 3, 0), dt), np.zeros((0, 4), dt), acc, return_stats=True)
    assert out.shape == (2, 3, 4) and (np.asarray(out) == zero).all() and int(stats.count) == 0
    assert not np.signbit(np.asarray(out)).any()
  assert matmul(np.zeros((0, 3), np.int8), np.zeros((3, 4), np.int8), IntAccumulator(8)).shape == (0, 4)


def test_jit_and_vmap():
  a, b = floats((4, 3, 17), ml_dtypes.bfloat16, 3.0), floats((17, 5), ml_dtypes.bfloat16, 3.0)
  acc = FloatAccumulator("float16")
  want = matmul(a, b, acc)
  out, stats = jax.jit(lambda x, y: matmul(x, y, acc, return_stats=True))(a, b)
  assert isinstance(stats, AccumulatorStats) and stats.overflowed.shape == (4, 3, 5) and int(stats.count) == 0
  assert_same(out, want)
  assert_same(jax.vmap(lambda x: matmul(x, b, acc))(a), want)
  ai, bi = ints((4, 3, 17)), ints((17, 5))
  sat = IntAccumulator(12, "saturate")
  assert_same(jax.vmap(lambda x: matmul(x, bi, sat, implementation="pallas_gpu", interpret=True))(ai), matmul(ai, bi, sat))


# ---- A2Q ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("input_bits, acc_bits, signed", [(8, 16, True), (4, 12, True), (8, 18, False)])
def test_a2q_bound_guarantees_no_overflow(input_bits, acc_bits, signed):
  """Weights within the bound never overflow on worst-case inputs (each product at its extreme, in either sign);
  weights just outside it do."""
  bound = a2q_bound(input_bits, acc_bits, signed_input=signed)
  lo, hi = (-(1 << (input_bits - 1)), (1 << (input_bits - 1)) - 1) if signed else (0, (1 << input_bits) - 1)
  k = 64
  cols = []
  norm = math.floor(bound)
  for _ in range(6):  # random integer weights scaled to L1 norm floor(bound)
    w = rng.integers(-50, 51, k)
    w = np.fix(w * norm / np.abs(w).sum()).astype(np.int64)
    i = np.argmax(np.abs(w))
    w[i] += np.sign(w[i]) * (norm - np.abs(w).sum())
    assert np.abs(w).sum() == norm
    cols.append(w)
  # Just outside: all-negative weights with the smallest L1 norm that can overflow (x = lo makes the sum
  # |lo| * L1, x = hi makes it -hi * L1).
  limits = [(1 << (acc_bits - 1)) // hi + 1] + ([((1 << (acc_bits - 1)) - 1) // -lo + 1] if lo < 0 else [])
  outside = min(limits)
  assert bound < outside <= bound + (1 if signed else 4)
  cols.append(-np.full(k, outside // k) - np.eye(1, k, 0, dtype=np.int64)[0] * (outside % k))
  w = np.stack(cols, 1).astype(np.int16)
  # Worst-case inputs per column and sign: x = extreme value whose product with w is largest (or smallest).
  xs = []
  for j in range(w.shape[1]):
    xs.append(np.where(w[:, j] > 0, hi, lo))
    xs.append(np.where(w[:, j] > 0, lo, hi))
  x = np.stack(xs).astype(np.int16 if input_bits > 8 or not signed else np.int8)
  for overflow, order in (("wrap", "sequential"), ("saturate", "pairwise"))[:2 if acc_bits == 16 else 1]:
    _, stats = matmul(x, w, IntAccumulator(acc_bits, overflow), order=order, return_stats=True)
    over = np.asarray(stats.overflowed)
    assert not over[:, :-1].any(), (overflow, order)
    assert over[:, -1].any(), (overflow, order)


def test_a2q_bound_values():
  assert a2q_bound(8, 32) == (2**31 - 1) / 128
  assert a2q_bound(4, 16, signed_input=False) == (2**15 - 1) / 16
  with pytest.raises(ValueError, match="accumulator_bits"):
    a2q_bound(8, 1)


# ---- property test -------------------------------------------------------------------------------------------
@settings(max_examples=6, deadline=None)
@given(st.sampled_from([1, 7, 24]), st.integers(6, 16), st.sampled_from(["wrap", "saturate"]),
       st.sampled_from([None, 1, 3, 7]), st.integers(0, 2**31 - 1))
def test_int_property(k, bits, overflow, chunk, seed):
  r = np.random.default_rng(seed)
  a = r.integers(-128, 128, (2, k)).astype(np.int8)
  b = r.integers(-128, 128, (k, 2)).astype(np.int8)
  want, want_over = py_int(a, b, bits, overflow, chunk)
  check_all(a, b, IntAccumulator(bits, overflow), want, want_over, backends=["xla"], chunk=chunk)


@settings(max_examples=6, deadline=None)
@given(st.sampled_from([1, 7, 24]), st.sampled_from([(5, 10, 15), (5, 6, 15), (4, 7, 7), (8, 7, 127), (6, 9, 31)]),
       st.integers(0, 2**31 - 1))
def test_float_property(k, emb, seed):
  r = np.random.default_rng(seed)
  a = (r.standard_normal((2, k)) * 4).astype(ml_dtypes.bfloat16)
  b = (r.standard_normal((k, 2)) * 4).astype(ml_dtypes.bfloat16)
  e, m, bias = emb
  want, _ = py_float(a, b, e, m, bias)
  check_all(a, b, FloatAccumulator.ieee(e, m), want, backends=["xla"])


# ---- bad arguments -----------------------------------------------------------------------------------------
F = np.ones((2, 3), np.float32)
G = np.ones((3, 2), np.float32)
I8 = np.ones((2, 3), np.int8)
J8 = np.ones((3, 2), np.int8)


@pytest.mark.parametrize("make, exc, match", [
    (lambda: IntAccumulator(40), ValueError, r"bits=40 must be in \[2, 32\]"),
    (lambda: IntAccumulator(1), ValueError, "bits=1"),
    (lambda: IntAccumulator(8, "clamp"), ValueError, "overflow='clamp'"),
    (lambda: FloatAccumulator("float16", "toward_zero"), ValueError, "rounding='toward_zero'"),
    (lambda: FloatAccumulator("float16", "sideways"), ValueError, "rounding='sideways'"),
    (lambda: FloatAccumulator("int8"), TypeError, "format="),
    (lambda: FloatAccumulator((5, 24)), ValueError, "mantissa_bits=24"),
    (lambda: FloatAccumulator((8, 22)), ValueError, "22 mantissa bits"),
    (lambda: FloatAccumulator((5, 23)), ValueError, "23 mantissa bits; at most 21 .* or float32 itself"),
    (lambda: FloatAccumulator("float4_e2m1fn"), ValueError, "inf or NaN"),
    (lambda: FloatAccumulator((5, 6, 7)), ValueError, "format="),
    (lambda: AlignedAccumulator(0), ValueError, "product_bits=0"),
    (lambda: AlignedAccumulator(14, 0), ValueError, "chunk=0"),
    (lambda: AlignedAccumulator(24, 2**10), ValueError, "chunk=1024"),
])
def test_bad_accumulators(make, exc, match):
  with pytest.raises(exc, match=match):
    make()


@pytest.mark.parametrize("call, exc, match", [
    (lambda: matmul(F, G, "float16"), TypeError, "accumulator="),
    (lambda: matmul(F, G, IntAccumulator(8)), TypeError, "a.dtype=float32: IntAccumulator"),
    (lambda: matmul(np.ones((2, 3), np.int32), J8, IntAccumulator(32)), TypeError, "beyond int32"),
    (lambda: matmul(np.ones((2, 3), np.uint16), np.ones((3, 2), np.uint16), IntAccumulator(32)), TypeError,
     "beyond int32"),
    (lambda: matmul(F, np.ones((3, 2), np.int32), ExactAccumulator()), TypeError, "b.dtype=int32: ExactAccumulator"),
    (lambda: matmul(np.ones((2, 3), np.float64), G, ExactAccumulator()), TypeError, "a.dtype=float64"),
    (lambda: matmul(np.ones(3, np.float32), G, ExactAccumulator()), ValueError, r"a must have shape \(\.\.\., M, K\)"),
    (lambda: matmul(np.float32(1), G, ExactAccumulator()), ValueError, "a must have shape"),
    (lambda: matmul(F, np.ones(3, np.float32), ExactAccumulator()), ValueError, r"b must have shape \(K, N\)"),
    (lambda: matmul(F, np.ones((4, 2), np.float32), ExactAccumulator()), ValueError, "K=3 vs 4"),
    (lambda: matmul([[1.0]], [[1.0]], ExactAccumulator()), TypeError, "a must be an array"),
    (lambda: matmul(I8, J8, IntAccumulator(8), chunk=0), ValueError, "chunk=0"),
    (lambda: matmul(I8, J8, IntAccumulator(8), chunk=True), TypeError, "chunk=True"),
    (lambda: matmul(I8, J8, IntAccumulator(8), order="tree"), ValueError, "order='tree'"),
    (lambda: matmul(I8, J8, IntAccumulator(8), order="pairwise", chunk=2), ValueError, "chunk=2"),
    (lambda: matmul(F, G, FloatAccumulator("float16"), order="pairwise"), ValueError, "order='pairwise'"),
    (lambda: matmul(F, G, AlignedAccumulator(14, 32), chunk=16), ValueError, "chunk=16"),
    (lambda: matmul(F, G, ExactAccumulator(), chunk=4), ValueError, "chunk=4"),
    (lambda: matmul(F, G, ExactAccumulator(), implementation="gpu"), ValueError, "implementation='gpu'"),
    (lambda: matmul(F, G, ExactAccumulator(), interpret=True), ValueError, "interpret=True"),
    (lambda: matmul(F, G, ExactAccumulator(), implementation="pallas_gpu", block_sizes=(48, 32)), ValueError,
     "powers of 2"),
    (lambda: matmul(F, G, ExactAccumulator(), implementation="pallas_tpu", block_sizes=(64, 128)), ValueError,
     "multiples of 128"),
    (lambda: matmul(F, G, ExactAccumulator(), implementation="xla", block_sizes=(128, 128)), ValueError, "block_sizes"),
    (lambda: matmul(F, G, ExactAccumulator(), return_stats=1), TypeError, "return_stats=1"),
    (lambda: matmul(F, G, FloatAccumulator("float16", "stochastic"), key=jnp.ones(2, jnp.int32)), TypeError,
     "key must be"),
])
def test_bad_calls(call, exc, match):
  with pytest.raises(exc, match=match):
    call()


def test_errors_are_raised_at_trace_time():
  f = jax.jit(lambda x, y: matmul(x, y, IntAccumulator(8), chunk=-1))
  with pytest.raises(ValueError, match="chunk=-1"):
    f.lower(jax.ShapeDtypeStruct((2, 3), jnp.int8), jax.ShapeDtypeStruct((3, 2), jnp.int8))


# ---- lowering for real hardware ----------------------------------------------------------------------------
LOWERING = [
    ("int16-saturate", IntAccumulator(16, "saturate"), jnp.int8, jnp.int8, {}),
    ("int20-wrap-pairwise", IntAccumulator(20, "wrap"), jnp.int8, jnp.int16, dict(order="pairwise")),
    ("int24-chunked", IntAccumulator(24, "saturate"), jnp.int8, jnp.int8, dict(chunk=128)),
    ("float16", FloatAccumulator("float16"), jnp.bfloat16, jnp.bfloat16, {}),
    ("e5m6-chunked", FloatAccumulator.ieee(5, 6), jnp.float8_e4m3fn, jnp.float8_e5m2, dict(chunk=32)),
    ("bfloat16-stochastic", FloatAccumulator("bfloat16", "stochastic"), jnp.bfloat16, jnp.bfloat16, dict(key=1)),
    ("float32-stochastic", FloatAccumulator("float32", "stochastic"), jnp.float32, jnp.float32, dict(key=1)),
    ("aligned", AlignedAccumulator(14, 32), jnp.float8_e4m3fn, jnp.float8_e4m3fn, {}),
    ("exact-fp8", ExactAccumulator(), jnp.float8_e4m3fn, jnp.float8_e5m2, {}),
    ("exact-bf16", ExactAccumulator(), jnp.bfloat16, jnp.bfloat16, {}),
    ("exact-f32", ExactAccumulator(), jnp.float32, jnp.float32, {}),
]
# Every kind lowers in the default run; these variants (and the widest exact accumulators) only under -m slow.
SLOW_LOWERING = ("int20-wrap-pairwise", "int24-chunked", "e5m6-chunked", "exact-bf16", "exact-f32")


def test_the_platform_is_chosen_when_lowered():
  # As lpnum.kernels.matmul: "auto" exports the TPU kernel for tpu, the Triton kernel for cuda, XLA for cpu.
  args = [jax.ShapeDtypeStruct((8, 256), jnp.int8), jax.ShapeDtypeStruct((256, 128), jnp.int8)]
  fn = jax.jit(lambda a, b: matmul(a, b, IntAccumulator(16)))
  checks = [jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
  found = {}
  for platform in ("tpu", "cuda", "cpu"):
    text = jax.export.export(fn, platforms=[platform], disabled_checks=checks)(*args).mlir_module()
    found[platform] = ("tpu_custom_call" in text, "xla.gpu.triton" in text)
  assert found == {"tpu": (True, False), "cuda": (False, True), "cpu": (False, False)}


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
@pytest.mark.parametrize("name, acc, da, db, kw", [
    pytest.param(*case, id=case[0], marks=[pytest.mark.slow] if case[0] in SLOW_LOWERING else []) for case in LOWERING])
def test_lowers_for_hardware(platform, name, acc, da, db, kw):
  m, k, n = 256, 4096, 4096
  stochastic = "key" in kw

  def f(a, b, *key):
    out, stats = matmul(a, b, acc, implementation="pallas", return_stats=True, **dict(kw, **({"key": key[0]} if key else {})))
    return out, stats.overflowed

  args = [jax.ShapeDtypeStruct((m, k), da), jax.ShapeDtypeStruct((k, n), db)]
  if stochastic:
    args.append(jax.eval_shape(lambda: jax.random.key(0)))
  exported = jax.export.export(jax.jit(f), platforms=[platform], disabled_checks=[
      jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(*args)
  text = exported.mlir_module()
  assert ("tpu_custom_call" in text) if platform == "tpu" else ("xla.gpu.triton" in text)
  assert exported.out_avals[0].shape == (m, n)
