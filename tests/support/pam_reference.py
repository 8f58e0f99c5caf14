"""Independent references for piecewise-affine multiplication (Kosson and Jaggi, NeurIPS 2023), from the paper's
formulas on sign, exponent and mantissa, not from bit-pattern sums (which is how lpnum computes them).

``x = (-1)^s 2^E (1 + M)``; ``PAM(a, b) = (-1)^(sa xor sb) 2^(Ea + Eb) (1 + Ma + Mb)`` if ``Ma + Mb < 1``, else
``2^(Ea + Eb + 1) (Ma + Mb)``; ``PAD(a, b) = 2^(Ea - Eb) (1 + Ma - Mb)`` if ``Ma >= Mb``, else
``2^(Ea - Eb - 1) (2 + Ma - Mb)``; ``exp2(x) = 2^floor(x) (1 + x - floor(x))``; ``log2(x) = E + M``. lpnum's stated
conventions on top: subnormal inputs are zero, results below 2^-126 are a zero of the result's sign, results at or
above 2^128 are inf, IEEE rules for zeros, infinities and NaN.

Two faces: scalar functions in exact ``fractions.Fraction`` arithmetic on bit patterns unpacked with ``struct``
(float32) or from 16-bit patterns (bfloat16), slow and obvious; and NumPy float64 versions of the same formulas for
exhaustive sweeps (every value they produce is exact in float64: 24-bit mantissas sum to at most 25 bits), checked
against the scalar ones by the tests.
"""

from __future__ import annotations

import math
import struct
from fractions import Fraction

import ml_dtypes
import numpy as np

#: (total bits, mantissa bits) of each dtype's pattern; both have 8 exponent bits and bias 127.
LAYOUTS = {"float32": (32, 23), "bfloat16": (16, 7)}
NAN = "nan"
MIN_NORMAL = Fraction(1, 2 ** 126)
OVERFLOW = Fraction(2 ** 128)


# ---- scalar, exact --------------------------------------------------------------------------------------------------
def f32_bits(x: float) -> int:
  return struct.unpack("<I", struct.pack("<f", x))[0]


def f32_from_bits(bits: int) -> float:
  return struct.unpack("<f", struct.pack("<I", bits))[0]


def decode(bits: int, dtype: str):
  """A pattern as ``(sign, value)``: value a Fraction (subnormals read as 0), ``inf`` or :data:`NAN`."""
  total, m = LAYOUTS[dtype]
  sign = bits >> (total - 1) & 1
  field = bits >> m & 0xFF
  frac = bits & ((1 << m) - 1)
  if field == 0xFF:
    return sign, (math.inf if frac == 0 else NAN)
  if field == 0:
    return sign, Fraction(0)
  return sign, Fraction(2) ** (field - 127) * (1 + Fraction(frac, 2 ** m))


def encode(sign: int, value, dtype: str) -> int:
  """The pattern of ``(-1)^sign value``; the value must be 0, inf, NaN or a normal number of the dtype."""
  total, m = LAYOUTS[dtype]
  if value == NAN:
    return 0xFF << m | 1 << (m - 1)
  if value == math.inf:
    return sign << (total - 1) | 0xFF << m
  if value == 0:
    return sign << (total - 1)
  e = math.floor(math.log2(value))
  while Fraction(2) ** e > value:
    e -= 1
  while Fraction(2) ** (e + 1) <= value:
    e += 1
  frac = (value / Fraction(2) ** e - 1) * 2 ** m
  assert frac.denominator == 1 and 1 <= e + 127 <= 254, (value, dtype)
  return sign << (total - 1) | (e + 127) << m | int(frac)


def split(value: Fraction) -> tuple[int, Fraction]:
  """``(E, M)`` with ``value = 2^E (1 + M)``, ``M`` in [0, 1), for a positive Fraction."""
  e = value.numerator.bit_length() - value.denominator.bit_length()
  if Fraction(2) ** e > value:
    e -= 1
  return e, value / Fraction(2) ** e - 1


