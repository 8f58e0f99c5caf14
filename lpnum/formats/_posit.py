"""Posits posit(n, es) of the 2022 Posit Standard, generalized to 0 <= es <= 4, with NaR."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from lpnum.carrier import Carrier
from lpnum.exact import compose
from lpnum.rounding import Rounding, round_shift
from lpnum.formats._base import Format, facts_problem


@dataclasses.dataclass(frozen=True, kw_only=True)
class PositFormat(Format):
  """posit(n, es): sign, a run-length regime, ``es`` exponent bits, and the remaining bits of fraction.

  Code 0 is zero and code 2^(n-1) is NaR (not a real); negative values are the two's complement of positive
  codes. Value: ``2^(k * 2^es + e) * (1 + f)`` for regime k, exponent e and fraction f. Precision tapers: most
  fraction bits near 1, none near maxpos = 2^(2^es * (n-2)) and minpos = 1/maxpos.

  Rounding acts on the bit string (the Standard's rule): ties go to the even code, and where exponent bits are
  cut off the midpoint between two posits is the posit one bit longer, not their arithmetic mean. A nonzero
  value never rounds to zero or NaR: magnitudes clamp to [minpos, maxpos], so the overflow mode does not matter.
  NaN and +-inf give NaR. Stochastic rounding draws on the bit string too: it is unbiased in value wherever the
  fraction field is not empty.

  Example:
    >>> PositFormat(n=8, es=2).max_finite
    16777216.0
  """

  n: int
  es: int
  name: str = dataclasses.field(default="", compare=False)

  def __post_init__(self) -> None:
    for arg, v, lo, hi in (("n", self.n, 2, 32), ("es", self.es, 0, 4)):
      if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"{arg}={v!r} must be an integer in [{lo}, {hi}]")
    if self.n < self.es + 2:
      raise ValueError(f"posit(n={self.n}, es={self.es}) leaves no room for sign and regime: need n >= es + 2")
    if not self.name:
      object.__setattr__(self, "name", f"posit{self.n}_{self.es}")

  @property
  def bits(self) -> int:  # type: ignore[override]
    return self.n

  signed = property(lambda self: True, doc="Posits are signed.")  # type: ignore[assignment]
  has_inf = property(lambda self: False, doc="Posits have no inf.")
  has_nan = property(lambda self: True, doc="NaR, code 2^(n-1).")

  @property
  def useed_log2(self) -> int:
    return 1 << self.es

  @property
  def max_finite(self) -> float:
    return math.ldexp(1.0, self.useed_log2 * (self.n - 2))

  @property
  def min_positive(self) -> float:
    return math.ldexp(1.0, -self.useed_log2 * (self.n - 2))

  @property
  def min_normal(self) -> float:
    return self.min_positive

  @property
  def epsilon(self) -> float:
    one = 1 << (self.n - 2)
    return float(self.decode_exact(np.array([one + 1]))[0]) - 1.0

  @property
  def num_finite(self) -> int:
    return (1 << self.n) - 1

  def carrier_problem(self, carrier: Carrier) -> str | None:
    return facts_problem(self, carrier)

  # ---- exact decode (numpy) ------------------------------------------------------------------------------
  def decode_exact(self, codes: np.ndarray) -> np.ndarray:
    n, es = self.n, self.es
    codes = np.asarray(codes, np.int64) & ((1 << n) - 1)
    negative = codes >> (n - 1) == 1
    mag = np.where(negative, ((1 << n) - codes) & ((1 << n) - 1), codes)
    body = mag & ((1 << (n - 1)) - 1)  # the n-1 bits after the sign
    w = n - 1
    first = (body >> (w - 1)) & 1
    # Run length of the regime: count leading bits equal to the first one.
    run = np.zeros_like(body)
    alive = np.ones(body.shape, bool)
    for i in range(w - 1, -1, -1):
      alive &= ((body >> i) & 1) == first
      run += alive
    k = np.where(first == 1, run - 1, -run)
    rest_bits = np.maximum(w - run - 1, 0)
    rest = body & ((1 << rest_bits) - 1)
    exp_bits = np.minimum(rest_bits, es)
    frac_bits = rest_bits - exp_bits
    e = (rest >> frac_bits) << (es - exp_bits)
    frac = rest & ((1 << frac_bits) - 1)
    scale = k * (1 << es) + e - frac_bits
    value = np.ldexp((frac + (1 << frac_bits)).astype(np.float64), scale.astype(np.int32))
    value = np.where(negative, -value, value)
    value = np.where(codes == 0, 0.0, value)
    return np.where(codes == 1 << (n - 1), np.nan, value)

  # ---- rounding ------------------------------------------------------------------------------------------
  def round_values(self, x, carrier, mode, overflow, rand, stochastic_bits, *, in_kernel: bool = False):
    return self.decode_values(self._codes(x, carrier, mode, rand, stochastic_bits), carrier)

  def encode_values(self, y, carrier):
    # y holds posit values; rounding them again is exact and gives their codes.
    return self._codes(y, carrier, Rounding.TOWARD_ZERO, None, None).astype(self.code_dtype)

  def _codes(self, x, c: Carrier, mode, rand, stochastic_bits) -> jax.Array:
    """Posit codes (uint32) of carrier floats, rounded on the bit string."""
    n, es = self.n, self.es
    w = c.width
    negative, a, biased = c.split(x)
    e = c.exponent(a, biased)
    k = e >> es
    ex = (e & ((1 << es) - 1)).astype(c.utype)
    kc = jnp.clip(k, -(n - 2), n - 3)
    # Regime, left-aligned in a carrier-wide word: k+1 ones then a zero, or -k zeros then a one.
    rl = jnp.where(kc >= 0, kc + 2, 1 - kc)
    ones = jnp.clip(kc + 1, 0, w - 1).astype(c.utype)
    regime = jnp.where(kc >= 0, ((c.u(1) << ones) - c.u(1)) << (c.u(w) - ones),
                       c.u(1) << jnp.clip(w - 1 + kc, 0, w - 1).astype(c.utype))
    # Exponent and fraction follow; bits that fall off the word only matter as a sticky bit.
    tail_bits = es + c.mantissa_bits
    tail = (ex << c.u(c.mantissa_bits)) | (a & c.u(c.mant_mask))
    shift = w - rl - tail_bits
    left = jnp.clip(shift, 0, w - 1).astype(c.utype)
    right = jnp.clip(-shift, 0, w - 1).astype(c.utype)
    placed = jnp.where(shift >= 0, tail << left, tail >> right)
    sticky = (shift < 0) & ((tail & ((c.u(1) << right) - c.u(1))) != 0)
    q = round_shift(regime | placed, w - (n - 1), mode, negative=negative, sticky=sticky, rand=rand,
                    stochastic_bits=stochastic_bits)
    maxpos = (1 << (n - 1)) - 1
    q = jnp.clip(q, c.u(1), c.u(maxpos))
    q = jnp.where(k > n - 3, c.u(maxpos), jnp.where(k < -(n - 2), c.u(1), q)).astype(jnp.uint32)
    mask = np.uint32((1 << n) - 1)
    code = jnp.where(negative, (np.uint32(0) - q) & mask, q)
    code = jnp.where(a == 0, np.uint32(0), code)
    return jnp.where(a >= c.inf_bits, np.uint32(1 << (n - 1)), code)

  def decode_values(self, codes, carrier):
    n, es = self.n, self.es
    c = carrier
    codes = codes.astype(jnp.uint32) & np.uint32((1 << n) - 1)
    negative = (codes >> np.uint32(n - 1)) == 1
    mag = jnp.where(negative, (np.uint32(0) - codes) & np.uint32((1 << n) - 1), codes)
    p = mag << np.uint32(33 - n)  # the n-1 bits after the sign, left-aligned in 32 bits
    first = (p >> np.uint32(31)) == 1
    run = jnp.where(first, jax.lax.clz(~p), jax.lax.clz(p)).astype(jnp.int32)
    run = jnp.minimum(run, n - 1)
    k = jnp.where(first, run - 1, -run)
    rest = jnp.where(run + 1 >= 32, np.uint32(0), p << jnp.clip(run + 1, 0, 31).astype(jnp.uint32))
    if es:
      ex = (rest >> np.uint32(32 - es)).astype(jnp.int32)
      frac = rest << np.uint32(es)
    else:
      ex, frac = 0, rest
    e = k * (1 << es) + ex
    sig = np.uint32(1 << 29) | (frac >> np.uint32(3))  # at most 29 fraction bits (n = 32, es = 0)
    y = compose(negative, e, sig, 29, c)
    y = jnp.where(codes == 0, jnp.zeros_like(y), y)
    return jnp.where(codes == np.uint32(1 << (n - 1)), jnp.asarray(np.nan, c.dtype), y)
