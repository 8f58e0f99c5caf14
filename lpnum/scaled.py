"""Scaled and block-scaled quantization: one mechanism for per-tensor, per-channel, per-group, tile, MX and NVFP4.

A :class:`ScaledFormat` names an element format, a granularity (which elements share a scale), the format the
scales are stored in, the rule that turns a block's range into a scale, and how that range is measured
(calibration). :func:`quantize_scaled` returns a :class:`~lpnum.qarray.QArray` holding packed element codes and
scale codes; :func:`dequantize` inverts it; :func:`fake_quantize` does both in one fused pass for training.

Numerics, all exact integer work on float32 bits unless stated:

* A block's range ``r`` is its absolute maximum (or a percentile of ``|x|``, or the clipping value an MSE search
  picks). Elements are ``round(x / S)`` on the element format's grid, saturating at its largest finite value.
* Power-of-two scale formats (E8M0; ``S = 2^s``): with ``emax = floor(log2(element max))`` the shared exponent is
  ``floor(log2 r) - emax`` (``floor``, the OCP MX rule); ``ceil(log2 r) - emax`` (``ceil``); ``floor`` of ``r``
  first rounded half-up to the element's precision (``even``, torchao's rule); or ``ceil(log2(r / max))`` with
  ``r / max`` a float32 division (``rceil``: cuBLAS, TransformerEngine, jax.nn.scaled_matmul). ``s`` is clamped
  to the scale format's exponent range. An all-zero block gets the smallest scale; a block holding NaN or inf gets
  the NaN scale code (OCP) and its elements are encoded as if the scale were 1.
* Other scale formats (float32, bfloat16, FP8 E4M3...): ``S`` is ``r / (element max)`` (a correctly rounded
  float32 division), divided by the per-tensor scale when there is one, rounded into the scale format to nearest
  (``nearest``) or up (``rceil``), and clamped to ``[max(min positive, 2^-126), max finite]`` of the scale format
  so that no scale is zero, inf or NaN unless the block holds NaN. With a per-tensor scale ``T`` (NVFP4's second
  level) ``T = max(amax / (element max * scale max), 2^-126)`` and the effective scale is ``S * T``, rounded once.
* ``x / S`` is the float32 quotient, correctly rounded as IEEE division (NumPy's ``x / s``); XLA on the CPU would
  otherwise multiply by the reciprocal and differ by one ulp in a few percent of rows. Quotients below float32's
  normal range are rounded there first; that never changes an element, because element formats here must have
  their smallest positive value at or above ``2^-100`` (checked when the format is built).
* Dequantized values are ``element * S`` rounded once into the output dtype: exactly for power-of-two scales;
  for other scales as ``fl(element * m) * 2^e`` with ``S = m * 2^e``, one rounding wherever the result is a
  normal float32 (results below 2^-126 are rounded a second time, from the float32 product).
* Posit elements are scaled so that the block's range maps to ``useed = 2^(2^es)``, not to their far larger
  maxpos, where posits keep little precision.
* Asymmetric integer quantization (``asymmetric=True``): ``S = (max(x, 0) - min(x, 0)) / (qmax - qmin)`` and a
  zero point ``z = clamp(round(qmin - min(x, 0) / S))``; elements ``clamp(round(x / S) + z)``, values
  ``(q - z) * S``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from lpnum import blocks, packing
from lpnum.carrier import F32, INPUT_CARRIERS, Carrier
from lpnum.exact import (Pow2, abs_max, max_min, multiply, normalize, plain_exact, plain_for_rounding, pow2_factors,
                         scale_exact, scale_for_rounding)
from lpnum.rounding import Overflow, Rounding, ParsedEnum, random_bits
from lpnum.blocks import Granularity
from lpnum.formats import BinaryFormat, FloatFormat, Format, IntFormat, PositFormat, ShiftFormat, as_format
from lpnum.qarray import QArray

__all__ = ["ScaleRule", "Calibration", "ScaledFormat", "absmax", "percentile", "mse", "quantize_scaled",
           "dequantize", "fake_quantize"]

_MIN_NORMAL = 2.0 ** -126
_F32 = F32


class ScaleRule(ParsedEnum):
  """How a block's range becomes a scale (see the module docstring)."""

  FLOOR = "floor"
  CEIL = "ceil"
  EVEN = "even"
  RCEIL = "rceil"
  NEAREST = "nearest"


@dataclasses.dataclass(frozen=True)
class Calibration:
  """How a block's range is measured: build one with :func:`absmax`, :func:`percentile` or :func:`mse`."""

  kind: str = "absmax"
  q: float = 100.0
  ratios: tuple[float, ...] = ()


def absmax() -> Calibration:
  """The range is the block's largest magnitude: nothing is clipped."""
  return Calibration("absmax")


def percentile(q: float) -> Calibration:
  """The range is the ``q``-th percentile of the block's magnitudes (linear interpolation, as numpy's default);
  larger values saturate."""
  if isinstance(q, bool) or not isinstance(q, int | float) or not 0 < q <= 100:
    raise ValueError(f"q={q!r} must be a number in (0, 100]")
  return Calibration("percentile", q=float(q))


