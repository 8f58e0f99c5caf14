"""Scale computation: each block's range (abs-max, percentile, MSE search), the rule that turns it into a scale
code, the per-tensor scale, zero points, and :class:`Scales`, the per-block factors the element pass uses."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np

from lpnum import blocks
from lpnum.carrier import F32
from lpnum.exact import multiply, normalize
from lpnum.formats import FloatFormat, Format
from lpnum.quantize import decode, encode
from lpnum.rounding import Overflow, Rounding
from lpnum.scaled.elements import INT_GRID, Scales, apply_scale, round_elements
from lpnum.scaled.format import MIN_NORMAL, Calibration, ScaledFormat, ScaleRule, absmax, pow2_range, significand_bits
from lpnum.scaled.xla_cpu import abs_max, div, max_min, per_block

__all__ = ["scales_from_codes", "scales_of", "compute_scales", "block_range", "decode_f32", "range_is_absmax",
           "scales_from_range", "scales_from_value", "tensor_scale_of"]


def scales_from_codes(fmt: ScaledFormat, codes, zero, tensor) -> Scales:
  """The Scales of stored scale codes (and zero points and a per-tensor scale), as dequantization needs them."""
  sf = fmt.scale_format
  if fmt.pow2:
    e, nan = pow2_exponent(sf, codes)
    return Scales(codes, None, e, nan, zero, tensor)
  return general_scales(codes, decode_f32(sf, codes), fmt, zero, tensor)


def general_scales(codes, value, fmt: ScaledFormat, zero, tensor, *, in_kernel: bool = False) -> Scales:
  """Scales of block scale values ``value`` (and a per-tensor scale); ``in_kernel``: inside a Pallas kernel, where
  the per-block work is already apart from the element pass (no ``per_block``)."""
  if tensor is None:
    m, e = split_scale(value)
    return Scales(codes, m, e, None, zero, None, value)
  product = lambda v, t: multiply(v, t, significand_bits(fmt.scale_format))
  m, e = split_scale(product(value, tensor) if in_kernel else per_block(product, value.size, value, tensor))
  tm, te = split_scale(tensor)
  return Scales(codes, m, e, None, zero, tensor, value, tm, te)


def split_scale(s: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``s = m * 2^e`` exactly, ``m`` a float32 in [1, 2); NaN stays in ``m``."""
  _, e, sig, a = normalize(F32, s)
  m = jax.lax.bitcast_convert_type((sig & np.uint32(0x7FFFFF)) | np.uint32(127 << 23), jnp.float32)
  m = jnp.where(a > F32.inf_bits, jnp.float32(np.nan), m)
  return m, jnp.where(a == 0, 0, e)


def pow2_exponent(sf: Format, codes):
  value = decode_f32(sf, codes)
  _, e, _, a = normalize(F32, value)
  return jnp.where(a >= F32.inf_bits, 0, e), a > F32.inf_bits


def decode_f32(fmt: Format, codes: jax.Array) -> jax.Array:
  """The values of ``codes`` of ``fmt`` as float32."""
  return decode(codes, fmt, jnp.float32)


def block_range(xb: jax.Array, fmt: ScaledFormat, axes) -> jax.Array:
  """Each block's range (absmax or percentile), float32, keepdims."""
  cal = fmt.calibration
  if not range_is_absmax(cal):
    n = len(axes)
    bits = jax.lax.bitcast_convert_type(xb, jnp.uint32) & np.uint32(0x7FFFFFFF)
    moved = jnp.moveaxis(bits, axes, tuple(range(-n, 0)))
    flat = moved.reshape(moved.shape[:-n] + (-1,))  # |x| as bit patterns: sorted like the values
    n_block = flat.shape[-1]
    index = cal.q / 100 * (n_block - 1)  # numpy's "linear" method, the position computed in float64
    i = min(int(math.floor(index)), max(n_block - 2, 0))
    t = index - i
    srt = jax.lax.bitcast_convert_type(jnp.sort(flat, axis=-1), jnp.float32)  # NaN sorts last
    lo, hi = srt[..., i], srt[..., min(i + 1, n_block - 1)]
    r = jnp.where(t >= 0.5, hi - (hi - lo) * jnp.float32(1 - t), lo + (hi - lo) * jnp.float32(t))
    r = jnp.where(jnp.isnan(srt[..., -1]), jnp.nan, r)
    return jnp.expand_dims(r.reshape([xb.shape[i] for i in range(0, xb.ndim, 2)]), axes)
  return abs_max(xb, axes) if xb.size else jnp.zeros(
      [1 if i in axes else d for i, d in enumerate(xb.shape)], jnp.float32)


def range_is_absmax(cal: Calibration) -> bool:
  """Whether :func:`block_range` is each block's abs-max under ``cal``."""
  return not (cal.kind == "percentile" and cal.q < 100)