def _ranged(sign: int, value: Fraction):
  if value < MIN_NORMAL:
    return sign, Fraction(0)
  if value >= OVERFLOW:
    return sign, math.inf
  return sign, value


def pam_value(a: Fraction, b: Fraction) -> Fraction:
  """The PAM product of two positive Fractions, by the paper's formula (no range limits)."""
  (ea, ma), (eb, mb) = split(a), split(b)
  if ma + mb < 1:
    return Fraction(2) ** (ea + eb) * (1 + ma + mb)
  return Fraction(2) ** (ea + eb + 1) * (ma + mb)


def pad_value(a: Fraction, b: Fraction) -> Fraction:
  """The PAD quotient of two positive Fractions, by the paper's formula (no range limits)."""
  (ea, ma), (eb, mb) = split(a), split(b)
  if ma >= mb:
    return Fraction(2) ** (ea - eb) * (1 + ma - mb)
  return Fraction(2) ** (ea - eb - 1) * (2 + ma - mb)


def pam(a_bits: int, b_bits: int, dtype: str = "float32") -> int:
  """The pattern of PAM(a, b) with lpnum's conventions."""
  (sa, a), (sb, b) = decode(a_bits, dtype), decode(b_bits, dtype)
  sign = sa ^ sb
  if NAN in (a, b) or (a == 0 and b == math.inf) or (a == math.inf and b == 0):
    return encode(0, NAN, dtype)
  if math.inf in (a, b):
    return encode(sign, math.inf, dtype)
  if a == 0 or b == 0:
    return encode(sign, 0, dtype)
  return encode(*_ranged(sign, pam_value(a, b)), dtype)


def pad(a_bits: int, b_bits: int, dtype: str = "float32") -> int:
  """The pattern of PAD(a, b) with lpnum's conventions."""
  (sa, a), (sb, b) = decode(a_bits, dtype), decode(b_bits, dtype)
  sign = sa ^ sb
  if NAN in (a, b) or (a == 0 and b == 0) or (a == math.inf and b == math.inf):
    return encode(0, NAN, dtype)
  if a == math.inf or b == 0:
    return encode(sign, math.inf, dtype)
  if a == 0 or b == math.inf:
    return encode(sign, 0, dtype)
  return encode(*_ranged(sign, pad_value(a, b)), dtype)


def _round_half_even(x: Fraction) -> int:
  floor = math.floor(x)
  rest = x - floor
  return floor + (rest > Fraction(1, 2) or (rest == Fraction(1, 2) and floor % 2 == 1))


def exp2(x_bits: int, dtype: str = "float32") -> int:
  """The pattern of lpnum's piecewise-affine exp2: x rounded to multiples of 2^-m, then 2^n (1 + f)."""
  _, m = LAYOUTS[dtype]
  sign, x = decode(x_bits, dtype)
  if x == NAN:
    return encode(0, NAN, dtype)
  if x == math.inf:
    return encode(0, math.inf if sign == 0 else 0, dtype)
  x = Fraction(_round_half_even((-x if sign else x) * 2 ** m), 2 ** m)
  n = math.floor(x)
  if n >= 128:
    return encode(0, math.inf, dtype)
  if n < -126:
    return encode(0, 0, dtype)
  return encode(0, Fraction(2) ** n * (1 + x - n), dtype)


def log2(x_bits: int, dtype: str = "float32") -> int:
  """The pattern of lpnum's piecewise-affine log2: E + M, rounded once to the dtype (nearest even)."""
  sign, x = decode(x_bits, dtype)
  if x == NAN or (sign and x != 0):
    return encode(0, NAN, dtype)
  if x == 0:
    return encode(1, math.inf, dtype)
  if x == math.inf:
    return encode(0, math.inf, dtype)
  e, mant = split(x)
  exact = float(e + mant)  # at most 31 significant bits: exact in float64
  rounded = np.float32(exact) if dtype == "float32" else np.array(exact).astype(ml_dtypes.bfloat16)
  return int(np.asarray(rounded).view(np.uint32 if dtype == "float32" else np.uint16))


