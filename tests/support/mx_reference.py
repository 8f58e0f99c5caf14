"""Plain NumPy reference for OCP Microscaling (MX v1.0) and NVFP4 block quantization.

This module is deliberately independent of ``lpnum`` (it never imports it) and is
written "the obvious way": a Python loop over blocks for the shared scale, exact
float64 / integer arithmetic for everything that the recipes define as exact, and
numpy float32 arithmetic exactly where a recipe says "float32 division/product"
(numpy float32 operations are correctly rounded IEEE operations and keep
subnormals).  It is checked against gfloat and jax.nn in
``tests/oracles/test_mx_reference.py``; later tests compare the fast JAX implementation
with it byte for byte.

MX semantics (``mx_quantize``)
------------------------------
* Input: a float32 array ``x`` (ndim >= 1), an ``axis`` and a block size ``B``
  (default 32) dividing ``x.shape[axis]``.  A block is ``B`` consecutive
  elements along ``axis``.
* Element formats (``MX_FORMATS``):

  ==========  ===================  ====  ============  ==========
  name        element              emax  max finite    mant. bits
  ==========  ===================  ====  ============  ==========
  mxfp8_e4m3  float8_e4m3fn        8     448           3
  mxfp8_e5m2  float8_e5m2          15    57344         2
  mxfp6_e3m2  float6_e3m2fn        4     28            2
  mxfp6_e2m3  float6_e2m3fn        2     7.5           3
  mxfp4_e2m1  float4_e2m1fn        2     6             1
  mxint8      int8, value k / 64   0     127 / 64      6
  ==========  ===================  ====  ============  ==========

  ``emax = floor(log2(max finite))``.  Float element codes are ml_dtypes'
  encodings (sign bit at the top of the 8-, 6- or 4-bit code, stored in the low
  bits of a uint8).  mxint8 is symmetric: ``k`` is clamped to [-127, 127] and
  the code is ``k & 0xFF`` (0x80 is never produced).
* ``amax = max |x|`` over the block (float32).  The scale ``X = 2**s`` is stored
  as E8M0: ``code = s + 127`` for ``s`` in [-127, 127]; code 255 is NaN.
* Shared exponent ``s`` by ``scale_rule`` (all exact, via ``np.frexp``; never
  ``np.log2``):

  - ``"floor"`` (OCP MX v1.0): ``s = floor(log2(amax)) - emax``.
  - ``"ceil"``: ``s = ceil(log2(amax)) - emax``.
  - ``"even"`` (torchao ``ScaleCalculationMode.EVEN``): round ``amax`` to the
    element's mantissa width ``m`` with round-half-up in magnitude (``amax``
    goes up to the next power of two iff its significand in [1, 2) is
    ``>= 2 - 2**-(m + 1)``), then ``s = floor(log2(rounded amax)) - emax``.
  - ``"rceil"`` (cuBLAS / TransformerEngine / jax.nn style):
    ``d = float32(amax) / float32(max finite)`` as a float32 division (may be a
    float32 subnormal, or 0 if it underflows), then ``s = ceil(log2(d))``
    exactly (``d == 0`` gives ``-inf``, i.e. -127 after clamping).  For mxint8
    the divisor is 127 / 64.

  then ``s`` is clamped to [-127, 127].
* Special blocks:

  - all-zero block (``amax == 0``): ``s = -127`` (scale code 0) for every rule;
    the elements are zeros (a -0 input gives the float element -0, code with
    only the sign bit set; mxint8 has no -0 and gives code 0).
  - a block containing NaN, or +-inf: scale code 255 (NaN; E8M0 cannot
    represent inf).  The elements are quantized exactly as in a normal block
    whose scale is 1 (``s = 0``), i.e. saturating round-to-nearest-even, so
    +-inf becomes +-max.  A NaN element becomes what ml_dtypes (0.5 to 0.7)
    converts a float32 NaN to, written here as a rule: the format's NaN where
    it has one (e4m3fn 0x7F / 0xFF, e5m2 0x7E / 0xFE by sign); for fp6 / fp4,
    which have no NaN, a zero whose sign is the INVERSE of the NaN's sign
    (+NaN -> -0, -NaN -> +0).  mxint8: a NaN element gives code
    0 (XLA's float -> int convention).  All dequantized values of such a
    block are NaN.
* Elements: ``v = x / 2**s`` computed exactly in float64 (``np.ldexp``), rounded
  to nearest, ties to even, SATURATED to +-max finite.  The rounding is done by
  an exact search in the table of the element's finite values (float64
  comparisons against midpoints are exact here), NOT by ml_dtypes' float64
  casts: ml_dtypes before 0.7 converts float64 to these formats through float32
  and so double-rounds (e.g. 0.25000000000000006 -> float4_e2m1fn gives 0, not 0.5;
  see the tests).  For our inputs ``v`` always has <= 24 significant bits, so
  this only matters for robustness.  mxint8: ``k = rint(x / 2**(s - 6))``
  (half to even) clamped to [-127, 127].
* Outputs ``(element_codes, scale_codes, values)``: ``element_codes`` uint8 with
  the shape of ``x``; ``scale_codes`` uint8 with ``x.shape[axis]`` replaced by
  ``x.shape[axis] // B``; ``values`` float32 = element value * ``2**s``
  computed exactly in float64 and then cast to float32, NaN for blocks with
  scale code 255.  The cast is exact (checked by an assertion) for every
  finite result, including ``s = -127``.  The single exception is overflow:
  with the ``ceil``, ``even`` and ``rceil`` rules a float-element block whose
  amax is within rounding distance of the float32 maximum dequantizes to
  ``2**128`` (e.g. mxfp8_e4m3 rceil of 3.4028235e38: s = 120, element 256),
  which is +-inf in float32.

NVFP4 semantics (``nvfp4_quantize``)
------------------------------------
Blocks of 16 along ``axis``; float4_e2m1fn elements; an float8_e4m3fn block
scale; an optional float32 per-tensor scale ``T``.  Every "/" and "*" below is
a float32 operation (numpy float32, correctly rounded, subnormals kept):

1. ``amax_t = max |x|`` over the whole tensor.  ``T = amax_t / float32(2688)``
   (2688 = 448 * 6); ``T = 1`` if ``amax_t == 0`` or ``tensor_scale=False``.
2. Per block: ``d = amax_b / 6``; ``sb = d / T``; clamp ``sb`` to
   [2**-9, 448] (2**-9 is the smallest e4m3 subnormal), then round to
   float8_e4m3fn (nearest, ties to even) -> scale code.  So an all-zero block
   gets scale 2**-9 (code 0x01).
3. ``S = e4m3_value * T``; element code = e2m1 round-to-nearest-even of
   ``x / S``, saturated to +-6 (-0 stays -0).
4. ``values = (e2m1_value * e4m3_value) * T``.

The recipe is only defined for finite inputs, and with ``tensor_scale=True`` for
a tensor scale that is a normal float32 (``amax_t == 0`` or
``amax_t >= 2688 * 2**-126``): otherwise ``ValueError`` (a subnormal or
underflowed ``T`` makes ``S`` zero or very inexact, and XLA on CPU flushes
subnormals anyway).

jax.nn's nvfp4 quantizer differs in its float32 arithmetic: it computes
``x * (1/T)`` first and XLA:CPU evaluates its divisions by broadcast values as
multiplications by float32 reciprocals, so codes can differ at rounding ties
(see ``tests/oracles/test_mx_reference.py``).
"""

