"""The native CPU kernel (``cpu_matmul.cc``, called through XLA's FFI) for decode-shaped products with weights in
bit planes (few rows of x): it reads the packed planes once and decodes each weight in registers next to its
multiply-add. The packed matmul (:mod:`lpnum.kernels.packed_matmul`) runs it on its weights, the grouped matmul
(:mod:`lpnum.kernels.grouped_matmul`) on each expert's.

The C++ kernel knows no formats: it takes a table of the element format's values and a table (or array) of the
scales' values, both computed here by :mod:`lpnum.kernels.dequant`, and applies them with the operations and order
of :func:`lpnum.kernels.dequant.apply_scale`, or, where every intermediate stays in float32's normal range, sums a
chunk of 16-32 rows within a scale group first and multiplies the sum by its scale and tensor scale once (for
power-of-two scales the same products as the weights ``dequantize`` gives; for others the same sum up to rounding).
Its results differ from the XLA faces' by rounding only: both stay within the reference's float32 summation
bound.

The same library holds an int8 x int8 -> int32 kernel (:func:`int8_matmul`) for the packed matmul's W8A8 path at
few rows: its integer sums are exact, so they are XLA's int8 dot's bit for bit.
"""

from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from lpnum import native
from lpnum.kernels import dequant
from lpnum.kernels.planes import PlanedWeights

__all__ = ["matmul", "int8_matmul", "supported", "check", "native_rows", "int8_rows", "available", "TARGET",
           "NATIVE_ROWS", "INT8_ROWS"]

#: The FFI target name of the kernel.
TARGET = "lpnum_packed_matmul"

_SOURCE = pathlib.Path(__file__).with_name("cpu_matmul.cc")

# The decode kinds of cpu_matmul.cc: a table gather, a 16-entry permute, int8 / uint8 codes that are their values,
# or 8-bit codes converted as float16 bits (the sign bit above the other bits shifted left by 7 or 8: FP8 E4M3 and
# E5M2; the kernel's kind 4 is its own).
_GATHER, _TABLE16, _INT8, _UINT8 = range(4)
_HALF = {7: 5, 8: 6}
# Its scaling modes: the factors of dequantize's weight that are not 1 (v * scale, (v * pre) * scale,
# (v * scale) * tensor, all of them).
_PLAIN, _PRE, _TENSOR, _FULL = range(4)


def isa() -> str | None:
  """The instruction set the kernel is built for on this machine (it is built with ``-march=native``):
  ``"avx512"`` or ``"avx2"`` (x86 vector code), or ``"portable"`` (lane by lane loops: exact, but slower than the
  XLA path, so ``"auto"`` never picks it). None when the kernel is not available: native kernels are off or the
  build failed (see :mod:`lpnum.native`). Builds and registers the kernel on first call."""
  lib = native.load(_SOURCE, {TARGET: "LpnumPackedMatmul", _int8_target(): "LpnumInt8Matmul"})
  return None if lib is None else ("portable", "avx2", "avx512")[lib.LpnumPackedMatmulIsa()]


def _int8_target() -> str:
  """The FFI target name of the int8 x int8 -> int32 kernel (beside :data:`TARGET`'s)."""
  return f"{TARGET}_int8"


def available() -> bool:
  """True when the native kernel is built and registered (:func:`isa` is not None)."""
  return isa() is not None


def supported(w: PlanedWeights) -> bool:
  """True when the kernel takes ``w``'s format: every element format of the layout, and scales stored as uint8
  codes (E8M0, E4M3, ...) or general float scales (power-of-two scales must be exact float32 numbers)."""
  return _scale_table(w.fmt, np.dtype(w.scales.dtype)) is not None


def check(w: PlanedWeights) -> None:
  """Raises ValueError naming ``implementation='native'`` unless the kernel takes ``w``'s format and is built (which
  also registers it with XLA)."""
  if not supported(w):
    raise ValueError(f"implementation='native': the native CPU kernel does not take {w.fmt.scale_format.name} "
                     f"scales stored as {w.scales.dtype}; use implementation='xla'")
  _require_built()


def _require_built() -> None:
  """Raises ValueError naming ``implementation='native'`` unless the kernels are built (and registered)."""
  if not available():
    raise ValueError("implementation='native': the native CPU kernel is not available (LPNUM_NATIVE=0, or its "
                     "build failed: see the warning); use implementation='xla'")


