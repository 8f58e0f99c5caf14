"""Hadamard rotations for quantization: a fast, orthonormal Walsh–Hadamard transform along any axis.

Rotating the reduction axis of a matmul operand by an orthonormal Hadamard matrix before quantizing spreads
outliers over the whole block, so a per-tensor or per-group scale wastes less of the format's range (Xi et al.
2023, "Training Transformers with 4-bit Integers"; Ashkboos et al. 2024, HALO). The rotation costs nothing in
exact arithmetic: the Sylvester matrix ``H`` scaled by ``1/sqrt(n)`` is symmetric and orthonormal, so
``x @ w == (x @ H) @ (H @ w)``, i.e. ``x @ w == fwht(x, -1) @ fwht(w, 0)`` up to float rounding, and both sides
of the product can be quantized after the rotation.

:func:`fwht` applies the transform with ``log2(b)`` additions or subtractions per element (``b = n`` without
blocks), never forming the ``n x n`` matrix: it reshapes the axis so that the elements a butterfly combines sit
on an axis of length 2 or 4 and adds and subtracts slices of it, ``log2(b)`` butterfly levels in all, two per
pass over the data (``ceil(log2(b) / 2)`` passes). Lengths that are not powers of two are rotated
block-diagonally with ``block=``: ``diag(H_b, ..., H_b)``. :func:`hadamard_matrix` builds the dense matrix, for
tests and documentation only.

``jit``, ``vmap``, forward- and reverse-mode autodiff and their compositions (Hessians) all work. The transform
is linear, and a ``custom_jvp`` makes its tangent the transform of the tangent, computed by a second copy of
the butterfly network (summing in the opposite level order, so it can differ from ``fwht`` in the last bit)
whose transpose, what reverse mode runs, is again one pass per two levels and computes ``fwht`` of the
cotangent (``H`` is symmetric). Two copies, because the forward pass writes each pass's four outputs with a
branch-free select, which XLA:CPU vectorizes and runs about 1.5x faster than a stack although it evaluates
all four for every element, but which transposes into broadcasts and reductions several times slower. A
``custom_vjp`` would have done for reverse mode but rules out forward mode (``jax.jvp``, ``jax.hessian``).
"""

from __future__ import annotations

import functools
import math
import operator

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from lpnum.validate import as_float_array

__all__ = ["fwht", "largest_block", "hadamard_matrix"]


def largest_block(n: int) -> int:
  """The largest power of two dividing ``n`` (the block :func:`fwht` uses for ``block="auto"``).

  Args:
    n: a positive integer, typically the length of the axis to rotate.

  Returns:
    The largest ``2**k`` with ``n % 2**k == 0``.

  Raises:
    TypeError: if ``n`` is not an integer.
    ValueError: if ``n`` is not positive.

  Example:
    >>> [largest_block(n) for n in (1, 96, 384, 1024, 7)]
    [1, 32, 128, 1024, 1]
  """
  n = _int(n, "n")
  if n < 1:
    raise ValueError(f"n={n} must be positive")
  return n & -n


def hadamard_matrix(n: int) -> np.ndarray:
  """The orthonormal ``n x n`` Sylvester–Hadamard matrix in natural order, as a float64 NumPy array.

  Built by Sylvester doubling, ``H_2m = [[H_m, H_m], [H_m, -H_m]]`` from ``H_1 = [[1]]``, then scaled by
  ``1/sqrt(n)``; entry ``(i, j)`` is ``(-1)**popcount(i & j) / sqrt(n)``. The matrix is symmetric and
  orthonormal, so it is its own inverse. :func:`fwht` computes ``x @ hadamard_matrix(n)`` along an axis
  without building it; this function is for tests and documentation.

  Args:
    n: the order, a positive power of two.

  Returns:
    A float64 array of shape ``(n, n)``.

  Raises:
    TypeError: if ``n`` is not an integer.
    ValueError: if ``n`` is not a positive power of two.

  Example:
    >>> (hadamard_matrix(4) * 2).tolist()
    [[1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0], [1.0, -1.0, -1.0, 1.0]]
  """
  n = _int(n, "n")
  if n < 1 or n & (n - 1):
    raise ValueError(f"n={n} must be a positive power of two")
  h = np.ones((1, 1))
  while h.shape[0] < n:
    h = np.block([[h, h], [h, -h]])
  return h / math.sqrt(n)


