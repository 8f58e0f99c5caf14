"""What every number format shares: its facts, its value table and the hooks the public functions call."""

from __future__ import annotations

import abc
import dataclasses
import enum
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from lpnum.carrier import Carrier
from lpnum.rounding import Overflow, Rounding

#: Formats up to this width have a table of all their values (:meth:`Format.values`); :func:`lpnum.decode` looks
#: their codes up in it unless the format decodes them exactly by arithmetic (:meth:`Format.decode_values`).
TABLE_BITS = 16

#: The native dtype of each format that has one; filled by the preset table (``_table``), where names live.
NATIVE_DTYPES: dict["Format", np.dtype] = {}


def code_dtype(bits: int) -> np.dtype:
  """The smallest unsigned integer dtype that holds ``bits`` bits."""
  for dt in (np.uint8, np.uint16, np.uint32):
    if bits <= np.iinfo(dt).bits:
      return np.dtype(dt)
  raise ValueError(f"bits={bits} is more than 32")


class Format(abc.ABC):
  """Base of all lpnum formats. Concrete formats are frozen, hashable dataclasses.

  The format protocol. Besides its facts (``bits``, ``signed``, ``has_inf``...), a format implements the methods
  below, which :func:`lpnum.quantize`, :func:`lpnum.encode`, :func:`lpnum.decode`, the scaled formats and the
  kernels call. They compute in a *carrier* (:mod:`lpnum.carrier`: float32, or float64 for float64 inputs)
  and are traceable by jit, vmap and Pallas kernels:

  * :meth:`decode_exact`: exact values of codes (numpy float64), the source of every derived fact and of the
    decode table;
  * :meth:`round_values`: carrier values to the nearest values of the format under a rounding and an overflow
    mode, as carrier values;
  * :meth:`encode_values`: values of the format (the output of :meth:`round_values`) to their codes;
  * :meth:`decode_values`: codes to carrier values with integer arithmetic (required of formats wider than
    :data:`TABLE_BITS`; narrower ones without it decode through their value table);
  * :meth:`check_overflow` and :meth:`carrier_problem`: what a caller must check before rounding.

  A new family subclasses :class:`Format`, implements these, and every public function takes it.
  """

  name: str

  #: Whether :meth:`decode_values` beats the value-table lookup (a gather) for this family, so that
  #: :func:`lpnum.decode` uses it for formats of at most :data:`TABLE_BITS` bits where it is exact.
  arithmetic_decode: ClassVar[bool] = False

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
    return NATIVE_DTYPES.get(self)

  @property
  def code_dtype(self) -> np.dtype:
    """The unsigned integer dtype :func:`lpnum.encode` returns for this format."""
    return code_dtype(self.bits)

  @property
  def min_value(self) -> float:
    """Smallest finite value (``-max_finite`` for symmetric formats)."""
    return -self.max_finite if self.signed else (0.0 if self.has_zero else self.min_positive)

  def describe(self) -> dict:
    """The format as JSON-able data: its family and defining fields (enums by value), and its name; rebuilt by
    :func:`lpnum.formats.format_from_description`.

    Example:
      >>> from lpnum.formats import get_format
      >>> get_format("int4").describe()
      {'family': 'IntFormat', 'bits': 4, 'signed': True, 'narrow': False, 'name': 'int4'}
    """
    out: dict = {"family": type(self).__name__}
    for field in dataclasses.fields(self):  # type: ignore[arg-type]
      value = getattr(self, field.name)
      out[field.name] = value.value if isinstance(value, enum.Enum) else value
    return out

  def values(self) -> np.ndarray:
    """Exact value of every code as float64, indexed by code (NaN for NaN codes). Formats of <= 16 bits."""
    if self.bits > TABLE_BITS:
      raise ValueError(f"{self.name} has {self.bits} bits; values() lists formats of at most {TABLE_BITS} bits")
    return _value_table(self)

  # ---- the format protocol ------------------------------------------------------------------------------
  @abc.abstractmethod
  def decode_exact(self, codes: np.ndarray) -> np.ndarray:
    """Exact values (float64) of integer codes; NaN for NaN codes."""

  @abc.abstractmethod
  def round_values(self, x: jax.Array, carrier: Carrier, mode: Rounding, overflow: Overflow,
                   rand: jax.Array | None, stochastic_bits: int | None, *, in_kernel: bool = False) -> jax.Array:
    """Rounds ``x`` (an array of ``carrier.dtype``) to values of the format, as carrier values.

    Args:
      x: the values; ``carrier.dtype`` is their dtype.
      carrier: :data:`lpnum.carrier.F32` or :data:`~lpnum.carrier.F64`.
      mode, overflow: parsed :class:`~lpnum.Rounding` and :class:`~lpnum.Overflow` (overflow already checked
        with :meth:`check_overflow`).
      rand: uint32 random bits of ``x``'s shape for ``Rounding.STOCHASTIC``, else None.
      stochastic_bits: how many of those bits to use (None: all 32).
      in_kernel: use only operations every Pallas lowering has (no round-to-integral, which Triton lacks);
        the results are the same.
    """

  @abc.abstractmethod
  def encode_values(self, y: jax.Array, carrier: Carrier) -> jax.Array:
    """Codes (:attr:`code_dtype`) of carrier values that are values of the format (from :meth:`round_values`)."""

  def decode_values(self, codes: jax.Array, carrier: Carrier) -> jax.Array:
    """Carrier values of codes (uint32, bits above :attr:`bits` zero), by integer arithmetic, rounded once to
    nearest even into the carrier; NaN codes give the positive quiet NaN.

    :func:`lpnum.decode` calls it for formats wider than :data:`TABLE_BITS`, and, where
    :attr:`arithmetic_decode` is set, for narrower ones decoded into float32 or float64 whose
    :meth:`carrier_problem` is None (the carrier holds every value), instead of the table lookup; its results must
    then equal the table's bit for bit.
    """
    raise NotImplementedError(f"{self.name}: no arithmetic decoder")

  #: The overflow modes the family takes (:meth:`check_overflow`).
  overflows: tuple[Overflow, ...] = (Overflow.SATURATE, Overflow.NON_SATURATING)

  def check_overflow(self, overflow: Overflow) -> None:
    """Raises ValueError if the format does not take the overflow mode (see :attr:`overflows`)."""
    if overflow not in self.overflows:
      why = ("is for integer formats" if overflow is Overflow.WRAP else
             "needs inf or NaN" if overflow is Overflow.NON_SATURATING else
             "is IEEE P3109's, for float formats")
      takes = ", ".join(repr(o.value) for o in self.overflows)
      raise ValueError(f"overflow={overflow.value!r} {why}; {self.name} takes {takes}")

  def carrier_problem(self, carrier: Carrier) -> str | None:
    """Why the format's results may not be representable in ``carrier``'s dtype, or None."""
    return None

  def __str__(self) -> str:
    return self.name or repr(self)