def mse(ratios: Sequence[float] | int = 64) -> Calibration:
  """The range is ``c * amax`` for the clipping ratio ``c`` that minimises the block's squared error.

  Args:
    ratios: candidate ratios in (0, 1], or a count ``n`` for ``n`` ratios evenly spaced over [0.3, 1] (the
      search of LLM-FP4 and the quantization whitepaper). Ties go to the larger ratio.
  """
  if isinstance(ratios, int) and not isinstance(ratios, bool):
    if ratios < 1:
      raise ValueError(f"ratios={ratios} must be at least 1")
    ratios = tuple(float(r) for r in np.linspace(1.0, 0.3, ratios)) if ratios > 1 else (1.0,)
  ratios = tuple(float(r) for r in ratios)
  if not ratios or any(not 0 < r <= 1 for r in ratios):
    raise ValueError(f"ratios={ratios!r} must be non-empty, each in (0, 1]")
  return Calibration("mse", ratios=ratios)


@dataclasses.dataclass(frozen=True)
class ScaledFormat:
  """A block-scaled number format: elements of ``element`` sharing scales stored in ``scale_format``.

  Attributes:
    element: the element format (any lpnum format whose smallest positive value is at least 2^-100).
    granularity: which elements share a scale (:mod:`lpnum.blocks`).
    scale_format: the scale's own format; ``float8_e8m0fnu`` (or any format whose values are all powers of two)
      makes power-of-two scales; ``float32``, ``bfloat16``, ``float8_e4m3fn``... store general scales exactly.
    scale_rule: ``floor``/``ceil``/``even``/``rceil`` for power-of-two scales (default ``floor``, the OCP MX
      rule); ``nearest`` (default) or ``rceil`` (round up) for the others.
    calibration: how a block's range is measured (:func:`absmax`, :func:`percentile`, :func:`mse`).
    asymmetric: integer elements with a zero point per block.
    tensor_scale: a second, float32 per-tensor scale (NVFP4).
    element_exponent: the element's value unit is ``2^element_exponent`` (MXINT8's elements are ``k * 2^-6``).
    name: a display name.

  Example:
    >>> import jax.numpy as jnp, lpnum
    >>> fmt = lpnum.ScaledFormat("int8", lpnum.per_channel(0))
    >>> q = lpnum.quantize_scaled(jnp.array([[1.0, -2.0], [0.5, 0.25]]), fmt)
    >>> lpnum.dequantize(q).tolist()
    [[1.0078740119934082, -2.0], [0.5, 0.25196850299835205]]
  """

  element: Format | str
  granularity: Granularity = dataclasses.field(default_factory=blocks.per_tensor)
  scale_format: Format | str = "float32"
  scale_rule: ScaleRule | str | None = None
  calibration: Calibration = dataclasses.field(default_factory=absmax)
  asymmetric: bool = False
  tensor_scale: bool = False
  element_exponent: int = 0
  name: str | None = None

  def __post_init__(self) -> None:
    element = as_format(self.element)
    scale = as_format(self.scale_format)
    object.__setattr__(self, "element", element)
    object.__setattr__(self, "scale_format", scale)
    if not isinstance(self.granularity, Granularity):
      raise TypeError(f"granularity={self.granularity!r} must be made by lpnum.per_tensor/per_channel/...")
    if not isinstance(self.calibration, Calibration):
      raise TypeError(f"calibration={self.calibration!r} must be made by lpnum.absmax/percentile/mse")
    pow2 = _is_pow2(scale)
    rule = ScaleRule.parse(self.scale_rule if self.scale_rule is not None
                           else ("floor" if pow2 else "nearest"), "scale_rule")
    if pow2 and rule is ScaleRule.NEAREST:
      raise ValueError(f"scale_rule='nearest' is for general scale formats; {scale.name} holds powers of two: "
                       "use floor, ceil, even or rceil")
    if not pow2 and rule not in (ScaleRule.NEAREST, ScaleRule.RCEIL):
      raise ValueError(f"scale_rule={rule.value!r} needs a power-of-two scale format (e.g. float8_e8m0fnu), "
                       f"not {scale.name}; use 'nearest' or 'rceil'")
    object.__setattr__(self, "scale_rule", rule)
    if not element.has_zero or element.min_positive < 2.0 ** -100:
      raise ValueError(f"element={element.name} must have a zero and a smallest positive value of at least "
                       "2^-100 (quotients far below it are only rounded to zero)")
    if isinstance(scale, IntFormat | BinaryFormat):
      raise ValueError(f"scale_format={scale.name} cannot hold fractional scales; use float32, bfloat16, "
                       "float8_e4m3fn or float8_e8m0fnu")
    if scale.max_finite / scale.min_positive < 2.0 ** 8:
      raise ValueError(f"scale_format={scale.name} spans {math.log2(scale.max_finite / scale.min_positive):.0f} "
                       "binades; a scale format needs at least 8 to hold the range of block scales")
    if scale.max_finite > np.finfo(np.float32).max or (not pow2 and scale.min_positive < 2.0 ** -149):
      raise ValueError(f"scale_format={scale.name} does not fit in float32")
    if isinstance(self.element_exponent, bool) or not isinstance(self.element_exponent, int):
      raise TypeError(f"element_exponent={self.element_exponent!r} must be an int")
    if self.asymmetric:
      if not isinstance(element, IntFormat):
        raise ValueError(f"asymmetric=True needs an integer element format, not {element.name}")
      if pow2 or self.tensor_scale or self.calibration.kind != "absmax":
        raise ValueError("asymmetric=True works with a general scale format, absmax calibration and no "
                         "tensor_scale")
    if self.tensor_scale and pow2:
      raise ValueError("tensor_scale=True needs a general scale format (a power-of-two scale needs none)")
    if self.name is None:
      object.__setattr__(self, "name", f"{element.name}/{self.granularity}/{scale.name}")

  @property
  def pow2(self) -> bool:
    """Whether scales are powers of two (exponent-only scale formats such as E8M0)."""
    return _is_pow2(self.scale_format)

  @property
  def element_max(self) -> float:
    """The element value a block's range maps to, in units of the scale: the element format's largest finite
    value (posits: ``useed``)."""
    el = self.element
    top = min(2.0 ** (2 ** el.es), el.max_finite) if isinstance(el, PositFormat) else el.max_finite
    return math.ldexp(top, self.element_exponent)

  @property
  def emax(self) -> int:
    """``floor(log2(element max))``, the exponent a power-of-two scale aligns the block's largest value with."""
    return math.frexp(self.element_max)[1] - 1

  def __str__(self) -> str:
    return self.name


