"""The public face of the cast: :func:`quantize` validates, picks a face (Pallas on GPU and TPU, XLA elsewhere) and
returns QArrays equal to :func:`lpnum.quantize_scaled`'s. The semantics are in :mod:`lpnum.kernels.quantize`."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from lpnum.formats import FloatFormat, IntFormat
from lpnum.kernels.quantize.pallas import Output, pallas_cast, tile_shape
from lpnum.kernels.quantize.tile import cast_of
from lpnum.kernels.quantize.xla import xla_quantize
from lpnum.kernels.tiles import IMPLEMENTATIONS, check_dispatch, pallas_platform
from lpnum.qarray import QArray
from lpnum.scaled import ScaledFormat, presets
from lpnum.scaled.scales import scales_from_value, tensor_scale_of
from lpnum.scaled.xla_cpu import abs_max, div
from lpnum.validate import as_array, check_float_scalar, short

__all__ = ["quantize", "IMPLEMENTATIONS", "pallas_supports", "prepare", "run_pallas", "per_tensor_codes"]

_X_DTYPES = (np.dtype(np.float32), np.dtype(jnp.bfloat16), np.dtype(np.float16))


def quantize(x: ArrayLike, fmt: ScaledFormat | str, *, transpose: bool | str = False, scale: ArrayLike | None = None,
             tensor_amax: ArrayLike | None = None, implementation: str = "auto", platform: str | None = None,
             interpret: bool = False) -> QArray | tuple[QArray, QArray]:
  """Quantizes a 2-D tensor into lpnum's packed QArray in one read of ``x`` (fused cast kernel on GPU and TPU).

  The result equals ``lpnum.quantize_scaled(x, fmt, scale=scale, tensor_amax=tensor_amax)`` bit for bit (codes,
  scale codes, per-tensor scale). Casts the kernels take: MXFP8 E4M3/E5M2, MXFP6 E2M3/E3M2, MXFP4, MXINT8 and
  NVFP4 along either axis (``mx.format(name, axis=0 or -1)``, ``nvfp4.format(axis=...)``), integer or float
  elements per block or per channel (``ScaledFormat("int8", per_channel(0))``: int8 per row), and one scale per
  tensor (FP8 with a given, delayed ``scale``).

  Args:
    x: ``(M, N)`` float32, bfloat16 or float16.
    fmt: a ScaledFormat or a preset name (``"mxfp8_e4m3"``...: blocks along the last axis).
    transpose: False: quantize ``x``; True: quantize ``x.T`` (without writing it); ``"both"``: both, from one read
      of ``x`` (MXFP8 training needs an operand along K for the forward matmul and along M for the weight
      gradient), returned as ``(q(x), q(x.T))``.
    scale: for one scale per tensor, the given (delayed) scale, a positive float32 scalar; without it the scale
      comes from ``x``'s abs-max, a first pass over ``x``.
    tensor_amax: for formats with a per-tensor scale (NVFP4), the abs-max it is computed from (e.g. from delayed
      scaling); without it a first pass over ``x`` computes ``x``'s own, so that the cast reads ``x`` twice.
    implementation: ``"auto"`` (Pallas on GPU/TPU where the shape tiles, XLA otherwise), ``"pallas"`` or ``"xla"``.
    platform: the Pallas flavour, ``"tpu"`` or ``"gpu"``/``"cuda"`` (default: the default backend's; on the CPU
      only with ``interpret=True``, where either flavour runs).
    interpret: run the Pallas kernel in interpret mode (tests on the CPU).

  Returns:
    A QArray, or ``(q(x), q(x.T))`` for ``transpose="both"``.

  Raises:
    TypeError: ``x`` is not a float array, ``fmt`` not a ScaledFormat or preset name.
    ValueError: ``x`` is not 2-D, an option is out of range, or ``implementation="pallas"`` with a cast or shape
      the kernels do not take (the message says which).

  Example:
    >>> import jax.numpy as jnp, lpnum
    >>> from lpnum import kernels
    >>> x = jnp.arange(2048.0).reshape(32, 64)
    >>> q, qt = kernels.quantize.quantize(x, "mxfp8_e4m3", transpose="both")
    >>> q.scales.shape, qt.scales.shape, bool((qt.data == lpnum.quantize_scaled(x.T, "mxfp8_e4m3").data).all())
    ((32, 2), (64, 1), True)
  """
  if not (transpose is False or transpose is True or transpose == "both"):
    raise ValueError(f"transpose={short(transpose)} must be False, True or 'both'")
  sides = (False, True) if transpose == "both" else (bool(transpose),)
  x, fmt, scale, tensor_amax, implementation, platform = prepare(
      x, fmt, scale, tensor_amax, implementation, platform, interpret,
      lambda fmt, shape, backend: pallas_supports(fmt, shape, sides, backend, scale))
  if implementation == "pallas":
    outputs = tuple(Output(cast_of(fmt, x.shape, t), t) for t in sides)
    results, ideal, tensor = run_pallas(x, scale, tensor_amax, fmt, outputs, platform, interpret)
    out = []
    for o, (arrays, scales) in zip(outputs, results):
      shape = x.shape[::-1] if o.transposed else x.shape
      out.append(QArray(data=arrays[0], scales=per_tensor_codes(ideal, fmt) if scales is None else scales,
                        zero_point=None, tensor_scale=tensor, fmt=fmt, shape=shape, dtype=np.dtype(x.dtype),
                        block=fmt.granularity.block_shape(shape)))
  else:
    out = [xla_quantize(x, fmt, transpose=t, scale=scale, tensor_amax=tensor_amax) for t in sides]
  return tuple(out) if transpose == "both" else out[0]


def prepare(x, fmt, scale, tensor_amax, implementation: str, platform: str | None, interpret: bool, why_not,
            default_axis: int = -1):
  """Validates the arguments of a cast and picks the face; returns ``(x, fmt, scale, tensor_amax, implementation,
  platform)``. ``why_not(fmt, x.shape, platform)`` says why the Pallas kernels cannot take the cast (None if they
  can)."""
  if isinstance(fmt, str):
    fmt = presets.preset(fmt, axis=default_axis, arg="fmt")
  if not isinstance(fmt, ScaledFormat):
    raise TypeError(f"fmt={short(fmt)} must be a ScaledFormat or a scaled preset name")
  x = as_array(x)
  if np.dtype(x.dtype) not in _X_DTYPES:
    raise TypeError(f"x must be float32, bfloat16 or float16, got dtype {x.dtype}")
  if x.ndim != 2:
    raise ValueError(f"x has shape {x.shape}; the cast kernels take 2-D tensors")
  check_dispatch(implementation, platform, interpret)
  scale = check_float_scalar("scale", scale, positive=True)
  tensor_amax = check_float_scalar("tensor_amax", tensor_amax)
  if tensor_amax is not None and not fmt.tensor_scale:
    raise ValueError(f"tensor_amax is for formats with a per-tensor scale (nvfp4); fmt={fmt.name} has none")
  if interpret:
    implementation = "pallas"
  if implementation == "pallas":
    platform = pallas_platform(platform, interpret)
    why = why_not(fmt, x.shape, platform)
    if why is not None:
      raise ValueError(f"implementation='pallas' cannot cast x of shape {x.shape} to {fmt.name}: {why}")
  elif implementation == "auto":
    backend = jax.default_backend()
    use = backend in ("gpu", "tpu") and why_not(fmt, x.shape, backend) is None
    implementation, platform = ("pallas", backend) if use else ("xla", None)
  return x, fmt, scale, tensor_amax, implementation, platform


def pallas_supports(fmt: ScaledFormat, shape: tuple[int, ...], sides: tuple[bool, ...], platform: str,
                    scale=None, *, tile_k: int | None = None, plane_widths: tuple[int, ...] = ()) -> str | None:
  """None if the Pallas kernels cast ``x`` of ``shape`` (and/or its transpose, ``sides``) to ``fmt``, else why
  not (``tile_k``, ``plane_widths``: into the packed matmul's bit planes)."""
  el = fmt.element
  if not isinstance(el, FloatFormat | IntFormat):
    return f"element {el.name}: the kernels encode float and integer elements"
  if fmt.asymmetric or fmt.calibration.kind != "absmax":
    return "asymmetric formats and calibrations other than absmax take the XLA path"
  if len(shape) != 2 or 0 in shape:
    return "x must be a non-empty 2-D tensor"
  try:
    casts = tuple(cast_of(fmt, shape, t) for t in sides)
    if scale is not None and any(c.axis is not None for c in casts):
      return "a given scale is for one scale per tensor"
    tile_shape(tuple(Output(c, t, tile_k, plane_widths) for c, t in zip(casts, sides)), shape,
               "gpu" if platform == "cuda" else platform)
  except ValueError as e:
    return str(e)
  return None


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6))
def run_pallas(x, scale, tensor_amax, fmt: ScaledFormat, outputs: tuple[Output, ...], platform: str,
               interpret: bool):
  """The cast kernel over ``x`` with its first passes where needed (the per-tensor ideal scale without a given
  ``scale``, the tensor's abs-max without ``tensor_amax``); returns ``pallas_cast``'s results, the per-tensor ideal
  scale (or None) and the per-tensor scale (or None)."""
  ideal = None
  if any(o.cast.axis is None for o in outputs):
    ideal = scale if scale is not None else div(abs_max(x.astype(jnp.float32), None, keepdims=False),
                                                jnp.float32(fmt.element_max))
    ideal = ideal.reshape(1, 1)
  tensor = None
  if fmt.tensor_scale:
    if tensor_amax is None:
      tensor_amax = abs_max(x.astype(jnp.float32), None, keepdims=False)
    tensor_amax = tensor_amax.reshape(1, 1)
    tensor = tensor_scale_of(tensor_amax.reshape(()), fmt)
  results = pallas_cast(x, outputs, platform=platform, interpret=interpret, ideal=ideal, tensor_amax=tensor_amax)
  return results, ideal, tensor


def per_tensor_codes(ideal: jax.Array, fmt: ScaledFormat) -> jax.Array:
  """The ``(1, 1)`` scale code of one scale per tensor, from its ideal scale (as ``quantize_scaled`` rounds it)."""
  return scales_from_value(ideal, fmt).codes.reshape(1, 1)