from __future__ import annotations

import dataclasses

import ml_dtypes
import numpy as np

E8M0_NAN = 255
E8M0_BIAS = 127
S_MIN = -127
S_MAX = 127
SCALE_RULES = ("floor", "ceil", "even", "rceil")
NVFP4_BLOCK = 16


@dataclasses.dataclass(frozen=True)
class MXFormat:
  """Description of an MX element format.

  Attributes:
    name: MX name, e.g. ``"mxfp8_e4m3"``.
    dtype: ml_dtypes element dtype, or ``None`` for mxint8.
    bits: Width of an element code in bits.
    emax: ``floor(log2(max_value))``.
    mbits: Number of mantissa (fraction) bits.
    max_value: Largest finite element value.
  """

  name: str
  dtype: type | None
  bits: int
  emax: int
  mbits: int
  max_value: float


MX_FORMATS = {
    "mxfp8_e4m3": MXFormat("mxfp8_e4m3", ml_dtypes.float8_e4m3fn, 8, 8, 3, 448.0),
    "mxfp8_e5m2": MXFormat("mxfp8_e5m2", ml_dtypes.float8_e5m2, 8, 15, 2, 57344.0),
    "mxfp6_e3m2": MXFormat("mxfp6_e3m2", ml_dtypes.float6_e3m2fn, 6, 4, 2, 28.0),
    "mxfp6_e2m3": MXFormat("mxfp6_e2m3", ml_dtypes.float6_e2m3fn, 6, 2, 3, 7.5),
    "mxfp4_e2m1": MXFormat("mxfp4_e2m1", ml_dtypes.float4_e2m1fn, 4, 2, 1, 6.0),
    "mxint8": MXFormat("mxint8", None, 8, 0, 6, 127.0 / 64.0),
}


