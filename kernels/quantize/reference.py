"""The reference face of the cast: its semantics written the obvious way, block by block in NumPy (slow; for tests).

NumPy's float32 arithmetic is IEEE, subnormals included, so the definition reads as it is stated in
:mod:`lpnum.kernels.quantize`: a block's abs-max, its scale by the format's rule, the elements ``x / S`` rounded
to the element format by :func:`lpnum.encode`, the codes packed by :func:`lpnum.packing.pack`.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from lpnum import packing
from lpnum.qarray import QArray
from lpnum.quantize import decode, encode
from lpnum.scaled import ScaledFormat, ScaleRule
from lpnum.scaled.format import MIN_NORMAL, pow2_range

__all__ = ["reference_quantize"]


def reference_quantize(x, fmt: ScaledFormat, *, transpose: bool = False, scale=None, tensor_amax=None) -> QArray:
  """``lpnum.quantize_scaled(x.T if transpose else x, fmt, scale=scale, tensor_amax=tensor_amax)`` for 2-D ``x``,
  written plainly (power-of-two rules ``floor``, ``ceil`` and ``rceil``; general scales; absmax calibration)."""
  x = np.asarray(jnp.asarray(x))
  dtype = x.dtype
  op = np.asarray(x, np.float32)
  op = op.T if transpose else op
  rows, cols = op.shape
  br, bc = fmt.granularity.block_shape(op.shape)
  xb = op.reshape(rows // br, br, cols // bc, bc)
  amax = np.max(np.abs(xb), axis=(1, 3), keepdims=True)  # NaN where the block holds one
  if fmt.pow2:
    e, codes_s = _pow2_scales(amax, fmt)
    with np.errstate(invalid="ignore", over="ignore"):  # beyond float32: saturates either way
      v = (xb.astype(np.float64) * 2.0 ** -(e + fmt.element_exponent).astype(np.float64)).astype(np.float32)
    tensor = None
  else:
    tensor = None if not fmt.tensor_scale else _tensor_scale(op if tensor_amax is None else tensor_amax, fmt)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
      ideal = np.float32(scale) * np.ones_like(amax) if scale is not None else amax / np.float32(fmt.element_max)
      if tensor is not None:
        ideal = ideal / tensor
    sf = fmt.scale_format
    clamped = np.where(np.isnan(ideal), ideal, np.clip(ideal, np.float32(max(sf.min_positive, MIN_NORMAL)),
                                                        np.float32(sf.max_finite)))
    rounding = "up" if fmt.scale_rule is ScaleRule.RCEIL else "nearest_even"
    codes_s = np.asarray(encode(jnp.asarray(clamped, jnp.float32), sf, rounding=rounding))
    s = np.asarray(decode(codes_s, sf, jnp.float32))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore", under="ignore"):
      s = s if tensor is None else s * tensor
      v = xb / s
  codes = np.asarray(encode(jnp.asarray(v.reshape(rows, cols)), fmt.element))
  return QArray(data=packing.pack(codes, fmt.element.bits, axis=-1),
                scales=jnp.asarray(codes_s.reshape(rows // br, cols // bc)), zero_point=None,
                tensor_scale=None if tensor is None else jnp.asarray(tensor, jnp.float32),
                fmt=fmt, shape=(rows, cols), dtype=np.dtype(dtype), block=(br, bc))


def _pow2_scales(amax: np.ndarray, fmt: ScaledFormat) -> tuple[np.ndarray, np.ndarray]:
  """Per block: the exponent ``e`` elements are divided by (0 for NaN/inf blocks) and the scale code."""
  lo, hi = pow2_range(fmt.scale_format)
  special = ~np.isfinite(amax)
  a = np.where(special | (amax == 0), 1.0, amax).astype(np.float64)
  if fmt.scale_rule is ScaleRule.FLOOR:
    e = np.floor(np.log2(a)) - fmt.emax
  elif fmt.scale_rule is ScaleRule.CEIL:
    e = np.ceil(np.log2(a)) - fmt.emax
  elif fmt.scale_rule is ScaleRule.RCEIL:
    with np.errstate(under="ignore"):
      q = (a.astype(np.float32) / np.float32(fmt.element_max)).astype(np.float64)
    e = np.ceil(np.log2(np.where(q == 0, 2.0 ** -1000, q)))
  else:
    raise NotImplementedError(f"scale_rule={fmt.scale_rule.value!r} has no plain reference here")
  e = np.where(amax == 0, lo, np.clip(e, lo, hi)).astype(np.int64)
  e = np.where(special, 0, e)
  codes = np.asarray(encode(jnp.asarray(np.ldexp(1.0, e).astype(np.float32)), fmt.scale_format))
  if fmt.scale_format.has_nan:
    codes = np.where(special, np.asarray(encode(jnp.float32(math.nan), fmt.scale_format)), codes)
  return e, codes


def _tensor_scale(amax_source, fmt: ScaledFormat) -> np.float32:
  """NVFP4's per-tensor scale: ``amax / (element max * scale max)``, at least 2^-126, 1 for a NaN amax."""
  amax = np.float32(np.max(np.abs(np.asarray(amax_source, np.float32))))
  if np.isnan(amax):
    return np.float32(1)
  with np.errstate(under="ignore"):
    t = amax / np.float32(fmt.element_max * fmt.scale_format.max_finite)
  return np.maximum(t, np.float32(MIN_NORMAL))