def pam_slope(a: float, b: float) -> Fraction:
  """``d PAM(a, b) / da`` for nonzero normal a, b: an exact forward difference of ``|PAM|`` in ``|a|`` inside the
  affine piece, times ``sign(b)``."""
  fa, fb = abs(Fraction(a)), abs(Fraction(b))
  h = fa / 2 ** 60
  return (pam_value(fa + h, fb) - pam_value(fa, fb)) / h * (1 if b > 0 else -1)


def pad_slopes(a: float, b: float) -> tuple[Fraction, Fraction]:
  """``(d PAD / da, d PAD / db)`` for nonzero normal a, b, by exact forward differences in ``|a|`` and ``|b|``."""
  fa, fb = abs(Fraction(a)), abs(Fraction(b))
  ha, hb = fa / 2 ** 60, fb / 2 ** 60
  da = (pad_value(fa + ha, fb) - pad_value(fa, fb)) / ha
  db = (pad_value(fa, fb + hb) - pad_value(fa, fb)) / hb
  sa, sb = (1 if a > 0 else -1), (1 if b > 0 else -1)
  return da * sb, db * sa


# ---- NumPy float64, vectorized ------------------------------------------------------------------------------------
def _float64(x) -> np.ndarray:
  with np.errstate(invalid="ignore"):  # signaling NaN patterns
    return np.asarray(x, np.float64)


def _fields(x: np.ndarray):
  """float64 ``x`` (values of a float32/bfloat16 array) as sign, exponent E, mantissa M; subnormals are zero."""
  mag = np.abs(x)
  zero = mag < 2.0 ** -126
  frac, e = np.frexp(np.where(zero | ~np.isfinite(mag), 1.0, mag))
  return np.signbit(x), e - 1, 2 * frac - 1, zero


def _finish(value: np.ndarray, negative: np.ndarray) -> np.ndarray:
  value = np.where(value < 2.0 ** -126, 0.0, np.where(value >= 2.0 ** 128, np.inf, value))
  return np.where(negative, -value, value)


def pam_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """PAM with lpnum's conventions, in float64, elementwise over broadcast arrays of float32/bfloat16 values."""
  a, b = np.broadcast_arrays(_float64(a), _float64(b))
  (sa, ea, ma, za), (sb, eb, mb, zb) = _fields(a), _fields(b)
  carry = ma + mb >= 1
  value = np.ldexp(np.where(carry, ma + mb, 1 + ma + mb), ea + eb + carry)
  inf = np.isinf(a) | np.isinf(b)
  zero = za | zb
  value = np.where(inf, np.inf, np.where(zero, 0.0, value))
  out = _finish(value, sa ^ sb)
  nan = np.isnan(a) | np.isnan(b) | (zero & inf)
  return np.where(nan, np.nan, out)


def pad_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """PAD with lpnum's conventions, in float64."""
  a, b = np.broadcast_arrays(_float64(a), _float64(b))
  (sa, ea, ma, za), (sb, eb, mb, zb) = _fields(a), _fields(b)
  borrow = ma < mb
  value = np.ldexp(np.where(borrow, 2 + ma - mb, 1 + ma - mb), ea - eb - borrow)
  ia, ib = np.isinf(a), np.isinf(b)
  value = np.where(ia | zb, np.inf, np.where(za | ib, 0.0, value))
  out = _finish(value, sa ^ sb)
  nan = np.isnan(a) | np.isnan(b) | (za & zb) | (ia & ib)
  return np.where(nan, np.nan, out)


def pam_matmul_np(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """``x (M, K) @ y (K, N)`` with PAM products, accumulated in float32 in the order k = 0..K-1."""
  acc = np.zeros((x.shape[0], y.shape[1]), np.float32)
  for k in range(x.shape[1]):
    acc = acc + pam_np(x[:, k, None], y[None, k, :]).astype(np.float32)
  return acc