def fwht(x: ArrayLike, axis: int = -1, *, block: int | str | None = None) -> jax.Array:
  """The orthonormal fast Walsh–Hadamard transform of ``x`` along ``axis``.

  Computes ``x @ hadamard_matrix(n)`` along ``axis`` (natural/Sylvester order, scaled by ``1/sqrt(n)``), or with
  ``block=b`` the block-diagonal ``diag(H_b, ..., H_b)``: each run of ``b`` consecutive elements along the axis
  is rotated by the ``b x b`` orthonormal Hadamard matrix. The transform is orthonormal and symmetric, hence its
  own inverse: ``fwht(fwht(x)) == x`` up to rounding.

  Rounding: each output is a signed sum of ``b`` inputs, formed by ``log2(b)`` levels of pairwise additions
  and subtractions, each rounded once in the compute dtype (float32 for bfloat16, float16 and other floats
  narrower than 32 bits; otherwise the input dtype), then multiplied once by ``1/sqrt(b)``. When ``b`` is a
  power of 4 that factor is an exact power of two and the multiplication is exact (barring underflow to
  subnormals), so integer-valued inputs of small magnitude round-trip exactly. When ``log2(b)`` is odd the
  factor is ``2**-k / sqrt(2)`` rounded once to the compute dtype (0.70710677 times a power of two in
  float32), and the product is rounded once more: at most about one ulp per element, and ``fwht(fwht(x))``
  carries the factor ``2 * fl(1/sqrt(2))**2``, within ``4e-8`` of 1 in float32. Results computed in float32
  are rounded once to the input dtype at the end. The unscaled sums can reach ``b * max|x|``, so float32
  inputs above ``float32_max / b`` can overflow.

  Under ``jax.jit`` pass ``axis`` and ``block`` as static arguments (they fix the reshapes), e.g.
  ``jax.jit(fwht, static_argnames=("axis", "block"))``.

  Args:
    x: a float array with at least one dimension; other axes are batch axes and may have any size, even 0.
    axis: the axis to transform.
    block: ``None`` to rotate the whole axis (its length must then be a power of two), a power of two that
      divides the length for the block-diagonal transform, or ``"auto"`` for :func:`largest_block` of the
      length. An axis of length 0 is returned unchanged.

  Returns:
    The transformed array, with the shape and dtype of ``x``.

  Raises:
    TypeError: if ``x`` is not a float array, or ``axis`` or ``block`` has the wrong type.
    ValueError: if ``x`` is 0-d, ``axis`` is out of range, or the length or ``block`` does not fit.

  Example:
    >>> import jax.numpy as jnp, lpnum.hadamard as hd
    >>> hd.fwht(jnp.array([1.0, 0.0, 0.0, 0.0])).tolist()
    [0.5, 0.5, 0.5, 0.5]
    >>> x, w = jnp.arange(12.0).reshape(2, 6), jnp.ones((6, 3))
    >>> bool(jnp.allclose(hd.fwht(x, block=2) @ hd.fwht(w, 0, block=2), x @ w))  # rotations fold away
    True
  """
  x = _float_array(x)
  axis = _int(axis, "axis")
  if not -x.ndim <= axis < x.ndim:
    raise ValueError(f"axis={axis} is out of range for an array with {x.ndim} dimensions")
  ax = axis % x.ndim
  n = x.shape[ax]
  b = _block(block, n, axis)
  if n == 0 or b == 1:
    return x
  dtype = x.dtype
  compute = jnp.float32 if jnp.finfo(dtype).bits < 32 else dtype
  p, q = math.prod(x.shape[:ax]), math.prod(x.shape[ax + 1:])
  y = _rotate(x.astype(compute), p, n, q, b)
  return y.reshape(x.shape).astype(dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3, 4))
def _rotate(x: jax.Array, p: int, n: int, q: int, b: int) -> jax.Array:
  return _scale(_butterflies(x, p, n, q, b, descending=True), b)