#: Rows of x below which the packed and grouped matmuls' ``"auto"`` runs the kernel, by instruction set
#: (:func:`isa`) and element codes: 4-bit codes (16-entry permutes, or on AVX2 at one row byte shuffles), 8-bit
#: integers (conversions) and ``"fp8"``, FP8 E4M3 and E5M2 codes (float16 conversions). Measured side by side with the
#: packed matmul's XLA path on 2-core AMD EPYC machines at K = N = 4096 and 8192. AVX-512: 4-bit codes win up to 32
#: rows (1.1-2.7x); int8 up to 32 (3.4x at one row, 1.1-1.2x at 16-32; Zen 4), FP8 (MXFP8) up to 16-24 (3.5x at one
#: row, 1.15-1.3x at 16, 0.95-1.1x at 24). AVX2 (Zen 1): 4-bit codes win up to 24 rows (1.1-2.4x; 0.8-1.3x at 32),
#: int8 up to 32 (1.1-1.7x); FP8 is not measured there, so it takes the AVX-512 crossover halved. Other formats
#: decode by a table gather per weight, which the XLA path beats, and the portable build is slower than the XLA
#: path: never.
NATIVE_ROWS = {"avx512": {4: 32, 8: 32, "fp8": 24}, "avx2": {4: 24, 8: 32, "fp8": 8}}


def native_rows(w: PlanedWeights) -> int:
  """Rows of x below which ``"auto"`` runs the kernel on ``w`` (:data:`NATIVE_ROWS` for this machine's
  :func:`isa`; 0 where the kernel is not available or portable, where it does not take the format
  (:func:`supported`), and for formats decoded by a table gather: FP6, 8-bit floats other than FP8 E4M3 and E5M2,
  2- and 3-bit codes). Only ``w``'s format
  and scale dtype matter, so stacked expert weights may be passed whole. Builds the kernel on first call."""
  kind = _element_table(w.fmt.element)[1]
  if not supported(w) or kind == _GATHER:
    return 0
  return NATIVE_ROWS.get(isa(), {}).get("fp8" if kind in _HALF.values() else w.fmt.element.bits, 0)


#: Rows of int8 x below which W8A8 products (``kernels.matmul`` with int8 x and int8-valued weights per column) run
#: the native int8 x int8 -> int32 kernel on the CPU under ``"auto"``, by instruction set. Measured side by side with
#: XLA's int8 dot (``preferred_element_type=int32``) on a 2-core AMD EPYC (Zen 1, AVX2) at K = N = 4096 and 8192:
#: 11x faster at one row, 1.7-3.4x at 16, 1.1-1.4x at 64-96, even at 128. The AVX-512 build runs the same AVX2 code.
INT8_ROWS = {"avx512": 128, "avx2": 128}


def int8_rows() -> int:
  """Rows of x below which ``"auto"`` runs :func:`int8_matmul` (:data:`INT8_ROWS` for this machine's :func:`isa`;
  0 where the kernel is not available or portable). Builds the kernel on first call."""
  return INT8_ROWS.get(isa(), 0)


def int8_matmul(x2: jax.Array, w8: jax.Array) -> jax.Array:
  """``x2 (M, K_pad) int8 @ w8 (K_pad, N_pad) int8``: ``(M, N_pad)`` int32 sums, exact and wrapping modulo 2^32 as
  ``jnp.dot(x2, w8, preferred_element_type=jnp.int32)`` does on the CPU, so the same bits. ``K_pad`` must be a
  multiple of 64 and ``N_pad`` of 128 (the packed layout's padding).

  Raises:
    TypeError: an operand that is not int8.
    ValueError: shapes that are not 2-D, do not agree on K or are not padded; or (naming
      ``implementation='native'``) the kernel is not built.
  """
  for name, a in (("x2", x2), ("w8", w8)):
    if jnp.dtype(a.dtype) != jnp.int8:
      raise TypeError(f"{name} must be int8, got dtype {a.dtype}")
    if jnp.ndim(a) != 2:
      raise ValueError(f"{name} must be 2-D, got shape {jnp.shape(a)}")
  (m, k_pad), (k_w, n_pad) = x2.shape, w8.shape
  if k_w != k_pad or k_pad % 64 or n_pad % 128:
    raise ValueError(f"x2 (M, K_pad) = {x2.shape} and w8 (K_pad, N_pad) = {w8.shape} must agree on K_pad, a multiple "
                     "of 64, with N_pad a multiple of 128")
  _require_built()
  call = jax.ffi.ffi_call(_int8_target(), jax.ShapeDtypeStruct((m, n_pad), jnp.int32), vmap_method="sequential")
  return call(x2, w8)


