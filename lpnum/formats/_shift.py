"""Power-of-two (shift) formats: a sign and an integer exponent, with or without a zero (DenseShift)."""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from lpnum.carrier import Carrier
from lpnum.formats._base import Format, facts_problem
from lpnum.validate import check_flag
from lpnum.rounding import P3109_OVERFLOWS, Overflow, finish_round, round_magnitude


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShiftFormat(Format):
  """Values ``+-2^e`` for integer ``e`` in ``[emin, emax]``, plus zero when ``has_zero``.

  Layout: a sign bit, then a field ``k``: with a zero, ``k = 0`` is zero (and -0) and ``k = e - emin + 1``;
  zero-free (DenseShift), ``k = e - emin``. Codes whose field exceeds the top exponent decode to NaN and are
  never produced. Rounding is in value: between ``2^e`` and ``2^(e+1)`` the midpoint is ``1.5 * 2^e``; ties go
  to the even code. Zero-free formats send zero and values below ``2^emin`` to ``+-2^emin`` (the sign of x,
  ``+`` for NaN and +0). There is no inf or NaN value: overflow saturates to ``+-2^emax`` in every overflow mode.

  Example:
    >>> ShiftFormat(emin=-3, emax=0, has_zero=True).bits
    4
  """

  emin: int
  emax: int
  has_zero: bool = True  # type: ignore[assignment]
  name: str = dataclasses.field(default="", compare=False)

  def __post_init__(self) -> None:
    object.__setattr__(self, "has_zero", check_flag("has_zero", self.has_zero))
    for arg, v in (("emin", self.emin), ("emax", self.emax)):
      if isinstance(v, bool) or not isinstance(v, int) or not -126 <= v <= 127:
        raise ValueError(f"{arg}={v!r} must be an integer in [-126, 127]")
    if self.emax < self.emin:
      raise ValueError(f"emax={self.emax} must be >= emin={self.emin}")
    if not self.name:
      suffix = "" if self.has_zero else "_zero_free"
      object.__setattr__(self, "name", f"shift_e{self.emin}_{self.emax}{suffix}")

  @property
  def _levels(self) -> int:
    return self.emax - self.emin + 1 + int(self.has_zero)

  @property
  def _field_bits(self) -> int:
    return max(1, (self._levels - 1).bit_length())

  @property
  def bits(self) -> int:  # type: ignore[override]
    return 1 + self._field_bits

  signed = property(lambda self: True, doc="Signed.")  # type: ignore[assignment]
  has_inf = property(lambda self: False, doc="No inf.")
  has_nan = property(lambda self: False, doc="No NaN value (unused codes decode to NaN).")

  @property
  def has_negative_zero(self) -> bool:
    return self.has_zero

  @property
  def max_finite(self) -> float:
    return math.ldexp(1.0, self.emax)

  @property
  def min_positive(self) -> float:
    return math.ldexp(1.0, self.emin)

  @property
  def min_normal(self) -> float:
    return self.min_positive

  @property
  def epsilon(self) -> float:
    return 1.0

  @property
  def num_finite(self) -> int:
    return 2 * (self.emax - self.emin + 1) + int(self.has_zero)

  overflows = (Overflow.SATURATE, Overflow.NON_SATURATING, *P3109_OVERFLOWS)

  def carrier_problem(self, carrier: Carrier) -> str | None:
    return facts_problem(self, carrier)

  def decode_exact(self, codes: np.ndarray) -> np.ndarray:
    codes = np.asarray(codes, np.int64)
    fb = self._field_bits
    negative = (codes >> fb) & 1 == 1
    k = codes & ((1 << fb) - 1)
    e = k + self.emin - int(self.has_zero)
    value = np.ldexp(1.0, e.astype(np.int32))
    if self.has_zero:
      value = np.where(k == 0, 0.0, value)
    value = np.where(negative, -value, value)
    return np.where(k >= self._levels, np.nan, value)

  def round_values(self, x, carrier, mode, overflow, rand, stochastic_bits, *, in_kernel: bool = False):
    c = carrier
    negative, a, biased = c.split(x)
    r = round_magnitude(a, biased, c, 0, self.emin, self.emin, mode, negative, rand, stochastic_bits,
                        code_bias=int(self.has_zero) - self.emin, in_kernel=in_kernel)
    return finish_round(self, x, c, a, r, negative, a > c.inf_bits, a == c.inf_bits, mode, overflow)

  def encode_values(self, y, carrier):
    c = carrier
    negative, r, biased = c.split(y)
    k = jnp.where(r == 0, 0, biased - c.bias - self.emin + int(self.has_zero))
    sign = jnp.where(negative, 1 << self._field_bits, 0)
    return (k | sign).astype(self.code_dtype)
