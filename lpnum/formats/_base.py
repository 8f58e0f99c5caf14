"""What every number format shares: its facts, its value table and the hooks the public functions call."""

from __future__ import annotations

import abc
import functools

import jax
import jax.numpy as jnp
import numpy as np

from lpnum import _bits
from lpnum._rounding import Overflow, Rounding

#: Formats up to this width decode through a table of all their values.
TABLE_BITS = 16


def code_dtype(bits: int) -> np.dtype:
  """The smallest unsigned integer dtype that holds ``bits`` bits."""
  for dt in (np.uint8, np.uint16, np.uint32):
    if bits <= np.iinfo(dt).bits:
      return np.dtype(dt)
  raise ValueError(f"bits={bits} is more than 32")


class Format(abc.ABC):
  """Base of all lpnum formats. Concrete formats are frozen, hashable dataclasses.

  Subclasses define ``bits``, ``signed``, the special-value facts and four hooks: ``_decode_np`` (exact values of
  codes, numpy float64; the source of every derived fact and of the decode table), ``_round`` (values to values),
  ``_encode_rounded`` (representable values to codes) and, for formats wider than :data:`TABLE_BITS`,
  ``_decode_wide``.
  """

  name: str

  #: Width of a code in bits.
  bits: int
  #: Whether the format has negative values.
  signed: bool

  @property
  @abc.abstractmethod
  def has_inf(self) -> bool:
    """Whether the format encodes infinities."""

  @property
  @abc.abstractmethod
  def has_nan(self) -> bool:
    """Whether the format encodes NaN (or NaR)."""

  @property
  def has_zero(self) -> bool:
    """Whether zero is a value of the format."""
    return True

  @property
  def has_negative_zero(self) -> bool:
    """Whether -0 has its own code."""
    return False

  @property
  @abc.abstractmethod
  def max_finite(self) -> float:
    """Largest finite value."""

  @property
  @abc.abstractmethod
  def min_positive(self) -> float:
    """Smallest positive value (the smallest subnormal for floats)."""

  @property
  @abc.abstractmethod
  def min_normal(self) -> float:
    """Smallest positive normal value (equal to :attr:`min_positive` where there are no subnormals)."""

  @property
  @abc.abstractmethod
  def epsilon(self) -> float:
    """Distance from 1 to the next larger value (1 for integers)."""

  @property
  @abc.abstractmethod
  def num_finite(self) -> int:
    """Number of distinct finite values (+0 and -0 count once)."""

  @property
  def dtype(self) -> np.dtype | None:
    """The native (numpy / ml_dtypes / jnp) dtype with exactly these values and codes, if there is one."""
    return None

  @property
  def code_dtype(self) -> np.dtype:
    """The unsigned integer dtype :func:`lpnum.encode` returns for this format."""
    return code_dtype(self.bits)

  @property
  def min_value(self) -> float:
    """Smallest finite value (``-max_finite`` for symmetric formats)."""
    return -self.max_finite if self.signed else (0.0 if self.has_zero else self.min_positive)

  def values(self) -> np.ndarray:
    """Exact value of every code as float64, indexed by code (NaN for NaN codes). Formats of <= 16 bits."""
    if self.bits > TABLE_BITS:
      raise ValueError(f"{self.name} has {self.bits} bits; values() lists formats of at most {TABLE_BITS} bits")
    return _value_table(self)

  # ---- hooks ---------------------------------------------------------------------------------------------
  @abc.abstractmethod
  def _decode_np(self, codes: np.ndarray) -> np.ndarray:
    """Exact values (float64) of integer codes; NaN for NaN codes."""

  @abc.abstractmethod
  def _round(self, x: jax.Array, carrier: _bits.Carrier, mode: Rounding, overflow: Overflow,
             rand: jax.Array | None, stochastic_bits: int | None) -> jax.Array:
    """Rounds carrier floats to values of the format (as carrier floats)."""

  @abc.abstractmethod
  def _encode_rounded(self, y: jax.Array, carrier: _bits.Carrier) -> jax.Array:
    """Codes of carrier floats that are values of the format (the output of :meth:`_round`)."""

  def _decode_wide(self, codes: jax.Array, carrier: _bits.Carrier) -> jax.Array:
    raise NotImplementedError(f"{self.name}: no arithmetic decoder")

  def _check_overflow(self, overflow: Overflow) -> None:
    if overflow is Overflow.WRAP:
      raise ValueError(f"overflow='wrap' is for integer formats; {self.name} takes 'saturate' or 'non_saturating'")

  def _fits(self, carrier: _bits.Carrier) -> str | None:
    """Why the format's results may not be representable in ``carrier``'s dtype, or None."""
    return None

  def __str__(self) -> str:
    return self.name or repr(self)


@functools.lru_cache(maxsize=None)
def _value_table(fmt: Format) -> np.ndarray:
  table = fmt._decode_np(np.arange(1 << fmt.bits, dtype=np.int64))
  table.setflags(write=False)
  return table


def table_decode(fmt: Format, codes: jax.Array, dtype: np.dtype) -> jax.Array:
  """Decodes through the value table, rounding each exact value to ``dtype`` once (on the host)."""
  with np.errstate(over="ignore"):
    table = _value_table(fmt).astype(dtype)
  mask = (1 << fmt.bits) - 1
  idx = (codes.astype(jnp.uint32) & np.uint32(mask)).astype(jnp.int32)
  return jnp.asarray(table)[idx]
