"""Integer formats: signed/unsigned 1..16 bits with an optional narrow (symmetric) range; binary {-1, +1}."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from lpnum.carrier import Carrier
from lpnum.rounding import Overflow, Rounding, round_integral
from lpnum.formats._base import Format, facts_problem
from lpnum.validate import check_flag
from lpnum.rounding import round_magnitude

_NEVER = 1 << 20  # an exponent no carrier reaches: integers have a fixed grid step of 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class IntFormat(Format):
  """Two's complement (signed) or plain binary (unsigned) integers of ``bits`` bits.

  ``narrow=True`` drops the most negative value so the range is symmetric (int8: [-127, 127]; int2 narrow is
  the ternary format {-1, 0, 1}). Overflow: ``saturate`` clamps to the range; ``wrap`` reduces modulo 2^bits
  (two's complement; not for narrow formats). Integers have no NaN or inf: NaN becomes 0 and +-inf saturate
  in both modes.

  Example:
    >>> IntFormat(bits=4).max_finite, IntFormat(bits=4).min_value
    (7.0, -8.0)
  """

  arithmetic_decode: ClassVar[bool] = True

  bits: int
  signed: bool = True
  narrow: bool = False
  name: str = dataclasses.field(default="", compare=False)

  def __post_init__(self) -> None:
    object.__setattr__(self, "signed", check_flag("signed", self.signed))
    object.__setattr__(self, "narrow", check_flag("narrow", self.narrow))
    if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 1 <= self.bits <= 16:
      raise ValueError(f"bits={self.bits!r} must be an integer in [1, 16]")
    if self.narrow and not self.signed:
      raise ValueError("narrow=True is for signed integers (unsigned ranges start at 0)")
    if self.narrow and self.bits < 2:
      raise ValueError("narrow=True needs bits >= 2 (int1 narrow would hold only 0)")
    if not self.name:
      object.__setattr__(self, "name", f"{'' if self.signed else 'u'}int{self.bits}{'_narrow' if self.narrow else ''}")

  has_inf = property(lambda self: False, doc="Integers have no inf.")
  has_nan = property(lambda self: False, doc="Integers have no NaN.")

  @property
  def max_finite(self) -> float:
    return float((1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1)

  @property
  def min_value(self) -> float:
    if not self.signed:
      return 0.0
    return -float((1 << (self.bits - 1)) - int(self.narrow))

  @property
  def min_positive(self) -> float:
    return 1.0

  @property
  def min_normal(self) -> float:
    return 1.0

  @property
  def epsilon(self) -> float:
    return 1.0

  @property
  def num_finite(self) -> int:
    return int(self.max_finite - self.min_value) + 1

  overflows = (Overflow.SATURATE, Overflow.WRAP)

  def check_overflow(self, overflow: Overflow) -> None:
    super().check_overflow(overflow)
    if overflow is Overflow.WRAP and self.narrow:
      raise ValueError(f"overflow='wrap' is two's complement; {self.name} is narrow (symmetric): use 'saturate'")

  def carrier_problem(self, carrier: Carrier) -> str | None:
    return facts_problem(self, carrier)

  def decode_exact(self, codes: np.ndarray) -> np.ndarray:
    codes = np.asarray(codes, np.int64) & ((1 << self.bits) - 1)
    if self.signed:
      codes = np.where(codes >= 1 << (self.bits - 1), codes - (1 << self.bits), codes)
    values = codes.astype(np.float64)
    if self.narrow:  # the code of -2^(bits-1) is unused; it decodes to the saturated value
      values = np.maximum(values, self.min_value)
    return values

  def round_values(self, x, carrier, mode, overflow, rand, stochastic_bits, *, in_kernel: bool = False):
    c = carrier
    if overflow is not Overflow.WRAP and not in_kernel:  # round-to-integral: Triton lowers no round
      r = round_integral(x, mode)
      if r is not None:  # the float unit's exact rounding; NaN -> 0, -0 -> +0, inf saturates
        r = jnp.clip(r, jnp.asarray(self.min_value, c.dtype), jnp.asarray(self.max_finite, c.dtype))
        return jnp.where(jnp.isnan(r) | (r == 0), jnp.zeros_like(r), r)  # x used once: XLA fuses a divide
    negative, a, biased = c.split(x)
    is_nan = a > c.inf_bits
    r = round_magnitude(a, biased, c, 0, _NEVER, 0, mode, negative, rand, stochastic_bits, in_kernel=in_kernel)
    if overflow is Overflow.WRAP:
      value = _wrap(r, negative, c, self)
    else:
      pos_max = np.array(self.max_finite, c.dtype).view(c.utype)
      neg_max = np.array(abs(self.min_value), c.dtype).view(c.utype)
      r = jnp.where(negative, jnp.minimum(r, neg_max), jnp.minimum(r, pos_max))
      value = c.join(negative, r)
    inf_value = jnp.where(negative, self.min_value, self.max_finite).astype(c.dtype)
    value = jnp.where(a == c.inf_bits, inf_value, value)
    # Integers have one zero: -0.0 is not a value of theirs.
    return jnp.where(is_nan | (value == 0), jnp.zeros_like(value), value)

  def encode_values(self, y, carrier):
    mask = (1 << self.bits) - 1
    return (y.astype(jnp.int32) & mask).astype(self.code_dtype)

  def decode_values(self, codes, carrier):
    v = codes.astype(jnp.uint32)
    if self.signed:
      shift = 32 - self.bits
      v = (v.astype(jnp.int32) << shift) >> shift  # arithmetic shift: sign extension
      if self.narrow:
        v = jnp.maximum(v, int(self.min_value))
    return v.astype(carrier.dtype)


def _wrap(r, negative, c: Carrier, fmt: IntFormat) -> jax.Array:
  """The integer magnitude ``r`` (carrier bits) with the sign, reduced modulo 2^bits into the format's range."""
  mask = (1 << fmt.bits) - 1
  _, _, biased = c.split(jax.lax.bitcast_convert_type(r, c.dtype))
  sig = (r & c.u(c.mant_mask)) | jnp.where(biased > 0, c.u(1 << c.mantissa_bits), c.u(0))
  lsb = jnp.maximum(biased, 1) - c.bias - c.mantissa_bits
  low = jnp.where(lsb >= 0, sig << jnp.clip(lsb, 0, c.width - 1).astype(c.utype),
                  sig >> jnp.clip(-lsb, 0, c.width - 1).astype(c.utype))
  low = (low & c.u(mask)).astype(jnp.int32)
  low = jnp.where(negative, (-low) & mask, low)
  if fmt.signed:
    low = jnp.where(low >= 1 << (fmt.bits - 1), low - (1 << fmt.bits), low)
  return low.astype(c.dtype)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BinaryFormat(Format):
  """The binary format {-1, +1} (XNOR-Net, BinaryConnect): one bit, the sign bit (code 0 is +1, 1 is -1).

  Rounding picks between -1 and +1: ``nearest_even`` sends x > 0 and both zeros to +1 (the even code);
  ``nearest_away`` and ``toward_zero`` follow the sign bit of x (so -0.0 gives -1); ``up`` gives +1 unless
  x <= -1; ``down`` gives -1 unless x >= 1; ``to_odd`` keeps +-1 and sends everything else to -1 (the odd code);
  ``stochastic`` gives +1 with probability (x + 1) / 2 clipped to [0, 1]. NaN gives +1. Overflow modes agree.
  """

  name: str = dataclasses.field(default="binary", compare=False)

  bits = property(lambda self: 1, doc="One bit.")
  signed = property(lambda self: True, doc="Signed.")
  has_inf = property(lambda self: False, doc="No inf.")
  has_nan = property(lambda self: False, doc="No NaN.")
  has_zero = property(lambda self: False, doc="No zero.")
  max_finite = property(lambda self: 1.0, doc="+1.")
  min_positive = property(lambda self: 1.0, doc="+1.")
  min_normal = property(lambda self: 1.0, doc="+1.")
  epsilon = property(lambda self: 2.0, doc="The gap between its two values.")
  num_finite = property(lambda self: 2, doc="Two values.")

  def decode_exact(self, codes: np.ndarray) -> np.ndarray:
    return np.where(np.asarray(codes) & 1, -1.0, 1.0)

  def round_values(self, x, carrier, mode, overflow, rand, stochastic_bits, *, in_kernel: bool = False):
    c = carrier
    negative, a, _ = c.split(x)
    xf = x.astype(c.dtype)
    if mode is Rounding.NEAREST_EVEN:
      minus = xf < 0
    elif mode in (Rounding.NEAREST_AWAY, Rounding.TOWARD_ZERO):
      minus = negative
    elif mode is Rounding.UP:
      minus = xf <= -1
    elif mode is Rounding.DOWN:
      minus = xf < 1
    elif mode is Rounding.TO_ODD:
      minus = xf != 1
    else:
      # P(+1) = (x + 1) / 2: compare 24 random bits with the probability scaled to 2^24 (exact for |x| <= 1
      # on the grid of 2^-24; the clip handles everything outside).
      p = jnp.clip((xf.astype(jnp.float32) + 1) * np.float32(0.5), 0, 1) * np.float32(1 << 24)
      bits = (rand >> np.uint32(8)).astype(jnp.float32)
      minus = ~(bits < p)
    minus = jnp.where(a > c.inf_bits, False, minus)
    return jnp.where(minus, -1.0, 1.0).astype(c.dtype)

  def encode_values(self, y, carrier):
    return (y < 0).astype(self.code_dtype)
