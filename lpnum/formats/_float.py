"""Binary floating-point formats ExMy: IEEE-like, fn, fnuz, finite-only, exponent-only and P3109."""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from lpnum.carrier import Carrier
from lpnum.exact import compose
from lpnum.formats._base import Format, facts_problem
from lpnum.validate import check_flag
from lpnum.rounding import P3109_OVERFLOWS, Overflow, finish_round, round_magnitude


class Specials(enum.Enum):
  """Where a float format keeps its NaNs and infinities.

  * ``IEEE``: exponent all ones: mantissa 0 is +-inf, anything else NaN (float16, bfloat16, float8_e5m2).
  * ``FN``: no inf; only the all-ones code of each sign is NaN (float8_e4m3fn; unsigned: float8_e8m0fnu).
  * ``FNUZ``: no inf, no -0; the negative-zero code (0x80) is the single NaN (float8_e4m3fnuz, P3109 finite).
  * ``FNUZ_INF``: as FNUZ, and the all-ones code of each sign is +-inf (P3109 signed extended).
  * ``FN_INF``: unsigned only: all ones is NaN, the code below it +inf (P3109 unsigned extended).
  * ``FINITE``: every code is a finite value (OCP FP6 and FP4).
  """

  IEEE = "ieee"
  FN = "fn"
  FNUZ = "fnuz"
  FNUZ_INF = "fnuz_inf"
  FN_INF = "fn_inf"
  FINITE = "finite"


#: The binades of float64 (its largest exponent and its smallest subnormal): every value of a FloatFormat is a
#: float64 value, so that its facts and value table are exact and it can be rounded in the float64 carrier.
_F64_EMAX, _F64_LOWEST = 1023, -1074

# Number of special codes at the top of the positive codes, per convention.
_TOP_SPECIALS = {Specials.FN: 1, Specials.FNUZ: 0, Specials.FNUZ_INF: 1, Specials.FN_INF: 2, Specials.FINITE: 0}


