"""Exact reference for IEEE P3109 formats, written from the Interim Report v4.0 (26 June 2026) and apart from lpnum.

It follows the report's definitions step by step, in integers and :class:`fractions.Fraction`:

* 4.7.6 / 4.9.1 code points: a signed format's NaN is code ``2^(k-1)``, an unsigned format's ``2^k - 1``; extended
  formats put +inf at ``2^(k-1) - 1`` (signed, with -inf at ``2^k - 1``) or ``2^k - 2`` (unsigned); a signed code
  above ``2^(k-1)`` is the negation of the code ``2^(k-1)`` below it; otherwise, with ``T = code mod 2^(p-1)`` and
  ``E = code div 2^(p-1)``, the value is ``T * 2^(1-p) * 2^(1-B)`` for ``E = 0`` and ``(1 + T * 2^(1-p)) * 2^(E-B)``
  else. The bias ``B`` is ``2^(k-p-1)`` (signed) or ``2^(k-p)`` (unsigned).
* 4.7.3 !Project: NaN stays NaN; otherwise !Encode(!Saturate(sat, rnd, !RoundToPrecision(p, B, rnd)(X), sigma,
  delta)) with ``M_hi`` the largest finite value and ``M_lo`` its negation (signed) or 0 (unsigned).
* 4.7.4 !RoundToPrecision: ``Q = max(floor(log2|X|), 1 - B) - p + 1``, ``S~ = |X| 2^-Q``, ``nu = S~ - floor(S~)``;
  round away (add one to ``floor(S~)``) by the mode's RoundAway rule; ``CodeIsEven`` is the parity of ``floor(S~)``
  for ``p > 1`` and ``floor(S~) = 0 or Q + B even`` for ``p = 1``. Zero and infinities pass unchanged.
* 4.7.5 !Saturate: the ordered table of pattern rules for SatFinite, SatPropagate and SatNone, transcribed in
  :func:`saturate`.

Values: a ``Fraction`` (``Fraction(0)`` for zero; P3109 has no -0), or ``"nan"``, ``"+inf"``, ``"-inf"``.
Rounding modes use lpnum's names: ``nearest_even`` (NearestTiesToEven), ``nearest_away`` (NearestTiesToAway),
``toward_zero``, ``up`` (TowardPositive), ``down`` (TowardNegative), ``to_odd`` (ToOdd).
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

__all__ = ["ROUNDINGS", "SATURATIONS", "P3109", "decode", "round_to_precision", "saturate", "project", "encode"]

ROUNDINGS = ("nearest_even", "nearest_away", "toward_zero", "up", "down", "to_odd")
SATURATIONS = ("sat_finite", "sat_propagate", "sat_none")


@dataclasses.dataclass(frozen=True)
class P3109:
  """Binary{k}p{p}{s|u}{e|f}."""

  k: int
  p: int
  signed: bool
  extended: bool

  @property
  def name(self) -> str:
    return f"binary{self.k}p{self.p}{'s' if self.signed else 'u'}{'e' if self.extended else 'f'}"

  @property
  def bias(self) -> int:
    return 2 ** (self.k - self.p - 1) if self.signed else 2 ** (self.k - self.p)

  @property
  def nan_code(self) -> int:
    return 2 ** (self.k - 1) if self.signed else 2**self.k - 1

  @property
  def pinf_code(self) -> int | None:
    if not self.extended:
      return None
    return 2 ** (self.k - 1) - 1 if self.signed else 2**self.k - 2

  @property
  def ninf_code(self) -> int | None:
    return 2**self.k - 1 if (self.extended and self.signed) else None

  @property
  def max_code(self) -> int:
    top = 2 ** (self.k - 1) - 1 if self.signed else 2**self.k - 2
    return top - int(self.extended)

  @property
  def m_hi(self) -> Fraction:
    return decode(self, self.max_code)

  @property
  def m_lo(self) -> Fraction:
    return -self.m_hi if self.signed else Fraction(0)


def _pow2(e: int) -> Fraction:
  return Fraction(2) ** e


def decode(f: P3109, code: int):
  """The value of a code point."""
  if code == f.nan_code:
    return "nan"
  if code == f.pinf_code:
    return "+inf"
  if code == f.ninf_code:
    return "-inf"
  if f.signed and code > 2 ** (f.k - 1):
    return -decode(f, code - 2 ** (f.k - 1))
  t, e = code % 2 ** (f.p - 1), code // 2 ** (f.p - 1)
  if e == 0:
    return t * _pow2(1 - f.p) * _pow2(1 - f.bias)
  return (1 + t * _pow2(1 - f.p)) * _pow2(e - f.bias)


def _floor_log2(a: Fraction) -> int:
  e = a.numerator.bit_length() - a.denominator.bit_length()
  return e - 1 if a < _pow2(e) else e


def round_to_precision(p: int, b: int, rnd: str, x):
  """!RoundToPrecision: x rounded to p significant bits with exponent at least 1 - b, unbounded above."""
  if isinstance(x, str) or x == 0:
    return x
  q = max(_floor_log2(abs(x)), 1 - b) - p + 1
  s = abs(x) / _pow2(q)
  fl = math.floor(s)
  nu = s - fl
  code_is_even = fl % 2 == 0 if p > 1 else (fl == 0 or (q + b) % 2 == 0)
  away = {
      "toward_zero": False,
      "up": nu > 0 and x > 0,
      "down": nu > 0 and x < 0,
      "nearest_away": nu >= Fraction(1, 2),
      "nearest_even": nu > Fraction(1, 2) or (nu == Fraction(1, 2) and not code_is_even),
      "to_odd": nu > 0 and code_is_even,
  }[rnd]
  mag = (fl + int(away)) * _pow2(q)
  return mag if x > 0 else -mag


def saturate(sat: str, rnd: str, x, f: P3109):
  """!Saturate: the report's pattern rules, first match wins (4.7.5)."""
  m_lo, m_hi, signed, extended = f.m_lo, f.m_hi, f.signed, f.extended
  if x == "nan":
    return "nan"
  if not isinstance(x, str) and m_lo <= x <= m_hi:
    return x
  if sat == "sat_finite":
    if x == "+inf":
      return m_hi
    if x == "-inf":
      return m_lo
    return m_lo if x < m_lo else m_hi
  if sat == "sat_propagate":
    if x == "+inf":
      return "+inf" if extended else m_hi
    if x == "-inf":
      return "-inf" if (signed and extended) else m_lo
    return m_lo if x < m_lo else m_hi
  assert sat == "sat_none", sat
  if x == "+inf":
    return "+inf" if extended else m_hi
  if x == "-inf":
    if signed and extended:
      return "-inf"
    return "nan" if not signed else m_lo
  if rnd == "to_odd" and not signed and extended and x > m_hi:
    return m_hi
  if rnd in ("toward_zero", "down") and x > m_hi:
    return m_hi
  if rnd in ("toward_zero", "up") and x < m_lo:
    return m_lo
  if signed and extended and x < m_lo:
    return "-inf"
  if not signed and x < m_lo:
    return "nan"
  if x < m_lo:
    return m_lo
  if extended and x > m_hi:
    return "+inf"
  return m_hi


