"""The public operations on scaled formats: :func:`quantize_scaled`, :func:`dequantize`, :func:`fake_quantize`,
:func:`clip_range`."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from lpnum import blocks, packing
from lpnum.carrier import F32, INPUT_CARRIERS
from lpnum.qarray import QArray
from lpnum.rounding import Rounding, check_rounding_key, random_bits
from lpnum.validate import (as_array, as_dtype, check_flag, check_float_scalar, check_positive, float32_with_warning,
                            host_float64, is_concrete, short)
from lpnum.scaled import cpu, presets
from lpnum.scaled.elements import apply_scale, by_scaling, round_elements
from lpnum.scaled.format import ScaledFormat
from lpnum.scaled.scales import decode_f32, scales_from_codes, scales_of
from lpnum.scaled.xla_cpu import per_block

__all__ = ["quantize_scaled", "dequantize", "fake_quantize", "clip_range"]


def quantize_scaled(
    x: ArrayLike,
    fmt: ScaledFormat,
    *,
    scale: ArrayLike | None = None,
    rounding: str | Rounding = "nearest_even",
    key: jax.Array | None = None,
    pad: bool = False,
    tensor_amax: ArrayLike | None = None,
) -> QArray:
  """Quantizes ``x`` to a block-scaled format; returns a :class:`~lpnum.qarray.QArray` (packed codes + scales).

  Args:
    x: float32, bfloat16 or float16 array (computed in float32; float64 values are rounded to float32 first, with a
      warning where that changes one).
    fmt: the :class:`ScaledFormat` (or a preset name: ``mxfp8_e4m3``... ``nvfp4``, see :mod:`lpnum.mx`).
    scale: a given (static) scale instead of calibration: a finite positive array broadcastable to the scale shape
      (``x.shape`` divided by the block shape), rounded into the scale format; others are an error where the
      values are concrete.
    rounding: the element rounding mode (``nearest_even``, ``stochastic``...). Scales always follow the rule.
    key: for stochastic rounding.
    pad: pad a ragged last block with zeros instead of raising.
    tensor_amax: for formats with a per-tensor scale (NVFP4): the abs-max it is computed from (a float32 scalar,
      e.g. from delayed scaling's history) instead of ``x``'s own; block values beyond what the scales then
      reach saturate.

  Example:
    >>> import jax.numpy as jnp, lpnum
    >>> q = lpnum.quantize_scaled(jnp.arange(32.0), lpnum.mx.format("mxfp8_e4m3"))
    >>> int(q.scale_codes[0]), lpnum.dequantize(q)[31].item()  # 2^(4 - 8); 31 * 2^4 saturates at 448
    (123, 28.0)
  """
  x, fmt, mode, block, padded = _prepare(x, fmt, rounding, key, pad)
  scale = None if scale is None else check_positive("scale", scale)
  if tensor_amax is not None:
    if not fmt.tensor_scale:
      raise ValueError(f"tensor_amax is for formats with a per-tensor scale (nvfp4); fmt={fmt.name} has none")
    tensor_amax = check_float_scalar("tensor_amax", tensor_amax)
  return _quantize_jit(x, scale, key, tensor_amax, fmt, mode, block, padded)


@functools.partial(jax.jit, static_argnums=(4, 5, 6, 7))
def _quantize_jit(x, scale, key, tensor_amax, fmt, mode, block, padded) -> QArray:
  xb = blocks.to_blocks(x.astype(jnp.float32), block, padded)
  s = scales_of(xb, fmt, scale, tensor_amax)
  rand = _rand(key, mode, x.shape, block, padded)

  def encode(plain, xb, s):
    return fmt.element.encode_values(round_elements(xb, s, fmt, mode, rand, plain), F32)

  codes = blocks.from_blocks(by_scaling(encode, xb, s, fmt, mode), x.shape)
  data = packing.pack(codes.reshape(codes.shape or (1,)), fmt.element.bits, axis=-1)
  compact = [xb.shape[i] for i in range(0, 2 * x.ndim, 2)]
  return QArray(
      data=data,
      scales=s.codes.reshape(compact),
      zero_point=None if s.zero is None else s.zero.reshape(compact).astype(jnp.int32),
      tensor_scale=s.tensor,
      fmt=fmt, shape=tuple(x.shape), dtype=np.dtype(x.dtype), block=block)


def dequantize(q: QArray, dtype: jax.typing.DTypeLike | None = None) -> jax.Array:
  """The values of a quantized array, ``element * scale`` rounded once into ``dtype`` (default: the original).

  NaN scale codes (MX blocks that held NaN or inf) give NaN for the whole block.

  Called eagerly (not traced) on one CPU device, float32 output of 4- and 8-bit elements whose blocks tile the
  array (MX, NVFP4, int4 or int8 per group or channel: see :mod:`lpnum.scaled.cpu`) comes from a native kernel,
  with the same bits; under ``jax.jit``, ``vmap`` or ``grad`` it is XLA operations, which fuse with what consumes
  them and export to every platform, and so is a call on arrays sharded over several devices.
  """
  if not isinstance(q, QArray):
    raise TypeError(f"q must be a QArray from lpnum.quantize_scaled, got {type(q).__name__}")
  q.check()
  dtype = as_dtype("dtype", q.dtype if dtype is None else dtype, (np.float32, jnp.bfloat16, np.float16))
  if all(map(_on_one_device, jax.tree_util.tree_leaves(q))) and cpu.takes(q, dtype):
    return _dequantize_native(q)
  return _dequantize_jit(q, dtype)


def _on_one_device(a) -> bool:
  """Whether ``a`` holds values now on at most one device (not traced, not sharded: a sharded call stays XLA, whose
  output keeps the sharding)."""
  return is_concrete(a) and len(getattr(getattr(a, "sharding", None), "device_set", ())) <= 1


@jax.jit
def _dequantize_native(q: QArray) -> jax.Array:
  """float32 ``dequantize(q)``: by the native kernel where the program runs on the CPU, else by the XLA face (the
  same bits)."""
  return jax.lax.platform_dependent(q, cpu=cpu.dequantize, default=lambda q: _dequantize_xla(q, np.dtype("float32")))


def _dequantize_xla(q: QArray, dtype: np.dtype) -> jax.Array:
  """``dequantize(q, dtype)`` by XLA: the block pass of :func:`~lpnum.scaled.xla_cpu.by_scaling`."""
  fmt = q.fmt
  bits = fmt.element.bits
  padded = blocks.check_fit(q.shape, q.block, True)
  expand = lambda a: None if a is None else jnp.expand_dims(a, blocks.block_axes(len(q.shape)))
  s = per_block(lambda c, z, t: scales_from_codes(fmt, c, z, t), q.scales.size,
                 expand(q.scales), expand(q.zero_point), q.tensor_scale)
  s = per_block(lambda v: v.with_factors(fmt), q.scales.size, s)
  target = INPUT_CARRIERS[dtype]

  def decode(plain, cb, s):
    return apply_scale(decode_f32(fmt.element, cb), s, fmt, target, plain)

  if q.shape and padded == q.shape and packing.packed_length(q.block[-1], bits) * 8 == q.block[-1] * bits:
    # Each block's codes fill whole bytes: the pass reads the packed bytes and unpacks them itself (one pass over
    # the codes instead of two).
    def unpack_decode(plain, pb, s):
      return decode(plain, packing.unpack(pb, bits, pb.shape[-1] * 8 // bits), s)

    pblock = q.block[:-1] + (q.block[-1] * bits // 8,)
    pb = blocks.to_blocks(q.data, pblock, q.data.shape)
    return blocks.from_blocks(by_scaling(unpack_decode, pb, s, fmt, None, rows=False), q.shape)
  codes = q.element_codes
  if padded != q.shape:
    codes = jnp.pad(codes, [(0, p - d) for d, p in zip(q.shape, padded)])
  cb = blocks.to_blocks(codes, q.block, padded)
  return blocks.from_blocks(by_scaling(decode, cb, s, fmt, None), q.shape)


_dequantize_jit = jax.jit(_dequantize_xla, static_argnums=1)


def fake_quantize(
    x: ArrayLike,
    fmt: ScaledFormat,
    *,
    scale: ArrayLike | None = None,
    rounding: str | Rounding = "nearest_even",
    key: jax.Array | None = None,
    pad: bool = False,
) -> jax.Array:
  """``dequantize(quantize_scaled(x, fmt, ...))`` in one fused pass, with a straight-through gradient.

  The result has ``x``'s shape and dtype and equals the two-step round trip bit for bit.
  """
  x, fmt, mode, block, padded = _prepare(x, fmt, rounding, key, pad)
  scale = None if scale is None else check_positive("scale", scale)
  return _fake_jit(x, scale, key, fmt, mode, block, padded)


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _fake_jit(x, scale, key, fmt, mode, block, padded):
  return _fake_quantize_ste(x, scale, _rand(key, mode, x.shape, block, padded), fmt, mode, block, padded)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _fake_quantize_ste(x, scale, rand, fmt, mode, block, padded):
  xb = blocks.to_blocks(x.astype(jnp.float32), block, padded)
  s = scales_of(xb, fmt, scale)
  target = INPUT_CARRIERS[np.dtype(x.dtype)]

  def round_trip(plain, xb, s):
    return apply_scale(round_elements(xb, s, fmt, mode, rand, plain), s, fmt, target, plain)

  return blocks.from_blocks(by_scaling(round_trip, xb, s, fmt, mode), x.shape)


def _fake_fwd(x, scale, rand, fmt, mode, block, padded):
  return _fake_quantize_ste(x, scale, rand, fmt, mode, block, padded), (scale, rand)


def _fake_bwd(fmt, mode, block, padded, res, g):
  scale, rand = res
  return (g, None if scale is None else jnp.zeros_like(scale), None if rand is None else
          np.zeros(rand.shape, jax.dtypes.float0))


_fake_quantize_ste.defvjp(_fake_fwd, _fake_bwd)


def _rand(key, mode, shape, block, padded):
  if mode is not Rounding.STOCHASTIC:
    return None
  return blocks.to_blocks(random_bits(key, shape), block, padded)


def _prepare(x, fmt, rounding, key, pad):
  if isinstance(fmt, str):
    fmt = presets.preset(fmt, arg="fmt")
  if not isinstance(fmt, ScaledFormat):
    raise TypeError(f"fmt={short(fmt)} must be a ScaledFormat or a preset name (element formats such as 'int8' go "
                    "to lpnum.quantize, or into lpnum.ScaledFormat('int8', ...))")
  x = as_array(_float32_on_host(x))
  if np.dtype(x.dtype) not in (np.float32, jnp.bfloat16, np.float16):
    raise TypeError(f"x must be float32, bfloat16 or float16, got dtype {x.dtype}")
  check_flag("pad", pad)
  mode = Rounding.parse(rounding, "rounding")
  check_rounding_key(mode, key)
  block = fmt.granularity.block_shape(x.shape)
  padded = blocks.check_fit(x.shape, block, pad)
  return x, fmt, mode, block, padded


def _float32_on_host(x):
  """Float64 values on the host (NumPy arrays, Python floats) as float32, with a warning where that changes a value:
  scaled formats compute in float32, so such inputs are rounded twice (this does not depend on x64)."""
  host = host_float64(x)
  if host is None:
    return x
  return float32_with_warning(host, "scaled formats compute in float32, so its values are rounded to float32 "
                              "first, which can differ from rounding them once")


def clip_range(x: ArrayLike, fmt: ScaledFormat, *, scale: ArrayLike | None = None,
               pad: bool = False) -> tuple[jax.Array, jax.Array]:
  """Per element of ``x``, the lowest and highest values its block can represent (the clipping range that
  :func:`quantize_scaled` would use), each with ``x``'s shape, float32.
  """
  x, fmt, _, block, padded = _prepare(x, fmt, "nearest_even", None, pad)
  scale = None if scale is None else check_positive("scale", scale)
  xb = blocks.to_blocks(x.astype(jnp.float32), block, padded)
  s = scales_of(xb, fmt, scale)
  el = fmt.element
  hi = apply_scale(jnp.full(xb.shape, el.max_finite, jnp.float32), s, fmt, F32)
  lo = apply_scale(jnp.full(xb.shape, el.min_value, jnp.float32), s, fmt, F32)
  return blocks.from_blocks(lo, x.shape), blocks.from_blocks(hi, x.shape)
