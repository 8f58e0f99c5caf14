"""A2Q: accumulator-aware weight quantization that guarantees a P-bit accumulator never overflows.

After Colbert, Pappalardo and Petri-Koenig, "A2Q: Accumulator-Aware Quantization with Guaranteed Overflow
Avoidance", ICCV 2023. A dot product of N-bit inputs with integer weights ``q`` cannot overflow a signed P-bit
accumulator, in any order of the additions, if ``||q||_1 <= T = (2^(P-1) - 1) * 2^(1_signed - N)``
(:func:`lpnum.kernels.accumulate.a2q_bound`). A2Q trains weights that meet the bound by construction.

Kernels have the flax ``Dense`` layout ``(in_features, out_features)`` (any number of leading input axes, e.g.
``(kh, kw, in, out)`` for a convolution): output channels lie along the **last axis**, and every norm, scale and
bound is per output channel ``j``, over all the other axes. Each channel is weight-normalized with the L1 norm:

    ``w = g' * v / ||v||_1``, ``g' = clip(g, -s L, s L)`` (computed as ``s * c``, ``c = clip(g / s, -L, L)``),
    ``q = clip(trunc(w / s), -2^(M-1), 2^(M-1) - 1)`` (the integer weights), and ``w_q = s * q``,

with ``v`` the direction, ``g`` the norm, ``s > 0`` the per-channel scale and M the weight bits. Clipping ``g``
to ``s * L`` bounds ``||w / s||_1 = |c|`` by ``L``; rounding **toward zero** (``trunc``) and clipping to the M-bit
range only shrink magnitudes, so ``||q||_1 <= L <= T``. ``L`` (:func:`a2q_limit`) is ``floor(T)`` (an integer L1
norm is an integer), lowered where needed by the worst-case float32 rounding error of the normalization, about
``2 K 2^-24`` relative for K input elements per channel, so that the guarantee holds for the computed weights, not
only in exact arithmetic; ``L = floor(T)`` unless ``(floor(T) + 1) (K + 8) > 2^23``.

Gradients are straight-through for the rounding: ``dq / d(w / s) = 1`` where ``trunc(w / s)`` lies inside the
M-bit range, 0 where it is clipped; everything else (the L1 normalization, ``g / s``, the clip of ``g``, the
final ``s * q``) is differentiated as written, so for ``G = dLoss/dw_q`` and ``u = v / ||v||_1``:

    ``dg = 1{|g| <= L s} / s * sum_k(G s m u)``, ``dv = c (G s m - sign(v) sum_k(G s m u)) / ||v||_1``,
    ``ds = sum_k(G q) - 1{|g| <= L s} g / s^2 * sum_k(G s m u)``,

where ``m`` is the straight-through mask and the sums run over the input axes of each channel.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from lpnum.estimators import with_grad_mask
from lpnum.kernels.accumulate import a2q_bound

__all__ = ["a2q_limit", "a2q_init", "a2q_quantize", "a2q_integer_weights"]

_EPS32 = 2.0**-24


def check_bits(name: str, value, lo: int, hi: int) -> int:
  """``value`` as an int, or ValueError naming ``name`` unless it is an integer in ``[lo, hi]`` (bit widths, fan-in;
  the A2Q layer validates its attributes with it)."""
  if isinstance(value, bool) or not isinstance(value, int | np.integer) or not lo <= value <= hi:
    raise ValueError(f"{name}={value!r} must be an integer in [{lo}, {hi}]")
  return int(value)


def a2q_limit(fan_in: int, *, input_bits: int, accumulator_bits: int, signed_input: bool = True) -> float:
  """The limit ``L`` on ``|g / s|`` (and so on each channel's integer L1 norm) for ``fan_in`` input elements per
  output channel: ``floor(a2q_bound(...))``, lowered by the float32 rounding margin described in the module docs.

  Args:
    fan_in: K, the number of kernel elements per output channel (the product of all axes but the last).
    input_bits: N, bits of the integer inputs, 1..32.
    accumulator_bits: P, bits of the signed accumulator, 2..64.
    signed_input: whether the inputs are signed.

  Raises:
    ValueError: an argument out of range, or a bound that admits no nonzero weight.

  Example:
    >>> from lpnum.nn.a2q import a2q_limit
    >>> a2q_limit(64, input_bits=8, accumulator_bits=16), a2q_limit(2**16, input_bits=4, accumulator_bits=32)
    (255.0, 266338048.0)
  """
  check_bits("fan_in", fan_in, 1, 2**40)
  bound = a2q_bound(input_bits, accumulator_bits, signed_input=signed_input)
  t = math.floor(bound)
  # The computed ||v||_1 is at least (1 - 2 (K - 1) eps) times the exact one (any summation order), and the
  # divide and multiply of x = c * (v / ||v||_1) add a few roundings (1 - 16 eps leaves room for up to 8 ulps, as
  # on hardware whose division is not correctly rounded). So sum_k |x_k| < t + 1 and the truncated integers sum to
  # at most t.
  margin = (t + 1) * (1 - 2 * fan_in * _EPS32) * (1 - 16 * _EPS32)
  limit = float(np.float32(min(t, margin)))
  if limit > min(t, margin):
    limit = float(np.nextafter(np.float32(limit), np.float32(0)))
  if limit < 1:
    raise ValueError(f"accumulator_bits={accumulator_bits} with input_bits={input_bits} and fan_in={fan_in} admits "
                     f"no nonzero integer weight (a2q_bound = {bound!r})")
  return limit


def _float(x, name: str) -> jax.Array:
  if isinstance(x, float | int) and not isinstance(x, bool):
    x = jnp.float32(x)
  if not isinstance(x, jax.Array | np.ndarray | np.generic):
    raise TypeError(f"{name} must be a float array, got {type(x).__name__}")
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{name} must be a float array, got dtype {x.dtype}")
  return x


def _kernel(v, name: str = "v") -> jax.Array:
  v = _float(v, name)
  if v.ndim < 2:
    raise ValueError(f"{name} must be a kernel of shape (..., in_features, out_features), got shape {v.shape}")
  return v


def _channel(x, name: str, out: int) -> jax.Array:
  x = _float(x, name)
  if x.shape not in ((), (out,)):
    raise ValueError(f"{name}.shape={x.shape} must be () or (out_features,) = ({out},)")
  return x


def _prepare(v, g, scale, weight_bits, input_bits, accumulator_bits, signed_input):
  v = _kernel(v)
  out = v.shape[-1]
  g, scale = _channel(g, "g", out), _channel(scale, "scale", out)
  m = check_bits("weight_bits", weight_bits, 2, 16)
  limit = a2q_limit(max(v.size // max(out, 1), 1), input_bits=input_bits, accumulator_bits=accumulator_bits,
                    signed_input=signed_input)
  dtype = jnp.result_type(v.dtype, g.dtype, scale.dtype, jnp.float32)
  return v.astype(dtype), g.astype(dtype), scale.astype(dtype), -float(2 ** (m - 1)), float(2 ** (m - 1) - 1), limit


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _codes(v, g, scale, qn, qp, limit) -> jax.Array:
  """The integer weights ``q`` as floats, with the straight-through gradient of the module docs."""
  axes = tuple(range(v.ndim - 1))
  norm = jnp.sum(jnp.abs(v), axis=axes)
  norm = jnp.where(norm > 0, norm, jnp.ones_like(norm))
  ratio = g / scale
  # Inside test on g itself, so that g = limit * scale (a2q_init's value on the limit) keeps its gradient.
  inside = jax.lax.stop_gradient(jnp.abs(g) <= limit * scale)
  c = with_grad_mask(jnp.clip(jax.lax.stop_gradient(ratio), -limit, limit), ratio, inside)
  x = c * (v / norm)
  t = jax.lax.stop_gradient(jnp.trunc(x))
  return with_grad_mask(jnp.clip(t, qn, qp), x, (t >= qn) & (t <= qp))


def a2q_quantize(v: ArrayLike, g: ArrayLike, scale: ArrayLike, *, weight_bits: int, input_bits: int,
                 accumulator_bits: int, signed_input: bool = True) -> jax.Array:
  """A2Q fake-quantized weights ``w_q = s * clip(trunc(clip(g / s, -L, L) * v / ||v||_1), -2^(M-1), 2^(M-1) - 1)``
  per output channel (last axis), differentiable in ``v``, ``g`` and ``scale`` (formulas in the module docs).

  The integer weights ``w_q / s`` (:func:`a2q_integer_weights`) have, in every output channel, an L1 norm of at
  most ``a2q_limit(...) <= a2q_bound(input_bits, accumulator_bits)``: a ``accumulator_bits``-bit accumulator of
  their products with ``input_bits``-bit inputs never overflows.

  Args:
    v: the kernel's direction, (..., in_features, out_features), float.
    g: the per-channel norm, (out_features,) or a scalar.
    scale: the per-channel quantization step ``s > 0``, (out_features,) or a scalar.
    weight_bits: M, bits of the signed integer weights, 2..16.
    input_bits: N, bits of the integer inputs.
    accumulator_bits: P, bits of the signed accumulator.
    signed_input: whether the inputs are signed (unsigned N-bit inputs halve the bound).

  Returns:
    The fake-quantized kernel, ``v``'s shape, float32 (or wider).

  Raises:
    TypeError: a non-float ``v``, ``g`` or ``scale``.
    ValueError: bad shapes or bit widths (named in the message).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from lpnum.nn.a2q import a2q_quantize
    >>> v = jnp.array([[3.0, 1.0], [-1.0, 1.0]])
    >>> kw = dict(weight_bits=8, input_bits=8, accumulator_bits=12)  # L1 bound (2^11 - 1) / 2^7 < 16
    >>> a2q_quantize(v, jnp.array([40.0, 4.0]), jnp.array([1.0, 0.5]), **kw).tolist()  # g clipped to 15 s
    [[11.0, 2.0], [-3.0, 2.0]]
    >>> jax.grad(lambda g: a2q_quantize(v, g, jnp.array([1.0, 0.5]), **kw).sum())(jnp.array([40.0, 4.0])).tolist()
    [0.0, 1.0]
  """
  v, g, scale, qn, qp, limit = _prepare(v, g, scale, weight_bits, input_bits, accumulator_bits, signed_input)
  return scale * _codes(v, g, scale, qn, qp, limit)


def a2q_integer_weights(v: ArrayLike, g: ArrayLike, scale: ArrayLike, *, weight_bits: int, input_bits: int,
                        accumulator_bits: int, signed_input: bool = True) -> jax.Array:
  """The integer weights ``q`` of :func:`a2q_quantize` (so ``a2q_quantize(...) == scale * q``), int8 for
  ``weight_bits <= 8``, else int16: feed them to :func:`lpnum.kernels.accumulate.matmul` with an
  ``IntAccumulator(accumulator_bits)``. Same arguments as :func:`a2q_quantize`.

  Example:
    >>> import jax.numpy as jnp
    >>> from lpnum.nn.a2q import a2q_integer_weights
    >>> v = jnp.array([[3.0, 1.0], [-1.0, 1.0]])
    >>> q = a2q_integer_weights(v, jnp.array([40.0, 4.0]), jnp.array([1.0, 0.5]), weight_bits=8, input_bits=8,
    ...                         accumulator_bits=12)
    >>> q.tolist(), q.dtype, jnp.abs(q).sum(0).tolist()  # per-channel L1 norm <= 15
    ([[11, 4], [-3, 4]], dtype('int8'), [14, 8])
  """
  v, g, scale, qn, qp, limit = _prepare(v, g, scale, weight_bits, input_bits, accumulator_bits, signed_input)
  q = jax.lax.stop_gradient(_codes(v, g, scale, qn, qp, limit))
  return q.astype(jnp.int8 if weight_bits <= 8 else jnp.int16)


def a2q_init(w: ArrayLike, *, weight_bits: int, input_bits: int, accumulator_bits: int,
             signed_input: bool = True) -> tuple[jax.Array, jax.Array, jax.Array]:
  """A2Q parameters ``(v, g, scale)`` for a float kernel ``w`` (..., in_features, out_features).

  ``v = w``; ``scale = max_k |w[k, j]| / (2^(M-1) - 1)`` per output channel (1 for an all-zero channel), the
  usual per-channel absmax step; ``g = min(||w[:, j]||_1, L * scale)``, the channel's L1 norm, lowered to the
  limit where the bound binds (the forward pass would clip it there anyway; starting on the limit keeps its
  gradient). Where the bound does not bind, :func:`a2q_quantize` gives ``w`` rounded toward zero on the
  per-channel grid (up to float32 rounding, which can move a weight lying on a grid point one step toward zero).

  Raises:
    TypeError: a non-float ``w``.
    ValueError: a bad shape or bit widths (named in the message).

  Example:
    >>> import jax.numpy as jnp
    >>> from lpnum.nn.a2q import a2q_init
    >>> w = jnp.array([[0.5, 7.0], [-3.5, 7.0], [1.0, 7.0]])
    >>> v, g, s = a2q_init(w, weight_bits=4, input_bits=4, accumulator_bits=8)  # limit L = 15
    >>> g.tolist(), s.tolist()  # ||w||_1 / s: 10 for channel 0, 21 > 15 for channel 1, whose g is lowered
    ([5.0, 15.0], [0.5, 1.0])
  """
  w = _kernel(w, "w")
  m = check_bits("weight_bits", weight_bits, 2, 16)
  fan_in = max(w.size // max(w.shape[-1], 1), 1)
  limit = a2q_limit(fan_in, input_bits=input_bits, accumulator_bits=accumulator_bits, signed_input=signed_input)
  w = w.astype(jnp.result_type(w.dtype, jnp.float32))
  axes = tuple(range(w.ndim - 1))
  absmax = jnp.max(jnp.abs(w), axis=axes)
  scale = jnp.where(absmax > 0, absmax / (2 ** (m - 1) - 1), jnp.ones_like(absmax))
  g = jnp.minimum(jnp.sum(jnp.abs(w), axis=axes), limit * scale)
  return w, g, scale
