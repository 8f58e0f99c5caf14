"""Independent references for lpnum.dyadic: the gemmlowp/TFLite formulas in NumPy int64, and their exact meaning
in rationals.

gemmlowp's ``fixedpoint.h`` states ``SaturatingRoundingDoublingHighMul`` on the 64-bit product and
``RoundingDivideByPOT`` by mask, remainder and threshold; TFLite's ``MultiplyByQuantizedMultiplier`` composes them
with ``left_shift = max(shift, 0)`` in its sign convention (here: ``max(-shift, 0)``, since lpnum's shift counts
right shifts). These are written from those formulas in int64 (no 32-bit pieces), and, separately, as the exact
rational results they should equal (round half away from zero) with ``fractions.Fraction``.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def srdhm(a, b) -> np.ndarray:
  """SaturatingRoundingDoublingHighMul on int64: (a*b + nudge) / 2^31 truncated toward zero."""
  a, b = np.broadcast_arrays(np.asarray(a, np.int64), np.asarray(b, np.int64))
  ab = a * b
  nudge = np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
  num = ab + nudge
  quotient = np.where(num >= 0, num // (1 << 31), -((-num) // (1 << 31)))
  return np.where((a == b) & (a == INT32_MIN), INT32_MAX, quotient).astype(np.int32)


def rdbp(x, exponent) -> np.ndarray:
  """RoundingDivideByPOT on int64: (x >> e) + (x & mask > (mask >> 1) + (x < 0))."""
  x, e = np.broadcast_arrays(np.asarray(x, np.int64), np.asarray(exponent, np.int64))
  mask = (np.int64(1) << e) - 1
  remainder = x & mask
  threshold = (mask >> 1) + (x < 0)
  return ((x >> e) + (remainder > threshold)).astype(np.int32)


def mbqm(x, multiplier, shift) -> np.ndarray:
  """MultiplyByQuantizedMultiplier with a saturating left shift, on int64."""
  x, m, s = np.broadcast_arrays(np.asarray(x, np.int64), np.asarray(multiplier, np.int64),
                                np.asarray(shift, np.int64))
  left, right = np.maximum(-s, 0), np.maximum(s, 0)
  shifted = np.clip(x * (np.int64(1) << left), INT32_MIN, INT32_MAX)
  return rdbp(srdhm(shifted, m), right)


def requantize(acc, multiplier, shift, zero_point, dtype) -> np.ndarray:
  """clamp(mbqm(acc) + zero_point) to dtype's range, on int64."""
  info = np.iinfo(dtype)
  y = mbqm(acc, multiplier, shift).astype(np.int64) + np.asarray(zero_point, np.int64)
  return np.clip(y, info.min, info.max).astype(dtype)


def round_half_away(q: Fraction) -> int:
  """The integer nearest to ``q``, ties away from zero."""
  n = math.floor(abs(q) + Fraction(1, 2))
  return n if q >= 0 else -n


def exact_high_mul(a: int, b: int) -> int:
  """a * b / 2^31, rounded to nearest with ties up (toward +infinity: the nudge 1 - 2^30 of a negative product
  moves a tie to the larger neighbour); INT32_MIN * INT32_MIN saturates."""
  return min(math.floor(Fraction(a * b, 2**31) + Fraction(1, 2)), INT32_MAX)


def exact_divide_by_pot(x: int, exponent: int) -> int:
  """x / 2^exponent, rounded half away from zero."""
  return round_half_away(Fraction(x, 2**exponent))


def exact_multiplier(real: float) -> tuple[int, int]:
  """(M0, shift): the shift that puts real * 2^(31 + shift) in [2^30, 2^31), M0 that value rounded half away from
  zero; a rounding up to 2^31 becomes (2^30, shift - 1)."""
  r = Fraction(real)
  shift = next(s for s in range(-40, 80) if 2**30 <= r * Fraction(2) ** (31 + s) < 2**31)
  m0 = round_half_away(r * Fraction(2) ** (31 + shift))
  return (2**30, shift - 1) if m0 == 2**31 else (m0, shift)