def scales_of(xb: jax.Array, fmt: ScaledFormat, given, tensor_amax=None) -> Scales:
  """Per-block scales, computed once per block (:func:`~lpnum.scaled.xla_cpu.per_block`); ``tensor_amax``: the
  abs-max the per-tensor scale is computed from (default: ``xb``'s)."""
  s = per_block(lambda v, g, t: compute_scales(v, fmt, g, t), xb.size, xb, given, tensor_amax)
  return per_block(lambda v: v.with_factors(fmt), xb.size, s)


def compute_scales(xb: jax.Array, fmt: ScaledFormat, given, tensor_amax=None) -> Scales:
  axes = blocks.block_axes(xb.ndim // 2)
  shape = tuple(1 if i in axes else d for i, d in enumerate(xb.shape))
  if given is not None:
    given = jnp.asarray(given, jnp.float32)
    try:
      compact = jnp.broadcast_to(given, [shape[i] for i in range(0, len(shape), 2)])
    except ValueError:
      raise ValueError(f"scale of shape {given.shape} does not broadcast to the scale shape "
                       f"{tuple(shape[i] for i in range(0, len(shape), 2))}") from None
    return scales_from_value(jnp.expand_dims(compact, axes), fmt)
  if fmt.asymmetric:
    return _asymmetric_scales(xb, fmt, axes)
  if fmt.calibration.kind == "mse":
    return _mse_scales(xb, fmt, axes)
  return scales_from_range(block_range(xb, fmt, axes), fmt, xb, tensor_amax)


def scales_from_range(r: jax.Array, fmt: ScaledFormat, xb: jax.Array | None, tensor_amax=None, *,
                      in_kernel: bool = False) -> Scales:
  """The Scales of blocks whose ranges are ``r``; the per-tensor scale from ``tensor_amax``, else from ``xb``'s
  abs-max (``in_kernel``: see :func:`scales_from_value`)."""
  if fmt.pow2:
    return pow2_scales(r, fmt)
  tensor = None
  ideal = div(r, jnp.float32(fmt.element_max))
  if fmt.tensor_scale:  # the tensor's abs-max; where r holds the blocks' abs-maxes, theirs (one pass fewer over x)
    if tensor_amax is not None:
      amax = tensor_amax
    else:
      amax = abs_max(r if range_is_absmax(fmt.calibration) else xb, None, keepdims=False) if xb.size else (
          jnp.float32(0))
    tensor = tensor_scale_of(amax, fmt)
    ideal = div(ideal, tensor)
  return scales_from_value(ideal, fmt, tensor, in_kernel=in_kernel)


def tensor_scale_of(amax: jax.Array, fmt: ScaledFormat) -> jax.Array:
  """The per-tensor scale (NVFP4's second level) of a tensor whose abs-max is ``amax``: ``amax / (element max *
  scale format max)``, at least 2^-126; 1 where ``amax`` is NaN."""
  tensor = jnp.maximum(div(amax, jnp.float32(fmt.element_max * fmt.scale_format.max_finite)),
                       jnp.float32(MIN_NORMAL))
  return jnp.where(jnp.isnan(amax), jnp.float32(1), tensor)


def scales_from_value(ideal: jax.Array, fmt: ScaledFormat, tensor=None, *, in_kernel: bool = False) -> Scales:
  """Rounds ideal scales into the scale format (with the rule) and splits them for the arithmetic (``in_kernel``:
  with the operations every Pallas lowering has, see ``Format.round_values`` and :func:`general_scales`)."""
  sf = fmt.scale_format
  if fmt.pow2:  # a given scale: the nearest value of the scale format
    codes = encode(ideal, sf)
    e, nan = pow2_exponent(sf, codes)
    return Scales(codes, None, e, nan)
  lo = max(sf.min_positive, MIN_NORMAL)
  clamped = jnp.clip(ideal, jnp.float32(lo), jnp.float32(sf.max_finite))
  clamped = jnp.where(jnp.isnan(ideal), ideal, clamped)
  mode = Rounding.UP if fmt.scale_rule is ScaleRule.RCEIL else Rounding.NEAREST_EVEN
  rounded = sf.round_values(clamped, F32, mode, Overflow.SATURATE, None, None, in_kernel=in_kernel)  # as encode()
  value = jnp.where(jnp.isnan(rounded), jnp.float32(np.nan), rounded)  # its decoded value: NaN codes decode to +NaN
  return general_scales(sf.encode_values(rounded, F32), value, fmt, None, tensor, in_kernel=in_kernel)


def pow2_scales(r: jax.Array, fmt: ScaledFormat) -> Scales:
  _, e, sig, a = normalize(F32, r)
  frac = sig & np.uint32(0x7FFFFF)
  rule = fmt.scale_rule
  if rule is ScaleRule.CEIL:
    e = e + (frac != 0).astype(jnp.int32)
  elif rule is ScaleRule.EVEN:
    m = significand_bits(fmt.element) - 1 if isinstance(fmt.element, FloatFormat) else _int_mantissa(fmt)
    e = e + ((frac + np.uint32(1 << (22 - m))) >= np.uint32(1 << 23)).astype(jnp.int32)
  if rule is ScaleRule.RCEIL:
    # ceil(log2(fl(r / max))). Where the quotient is a float32 subnormal (which XLA flushes), only whether it
    # exceeds 2^-127 matters (lower exponents clamp): it does iff r > max * (2^-127 + 2^-150), the quotient then
    # rounding above 2^-127 on the subnormal grid (a tie goes to the even 2^-127).
    d = div(r, jnp.float32(fmt.element_max))
    _, e, sig, a_d = normalize(F32, d)
    e = e + ((sig & np.uint32(0x7FFFFF)) != 0).astype(jnp.int32)
    over = a >= _f32_above(Fraction(fmt.element_max) * (Fraction(2) ** -127 + Fraction(2) ** -150))
    e = jnp.where(a_d < np.uint32(1 << 23), jnp.where(over, -126, -(1 << 20)), e)
  else:
    e = e - fmt.emax
  return _pow2_from_exponent(jnp.where(a == 0, -(1 << 20), e), a, fmt)


def _f32_above(c: Fraction) -> np.uint32:
  """Bit pattern of the smallest float32 strictly greater than the positive rational ``c``."""
  v = np.float32(float(c))
  while Fraction(float(v)) <= c:
    v = np.nextafter(v, np.float32(np.inf))
  while Fraction(float(np.nextafter(v, np.float32(0)))) > c:
    v = np.nextafter(v, np.float32(0))
  return v.view(np.uint32)


def _int_mantissa(fmt: ScaledFormat) -> int:
  """Fraction bits of an integer element as a fixed-point significand (MXINT8: 6)."""
  return max(int(fmt.element.max_finite).bit_length() - 1, 0)


def _pow2_from_exponent(e: jax.Array, a: jax.Array, fmt: ScaledFormat) -> Scales:
  sf = fmt.scale_format
  lo, hi = pow2_range(sf)
  special = a >= F32.inf_bits
  e = jnp.where(special, 0, jnp.clip(e, lo, hi))
  codes = encode(jax.lax.bitcast_convert_type(F32.pow2_bits(e), jnp.float32), sf)
  if sf.has_nan:
    with jax.ensure_compile_time_eval():  # a constant (Pallas's Triton lowering takes no computation on literals)
      nan_code = np.asarray(encode(jnp.float32(np.nan), sf))[()]
    codes = jnp.where(special, nan_code, codes)
  return Scales(codes, None, e, special if sf.has_nan else None)


def _asymmetric_scales(xb, fmt, axes) -> Scales:
  el = fmt.element
  qmin, qmax = el.min_value, el.max_finite
  hi, lo = max_min(xb, axes)
  hi, lo = jnp.maximum(hi, 0), jnp.minimum(lo, 0)
  s = scales_from_value(div(hi - lo, jnp.float32(qmax - qmin)), fmt)
  value = decode_f32(fmt.scale_format, s.codes)
  z = INT_GRID.round_values(jnp.float32(qmin) - div(lo, value), F32, Rounding.NEAREST_EVEN, Overflow.SATURATE,
                       None, None)
  z = jnp.clip(z, qmin, qmax)
  return dataclasses.replace(s, zero=z)


def _mse_scales(xb, fmt, axes) -> Scales:
  """The candidate of least squared error per block (the first on ties), searched by one ``lax.scan`` over the
  ratios: one copy of the candidate's computation whatever their number."""
  amax = block_range(xb, dataclasses.replace(fmt, calibration=absmax()), axes)

  def candidate(ratio):
    s = scales_from_range(amax * ratio, fmt, xb).with_factors(fmt)
    r = round_elements(xb, s, fmt, Rounding.NEAREST_EVEN, None)
    err = jnp.sum(jnp.square(apply_scale(r, s, fmt, F32) - xb), axis=axes, keepdims=True)
    return s, err

  def step(carry, candidate_ratio):
    best, best_err = carry
    ratio, first = candidate_ratio
    s, err = candidate(ratio)
    better = first | (err < best_err)
    return (jax.tree_util.tree_map(lambda new, old: jnp.where(better, new, old), s, best),
            jnp.where(better, err, best_err)), None

  ratios = np.asarray(fmt.calibration.ratios, np.float32)
  if ratios.size == 1:
    return candidate(ratios[0])[0]
  # The choice broadcasts every leaf to the blocks' shape (with a tensor scale, each block keeps its candidate's).
  shape_s, shape_err = jax.eval_shape(candidate, ratios[0])
  init = jax.tree_util.tree_map(lambda a: jnp.zeros(jnp.broadcast_shapes(a.shape, shape_err.shape), a.dtype),
                                (shape_s, shape_err))
  (best, _), _ = jax.lax.scan(step, init, (ratios, np.arange(ratios.size) == 0))
  return best