@_rotate.defjvp
def _rotate_jvp(p, n, q, b, primals, tangents):
  # The transform is linear, so its tangent is the transform of the tangent. It is written with stacks in
  # ascending order because reverse mode transposes this network: the transpose is again one pass per two
  # levels, in descending order, and computes fwht of the cotangent (H is symmetric). Transposing the
  # select-based network instead would turn every pass into broadcasts, reductions and selects (several
  # times slower).
  (x,), (t,) = primals, tangents
  return _rotate(x, p, n, q, b), _scale(_butterflies(t, p, n, q, b, descending=False), b)


def _scale(y: jax.Array, b: int) -> jax.Array:
  levels = b.bit_length() - 1
  scale = math.ldexp(math.sqrt(0.5) if levels % 2 else 1.0, -(levels // 2))
  return y * jnp.asarray(scale, y.dtype)


def _butterflies(x: jax.Array, p: int, n: int, q: int, b: int, descending: bool) -> jax.Array:
  """The unscaled transform of each block of ``b`` along the middle axis of ``x`` viewed as ``(p, n, q)``.

  Level ``s`` combines the elements whose index along the axis differs in bit ``s`` only; viewing the axis as
  ``(n / 2h, 2, h)`` with ``h = 2**s`` puts the two on the length-2 axis. Two levels make one pass over an
  axis of length 4 (``h`` and ``2h``); when ``log2(b)`` is odd the level of the largest stride is a pass of
  its own. Blocks never mix because every stride is below ``b``, which divides ``n``. The levels are the same
  either way; ``descending`` sets their order (strides ``b/2`` down to 1, or 1 up to ``b/2``) and how a pass
  writes its outputs: a select of the broadcast outputs (branch-free, which XLA vectorizes) or a stack.
  """
  passes, h = [], 1
  while h < b:
    r = 4 if 4 * h <= b else 2
    passes.append((h, r))
    h *= r
  for h, r in reversed(passes) if descending else passes:
    v = x.reshape(p * n // (r * h), r, h * q)
    vs = [v[:, i] for i in range(r)]
    if r == 2:
      outs = [vs[0] + vs[1], vs[0] - vs[1]]
    elif descending:  # stride 2h, then h
      s02, d02, s13, d13 = vs[0] + vs[2], vs[0] - vs[2], vs[1] + vs[3], vs[1] - vs[3]
      outs = [s02 + s13, s02 - s13, d02 + d13, d02 - d13]
    else:  # stride h, then 2h
      s01, d01, s23, d23 = vs[0] + vs[1], vs[0] - vs[1], vs[2] + vs[3], vs[2] - vs[3]
      outs = [s01 + s23, d01 + d23, s01 - s23, d01 - d23]
    if descending:
      slot = lax.broadcasted_iota(jnp.int32, v.shape, 1)
      x = lax.select_n(slot, *(jnp.broadcast_to(o[:, None], v.shape) for o in outs))
    else:
      x = jnp.stack(outs, axis=1)
  return x.reshape(p, n, q)


def _block(block: int | str | None, n: int, axis: int) -> int:
  if block is None:
    if n and n & (n - 1):
      raise ValueError(
          f"x has length {n} along axis={axis}, which is not a power of two: pass block= a power of two dividing "
          f"{n} for the block-diagonal transform (block='auto' uses {largest_block(n)})")
    return max(n, 1)
  if isinstance(block, str):
    if block != "auto":
      raise ValueError(f"block={block!r} must be None, 'auto' or a power of two")
    return largest_block(n) if n else 1
  b = _int(block, "block")
  if b < 1 or b & (b - 1):
    raise ValueError(f"block={b} must be a positive power of two")
  if n % b:
    raise ValueError(
        f"block={b} does not divide the length {n} of x along axis={axis}: use a power of two dividing {n} "
        f"(block='auto' uses {largest_block(n)})")
  return b


def _int(value, name: str) -> int:
  if isinstance(value, bool | np.bool_):
    raise TypeError(f"{name}={value!r} must be an integer")
  try:
    return operator.index(value)
  except TypeError:
    raise TypeError(f"{name}={value!r} must be an integer, got {type(value).__name__}") from None


def _float_array(x: ArrayLike) -> jax.Array:
  x = as_float_array(x)
  if x.ndim == 0:
    raise ValueError("x must have at least one dimension (the axis to transform), got a 0-d array")
  return x