# ---------------------------------------------------------------------------
# Exact helpers
# ---------------------------------------------------------------------------


def floor_log2(a: float) -> int:
  """Exact ``floor(log2(a))`` of a positive finite float (float32 or float64).

  Args:
    a: A positive finite number (subnormals allowed).

  Returns:
    The integer ``e`` with ``2**e <= a < 2**(e + 1)``.
  """
  a = float(a)
  assert a > 0 and np.isfinite(a), a
  frac, exp = np.frexp(a)  # a = frac * 2**exp, frac in [0.5, 1)
  return int(exp) - 1


def ceil_log2(a: float) -> int:
  """Exact ``ceil(log2(a))`` of a positive finite float.

  Args:
    a: A positive finite number (subnormals allowed).

  Returns:
    The integer ``e`` with ``2**(e - 1) < a <= 2**e``.
  """
  a = float(a)
  assert a > 0 and np.isfinite(a), a
  frac, exp = np.frexp(a)
  return int(exp) - 1 if frac == 0.5 else int(exp)


def round_half_up_to_mbits(a: float, m: int) -> float:
  """Round a positive float to ``m`` fraction bits, ties away from zero.

  Args:
    a: A positive finite number.
    m: Number of fraction bits to keep.

  Returns:
    The rounded value (exact, as a float64).
  """
  e = floor_log2(a)
  significand = np.ldexp(float(a), -e)  # exact, in [1, 2)
  scaled = np.ldexp(significand, m)  # in [2**m, 2**(m+1))
  rounded = np.floor(scaled + 0.5)  # exact: scaled has few integer bits
  return float(np.ldexp(rounded, e - m))


def shared_exponent(amax: np.float32, fmt: MXFormat, rule: str) -> int:
  """Unclamped-then-clamped shared exponent of a finite, nonzero block.

  Args:
    amax: ``max |x|`` of the block, a positive finite float32.
    fmt: The element format.
    rule: One of ``SCALE_RULES``.

  Returns:
    ``s`` in [-127, 127].
  """
  amax = np.float32(amax)
  if rule == "floor":
    s = floor_log2(amax) - fmt.emax
  elif rule == "ceil":
    s = ceil_log2(amax) - fmt.emax
  elif rule == "even":
    s = floor_log2(round_half_up_to_mbits(amax, fmt.mbits)) - fmt.emax
  elif rule == "rceil":
    d = amax / np.float32(fmt.max_value)  # float32 division, correctly rounded
    assert d.dtype == np.float32
    s = S_MIN if d == 0 else ceil_log2(d)
  else:
    raise ValueError(f"unknown scale rule {rule!r}")
  return min(max(s, S_MIN), S_MAX)


def element_table(dtype) -> tuple[np.ndarray, np.ndarray]:
  """Non-negative finite values of an ml_dtypes float format and their codes.

  Args:
    dtype: An ml_dtypes float type (float8_e4m3fn, float4_e2m1fn, ...).

  Returns:
    ``(codes, values)``: uint8 codes with the sign bit clear whose value is
    finite, and their float64 values, sorted increasingly.
  """
  bits = {ml_dtypes.float4_e2m1fn: 4, ml_dtypes.float6_e2m3fn: 6,
          ml_dtypes.float6_e3m2fn: 6}.get(dtype, 8)
  codes = np.arange(2 ** (bits - 1), dtype=np.uint8)
  values = codes.view(dtype).astype(np.float64)
  finite = np.isfinite(values)
  codes, values = codes[finite], values[finite]
  assert np.all(np.diff(values) > 0)
  return codes, values


#: Positive NaN code of each element format that has NaN (ml_dtypes' canonical
#: NaN from float32: e4m3fn S.1111.111, e5m2 S.11111.10).
_NAN_CODES = {ml_dtypes.float8_e4m3fn: 0x7F, ml_dtypes.float8_e5m2: 0x7E}