def matmul(x2: jax.Array, w, expert: jax.Array | None = None) -> jax.Array:
  """``x2 (M, K_pad) float32 @ W``: ``(M, N_pad)`` float32.

  ``w`` is one ``(K_pad, N_pad)`` matrix (a :class:`PlanedWeights`: 2-D planes and scales), or with ``expert`` (an
  int32 scalar, may be traced) stacked weights with a leading expert axis (a grouped matmul's ``GroupedWeights``),
  of which expert ``expert``'s matrix is multiplied: the kernel reads it in place, so the stack is not sliced or
  copied. Raises as :func:`check` does."""
  check(w)
  fmt = w.fmt
  table, kind = _element_table(fmt.element)
  half_scale, half_nan = _half_layout(table)[1:] if kind in _HALF.values() else (1.0, -1)
  vmax, vmin = _value_range(table, w.zero_point is not None, fmt.element.bits)
  pow2, scale_table, pre, (field_lo, field_hi, field_add, field_shift) = _scale_table(fmt, np.dtype(w.scales.dtype))
  pre = np.zeros((0,), np.float32) if pre is None or np.all(pre == 1) else pre
  # The kernel takes each weights operand whole (one matrix, or one per expert) or as this expert's matrix: the
  # small ones that need converting are sliced first.
  index = jnp.zeros((), jnp.int32) if expert is None else jnp.asarray(expert, jnp.int32)
  mine = (lambda a: a) if expert is None else (lambda a: jax.lax.dynamic_index_in_dim(a, index, keepdims=False))
  scales = w.scales
  if scale_table is None:  # wide scale codes: their float32 values, one per scale row and column
    scales = dequant.scale_parts(fmt, mine(w.scales)).value
    scale_table = np.zeros((0,), np.float32)
  zero = jnp.zeros((0,), jnp.float32) if w.zero_point is None else mine(w.zero_point).astype(jnp.float32)
  tensor = jnp.zeros((0,), jnp.float32)
  post = np.float32(1)
  if not pow2:
    if w.tensor_scale is not None:
      tensor = jnp.reshape(mine(w.tensor_scale), (-1,))[:1].astype(jnp.float32)
    post = np.float32(2.0 ** fmt.element_exponent)
  mode = {(False, False, False): _PLAIN, (True, False, False): _PRE,
          (False, True, False): _TENSOR}.get((pre.size > 0, tensor.shape[0] > 0, post != 1), _FULL)
  planes = [*w.planes] + [jnp.zeros((0,), jnp.uint8)] * (3 - len(w.planes))
  m, n_pad = x2.shape[0], w.scales.shape[-1]
  call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((m, n_pad), jnp.float32), vmap_method="sequential")
  return call(x2.astype(jnp.float32), *planes, table, scales, scale_table, pre, zero, tensor, index,
              bits=np.int32(fmt.element.bits), tile_k=np.int32(w.tile_k), group=np.int32(w.group),
              decode=np.int32(kind), mode=np.int32(mode), pow2=np.int32(pow2), post=post, vmax=vmax, vmin=vmin,
              field_lo=np.int32(field_lo), field_hi=np.int32(field_hi), field_add=np.int32(field_add),
              field_shift=np.int32(field_shift), half_scale=np.float32(half_scale), half_nan=np.int32(half_nan))


def _field_codes(table: np.ndarray | None, pre: np.ndarray | None) -> tuple[int, int, int, int]:
  """``(lo, hi, add, shift)``: the longest run of codes ``c`` in ``lo..hi`` whose scale values are positive normal
  float32 numbers with bits ``(c + add) << shift`` and no pre-factor (E8M0's codes 1-254 with shift 23, E4M3's
  normal codes with shift 20), which the kernel decodes without a table lookup; ``(1, 0, 0, 0)`` (empty) when there
  is none. The kernel checks every code of the run against the table."""
  best = (1, 0, 0, 0)
  if table is None:
    return best
  bits = table.astype(np.float32).view(np.uint32).astype(np.int64)
  codes = np.arange(table.size)
  usable = (table > 0) & np.isfinite(table) & (table >= np.finfo(np.float32).tiny)
  if pre is not None:
    usable &= pre == 1
  for shift in range(23, -1, -1):
    ok = usable & (bits % (1 << shift) == 0)
    add = np.where(ok, (bits >> shift) - codes, -1)
    start = 0
    for c in range(1, table.size + 1):
      if c == table.size or not ok[c] or add[c] != add[start]:
        if ok[start] and c - 1 - start > best[1] - best[0]:
          best = (start, c - 1, int(add[start]), shift)
        start = c
  return best


