"""Bit packing: integer codes of a k-bit format (k = 1..16) stored losslessly in bytes.

A quantized array keeps its codes packed, so that its ``nbytes`` is the ideal bit count rather than one byte
(or two) per code. :func:`pack` and :func:`unpack` are exact inverses and pure ``jax.numpy``; they work under
``jax.jit`` and ``jax.vmap`` with ``bits``, ``axis`` and ``length`` static. Arguments are checked eagerly, then
each call runs as one jitted computation (compiled once per shape, dtype and static arguments).

Layout
------
Along the packed axis the codes form one little-endian bit stream: code ``i`` occupies stream bits
``[bits * i, bits * i + bits)`` (its least significant bit first), and stream bit ``j`` is bit ``j % 8`` of byte
``j // 8``. So with 4 bits two codes share a byte, the first in the low nibble; with 2 bits four codes share a
byte and with 1 bit eight, the first in the least significant bit; 6-bit codes go four to three bytes; 8-bit
codes are stored as they are; 16-bit codes take two bytes each, the low byte first. Every other width follows
the same rule.

Codes are packed in groups: a group is ``8 / gcd(8, bits)`` codes filling ``bits / gcd(8, bits)`` whole bytes.
The packed axis is padded with zero codes to a whole number of groups, so ``n`` codes take
``packed_length(n, bits) = ceil(n / group) * bytes_per_group`` bytes, which is ``n * bits / 8`` exactly when
``n`` is a multiple of the group. Other axes are left untouched.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

__all__ = ["packed_length", "pack", "unpack"]


def packed_length(n: int, bits: int) -> int:
  """Number of bytes that hold ``n`` codes of ``bits`` bits along the packed axis (padding included).

  Args:
    n: number of codes, ``>= 0``.
    bits: code width, an int in 1..16.

  Returns:
    ``ceil(n / group) * bytes_per_group`` (see the module docstring).

  Raises:
    ValueError: ``n`` is not a non-negative int, or ``bits`` is not an int in 1..16.

  Example:
    >>> [packed_length(n, 6) for n in (0, 1, 4, 5)]
    [0, 3, 3, 6]
  """
  bits = _check_bits(bits)
  n = _check_count(n, "n")
  group_codes, group_bytes = _group(bits)
  return -(-n // group_codes) * group_bytes


def pack(codes: ArrayLike, bits: int, axis: int = -1) -> jax.Array:
  """Packs integer codes of ``bits`` bits into bytes along ``axis``.

  Bits of ``codes`` above ``bits`` are ignored; signed codes are read in two's complement (so ``-1`` packs as
  all ones). The layout is described in the module docstring.

  Args:
    codes: an integer array (signed or unsigned) with at least one dimension.
    bits: code width, a static int in 1..16.
    axis: the axis to pack along (static); the others are untouched.

  Returns:
    A uint8 array shaped like ``codes`` except that ``axis`` has ``packed_length(codes.shape[axis], bits)``
    entries.

  Raises:
    TypeError: ``codes`` is not an integer array.
    ValueError: ``bits`` is not an int in 1..16, ``codes`` is 0-d, or ``axis`` is out of range.

  Example:
    >>> import jax.numpy as jnp
    >>> pack(jnp.array([1, 2, 3], jnp.uint8), bits=4)
    Array([33,  3], dtype=uint8)
  """
  bits = _check_bits(bits)
  codes = _as_integer_array(codes, "codes")
  axis = _check_axis(axis, codes.ndim, "codes")
  return _pack(codes, bits, axis)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _pack(codes: jax.Array, bits: int, axis: int) -> jax.Array:
  group_codes, group_bytes = _group(bits)

  x = jnp.moveaxis(codes, axis, -1)
  lead, n = x.shape[:-1], x.shape[-1]
  groups = -(-n // group_codes)
  pad = groups * group_codes - n
  x = x.astype(jnp.uint32) & np.uint32((1 << bits) - 1)
  if pad:
    x = jnp.pad(x, [(0, 0)] * len(lead) + [(0, pad)])
  x = x.reshape(*lead, groups, group_codes)

  if bits * group_codes <= 32:  # a group fits one 32-bit word: shift, sum, split (all elementwise or tiny)
    shifts = np.arange(group_codes, dtype=np.uint32) * np.uint32(bits)
    word = jnp.sum(x << shifts, axis=-1, dtype=jnp.uint32)  # the codes' bits do not overlap: sum == or
    out = (word[..., None] >> (np.arange(group_bytes, dtype=np.uint32) * np.uint32(8))) & np.uint32(0xFF)
    packed = out.astype(jnp.uint8).reshape(*lead, groups * group_bytes)
    return jnp.moveaxis(packed, -1, axis)

  code = [x[..., i] for i in range(group_codes)]
  out = []
  for b in range(group_bytes):
    parts = []
    for i in range(group_codes):
      shift = bits * i - 8 * b  # where code i's bit 0 lands relative to bit 0 of byte b
      if -bits < shift < 8:  # code i overlaps byte b
        parts.append(_shift(code[i], shift))
    out.append(functools.reduce(jnp.bitwise_or, parts))
  packed = (_stack_last(out) & np.uint32(0xFF)).astype(jnp.uint8).reshape(*lead, groups * group_bytes)
  return jnp.moveaxis(packed, -1, axis)


def unpack(packed: ArrayLike, bits: int, length: int, axis: int = -1, dtype: DTypeLike | None = None) -> jax.Array:
  """Inverse of :func:`pack`: the ``length`` codes of ``bits`` bits stored along ``axis`` of ``packed``.

  Args:
    packed: an integer array of bytes as :func:`pack` returns (only the low 8 bits of each entry are read).
    bits: code width, a static int in 1..16.
    length: number of codes to return along ``axis`` (static); the padding after them is dropped.
    axis: the packed axis (static).
    dtype: integer dtype of the result; by default uint8 for ``bits <= 8`` and uint16 above. A signed dtype of
      exactly ``bits`` bits reads the codes as two's complement.

  Returns:
    The codes, shaped like ``packed`` except that ``axis`` has ``length`` entries.

  Raises:
    TypeError: ``packed`` is not an integer array, or ``dtype`` is not an integer dtype.
    ValueError: ``bits`` is not an int in 1..16, ``packed`` is 0-d, ``axis`` is out of range, ``dtype`` is too
      narrow for ``bits``, or ``length`` does not match the size of the packed axis.

  Example:
    >>> import jax.numpy as jnp
    >>> unpack(jnp.array([0x21, 0x03], jnp.uint8), bits=4, length=3)
    Array([1, 2, 3], dtype=uint8)
  """
  bits = _check_bits(bits)
  packed = _as_integer_array(packed, "packed")
  axis = _check_axis(axis, packed.ndim, "packed")
  length = _check_count(length, "length")
  if dtype is None:
    dtype = np.dtype(np.uint8 if bits <= 8 else np.uint16)
  else:
    try:
      dtype = np.dtype(dtype)
    except TypeError as e:
      raise TypeError(f"dtype={dtype!r} is not a dtype") from e
    if not np.issubdtype(dtype, np.integer):
      raise TypeError(f"dtype={dtype} must be an integer dtype")
    if np.iinfo(dtype).bits < bits:
      raise ValueError(f"dtype={dtype} cannot hold {bits}-bit codes")
  size = packed.shape[axis]
  want = packed_length(length, bits)
  if size != want:
    raise ValueError(f"length={length} does not match packed axis {axis} of size {size}: {length} codes of "
                     f"{bits} bits take {want} bytes, so the expected size is {want}")
  return _unpack(packed, bits, length, axis, dtype)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _unpack(packed: jax.Array, bits: int, length: int, axis: int, dtype: np.dtype) -> jax.Array:
  group_codes, group_bytes = _group(bits)
  size = packed.shape[axis]

  x = jnp.moveaxis(packed, axis, -1)
  lead = x.shape[:-1]
  groups = size // group_bytes
  if group_codes in (1, 2, 4) and group_bytes == 1:  # 8, 4 or 2 bits: each code to a byte of one word
    byte = (x.astype(jnp.uint32) & np.uint32(0xFF)).reshape(*lead, groups, 1)
    word = jnp.zeros(byte.shape, jnp.uint32)
    for i in range(group_codes):
      word = word | (((byte >> np.uint32(bits * i)) & np.uint32((1 << bits) - 1)) << np.uint32(8 * i))
    word = word.astype(np.dtype(f"uint{8 * group_codes}"))
    # A word of g bytes viewed as g bytes (code i in byte i: XLA's bitcast is little-endian on every backend jax
    # runs on) gives the codes in order without the interleaving loop below, which XLA on the CPU runs slowly.
    codes = jax.lax.bitcast_convert_type(word[..., 0], jnp.uint8) if group_codes > 1 else word[..., 0]
    codes = codes.reshape(*lead, groups * group_codes)[..., :length]
    return jnp.moveaxis(codes.astype(dtype), -1, axis)
  x = (x.astype(jnp.uint32) & np.uint32(0xFF)).reshape(*lead, groups, group_bytes)

  if bits * group_codes <= 32:
    word = jnp.sum(x << (np.arange(group_bytes, dtype=np.uint32) * np.uint32(8)), axis=-1, dtype=jnp.uint32)
    out = (word[..., None] >> (np.arange(group_codes, dtype=np.uint32) * np.uint32(bits)))
    codes = (out & np.uint32((1 << bits) - 1)).reshape(*lead, groups * group_codes)[..., :length]
    return jnp.moveaxis(codes.astype(dtype), -1, axis)

  byte = [x[..., b] for b in range(group_bytes)]
  out = []
  for i in range(group_codes):
    parts = []
    for b in range(group_bytes):
      shift = 8 * b - bits * i  # where bit 0 of byte b lands relative to code i's bit 0
      if -8 < shift < bits:  # byte b overlaps code i
        parts.append(_shift(byte[b], shift))
    out.append(functools.reduce(jnp.bitwise_or, parts))
  codes = (_stack_last(out) & np.uint32((1 << bits) - 1)).reshape(*lead, groups * group_codes)[..., :length]
  return jnp.moveaxis(codes.astype(dtype), -1, axis)


def _stack_last(columns: list[jax.Array]) -> jax.Array:
  """``jnp.stack(columns, axis=-1)`` for unsigned columns, as an OR of zero-padded columns.

  XLA fuses the pads and ORs into one loop; on the CPU a stack of a dozen computed columns instead becomes a dozen
  separate fusions and compiles several times slower.
  """
  n = len(columns)
  zero = np.zeros((), columns[0].dtype)
  placed = [jax.lax.pad(c[..., None], zero, [(0, 0, 0)] * c.ndim + [(k, n - 1 - k, 0)])
            for k, c in enumerate(columns)]
  return functools.reduce(jnp.bitwise_or, placed)


def _shift(v: jax.Array, shift: int) -> jax.Array:
  """``v`` shifted left by ``shift`` bits (right by ``-shift`` when negative)."""
  if shift > 0:
    return v << shift
  if shift < 0:
    return v >> -shift
  return v


def _group(bits: int) -> tuple[int, int]:
  """Codes per group and bytes per group for ``bits``-bit codes."""
  g = math.gcd(8, bits)
  return 8 // g, bits // g


def _check_bits(bits) -> int:
  if isinstance(bits, bool) or not isinstance(bits, int | np.integer) or not 1 <= bits <= 16:
    raise ValueError(f"bits={bits!r} must be an int in 1..16")
  return int(bits)


def _check_count(n, name: str) -> int:
  if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
    raise ValueError(f"{name}={n!r} must be a non-negative int")
  return int(n)


def _check_axis(axis, ndim: int, name: str) -> int:
  if ndim == 0:
    raise ValueError(f"{name} is 0-d: there is no axis to pack along")
  if isinstance(axis, bool) or not isinstance(axis, int | np.integer) or not -ndim <= axis < ndim:
    raise ValueError(f"axis={axis!r} is out of range for {name} with {ndim} dimension(s)")
  return int(axis) % ndim


def _as_integer_array(x, name: str) -> jax.Array:
  if not isinstance(x, jax.Array | np.ndarray | np.generic | int | list | tuple):
    raise TypeError(f"{name} must be an integer array, got {type(x).__name__}")
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.integer):
    raise TypeError(f"{name} must be an integer array, got dtype {x.dtype}")
  return x