def round_to_element(v: np.ndarray, dtype) -> np.ndarray:
  """Saturating round-to-nearest-even of exact float64 values to a float format.

  The nearest table value is found by exact float64 comparison of ``|v|``
  with the midpoints of adjacent table values (the midpoints have at most a
  few significant bits, so they and the comparisons are exact).  Ties go to the
  value with the even code (= even last mantissa bit).  Values beyond the
  largest finite value saturate to it.  NaN: see the module docstring.

  Args:
    v: float64 array of values (any shape).
    dtype: An ml_dtypes float type.

  Returns:
    uint8 codes (the ml_dtypes bit patterns), same shape as ``v``.
  """
  v = np.asarray(v, np.float64)
  codes, table = element_table(dtype)
  bits = {ml_dtypes.float4_e2m1fn: 4, ml_dtypes.float6_e2m3fn: 6,
          ml_dtypes.float6_e3m2fn: 6}.get(dtype, 8)
  sign_bit = np.uint8(1 << (bits - 1))
  nan = np.isnan(v)
  mag = np.minimum(np.abs(np.where(nan, 0.0, v)), table[-1])  # saturate
  hi = np.searchsorted(table, mag, side="left")  # table[hi] >= mag
  lo = np.maximum(hi - 1, 0)
  mid = (table[lo] + table[hi]) / 2  # exact
  lo_is_even = codes[lo] % 2 == 0
  idx = np.where(
      table[hi] == mag, hi,
      np.where(mag < mid, lo,
               np.where(mag > mid, hi, np.where(lo_is_even, lo, hi))))
  out = codes[idx]
  out = np.where(np.signbit(v), out | sign_bit, out).astype(np.uint8)
  if np.any(nan):
    # The format's NaN with the NaN's sign; a format without NaN gives the
    # zero of the opposite sign (the convention, not a call to ml_dtypes).
    negative = np.signbit(v[nan])
    nan_code = _NAN_CODES.get(dtype)
    if nan_code is None:
      out[nan] = np.where(negative, 0, sign_bit)
    else:
      out[nan] = np.where(negative, nan_code | sign_bit, nan_code)
  return out


def element_values(codes: np.ndarray, fmt: MXFormat) -> np.ndarray:
  """Exact float64 values of MX element codes.

  Args:
    codes: uint8 element codes.
    fmt: The element format.

  Returns:
    float64 array of element values (for mxint8, ``k / 64``).
  """
  codes = np.asarray(codes, np.uint8)
  if fmt.dtype is None:
    return codes.view(np.int8).astype(np.float64) / 64.0
  return codes.view(fmt.dtype).astype(np.float64)


def _quantize_elements(x: np.ndarray, s: np.ndarray, fmt: MXFormat) -> np.ndarray:
  """Element codes of float32 ``x`` for shared exponents ``s`` (broadcast)."""
  x64 = x.astype(np.float64)
  if fmt.dtype is not None:
    return round_to_element(np.ldexp(x64, -s), fmt.dtype)  # ldexp is exact
  k = np.ldexp(x64, 6 - s)  # exact: x / 2**(s - 6)
  k = np.where(np.isnan(k), 0.0, k)  # mxint8 has no NaN: code 0
  k = np.clip(np.rint(k), -127, 127).astype(np.int64)  # rint: half to even
  return (k & 0xFF).astype(np.uint8)