@dataclasses.dataclass(frozen=True, kw_only=True)
class FloatFormat(Format):
  """A binary float: ``[sign] exponent_bits mantissa_bits`` with a bias and a convention for specials.

  A code with exponent field E and mantissa field M is worth ``(1 + M / 2^m) * 2^(E - bias)``, or
  ``M * 2^(1 - bias - m)`` for E = 0 when the format has subnormals. ``has_subnormals=False`` makes E = 0 an
  ordinary binade, as in E8M0: such a format has no zero (values that would round to zero go to the smallest
  value). Everything else (max, epsilon, number of values) is derived from these fields. Every value must be a
  float64 value (exponents within float64's binades, 2^-1074 to 2^1023); formats beyond float32's range round
  only float64 inputs (under ``jax_enable_x64``).

  Example:
    >>> fmt = FloatFormat(exponent_bits=4, mantissa_bits=3, bias=7, specials=Specials.FN, name="e4m3fn")
    >>> fmt.max_finite, fmt.min_positive
    (448.0, 0.001953125)
  """

  arithmetic_decode: ClassVar[bool] = True

  exponent_bits: int
  mantissa_bits: int
  bias: int
  specials: Specials = Specials.IEEE
  signed: bool = True
  has_subnormals: bool = True
  name: str = dataclasses.field(default="", compare=False)

  def __post_init__(self) -> None:
    object.__setattr__(self, "signed", check_flag("signed", self.signed))
    object.__setattr__(self, "has_subnormals", check_flag("has_subnormals", self.has_subnormals))
    for field, lo, hi in (("exponent_bits", 1, 16), ("mantissa_bits", 0, 23), ("bias", -(1 << 16), 1 << 16)):
      value = getattr(self, field)
      if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"{field}={value!r} must be an integer in [{lo}, {hi}]")
    if not isinstance(self.specials, Specials):
      raise TypeError(f"specials={self.specials!r} must be a Specials member")
    if self.specials is Specials.FN_INF and self.signed:
      raise ValueError("specials=FN_INF is defined for unsigned formats only")
    if self.specials in (Specials.FNUZ, Specials.FNUZ_INF) and not self.signed:
      raise ValueError(f"specials={self.specials.name} needs a sign bit (NaN is the negative-zero code)")
    if self.specials is Specials.IEEE and self.exponent_bits < 2:
      raise ValueError("IEEE specials need exponent_bits >= 2 (the top exponent holds inf and NaN)")
    if self._max_code < 1:
      raise ValueError(f"{self!r} has no positive finite value")
    lowest = self.emin - (self.mantissa_bits if self.has_subnormals else 0)
    if self.emax > _F64_EMAX or lowest < _F64_LOWEST:
      raise ValueError(f"exponent_bits={self.exponent_bits} with bias={self.bias}: {self.name or self._default_name()} "
                       f"spans binades 2^{lowest} to 2^{self.emax}; lpnum holds "
                       f"formats whose values are float64 values (2^{_F64_LOWEST} to 2^{_F64_EMAX})")
    if not self.name:
      object.__setattr__(self, "name", self._default_name())

  def _default_name(self) -> str:
    tag = {Specials.IEEE: "", Specials.FN: "fn", Specials.FNUZ: "fnuz", Specials.FNUZ_INF: "fnuz_inf",
           Specials.FN_INF: "fn_inf", Specials.FINITE: "finite"}[self.specials]
    std_bias = (1 << (self.exponent_bits - 1)) - 1
    b = "" if self.bias == std_bias else f"b{self.bias}"
    u = "" if self.signed else "u"
    sub = "" if self.has_subnormals else "_nosub"
    return f"float{self.bits}_e{self.exponent_bits}m{self.mantissa_bits}{b}{tag}{u}{sub}"

  # ---- layout --------------------------------------------------------------------------------------------
  @property
  def bits(self) -> int:  # type: ignore[override]
    return int(self.signed) + self.exponent_bits + self.mantissa_bits

  @property
  def _max_code(self) -> int:
    """Largest positive code that is finite."""
    top = (1 << (self.exponent_bits + self.mantissa_bits)) - 1
    if self.specials is Specials.IEEE:
      return top - (1 << self.mantissa_bits)
    return top - _TOP_SPECIALS[self.specials]

  @property
  def emin(self) -> int:
    """Exponent of the smallest normal binade."""
    return (1 if self.has_subnormals else 0) - self.bias

  @property
  def emax(self) -> int:
    """Exponent of the largest finite value."""
    return (self._max_code >> self.mantissa_bits) - self.bias

  # ---- facts ---------------------------------------------------------------------------------------------
  @property
  def has_inf(self) -> bool:
    return self.specials in (Specials.IEEE, Specials.FNUZ_INF, Specials.FN_INF)

  @property
  def has_nan(self) -> bool:
    return self.specials is not Specials.FINITE

  @property
  def has_zero(self) -> bool:
    return self.has_subnormals

  @property
  def has_negative_zero(self) -> bool:
    return self.signed and self.has_zero and self.specials in (Specials.IEEE, Specials.FN, Specials.FINITE)

  @property
  def max_finite(self) -> float:
    return float(self.decode_exact(np.array([self._max_code]))[0])

  @property
  def min_normal(self) -> float:
    return math.ldexp(1.0, self.emin)

  @property
  def min_positive(self) -> float:
    if self.has_subnormals and self.mantissa_bits > 0:
      return math.ldexp(1.0, self.emin - self.mantissa_bits)
    return self.min_normal

  @property
  def epsilon(self) -> float:
    return math.ldexp(1.0, -self.mantissa_bits)

  @property
  def num_finite(self) -> int:
    positive = self._max_code + (0 if self.has_zero else 1)  # codes 1.._max_code (+ code 0 if not zero)
    return (2 * positive if self.signed else positive) + int(self.has_zero)

  # ---- exact decode (numpy, the table and the facts) -----------------------------------------------------
  def decode_exact(self, codes: np.ndarray) -> np.ndarray:
    codes = np.asarray(codes, np.int64)
    m, nb = self.mantissa_bits, self.exponent_bits + self.mantissa_bits
    sign = (codes >> nb) & 1 if self.signed else np.zeros_like(codes)
    mag = codes & ((1 << nb) - 1)
    e_field, m_field = mag >> m, mag & ((1 << m) - 1)
    normal = (e_field > 0) | (not self.has_subnormals)
    frac = np.where(normal, m_field + (1 << m), m_field).astype(np.float64)
    exp = np.where(normal, e_field, 1) - self.bias - m
    value = np.ldexp(frac, exp.astype(np.int32))
    value = np.where(sign == 1, -value, value)
    is_nan, is_inf = self.special_codes(sign == 1, mag, np)
    inf = np.where(sign == 1, -np.inf, np.inf)
    return np.where(is_nan, np.nan, np.where(is_inf, inf, value))

  def special_codes(self, negative, mag, xp):
    """``(is_nan, is_inf)`` of codes given their sign and the bits below it; ``xp`` is numpy or jax.numpy."""
    m, nb = self.mantissa_bits, self.exponent_bits + self.mantissa_bits
    top = (1 << nb) - 1
    none = xp.zeros(mag.shape, bool)
    sp = self.specials
    if sp is Specials.IEEE:
      special = (mag >> m) == (1 << self.exponent_bits) - 1
      mantissa_zero = (mag & ((1 << m) - 1)) == 0
      return special & ~mantissa_zero, special & mantissa_zero
    if sp is Specials.FN:
      return mag == top, none
    if sp is Specials.FNUZ:
      return negative & (mag == 0), none
    if sp is Specials.FNUZ_INF:
      return negative & (mag == 0), mag == top
    if sp is Specials.FN_INF:
      return mag == top, mag == top - 1
    return none, none

  # ---- rounding ------------------------------------------------------------------------------------------
  overflows = (Overflow.SATURATE, Overflow.NON_SATURATING, *P3109_OVERFLOWS)

  def carrier_problem(self, carrier: Carrier) -> str | None:
    return facts_problem(self, carrier, self.mantissa_bits)

  def round_values(self, x, carrier, mode, overflow, rand, stochastic_bits, *, in_kernel: bool = False):
    c = carrier
    negative, a, biased = c.split(x)
    is_nan = a > c.inf_bits
    is_inf = a == c.inf_bits
    r = round_magnitude(a, biased, c, self.mantissa_bits, self.emin,
                        self.emin - (self.mantissa_bits if self.has_subnormals else 0),
                        mode, negative, rand, stochastic_bits, code_bias=self.bias, in_kernel=in_kernel)
    return finish_round(self, x, c, a, r, negative, is_nan, is_inf, mode, overflow)

  def encode_values(self, y, carrier):
    c = carrier
    negative, r, biased = c.split(y)
    m = self.mantissa_bits
    e = c.exponent(r, biased)
    normal = e >= self.emin
    tsub = self.emin - (m if self.has_subnormals else 0)
    t = jnp.where(normal, e - m, tsub)
    sig = (r & c.u(c.mant_mask)) | jnp.where(biased > 0, c.u(1 << c.mantissa_bits), c.u(0))
    lsb = jnp.maximum(biased, 1) - c.bias - c.mantissa_bits
    units = sig >> jnp.clip(t - lsb, 0, c.width - 1).astype(c.utype)
    field = jnp.where(normal, e + self.bias - 1, 0).astype(c.utype)
    mag = jnp.where(r == 0, c.u(0), (field << c.u(m)) + units)
    nb = self.exponent_bits + m
    top = (1 << nb) - 1
    sp = self.specials
    if sp is Specials.IEEE:
      inf_code, nan_code = (top >> m) << m, ((top >> m) << m) | (1 << max(m - 1, 0))
    elif sp is Specials.FN:
      inf_code, nan_code = None, top
    elif sp is Specials.FNUZ:
      inf_code, nan_code = None, 1 << nb
    elif sp is Specials.FNUZ_INF:
      inf_code, nan_code = top, 1 << nb
    elif sp is Specials.FN_INF:
      inf_code, nan_code = top - 1, top
    else:
      inf_code = nan_code = None
    out = mag
    if inf_code is not None:
      out = jnp.where(r == c.inf_bits, c.u(inf_code), out)
    if self.signed:
      out = out | jnp.where(negative, c.u(1 << nb), c.u(0))
    if nan_code is not None:
      nan_out = c.u(nan_code)
      if sp in (Specials.IEEE, Specials.FN) and self.signed:
        nan_out = nan_out | jnp.where(negative, c.u(1 << nb), c.u(0))
      out = jnp.where(r > c.inf_bits, nan_out, out)
    return out.astype(self.code_dtype)

  def decode_values(self, codes, carrier):
    c = carrier
    m, nb = self.mantissa_bits, self.exponent_bits + self.mantissa_bits
    codes = codes.astype(jnp.uint32)
    negative = ((codes >> nb) & 1) == 1 if self.signed else jnp.zeros(codes.shape, bool)
    mag = codes & np.uint32((1 << nb) - 1)
    if self._normal_in(c):
      y = self._decode_fields(negative, mag, c)
    else:
      e_field = (mag >> m).astype(jnp.int32)
      m_field = mag & np.uint32((1 << m) - 1)
      normal = (e_field > 0) | (not self.has_subnormals)
      sig = jnp.where(normal, m_field | np.uint32(1 << m), m_field)
      # Exponent of the leading bit: for subnormals, from the position of the top set bit.
      lead = 31 - jax.lax.clz(sig).astype(jnp.int32)
      e = jnp.where(normal, e_field - self.bias, lead - m + 1 - self.bias)
      sig = jnp.where(normal, sig, sig << jnp.clip(m - lead, 0, 31).astype(jnp.uint32))
      y = compose(negative, e, sig, m, c)
    if self.signed and self.has_zero and not self.has_negative_zero:
      y = jnp.where(negative & (mag == 0), jnp.zeros_like(y), y)
    is_nan, is_inf = self.special_codes(negative, mag, jnp)
    inf = jnp.where(negative, -jnp.inf, jnp.inf).astype(c.dtype)
    return jnp.where(is_nan, jnp.asarray(np.nan, c.dtype), jnp.where(is_inf, inf, y))

  def _normal_in(self, c: Carrier) -> bool:
    """Whether every nonzero value is a normal ``c`` number (so that codes map to ``c``'s fields directly)."""
    lowest = self.emin - (self.mantissa_bits if self.has_subnormals else 0)
    return self.mantissa_bits <= c.mantissa_bits and lowest >= 1 - c.bias and self.emax <= c.bias

  def _decode_fields(self, negative, mag, c: Carrier) -> jax.Array:
    """Values of magnitude codes ``mag`` (signs ``negative``) as ``c`` floats built from their fields, for formats
    ``_normal_in(c)``; special codes give garbage (the caller replaces them).

    A normal code's exponent and mantissa fields move into ``c``'s (the exponent rebiased); a subnormal code is its
    mantissa field times ``2^(1 - bias - m)``, an exact product with a normal result.
    """
    m = self.mantissa_bits
    wide = mag.astype(c.utype)
    bits = (wide << c.u(c.mantissa_bits - m)) + c.u((c.bias - self.bias) << c.mantissa_bits)
    if self.has_subnormals:
      sub = wide.astype(c.dtype) * c.dtype.type(2.0 ** (1 - self.bias - m))
      bits = jnp.where(mag < np.uint32(1 << m), jax.lax.bitcast_convert_type(sub, c.utype), bits)
    bits = bits | (negative.astype(c.utype) << c.u(c.width - 1))
    return jax.lax.bitcast_convert_type(bits, c.dtype)