def project(f: P3109, x, rnd: str, sat: str):
  """!Project: the value of format ``f`` that ``x`` (Fraction, int, float or "nan"/"+inf"/"-inf") becomes."""
  if isinstance(x, float):
    x = "nan" if math.isnan(x) else ("+inf" if x > 0 else "-inf") if math.isinf(x) else Fraction(x)
  if x == "nan":
    return "nan"
  return saturate(sat, rnd, round_to_precision(f.p, f.bias, rnd, x), f)


def encode(f: P3109, v) -> int:
  """The code point of a value of the format (the inverse of :func:`decode`)."""
  if v == "nan":
    return f.nan_code
  if v == "+inf":
    return f.pinf_code
  if v == "-inf":
    return f.ninf_code
  if v < 0:
    return encode(f, -v) + 2 ** (f.k - 1)
  if v == 0:
    return 0
  e = max(_floor_log2(v), 1 - f.bias)  # the binade; subnormals share the lowest
  t = v / _pow2(e) * 2 ** (f.p - 1)
  assert t.denominator == 1, (f.name, v)
  field = e + f.bias if v >= _pow2(1 - f.bias) else 0
  code = field * 2 ** (f.p - 1) + int(t) - (2 ** (f.p - 1) if field else 0)
  assert decode(f, code) == v, (f.name, v, code)
  return code