def _blocks_view(x: np.ndarray, axis: int, block: int) -> tuple[np.ndarray,
                                                                 tuple]:
  """Moves ``axis`` last and splits it into ``(n_blocks, block)``."""
  if x.ndim < 1:
    raise ValueError("x must have ndim >= 1")
  axis = axis % x.ndim
  n = x.shape[axis]
  if block <= 0 or n % block:
    raise ValueError(f"block {block} does not divide x.shape[axis] = {n}")
  moved = np.moveaxis(x, axis, -1)
  lead = moved.shape[:-1]
  return moved.reshape(lead + (n // block, block)), lead


def _unblock(y: np.ndarray, lead: tuple, axis: int, ndim: int) -> np.ndarray:
  """Inverse of ``_blocks_view`` for an array of shape ``lead + (nb, B)``."""
  y = y.reshape(lead + (-1,))
  return np.moveaxis(y, -1, axis % ndim)


def mx_quantize(
    x: np.ndarray,
    name: str,
    axis: int = -1,
    scale_rule: str = "floor",
    block: int = 32,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """MX block quantization (see the module docstring for the exact semantics).

  Args:
    x: float32 array, ndim >= 1.
    name: One of ``MX_FORMATS``.
    axis: Axis along which blocks are formed.
    scale_rule: One of ``SCALE_RULES``.
    block: Block size; must divide ``x.shape[axis]``.

  Returns:
    ``(element_codes, scale_codes, values)``: uint8 codes with the shape of
    ``x``; uint8 E8M0 codes with ``x.shape[axis] // block`` along ``axis``;
    float32 dequantized values with the shape of ``x``.
  """
  fmt = MX_FORMATS[name]
  if scale_rule not in SCALE_RULES:
    raise ValueError(f"unknown scale rule {scale_rule!r}")
  x = np.asarray(x)
  if x.dtype != np.float32:
    raise TypeError(f"x must be float32, got {x.dtype}")
  blocks, lead = _blocks_view(x, axis, block)
  flat = blocks.reshape(-1, block)
  # 1. The shared exponent of each block (a plain loop over blocks).
  exps = np.zeros(flat.shape[0], np.int64)
  special = np.zeros(flat.shape[0], bool)
  for b, blk in enumerate(flat):
    if not np.all(np.isfinite(blk)):
      special[b] = True
      exps[b] = 0  # elements quantized as if the scale were 1
      continue
    amax = np.max(np.abs(blk))
    exps[b] = S_MIN if amax == 0 else shared_exponent(amax, fmt, scale_rule)
  assert np.all((exps >= S_MIN) & (exps <= S_MAX))
  scale_codes = np.where(special, E8M0_NAN, exps + E8M0_BIAS).astype(np.uint8)
  # 2. Elements: exact x / 2**s, then saturating round-to-nearest-even.
  elem_codes = _quantize_elements(flat, exps[:, None], fmt)
  # 3. Values: element value * 2**s, exact in float64, then float32.
  exact = np.ldexp(element_values(elem_codes, fmt), exps[:, None])
  with np.errstate(over="ignore"):
    values = exact.astype(np.float32)
  finite = np.isfinite(values)
  assert np.all(values[finite].astype(np.float64) == exact[finite])
  # Outside NaN/inf blocks, the only non-finite values come from overflow,
  # which needs a dequantized magnitude of 2**128 or more.
  overflow = ~finite & ~special[:, None]
  assert np.all(np.abs(exact[overflow]) >= 2.0**128)
  values[special] = np.nan
  elem_codes = _unblock(elem_codes.reshape(blocks.shape), lead, axis, x.ndim)
  values = _unblock(values.reshape(blocks.shape), lead, axis, x.ndim)
  scale_codes = _unblock(scale_codes.reshape(blocks.shape[:-1] + (1,)), lead,
                         axis, x.ndim)
  return elem_codes, scale_codes, values


def e8m0_value(code: int) -> float:
  """Value of an E8M0 scale code (NaN for 255).

  Args:
    code: Integer in [0, 255].

  Returns:
    ``2**(code - 127)`` as a Python float, or NaN.
  """
  code = int(code)
  return float("nan") if code == E8M0_NAN else float(np.ldexp(1.0, code - 127))


def mx_dequantize(
    element_codes: np.ndarray,
    scale_codes: np.ndarray,
    name: str,
    axis: int = -1,
    block: int = 32,
) -> np.ndarray:
  """Decodes MX codes to float32 (element value * 2**s, exact then cast).

  Args:
    element_codes: uint8 element codes.
    scale_codes: uint8 E8M0 codes, one per block along ``axis``.
    name: One of ``MX_FORMATS``.
    axis: Block axis.
    block: Block size.

  Returns:
    float32 values; NaN for blocks whose scale code is 255.
  """
  fmt = MX_FORMATS[name]
  elems = element_values(element_codes, fmt)
  scales = np.repeat(np.asarray(scale_codes).astype(np.int64), block,
                     axis=axis % elems.ndim)
  out = np.ldexp(elems, scales - E8M0_BIAS)
  out = np.where(scales == E8M0_NAN, np.nan, out)
  with np.errstate(over="ignore"):
    return out.astype(np.float32)


# ---------------------------------------------------------------------------
# NVFP4
# ---------------------------------------------------------------------------

E4M3_MIN_SUBNORMAL = np.float32(2.0**-9)
E4M3_MAX = np.float32(448.0)
E2M1_MAX = np.float32(6.0)


def nvfp4_tensor_scale(x: np.ndarray, tensor_scale: bool = True) -> np.float32:
  """The float32 per-tensor scale ``T`` of the NVFP4 recipe.

  Args:
    x: float32 array (finite).
    tensor_scale: If False, ``T = 1``.

  Returns:
    ``T`` as a numpy float32.

  Raises:
    ValueError: If ``T`` would be a subnormal float32 or underflow to zero.
  """
  if not tensor_scale:
    return np.float32(1.0)
  amax_t = np.max(np.abs(x)).astype(np.float32)
  if amax_t == 0:
    return np.float32(1.0)
  t = amax_t / np.float32(448.0 * 6.0)  # float32 division
  if t < np.finfo(np.float32).tiny:
    raise ValueError(f"NVFP4 tensor scale {t!r} is not a normal float32 "
                     f"(amax {amax_t!r}); the recipe is not defined there")
  return t


def nvfp4_quantize(
    x: np.ndarray,
    axis: int = -1,
    tensor_scale: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.float32, np.ndarray]:
  """NVFP4 quantization (see the module docstring for the exact recipe).

  Args:
    x: float32 array, ndim >= 1, finite.
    axis: Axis along which blocks of 16 are formed.
    tensor_scale: Whether to use a per-tensor float32 scale.

  Returns:
    ``(element_codes, scale_codes, tensor_scale, values)``: uint8
    float4_e2m1fn codes (low 4 bits) with the shape of ``x``; uint8
    float8_e4m3fn block-scale codes with ``x.shape[axis] // 16`` along
    ``axis``; the float32 tensor scale ``T``; float32 dequantized values.

  Raises:
    ValueError: Non-finite input, or a subnormal tensor scale.
  """
  x = np.asarray(x)
  if x.dtype != np.float32:
    raise TypeError(f"x must be float32, got {x.dtype}")
  if not np.all(np.isfinite(x)):
    raise ValueError("the NVFP4 recipe is only defined for finite inputs")
  t = nvfp4_tensor_scale(x, tensor_scale)
  blocks, lead = _blocks_view(x, axis, NVFP4_BLOCK)
  flat = blocks.reshape(-1, NVFP4_BLOCK)
  elem_codes = np.zeros(flat.shape, np.uint8)
  scale_codes = np.zeros(flat.shape[0], np.uint8)
  values = np.zeros(flat.shape, np.float32)
  for b, blk in enumerate(flat):
    amax_b = np.max(np.abs(blk))
    d = amax_b / E2M1_MAX  # float32 division
    sb = d / t  # float32 division
    sb = min(max(sb, E4M3_MIN_SUBNORMAL), E4M3_MAX)
    code = round_to_element(np.float64(sb), ml_dtypes.float8_e4m3fn)
    scale_codes[b] = code
    e4m3 = code.view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    big_s = e4m3 * t  # float32 product
    assert big_s.dtype == np.float32 and big_s > 0
    q = blk / big_s  # float32 division
    assert q.dtype == np.float32
    codes = round_to_element(q.astype(np.float64), ml_dtypes.float4_e2m1fn)
    elem_codes[b] = codes
    e2m1 = codes.view(ml_dtypes.float4_e2m1fn).astype(np.float32)
    with np.errstate(over="ignore"):
      values[b] = (e2m1 * e4m3) * t  # float32 products, in that order
  elem_codes = _unblock(elem_codes.reshape(blocks.shape), lead, axis, x.ndim)
  values = _unblock(values.reshape(blocks.shape), lead, axis, x.ndim)
  scale_codes = _unblock(scale_codes.reshape(blocks.shape[:-1] + (1,)), lead,
                         axis, x.ndim)
  return elem_codes, scale_codes, t, values


# ---------------------------------------------------------------------------
# Edge-case data
# ---------------------------------------------------------------------------


def _with_amax(rng: np.random.Generator, amax: float, n: int = 32) -> np.ndarray:
  """A Gaussian block rescaled below ``amax`` with one element set to +-amax."""
  g = rng.standard_normal(n)
  g = g / np.max(np.abs(g)) * 0.9 * amax
  g = g.astype(np.float32)
  i = rng.integers(n)
  g[i] = np.float32(amax) * (1 if rng.random() < 0.5 else -1)
  assert np.max(np.abs(g)) == np.float32(amax)
  return g


def edge_blocks(rng: np.random.Generator, name: str) -> np.ndarray:
  """Edge-case blocks of 32 float32 values for MX format ``name``.

  Covers Gaussian, Laplace and Student-t(2) data at several magnitudes, a
  one-outlier block, all-zero blocks (+0 and mixed -0), float32-subnormal-only
  blocks, amax exactly a power of two and one float32 ulp below / above it,
  amax exactly ``max_elem * 2**k`` and one ulp around it, element ties (values
  exactly halfway between element neighbours for the floor/even/rceil scale),
  huge values up to the float32 maximum, tiny normal values, a NaN block, an
  inf block and a block with both.

  Args:
    rng: numpy random generator.
    name: One of ``MX_FORMATS`` (used for the ties and max-related blocks).

  Returns:
    float32 array of shape ``(n_blocks, 32)``.
  """
  fmt = MX_FORMATS[name]
  f32 = np.float32
  blocks = []
  for scale_exp in (-30, -3, 0, 5, 40):
    sc = 2.0**scale_exp
    blocks.append(rng.standard_normal(32) * sc)
    blocks.append(rng.laplace(size=32) * sc)
    blocks.append(rng.standard_t(2, size=32) * sc)
  outlier = rng.standard_normal(32) * 1e-3
  outlier[rng.integers(32)] = 1e4
  blocks.append(outlier)
  blocks.append(np.zeros(32))
  mixed_zero = np.zeros(32, np.float32)
  mixed_zero[::3] = -0.0
  blocks.append(mixed_zero)
  # float32 subnormals only (k * 2**-149, |k| < 2**23), and the smallest ones.
  k = rng.integers(-(2**23) + 1, 2**23, size=32).astype(np.float64)
  blocks.append(k * 2.0**-149)
  blocks.append(rng.integers(-3, 4, size=32) * 2.0**-149)
  # amax a power of two, one ulp below / above, and around max_elem * 2**k.
  for e in (-130, -126, -100, -1, 0, 1, 7, 60, 127):
    p = f32(2.0**e)
    blocks.append(_with_amax(rng, p))
    blocks.append(_with_amax(rng, np.nextafter(p, f32(0))))
    if e < 127:
      blocks.append(_with_amax(rng, np.nextafter(p, f32(np.inf))))
  for e in (-120, -10, 0, 3, 50, 100):
    m = f32(fmt.max_value * 2.0**e)
    blocks.append(_with_amax(rng, m))
    blocks.append(_with_amax(rng, np.nextafter(m, f32(0))))
    blocks.append(_with_amax(rng, np.nextafter(m, f32(np.inf))))
  # Element ties: amax = max_elem * 2**e gives s = e under floor/even/rceil;
  # the other elements are midpoints between adjacent element values * 2**e.
  if fmt.dtype is not None:
    _, table = element_table(fmt.dtype)
    mids = (table[1:] + table[:-1]) / 2
  else:
    mids = (np.arange(0, 127) + 0.5) / 64
  for e in (-5, 0, 9):
    pick = rng.choice(mids, size=31, replace=len(mids) < 31)
    signs = np.where(rng.random(31) < 0.5, -1.0, 1.0)
    tie = np.concatenate([[fmt.max_value], pick * signs]) * 2.0**e
    blocks.append(tie[rng.permutation(32)])
  # Huge values up to the float32 maximum.
  fmax = np.finfo(np.float32).max
  huge = rng.uniform(-1, 1, size=32) * fmax
  huge[0] = fmax
  blocks.append(huge)
  blocks.append(_with_amax(rng, fmax))
  blocks.append(_with_amax(rng, f32(2.0**127 * 1.9)))
  blocks.append(_with_amax(rng, f32(1e-37)))
  # Non-finite blocks.
  nan_block = rng.standard_normal(32)
  nan_block[rng.integers(32)] = np.nan
  blocks.append(nan_block)
  inf_block = rng.standard_normal(32)
  i, j = rng.choice(32, size=2, replace=False)
  inf_block[i] = np.inf
  inf_block[j] = -np.inf
  blocks.append(inf_block)
  both = rng.standard_normal(32) * 1e30
  both[3] = np.inf
  both[7] = -np.nan
  blocks.append(both)
  with np.errstate(over="ignore"):
    out = np.stack([np.asarray(b, np.float64).astype(np.float32)
                    if np.asarray(b).dtype != np.float32 else b
                    for b in blocks])
  assert out.dtype == np.float32 and out.shape[1] == 32
  return out