def _is_pow2(fmt: Format) -> bool:
  if isinstance(fmt, ShiftFormat):
    return True
  return isinstance(fmt, FloatFormat) and fmt.mantissa_bits == 0 and not fmt.has_zero


def _pow2_range(fmt: Format) -> tuple[int, int]:
  """The exponents of the smallest and largest values of a power-of-two scale format."""
  return math.frexp(fmt.min_positive)[1] - 1, math.frexp(fmt.max_finite)[1] - 1


# ---- public API ----------------------------------------------------------------------------------------------
def quantize_scaled(
    x: ArrayLike,
    fmt: ScaledFormat,
    *,
    scale: ArrayLike | None = None,
    rounding: str | Rounding = "nearest_even",
    key: jax.Array | None = None,
    pad: bool = False,
) -> QArray:
  """Quantizes ``x`` to a block-scaled format; returns a :class:`~lpnum.qarray.QArray` (packed codes + scales).

  Args:
    x: float32, bfloat16 or float16 array (computed in float32).
    fmt: the :class:`ScaledFormat` (or a preset name: ``mxfp8_e4m3``... ``nvfp4``, see :mod:`lpnum.mx`).
    scale: a given (static) scale instead of calibration: an array broadcastable to the scale shape
      (``x.shape`` divided by the block shape), rounded into the scale format.
    rounding: the element rounding mode (``nearest_even``, ``stochastic``...). Scales always follow the rule.
    key: for stochastic rounding.
    pad: pad a ragged last block with zeros instead of raising.

  Example:
    >>> import jax.numpy as jnp, lpnum
    >>> q = lpnum.quantize_scaled(jnp.arange(32.0), lpnum.mx.format("mxfp8_e4m3"))
    >>> int(q.scale_codes[0]), lpnum.dequantize(q)[31].item()  # 2^(4 - 8); 31 * 2^4 saturates at 448
    (123, 28.0)
  """
  x, fmt, mode, block, padded = _prepare(x, fmt, rounding, key, pad)
  scale = None if scale is None else jnp.asarray(scale, jnp.float32)
  return _quantize_jit(x, scale, key, fmt, mode, block, padded)


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _quantize_jit(x, scale, key, fmt, mode, block, padded) -> QArray:
  xb = blocks.to_blocks(x.astype(jnp.float32), block, padded)
  s = _scales(xb, fmt, scale)
  rand = _rand(key, mode, x.shape, block, padded)

  def encode(plain, xb, s):
    return fmt.element.encode_values(_round_elements(xb, s, fmt, mode, rand, plain), _F32)

  codes = blocks.from_blocks(_by_scaling(encode, xb, s, fmt, mode), x.shape)
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
  """
  if not isinstance(q, QArray):
    raise TypeError(f"q must be a QArray from lpnum.quantize_scaled, got {type(q).__name__}")
  q.check()
  dtype = np.dtype(q.dtype if dtype is None else dtype)
  if dtype not in (np.float32, jnp.bfloat16, np.float16):
    raise TypeError(f"dtype={dtype} must be float32, bfloat16 or float16")
  return _dequantize_jit(q, dtype)


@functools.partial(jax.jit, static_argnums=1)
def _dequantize_jit(q: QArray, dtype: np.dtype) -> jax.Array:
  fmt = q.fmt
  codes = q.element_codes
  padded = blocks.check_fit(q.shape, q.block, True)
  if padded != q.shape:
    codes = jnp.pad(codes, [(0, p - d) for d, p in zip(q.shape, padded)])
  cb = blocks.to_blocks(codes, q.block, padded)
  expand = lambda a: None if a is None else jnp.expand_dims(a, blocks.block_axes(len(q.shape)))
  s = _per_block(lambda c, z, t: _Scales.from_codes(fmt, c, z, t), q.scales.size,
                 expand(q.scales), expand(q.zero_point), q.tensor_scale)
  s = _per_block(lambda v: v.with_factors(fmt), q.scales.size, s)
  target = INPUT_CARRIERS[dtype]

  def decode(plain, cb, s):
    return _apply_scale(_decode(fmt.element, cb), s, fmt, target, plain)

  return blocks.from_blocks(_by_scaling(decode, cb, s, fmt, None), q.shape)


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
  scale = None if scale is None else jnp.asarray(scale, jnp.float32)
  return _fake_jit(x, scale, key, fmt, mode, block, padded)


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _fake_jit(x, scale, key, fmt, mode, block, padded):
  return _fake_quantize_ste(x, scale, _rand(key, mode, x.shape, block, padded), fmt, mode, block, padded)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _fake_quantize_ste(x, scale, rand, fmt, mode, block, padded):
  xb = blocks.to_blocks(x.astype(jnp.float32), block, padded)
  s = _scales(xb, fmt, scale)
  target = INPUT_CARRIERS[np.dtype(x.dtype)]

  def round_trip(plain, xb, s):
    return _apply_scale(_round_elements(xb, s, fmt, mode, rand, plain), s, fmt, target, plain)

  return blocks.from_blocks(_by_scaling(round_trip, xb, s, fmt, mode), x.shape)


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


# ---- validation ---------------------------------------------------------------------------------------------
def _prepare(x, fmt, rounding, key, pad):
  if isinstance(fmt, str):
    from lpnum import mx  # presets live with the MX module

    fmt = mx.format(fmt)
  if not isinstance(fmt, ScaledFormat):
    raise TypeError(f"fmt must be a ScaledFormat or a preset name, got {type(fmt).__name__}")
  if isinstance(x, float | int | list | tuple):
    x = jnp.asarray(x, jnp.float32)
  elif isinstance(x, jax.Array | np.ndarray | np.generic):
    x = jnp.asarray(x)
  else:
    raise TypeError(f"x must be an array, got {type(x).__name__}")
  if np.dtype(x.dtype) not in (np.float32, jnp.bfloat16, np.float16):
    raise TypeError(f"x must be float32, bfloat16 or float16, got dtype {x.dtype}")
  mode = Rounding.parse(rounding, "rounding")
  if mode is Rounding.STOCHASTIC and key is None:
    raise ValueError("rounding='stochastic' needs key=jax.random.key(...)")
  block = fmt.granularity.block_shape(x.shape)
  padded = blocks.check_fit(x.shape, block, pad)
  return x, fmt, mode, block, padded


# ---- scales ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Scales:
  """Per-block scales as the arithmetic needs them.

  Elements are ``x / S`` with ``S = m * 2^e`` (``m`` in [1, 2), or None for power-of-two scales); values are
  ``v * block * tm * 2^de``: ``block`` is the block scale's value and ``tm * 2^de`` the per-tensor scale when
  there is one (so that ``v * block``, exact, is rounded once more, by the per-tensor product); without one,
  ``block = m``, ``tm = None``, ``de = e``.
  """

  codes: jax.Array
  m: jax.Array | None
  e: jax.Array
  nan: jax.Array | None  # blocks whose scale is NaN (power-of-two scales)
  zero: jax.Array | None = None
  tensor: jax.Array | None = None
  block: jax.Array | None = None
  tm: jax.Array | None = None
  de: jax.Array | None = None
  down: Pow2 | None = None  # factors of 2^-(e + element_exponent): scale x to element units
  up: Pow2 | None = None  # factors of 2^(de + element_exponent): scale elements back

  def with_factors(self, fmt: ScaledFormat) -> "_Scales":
    de = self.e if self.de is None else self.de
    return dataclasses.replace(self, down=pow2_factors(-(self.e + fmt.element_exponent)),
                               up=pow2_factors(de + fmt.element_exponent))

  def exact(self) -> "_Scales":
    """With the factors of the exact paths (``Pow2.exact``)."""
    return dataclasses.replace(self, down=self.down.exact(), up=self.up.exact())

  @staticmethod
  def from_codes(fmt: ScaledFormat, codes, zero, tensor) -> "_Scales":
    sf = fmt.scale_format
    if fmt.pow2:
      e, nan = _pow2_exponent(sf, codes)
      return _Scales(codes, None, e, nan, zero, tensor)
    return _general_scales(codes, _decode(sf, codes), fmt, zero, tensor)


def _general_scales(codes, value, fmt: ScaledFormat, zero, tensor) -> _Scales:
  """_Scales of block scale values ``value`` (and a per-tensor scale)."""
  if tensor is None:
    m, e = _split(value)
    return _Scales(codes, m, e, None, zero, None, value)
  m, e = _split(_per_block(lambda v, t: multiply(v, t, _precision(fmt.scale_format)), value.size, value,
                           tensor))
  tm, te = _split(tensor)
  return _Scales(codes, m, e, None, zero, tensor, value, tm, te)


def _split(s: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``s = m * 2^e`` exactly, ``m`` a float32 in [1, 2); NaN stays in ``m``."""
  _, e, sig, a = normalize(_F32, s)
  m = jax.lax.bitcast_convert_type((sig & np.uint32(0x7FFFFF)) | np.uint32(127 << 23), jnp.float32)
  m = jnp.where(a > _F32.inf_bits, jnp.float32(np.nan), m)
  return m, jnp.where(a == 0, 0, e)