@functools.lru_cache(maxsize=None)
def _value_table(fmt: Format) -> np.ndarray:
  table = fmt.decode_exact(np.arange(1 << fmt.bits, dtype=np.int64))
  table.setflags(write=False)
  return table


def table_decode(fmt: Format, codes: jax.Array, dtype: np.dtype) -> jax.Array:
  """Decodes through the value table, rounding each exact value to ``dtype`` once (on the host)."""
  with np.errstate(over="ignore"):
    table = _value_table(fmt).astype(dtype)
  mask = (1 << fmt.bits) - 1
  idx = (codes.astype(jnp.uint32) & np.uint32(mask)).astype(jnp.int32)
  return jnp.asarray(table)[idx]


@functools.lru_cache(maxsize=None)
def facts_problem(fmt: Format, carrier: Carrier, precision_bits: int | None = None) -> str | None:
  """Why values of ``fmt`` may not be representable in ``carrier``'s dtype, or None: its extreme values must be
  carrier values and its precision (``precision_bits``, if given) at most the carrier's. The families'
  :meth:`Format.carrier_problem` call it (at every call of the public functions: cached per format)."""
  if precision_bits is not None and precision_bits > carrier.mantissa_bits:
    return f"it carries {precision_bits} mantissa bits and {carrier.dtype} only {carrier.mantissa_bits}"
  for fact in ("max_finite", "min_positive", "min_value"):
    value = getattr(fmt, fact)
    with np.errstate(over="ignore", under="ignore"):
      held = float(np.array(value, np.float64).astype(carrier.dtype))
    if held != value:
      return f"its {fact}={value!r} is not a {carrier.dtype} value"
  return None