def _value_range(table: np.ndarray, zero_point: bool, bits: int) -> tuple[np.float32, np.float32]:
  """The largest and the smallest nonzero ``|value - zero point|`` over finite values (zero points are integers
  below 2^bits, so with them the differences are nonzero integers)."""
  a = np.abs(table[np.isfinite(table)].astype(np.float64))
  vmax = (a.max(initial=0.0) + (1 << bits) if zero_point else a.max(initial=0.0)) or 1.0
  vmin = 1.0 if zero_point else a[a > 0].min(initial=1.0)
  return np.float32(vmax), np.float32(min(vmin, vmax))


@functools.lru_cache(maxsize=256)
def _element_table(element) -> tuple[np.ndarray, int]:
  """The float32 values of every code of ``element`` and the kernel's decode kind for them."""
  codes = np.arange(1 << element.bits, dtype=np.int32)
  with jax.ensure_compile_time_eval():
    table = np.asarray(dequant.element_values(element, jnp.asarray(codes)), np.float32)
  kind = _GATHER
  if element.bits == 4:
    kind = _TABLE16
  elif element.bits == 8 and np.array_equal(table, codes.astype(np.int8).astype(np.float32)):
    kind = _INT8
  elif element.bits == 8 and np.array_equal(table, codes.astype(np.float32)):
    kind = _UINT8
  elif element.bits == 8 and (half := _half_layout(table)) is not None:
    kind = _HALF[half[0]]
  return table, kind


def _half_layout(table: np.ndarray) -> tuple[int, float, int] | None:
  """``(shift, scale, nan)`` where every 8-bit code ``c``'s value in ``table`` is the float16 with bits
  ``(c & 0x80) << 8 | (c & 0x7f) << shift`` times the power of two ``scale``, or NaN where ``c & 0x7f == nan``
  (-1: no such codes): FP8 E4M3 (shift 7, scale 2^8, nan 0x7f) and E5M2 (shift 8, scale 1, its float16 infinities
  and NaNs). None for other tables. The kernel checks the table against it."""
  if not table[1] > 0:
    return None
  codes = np.arange(256, dtype=np.uint32)
  for shift in (7, 8):
    half = (((codes & 0x80) << 8) | ((codes & 0x7F) << shift)).astype(np.uint16).view(np.float16).astype(np.float32)
    scale = np.float32(table[1] / half[1])
    if not (np.isfinite(scale) and scale > 0 and np.frexp(scale)[0] == 0.5):
      continue
    with np.errstate(over="ignore", invalid="ignore"):
      got = half * scale
    differ = (got.view(np.uint32) != table.view(np.uint32)) & ~(np.isnan(got) & np.isnan(table))
    nan = np.unique(codes[differ] & 0x7F)
    if not differ.any():
      return shift, float(scale), -1
    if nan.size == 1 and np.isnan(table[(codes & 0x7F) == nan[0]]).all():
      return shift, float(scale), int(nan[0])
  return None


@functools.lru_cache(maxsize=256)
def _scale_table(fmt, dtype: np.dtype):
  """``(pow2, table, pre, fields)`` for scales stored as ``dtype``: the float32 value of every uint8 code
  (``table``; None for wider codes, decoded in XLA) and, for power-of-two scales, the factor ``pre`` that multiplies
  the element first: :func:`lpnum.kernels.dequant.apply_scale` computes ``v * 2^t`` as ``(v * 2^(t - c)) * 2^c``
  with ``c`` clipped to float32's normal exponents, so ``pre = 2^(t - c)`` (1 for most codes) and ``table = 2^c``.
  None when the kernel cannot take the scales (power-of-two scales wider than 8 bits). ``fields``:
  :func:`_field_codes`."""
  if dtype != np.uint8:
    return None if fmt.pow2 else (False, None, None, _field_codes(None, None))
  with jax.ensure_compile_time_eval():
    parts = dequant.scale_parts(fmt, jnp.arange(256, dtype=jnp.uint8))
    if not fmt.pow2:
      table = np.asarray(parts.value, np.float32)
      return False, table, None, _field_codes(table, None)
    t, nan = np.asarray(parts.exponent), np.asarray(parts.nan)
  t = np.where(nan, 0, t)
  c = np.clip(t, -126, 127)
  table = np.where(nan, np.float32(np.nan), np.ldexp(1.0, c).astype(np.float32))
  pre = np.ldexp(1.0, t - c).astype(np.float32)
  if np.any(pre == 0) or np.any(np.isinf(pre)):
    return None
  return True, table, pre, _field_codes(table, pre)