def _precision(fmt: Format) -> int:
  if isinstance(fmt, FloatFormat):
    return fmt.mantissa_bits + 1
  return 24


def _pow2_exponent(sf: Format, codes):
  value = _decode(sf, codes)
  _, e, _, a = normalize(_F32, value)
  return jnp.where(a >= _F32.inf_bits, 0, e), a > _F32.inf_bits


def _decode(fmt: Format, codes: jax.Array) -> jax.Array:
  from lpnum.quantize import decode

  return decode(codes, fmt, jnp.float32)


def _div(x: jax.Array, d: jax.Array) -> jax.Array:
  """``x / d`` as IEEE float32 division (correctly rounded), never as a multiplication by ``1 / d``.

  XLA rewrites a division by a broadcast into a multiplication by the reciprocal; a per-element select on the
  divisor (a no-op: NaN / d is NaN anyway) keeps the division.
  """
  d = jnp.broadcast_to(d, jnp.broadcast_shapes(x.shape, d.shape))
  return x / jnp.where(jnp.isnan(x), jnp.float32(1), d)


def _range(xb: jax.Array, fmt: ScaledFormat, axes) -> jax.Array:
  """Each block's range (absmax or percentile), float32, keepdims."""
  cal = fmt.calibration
  if not _range_is_absmax(cal):
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


def _range_is_absmax(cal: Calibration) -> bool:
  """Whether :func:`_range` is each block's abs-max under ``cal``."""
  return not (cal.kind == "percentile" and cal.q < 100)


def _scales(xb: jax.Array, fmt: ScaledFormat, given) -> _Scales:
  """Per-block scales, computed once per block.

  XLA would fuse the (small) scale computation into the elementwise pass and repeat it for every element; the
  CPU compiler drops optimization barriers, so a conditional whose two branches are the same computation, on a
  predicate XLA cannot fold, keeps it apart.
  """
  s = _per_block(lambda v, g: _compute_scales(v, fmt, g), xb.size, xb, given)
  return _per_block(lambda v: v.with_factors(fmt), xb.size, s)


def _per_block(compute, size: int, first: jax.Array, *rest):
  """``compute(first, *rest)``, kept out of the elementwise loop that consumes it (see ``_scales``).

  The arrays cross the conditional without their size-1 axes: XLA on the CPU may give such an operand a layout
  that orders the size-1 axes differently from the branch's, and then copies it (the whole tensor) inside.
  """
  if size == 0:
    return compute(first, *rest)
  probe = jax.tree_util.tree_leaves(first)[0].reshape(-1)[0]
  pred = probe.astype(jnp.int32) == 0 if jnp.issubdtype(probe.dtype, jnp.integer) else jnp.isnan(probe)
  return _cond(pred, compute, compute, first, *rest)


def _cond(pred: jax.Array, true_fn, false_fn, *args):
  """``jax.lax.cond(pred, true_fn, false_fn, *args)``, the arrays crossing it without their size-1 axes (see
  ``_per_block``)."""
  leaves, treedef = jax.tree_util.tree_flatten(args)
  out_leaves, out_treedef = jax.tree_util.tree_flatten(jax.eval_shape(true_fn, *args))

  def branch(fn):
    def run(*squeezed):
      args = jax.tree_util.tree_unflatten(treedef, _unsqueeze(squeezed, leaves))
      return [_squeeze(a) for a in jax.tree_util.tree_leaves(fn(*args))]
    return run

  out = jax.lax.cond(pred, branch(true_fn), branch(false_fn), *[_squeeze(a) for a in leaves])
  return jax.tree_util.tree_unflatten(out_treedef, _unsqueeze(out, out_leaves))


def _squeeze(a: jax.Array) -> jax.Array:
  return a.reshape([d for d in a.shape if d != 1])


def _unsqueeze(arrays, like) -> list[jax.Array]:
  return [a.reshape(b.shape) for a, b in zip(arrays, like)]


def _compute_scales(xb: jax.Array, fmt: ScaledFormat, given) -> _Scales:
  axes = blocks.block_axes(xb.ndim // 2)
  shape = tuple(1 if i in axes else d for i, d in enumerate(xb.shape))
  if given is not None:
    given = jnp.asarray(given, jnp.float32)
    try:
      compact = jnp.broadcast_to(given, [shape[i] for i in range(0, len(shape), 2)])
    except ValueError:
      raise ValueError(f"scale of shape {given.shape} does not broadcast to the scale shape "
                       f"{tuple(shape[i] for i in range(0, len(shape), 2))}") from None
    return _scales_from_value(jnp.expand_dims(compact, axes), fmt)
  if fmt.asymmetric:
    return _asymmetric_scales(xb, fmt, axes)
  if fmt.calibration.kind == "mse":
    return _mse_scales(xb, fmt, axes)
  return _scales_from_range(_range(xb, fmt, axes), fmt, xb)


def _scales_from_range(r: jax.Array, fmt: ScaledFormat, xb: jax.Array) -> _Scales:
  sf = fmt.scale_format
  if fmt.pow2:
    return _pow2_scales(r, fmt)
  tensor = None
  ideal = _div(r, jnp.float32(fmt.element_max))
  if fmt.tensor_scale:  # the tensor's abs-max; where r holds the blocks' abs-maxes, theirs (one pass fewer over x)
    amax = abs_max(r if _range_is_absmax(fmt.calibration) else xb, None, keepdims=False) if xb.size else (
        jnp.float32(0))
    tensor = jnp.maximum(_div(amax, jnp.float32(fmt.element_max * sf.max_finite)), jnp.float32(_MIN_NORMAL))
    tensor = jnp.where(jnp.isnan(amax), jnp.float32(1), tensor)
    ideal = _div(ideal, tensor)
  return _scales_from_value(ideal, fmt, tensor)


def _scales_from_value(ideal: jax.Array, fmt: ScaledFormat, tensor=None) -> _Scales:
  """Rounds ideal scales into the scale format (with the rule) and splits them for the arithmetic."""
  from lpnum.quantize import encode

  sf = fmt.scale_format
  if fmt.pow2:  # a given scale: the nearest value of the scale format
    codes = encode(ideal, sf)
    e, nan = _pow2_exponent(sf, codes)
    return _Scales(codes, None, e, nan)
  lo = max(sf.min_positive, _MIN_NORMAL)
  clamped = jnp.clip(ideal, jnp.float32(lo), jnp.float32(sf.max_finite))
  clamped = jnp.where(jnp.isnan(ideal), ideal, clamped)
  mode = Rounding.UP if fmt.scale_rule is ScaleRule.RCEIL else Rounding.NEAREST_EVEN
  rounded = sf.round_values(clamped, _F32, mode, Overflow.SATURATE, None, None)  # as encode() rounds
  value = jnp.where(jnp.isnan(rounded), jnp.float32(np.nan), rounded)  # its decoded value: NaN codes decode to +NaN
  return _general_scales(sf.encode_values(rounded, _F32), value, fmt, None, tensor)


def _pow2_scales(r: jax.Array, fmt: ScaledFormat) -> _Scales:
  _, e, sig, a = normalize(_F32, r)
  frac = sig & np.uint32(0x7FFFFF)
  rule = fmt.scale_rule
  if rule is ScaleRule.CEIL:
    e = e + (frac != 0).astype(jnp.int32)
  elif rule is ScaleRule.EVEN:
    m = _precision(fmt.element) - 1 if isinstance(fmt.element, FloatFormat) else _int_mantissa(fmt)
    e = e + ((frac + np.uint32(1 << (22 - m))) >= np.uint32(1 << 23)).astype(jnp.int32)
  if rule is ScaleRule.RCEIL:
    # ceil(log2(fl(r / max))). Where the quotient is a float32 subnormal (which XLA flushes), only whether it
    # exceeds 2^-127 matters (lower exponents clamp): it does iff r > max * (2^-127 + 2^-150), the quotient then
    # rounding above 2^-127 on the subnormal grid (a tie goes to the even 2^-127).
    d = _div(r, jnp.float32(fmt.element_max))
    _, e, sig, a_d = normalize(_F32, d)
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


def _pow2_from_exponent(e: jax.Array, a: jax.Array, fmt: ScaledFormat) -> _Scales:
  from lpnum.quantize import encode

  sf = fmt.scale_format
  lo, hi = _pow2_range(sf)
  special = a >= _F32.inf_bits
  e = jnp.where(special, 0, jnp.clip(e, lo, hi))
  codes = encode(jax.lax.bitcast_convert_type(_F32.pow2_bits(e), jnp.float32), sf)
  if sf.has_nan:
    nan_code = encode(jnp.float32(np.nan), sf)
    codes = jnp.where(special, nan_code, codes)
  return _Scales(codes, None, e, special if sf.has_nan else None)


def _asymmetric_scales(xb, fmt, axes) -> _Scales:
  el = fmt.element
  qmin, qmax = el.min_value, el.max_finite
  hi, lo = max_min(xb, axes)
  hi, lo = jnp.maximum(hi, 0), jnp.minimum(lo, 0)
  s = _scales_from_value(_div(hi - lo, jnp.float32(qmax - qmin)), fmt)
  value = _decode(fmt.scale_format, s.codes)
  z = _INT_GRID.round_values(jnp.float32(qmin) - _div(lo, value), _F32, Rounding.NEAREST_EVEN, Overflow.SATURATE,
                       None, None)
  z = jnp.clip(z, qmin, qmax)
  return dataclasses.replace(s, zero=z)


def _mse_scales(xb, fmt, axes) -> _Scales:
  amax = _range(xb, dataclasses.replace(fmt, calibration=absmax()), axes)

  def candidate(ratio):
    s = _scales_from_range(amax * jnp.float32(ratio), fmt, xb).with_factors(fmt)
    r = _round_elements(xb, s, fmt, Rounding.NEAREST_EVEN, None)
    err = jnp.sum(jnp.square(_apply_scale(r, s, fmt, _F32) - xb), axis=axes, keepdims=True)
    return s, err

  best, best_err = candidate(fmt.calibration.ratios[0])
  for ratio in fmt.calibration.ratios[1:]:
    s, err = candidate(ratio)
    better = err < best_err
    best = jax.tree_util.tree_map(lambda new, old: jnp.where(better, new, old), s, best)
    best_err = jnp.where(better, err, best_err)
  return best


jax.tree_util.register_dataclass(
    _Scales, data_fields=["codes", "m", "e", "nan", "zero", "tensor", "block", "tm", "de", "down", "up"],
    meta_fields=[])


# ---- elements -------------------------------------------------------------------------------------------------
def _by_scaling(compute, xb: jax.Array, s: _Scales, fmt: ScaledFormat, mode: Rounding | None) -> jax.Array:
  """``compute(plain, xb, s)``, the elementwise pass (rounding elements with ``mode``, or None for none), with
  ``plain=True`` where every block allows it.

  ``plain`` scales by one float multiplication with the scale's power of two each way (``_round_elements``,
  ``_apply_scale``) instead of the exact paths for subnormal inputs and results, which cost the elementwise pass
  about as much as the rounding itself. Where the two agree bit for bit in every block (the usual case: no scale
  near the ends of float32's range; see ``plain_for_rounding`` and ``plain_exact``), a conditional
  runs the plain pass, else the exact one. Elements are rounded only to nearest even, and only float and integer
  elements (whose rounding takes values below 2^-102 to zero). The conditional's pass runs over rows of 32 to 64
  elements where the blocks allow it (``_row_view``).
  """
  if xb.size == 0:
    return compute(False, xb, s)
  ok = plain_exact(s.up, _smallest_product(fmt))
  if mode is not None:
    if mode is not Rounding.NEAREST_EVEN or not isinstance(fmt.element, FloatFormat | IntFormat):
      return compute(False, xb, _per_block(lambda v: v.exact(), xb.size, s))  # factors once per block
    ok = ok & plain_for_rounding(s.down)
  # Inside the conditional the exact branch derives its factors per element: computing them per block there made
  # the plain branch slower (NVFP4 quantize 17 -> 25 ms), and the exact branch is the rare one.
  view = _row_view(xb, s)
  if view is None:
    return _cond(ok, functools.partial(compute, True), functools.partial(compute, False), xb, s)
  xr, sr, width, spread = view

  def run(plain, xr, sr, width):
    return compute(plain, xr, spread(sr, width))

  return _cond(ok, functools.partial(run, True), functools.partial(run, False), xr, sr, width).reshape(xb.shape)


#: XLA's CPU loops run an elementwise pass fastest over rows of 32 to 64 elements: NVFP4's element pass took 27 ms
#: over its blocks of 16 and 17 ms over rows of 32 (4096x4096 float32); blocks of 128 were as slow as 16.
_ROW = 32
_MAX_ROW = 64


def _row_view(xb: jax.Array, s: "_Scales"):
  """``xb`` and the leaves of ``s`` re-viewed so that the elementwise pass runs over rows of 32 or 64 elements;
  None where the blocks' own rows are fine or the view does not apply.

  Blocks longer than 64 along the minor axis are split into rows of 64, their scales broadcast over the rows.
  Blocks of 8 or 16 are grouped into rows of 32, whose elements pick their block's scales with selects on the
  element's position. XLA would fold a select on a constant bound back into blocks of 16, so the bound (the block
  size, ``width``) is computed from the data.

  Returns ``(xr, sr, width, spread)``: ``sr`` is ``s`` with re-viewed leaves, and ``spread(sr, width)``, inside
  the conditional, gives the scales as ``compute`` takes them.
  """
  if xb.ndim < 2:
    return None
  b, n = xb.shape[-1], xb.shape[-2]
  leaves, treedef = jax.tree_util.tree_flatten(s)
  if any(a.ndim not in (0, xb.ndim) or (a.ndim and a.shape[-1] != 1) for a in leaves):
    return None
  if b > _MAX_ROW and b % _MAX_ROW == 0:
    split = [a.reshape(a.shape[:-1] + (1, 1)) if a.ndim else a for a in leaves]
    return (xb.reshape(xb.shape[:-1] + (b // _MAX_ROW, _MAX_ROW)), jax.tree_util.tree_unflatten(treedef, split),
            None, lambda sr, _: sr)
  g = _ROW // b
  if b not in (8, 16) or n % g or any(a.ndim and a.shape[-2] not in (1, n) for a in leaves):
    return None
  grouped = [a.reshape(a.shape[:-2] + (n // g, g)) if a.ndim and a.shape[-2] == n else a for a in leaves]

  def spread(sr, width):
    position = jax.lax.broadcasted_iota(jnp.int32, (1,) * (xb.ndim - 1) + (_ROW,), xb.ndim - 1)

    def pick(a):
      if a.ndim and a.shape[-1] == g:  # grouped: one value per block of the row
        a, group = a[..., :1], a
        for k in range(1, g):
          a = jnp.where(position >= k * width, group[..., k:k + 1], a)
      return a

    return jax.tree_util.tree_map(pick, sr)

  bits = 8 * xb.dtype.itemsize
  sign = jax.lax.bitcast_convert_type(xb.reshape(-1)[0], jnp.dtype(f"uint{bits}")) >> (bits - 1)
  width = jnp.minimum(jnp.int32(b), jnp.int32(b) + sign.astype(jnp.int32))  # equals b; XLA cannot tell
  return xb.reshape(xb.shape[:-2] + (n // g, _ROW)), jax.tree_util.tree_unflatten(treedef, grouped), width, spread


def _smallest_product(fmt: ScaledFormat) -> float:
  """A power of two at most the smallest nonzero magnitude that ``_apply_scale`` scales by ``2^(de + e)``."""
  low = fmt.element.min_positive
  if fmt.tensor_scale:
    low *= max(fmt.scale_format.min_positive, _MIN_NORMAL)
  return 2.0 ** math.floor(math.log2(low))


def _round_elements(xb, s: _Scales, fmt: ScaledFormat, mode: Rounding, rand, plain: bool = False) -> jax.Array:
  """The elements: ``x / S`` rounded to the element format, as float32 values in element units (``plain``: see
  ``_by_scaling``)."""
  el = fmt.element
  xn = xb * s.down.p if plain else scale_for_rounding(xb, s.down)
  q = xn if s.m is None else _div(xn, s.m)
  if fmt.asymmetric:
    r = _INT_GRID.round_values(q, _F32, mode, Overflow.SATURATE, rand, None) + s.zero
    return jnp.clip(r, el.min_value, el.max_finite)
  return el.round_values(q, _F32, mode, Overflow.SATURATE, rand, None)


#: The integer grid asymmetric elements are rounded on before the zero point is added.
_INT_GRID = IntFormat(bits=16)


def _apply_scale(v: jax.Array, s: _Scales, fmt: ScaledFormat, target: Carrier,
                 plain: bool = False) -> jax.Array:
  """``v * S`` rounded once into ``target`` (``v`` in element units); NaN scales give NaN (``plain``: see
  ``_by_scaling``)."""
  if s.zero is not None:
    v = v - s.zero.astype(jnp.float32)

  def scale(w):
    return scale_exact(w, s.up, target) if not plain else (w * s.up.p).astype(target.dtype)

  if s.m is None:
    out = scale(v)
    if s.nan is not None:
      out = jnp.where(s.nan, jnp.asarray(np.nan, target.dtype), out)
    return out
  if s.tm is not None:  # fl(fl(v * block) * tm) * 2^de, with v * block exact
    return scale((v * s.block) * s.tm)
  # ``block`` is S itself, a normal float32 (general scales are at least 2^-126).
  if target is _F32 and fmt.element.min_positive >= 1:
    return v * s.block  # integer elements: the IEEE product, never below 2^-126
  p = _element_precision(fmt.element)
  if target is not _F32 and p <= 8:
    return multiply(v, s.block, p, target)
  # fl(v * m) * 2^e: one rounding wherever the result is a normal float (below, a second one; documented).
  return scale(v * s.m)


def _element_precision(el: Format) -> int:
  """At most how many significant bits the element format's values have."""
  if isinstance(el, FloatFormat):
    return el.mantissa_bits + 1
  if isinstance(el, IntFormat):
    return el.bits - int(el.signed)
  if isinstance(el, ShiftFormat | BinaryFormat):
    return 1
  return 24


def clip_range(x: ArrayLike, fmt: ScaledFormat, *, scale: ArrayLike | None = None,
               pad: bool = False) -> tuple[jax.Array, jax.Array]:
  """Per element of ``x``, the lowest and highest values its block can represent (the clipping range that
  :func:`quantize_scaled` would use), each with ``x``'s shape, float32.
  """
  x, fmt, _, block, padded = _prepare(x, fmt, "nearest_even", None, pad)
  scale = None if scale is None else jnp.asarray(scale, jnp.float32)
  xb = blocks.to_blocks(x.astype(jnp.float32), block, padded)
  s = _scales(xb, fmt, scale)
  el = fmt.element
  hi = _apply_scale(jnp.full(xb.shape, el.max_finite, jnp.float32), s, fmt, _F32)
  lo = _apply_scale(jnp.full(xb.shape, el.min_value, jnp.float32), s, fmt, _F32)
  return blocks.from_blocks(lo, x.shape), blocks.from_blocks(hi, x.shape)
