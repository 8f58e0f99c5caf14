"""Piecewise-affine multiplication (PAM) and the other piecewise-affine operations of multiplication-free training.

Kosson and Jaggi, "Multiplication-Free Transformer Training via Piecewise Affine Operations", NeurIPS 2023, after
Mogami, "Deep Neural Network Training without Multiplications" (2020) and Mitchell's logarithmic multiplication
(1962). A normal float is ``x = (-1)^s 2^E (1 + M)``, mantissa ``M`` in [0, 1); read as an integer, its magnitude
bits are ``2^m (E + bias + M)`` (``m`` mantissa bits), a piecewise-affine ``log2``. Adding two such integers and
subtracting the bits of 1.0 (``bias << m``: ``0x3F800000`` for float32, ``0x3F80`` for bfloat16) adds the
logarithms, and reading the sum back as a float is a piecewise-affine ``exp2``:

* :func:`multiply`: ``PAM(a, b) = (-1)^(sa xor sb) 2^(Ea + Eb) (1 + Ma + Mb)`` if ``Ma + Mb < 1``, else
  ``2^(Ea + Eb + 1) (Ma + Mb)``: the bit patterns added, the sign by XOR. ``PAM(a, b) / (a b)`` lies in
  ``[8/9, 1]``: the relative error is in ``[-1/9, 0]`` (at most 11.1%, reached at ``Ma = Mb = 1/2``), and zero
  when either mantissa is zero (a power of two times anything is exact).
* :func:`divide`: the patterns subtracted, ``+ bias``: ``2^(Ea - Eb) (1 + Ma - Mb)`` if ``Ma >= Mb``, else
  ``2^(Ea - Eb - 1) (2 + Ma - Mb)``. ``PAD(a, b) / (a / b)`` lies in ``[1, 9/8]``: the relative error is in
  ``[0, 1/8]``, zero when ``b`` is a power of two.
* :func:`exp2` and :func:`log2`: the two halves of that trick. ``exp2(x) = 2^floor(x) (1 + x - floor(x))``, with
  ``x`` first rounded (nearest even) to the grid of ``2^-m`` the result's mantissa field holds, and
  ``log2(x) = E + M`` rounded to the dtype: both meet the true functions at the integers / powers of two.
  :func:`exp` and :func:`log` are the paper's ``exp2(PAM(x, log2 e))`` and ``PAD(log2(x), log2 e)``.
  :func:`square` and :func:`reciprocal` are ``PAM(x, x)`` and ``PAD(1, x)``.
* :func:`dot_general` and :func:`matmul`: every product is a PAM product of the operands (in their dtype), and the
  products are accumulated in float32, sequentially over the contracted index (``k = 0, 1, ..., K - 1``), with
  float32 additions (round to nearest even), then cast to the output dtype. Its signature is
  ``jax.lax.dot_general``'s, so ``nn.Dense(..., dot_general=lpnum.pam.dot_general)`` and
  ``nn.dot_product_attention(..., einsum_dot_general=lpnum.pam.dot_general)`` run a Flax layer with PAM
  (:mod:`lpnum.nn.pam` does it for a whole model).

Specials and ranges (a stated decision; the paper's CUDA kernel flushes results near the subnormal range to zero
and returns NaN for inf): subnormal inputs are read as zero (denormals-are-zero), results below the smallest normal
are flushed to a zero of the product's sign, and results at or above ``2^128`` overflow to inf. Zeros, infinities
and NaN follow IEEE multiplication and division: ``0 * x = +-0``, ``inf * x = +-inf``, ``0 * inf``, ``0 / 0`` and
``inf / inf`` are NaN (a positive quiet NaN), ``x / 0 = +-inf``, ``x / inf = +-0``; ``log2`` of a zero is ``-inf``
and of a negative number NaN; ``exp2(-inf) = 0``.

Dtypes: float32 and bfloat16 (a Python number takes the other operand's dtype). bfloat16 is the top half of
float32 with the same 8-bit exponent, so its bit sums are float32's shifted by 16 bits, with the same thresholds:
the operations run on float32 patterns and cast back exactly (except ``exp2``, which rounds ``x`` to bfloat16's
grid of ``2^-7``, and ``log2``, rounded once to bfloat16).

Gradients: each elementwise operation has the exact derivative of its piecewise-affine function (a custom JVP), a
power of two on each affine piece: ``d PAM(a, b) / da = sign(b) 2^(Eb + [Ma + Mb >= 1])``, ``d PAD / da = sign(b)
2^(-Eb - [Ma < Mb])``, ``d PAD / db = -sign(a) 2^(Ea - 2 Eb - [Ma < Mb])``, ``d exp2 / dx = 2^floor(x)``,
``d log2 / dx = 2^-E``; ignoring the flushes and overflows of the value, as ``d(a b) / da = b`` ignores them.
:func:`dot_general` instead trains as the paper trains transformers (its ``approx_bwd=True``): the backward
matmuls are PAM matmuls too, ``d lhs = g @ rhs^T`` and ``d rhs = lhs^T @ g`` with every product PAM and float32
sequential accumulation (over the forward's output index), not the derivative of the forward.

What lpnum implements of the paper: PAM and PAD, piecewise-affine exp2/log2/exp/log, and PAM matmuls forward and
backward (the paper's first setting, with which transformers trained with little or no loss); not its
piecewise-affine layer norm, softmax, GELU, loss and optimizer, which compose from these operations.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from lpnum.validate import as_array, short

__all__ = ["DTYPES", "multiply", "divide", "square", "reciprocal", "exp2", "log2", "exp", "log", "dot_general",
           "matmul"]

#: The dtypes PAM operates on.
DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))
#: Mantissa bits of each dtype: the grid of ``exp2``'s argument.
_MANTISSA_BITS = {jnp.dtype(jnp.float32): 23, jnp.dtype(jnp.bfloat16): 7}

# float32 bit fields.
_SIGN = np.uint32(0x80000000)
_MAG = np.uint32(0x7FFFFFFF)
_MANT = np.uint32(0x007FFFFF)
_ONE = np.uint32(0x3F800000)
_INF = np.uint32(0x7F800000)
_MIN_NORMAL = np.uint32(0x00800000)
_QNAN = np.uint32(0x7FC00000)


# ---- arguments ----------------------------------------------------------------------------------------------------
def _operands(**named: object) -> tuple[list[jax.Array], jnp.dtype]:
  """The arguments as arrays and their common dtype, float32 or bfloat16.

  Python numbers take the dtype of the array arguments (float32 if there are none); an array of any other dtype
  is a TypeError naming the argument.
  """
  arrays = {}
  for name, x in named.items():
    if isinstance(x, bool) or not isinstance(x, int | float):
      if isinstance(x, np.ndarray | np.generic | jax.Array) and jnp.dtype(x.dtype) not in DTYPES:
        raise TypeError(f"{name} has dtype {x.dtype}; lpnum.pam takes float32 or bfloat16 arrays")
      arrays[name] = as_array(x, name)
      if arrays[name].dtype not in DTYPES:
        raise TypeError(f"{name}={short(x)} has dtype {arrays[name].dtype}; lpnum.pam takes float32 or bfloat16")
  dtype = jnp.dtype(jnp.result_type(*arrays.values())) if arrays else jnp.dtype(jnp.float32)
  return [arrays[name] if name in arrays else jnp.asarray(x, dtype) for name, x in named.items()], dtype


@functools.partial(jax.jit, static_argnums=(0, 1))
def _apply(op, dtype: jnp.dtype, *args: jax.Array) -> jax.Array:
  """``op(dtype, *args)`` on the arguments in ``dtype`` widened to float32, cast back to ``dtype``: one compiled
  program per operation, dtype and shapes, eager calls included."""
  return op(dtype, *(x.astype(dtype).astype(jnp.float32) for x in args)).astype(dtype)


# ---- float32 bit patterns -----------------------------------------------------------------------------------------
def _split(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """float32 ``x`` as (sign bit, magnitude bits), subnormals read as zero."""
  bits = lax.bitcast_convert_type(x, jnp.uint32)
  mag = bits & _MAG
  return bits & _SIGN, jnp.where(mag < _MIN_NORMAL, np.uint32(0), mag)


def _float(bits: jax.Array) -> jax.Array:
  return lax.bitcast_convert_type(bits, jnp.float32)


def _pow2(e: jax.Array) -> jax.Array:
  """``2^e`` for an int32 exponent: 0 below the normal range, inf above it."""
  field = e + 127
  bits = jnp.where(field >= 255, _INF, jnp.where(field <= 0, np.uint32(0), field.astype(jnp.uint32) << 23))
  return _float(bits)


def _exponent(mag: jax.Array) -> jax.Array:
  """The unbiased exponent ``E`` of normal magnitude bits, as int32."""
  return (mag >> 23).astype(jnp.int32) - 127


def _pam_bits(sa, ma, sb, mb) -> jax.Array:
  """The float32 bits of ``PAM(a, b)`` from split operands (any broadcastable shapes)."""
  total = ma + mb  # < 2^32: both magnitudes are at most 0x7FFFFFFF
  mag = jnp.where(total < _ONE + _MIN_NORMAL, np.uint32(0), jnp.where(total >= _ONE + _INF, _INF, total - _ONE))
  zero = (ma == 0) | (mb == 0)
  inf = (ma == _INF) | (mb == _INF)
  mag = jnp.where(inf, _INF, jnp.where(zero, np.uint32(0), mag))
  nan = (ma > _INF) | (mb > _INF) | (zero & inf)
  return jnp.where(nan, _QNAN, (sa ^ sb) | mag)


def _pad_bits(sa, ma, sb, mb) -> jax.Array:
  """The float32 bits of ``PAD(a, b)`` from split operands."""
  shifted = ma + _ONE  # < 2^32
  diff = shifted - mb
  mag = jnp.where(shifted < mb + _MIN_NORMAL, np.uint32(0), jnp.where(diff >= _INF, _INF, diff))
  zero_a, zero_b, inf_a, inf_b = ma == 0, mb == 0, ma == _INF, mb == _INF
  mag = jnp.where(inf_a | zero_b, _INF, jnp.where(zero_a | inf_b, np.uint32(0), mag))
  nan = (ma > _INF) | (mb > _INF) | (zero_a & zero_b) | (inf_a & inf_b)
  return jnp.where(nan, _QNAN, (sa ^ sb) | mag)


# ---- elementwise operations on float32 (custom JVPs: the exact piecewise derivatives) ----------------------------
@jax.custom_jvp
def _multiply32(a: jax.Array, b: jax.Array) -> jax.Array:
  return _float(_pam_bits(*_split(a), *_split(b)))


def _pam_slope(ma, sb, mb) -> jax.Array:
  """``d PAM(a, b) / da = sign(b) 2^(Eb + carry)``, carry = ``[Ma + Mb >= 1]``."""
  carry = ((ma & _MANT) + (mb & _MANT)) >> 23
  slope = sb | (jnp.minimum((mb >> 23) + carry, np.uint32(255)) << 23)
  return _float(jnp.where(mb > _INF, _QNAN, slope))


@_multiply32.defjvp
def _multiply32_jvp(primals, tangents):
  a, b = primals
  ta, tb = tangents
  (sa, ma), (sb, mb) = _split(a), _split(b)
  out = _float(_pam_bits(sa, ma, sb, mb))
  return out, ta * _pam_slope(ma, sb, mb) + tb * _pam_slope(mb, sa, ma)


@jax.custom_jvp
def _divide32(a: jax.Array, b: jax.Array) -> jax.Array:
  return _float(_pad_bits(*_split(a), *_split(b)))


@_divide32.defjvp
def _divide32_jvp(primals, tangents):
  a, b = primals
  ta, tb = tangents
  (sa, ma), (sb, mb) = _split(a), _split(b)
  out = _float(_pad_bits(sa, ma, sb, mb))
  borrow = ((ma & _MANT) < (mb & _MANT)).astype(jnp.int32)
  ea, eb = _exponent(ma), _exponent(mb)
  sign_b = jnp.where(sb == 0, 1.0, -1.0)
  sign_a = jnp.where(sa == 0, 1.0, -1.0)
  slope_a = jnp.where(mb == 0, jnp.inf, _pow2(-eb - borrow)) * sign_b
  slope_b = -sign_a * _pow2(ea - 2 * eb - borrow)
  nan = jnp.isnan(out) | jnp.isnan(a) | jnp.isnan(b)
  slope_a, slope_b = jnp.where(nan, jnp.nan, slope_a), jnp.where(nan, jnp.nan, slope_b)
  return out, ta * slope_a + tb * slope_b


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _exp2_32(x: jax.Array, mantissa_bits: int) -> jax.Array:
  scaled = jnp.clip(x, -130.0, 128.5) * float(2 ** mantissa_bits)  # keeps the int32 sum below from overflowing
  steps = jnp.round(jnp.where(jnp.isnan(scaled), 0.0, scaled)).astype(jnp.int32) << (23 - mantissa_bits)
  bits = steps + np.int32(_ONE)
  bits = jnp.where(bits >= np.int32(_INF), np.int32(_INF), jnp.where(bits < np.int32(_MIN_NORMAL), 0, bits))
  return jnp.where(jnp.isnan(x), jnp.nan, _float(bits.astype(jnp.uint32)))


@_exp2_32.defjvp
def _exp2_32_jvp(mantissa_bits, primals, tangents):
  x, = primals
  t, = tangents
  out = _exp2_32(x, mantissa_bits)
  slope = _float(lax.bitcast_convert_type(out, jnp.uint32) & ~_MANT)  # 2^floor(x): the value, mantissa cleared
  return out, t * jnp.where(jnp.isnan(x), jnp.nan, slope)


@jax.custom_jvp
def _log2_32(x: jax.Array) -> jax.Array:
  sign, mag = _split(x)
  value = (mag.astype(jnp.int32) - np.int32(_ONE)).astype(jnp.float32) * 2.0 ** -23
  value = jnp.where(mag == 0, -jnp.inf, value)
  value = jnp.where(mag == _INF, jnp.inf, value)
  return jnp.where((mag > _INF) | ((sign != 0) & (mag != 0)), jnp.nan, value)


@_log2_32.defjvp
def _log2_32_jvp(primals, tangents):
  x, = primals
  t, = tangents
  sign, mag = _split(x)
  slope = jnp.where(mag == 0, jnp.inf, _pow2(-_exponent(mag)))
  slope = jnp.where((mag > _INF) | ((sign != 0) & (mag != 0)), jnp.nan, slope)
  return _log2_32(x), t * slope


def _multiply(dtype, a, b):
  return _multiply32(a, b)


def _divide(dtype, a, b):
  return _divide32(a, b)


def _square(dtype, x):
  return _multiply32(x, x)


def _reciprocal(dtype, x):
  return _divide32(jnp.ones_like(x), x)


def _exp2(dtype, x):
  return _exp2_32(x, _MANTISSA_BITS[dtype])


def _log2(dtype, x):
  return _log2_32(x)


def _log2e(dtype) -> jax.Array:
  """``log2(e)`` in ``dtype``, widened to float32."""
  return jnp.asarray(math.log2(math.e), dtype).astype(jnp.float32)


def _exp(dtype, x):
  return _exp2_32(_multiply32(x, _log2e(dtype)), _MANTISSA_BITS[dtype])


def _log(dtype, x):
  return _divide32(_log2_32(x).astype(dtype).astype(jnp.float32), _log2e(dtype))


# ---- public elementwise operations --------------------------------------------------------------------------------
def multiply(a: ArrayLike, b: ArrayLike) -> jax.Array:
  """Piecewise-affine multiplication: the product computed by adding the operands' bit patterns as integers.

  ``PAM(a, b) = (-1)^(sa xor sb) 2^(Ea + Eb) (1 + Ma + Mb)``, or ``2^(Ea + Eb + 1) (Ma + Mb)`` when the mantissas
  carry; ``PAM(a, b) / (a b)`` is in ``[8/9, 1]`` (relative error in ``[-1/9, 0]``), exact when either mantissa is
  zero. Subnormal inputs read as zero, results below the smallest normal flush to zero, results at or above
  ``2^128`` are inf; zeros, inf and NaN as in IEEE multiplication. The derivative is the slope of the affine piece,
  ``d/da = sign(b) 2^(Eb + [Ma + Mb >= 1])``.

  Args:
    a: float32 or bfloat16 array (or a Python number).
    b: float32 or bfloat16 array (or a Python number), broadcastable with ``a``.

  Returns:
    The elementwise PAM product in the operands' common dtype.

  Raises:
    TypeError: an operand of another dtype (integers, float16, float64).

  Example:
    >>> import jax.numpy as jnp
    >>> from lpnum import pam
    >>> [float(v) for v in pam.multiply(jnp.array([1.5, 3.0, 0.75]), jnp.array([1.5, 0.5, -4.0]))]
    [2.0, 1.5, -3.0]
  """
  args, dtype = _operands(a=a, b=b)
  return _apply(_multiply, dtype, *args)


def divide(a: ArrayLike, b: ArrayLike) -> jax.Array:
  """Piecewise-affine division: the quotient computed by subtracting the operands' bit patterns as integers.

  ``PAD(a, b) = (-1)^(sa xor sb) 2^(Ea - Eb) (1 + Ma - Mb)``, or ``2^(Ea - Eb - 1) (2 + Ma - Mb)`` when
  ``Ma < Mb``; ``PAD(a, b) / (a / b)`` is in ``[1, 9/8]``, exact when ``b`` is a power of two. Specials and ranges
  as :func:`multiply` (``x / 0 = +-inf``, ``0 / 0 = NaN``, ``x / inf = +-0``).

  Args:
    a: the dividend, float32 or bfloat16 (or a Python number).
    b: the divisor, float32 or bfloat16 (or a Python number), broadcastable with ``a``.

  Returns:
    The elementwise PAD quotient in the operands' common dtype.

  Raises:
    TypeError: an operand of another dtype.

  Example:
    >>> import jax.numpy as jnp
    >>> from lpnum import pam
    >>> [float(v) for v in pam.divide(jnp.array([3.0, 1.0, 1.0]), jnp.array([2.0, 1.5, 0.0]))]
    [1.5, 0.75, inf]
  """
  args, dtype = _operands(a=a, b=b)
  return _apply(_divide, dtype, *args)


def square(x: ArrayLike) -> jax.Array:
  """``PAM(x, x)``: ``2^(2E) (1 + 2M)`` for ``M < 1/2``, else ``2^(2E + 1) 2M``; exact on powers of two.

  Example:
    >>> import jax.numpy as jnp
    >>> from lpnum import pam
    >>> [float(v) for v in pam.square(jnp.array([3.0, -0.5]))]
    [8.0, 0.25]
  """
  args, dtype = _operands(x=x)
  return _apply(_square, dtype, *args)


def reciprocal(x: ArrayLike) -> jax.Array:
  """``PAD(1, x)``: ``2^-E`` for a power of two (exact), else ``2^(-E - 1) (2 - M)``.

  Example:
    >>> import jax.numpy as jnp
    >>> from lpnum import pam
    >>> [float(v) for v in pam.reciprocal(jnp.array([4.0, 3.0, -0.0]))]
    [0.25, 0.375, -inf]
  """
  args, dtype = _operands(x=x)
  return _apply(_reciprocal, dtype, *args)


def exp2(x: ArrayLike) -> jax.Array:
  """Piecewise-affine ``2^x = 2^floor(x) (1 + x - floor(x))``: ``x`` read as fixed point into the bit pattern.

  ``x`` is first rounded (nearest even) to multiples of ``2^-m`` (``m`` = 23 for float32, 7 for bfloat16), the
  grid the result's mantissa field holds; then the value is exact. Equal to ``2^x`` at integers, above it in
  between (by at most a factor ``2 / (e ln 2) = 1.0615``). Results below the smallest normal are 0, at or above
  ``2^128`` inf; ``exp2(-inf) = 0``, ``exp2(inf) = inf``. Derivative ``2^floor(x)``.

  Example:
    >>> import jax.numpy as jnp
    >>> from lpnum import pam
    >>> [float(v) for v in pam.exp2(jnp.array([3.0, 0.5, -1.25]))]
    [8.0, 1.5, 0.4375]
  """
  args, dtype = _operands(x=x)
  return _apply(_exp2, dtype, *args)


def log2(x: ArrayLike) -> jax.Array:
  """Piecewise-affine ``log2(x) = E + M`` for ``x = 2^E (1 + M)``: the bit pattern read as fixed point.

  Rounded once (nearest even) to the dtype; equal to ``log2`` on powers of two, below it in between (by at most
  0.0861). ``log2(+-0) = -inf`` (subnormals included), ``log2(inf) = inf``, negative ``x`` gives NaN.
  Derivative ``2^-E``.

  Example:
    >>> import jax.numpy as jnp
    >>> from lpnum import pam
    >>> [float(v) for v in pam.log2(jnp.array([8.0, 1.5, 0.375]))]
    [3.0, 0.5, -1.5]
  """
  args, dtype = _operands(x=x)
  return _apply(_log2, dtype, *args)


def exp(x: ArrayLike) -> jax.Array:
  """Piecewise-affine ``e^x``: ``exp2(multiply(x, log2(e)))``, as the paper builds it (``log2(e)`` in the
  dtype of ``x``).

  Example:
    >>> import jax.numpy as jnp
    >>> from lpnum import pam
    >>> float(pam.exp(jnp.float32(0.0))), round(float(pam.exp(jnp.float32(1.0))), 4)
    (1.0, 2.8854)
  """
  args, dtype = _operands(x=x)
  return _apply(_exp, dtype, *args)


def log(x: ArrayLike) -> jax.Array:
  """Piecewise-affine natural logarithm: ``divide(log2(x), log2(e))``, as the paper builds it.

  Example:
    >>> import jax.numpy as jnp
    >>> from lpnum import pam
    >>> float(pam.log(jnp.float32(1.0))), round(float(pam.log(jnp.float32(2.0))), 4)
    (0.0, 0.7787)
  """
  args, dtype = _operands(x=x)
  return _apply(_log, dtype, *args)


# ---- matmul -------------------------------------------------------------------------------------------------------
def _bmm_forward(x: jax.Array, y: jax.Array) -> jax.Array:
  """``(B, M, K) @ (B, K, N)`` with PAM products, summed in float32 over ``k = 0..K-1`` in order."""
  b, m, _ = x.shape
  n = y.shape[2]
  sx, mx = _split(x.astype(jnp.float32))
  sy, my = _split(y.astype(jnp.float32))
  xs = tuple(jnp.moveaxis(v, 2, 0)[:, :, :, None] for v in (sx, mx))  # (K, B, M, 1)
  ys = tuple(jnp.moveaxis(v, 1, 0)[:, :, None, :] for v in (sy, my))  # (K, B, 1, N)

  def step(acc, operands):
    (sa, ma), (sb, mb) = operands
    return acc + _float(_pam_bits(sa, ma, sb, mb)), None

  acc, _ = lax.scan(step, jnp.zeros((b, m, n), jnp.float32), (xs, ys))
  return acc


@jax.custom_vjp
def _bmm(x: jax.Array, y: jax.Array) -> jax.Array:
  return _bmm_forward(x, y)


def _bmm_fwd(x, y):
  return _bmm_forward(x, y), (x, y)


def _bmm_bwd(residuals, g):
  x, y = residuals
  dx = _bmm_forward(g, jnp.swapaxes(y, 1, 2))
  dy = _bmm_forward(jnp.swapaxes(x, 1, 2), g)
  return dx.astype(x.dtype), dy.astype(y.dtype)


_bmm.defvjp(_bmm_fwd, _bmm_bwd)


def _check_dimension_numbers(dimension_numbers) -> tuple[tuple[tuple[int, ...], ...], ...]:
  try:
    (lc, rc), (lb, rb) = dimension_numbers
    return (tuple(map(int, lc)), tuple(map(int, rc))), (tuple(map(int, lb)), tuple(map(int, rb)))
  except (TypeError, ValueError):
    raise TypeError(f"dimension_numbers={short(dimension_numbers)} must be ((lhs_contracting, rhs_contracting), "
                    "(lhs_batch, rhs_batch)), each a sequence of axes") from None


def dot_general(lhs: ArrayLike, rhs: ArrayLike, dimension_numbers, precision=None, preferred_element_type=None,
                out_sharding=None) -> jax.Array:
  """``jax.lax.dot_general`` with every product piecewise-affine (:func:`multiply`), accumulated in float32.

  The contraction is laid out as ``(B, M, K) @ (B, K, N)`` (batch axes, then the free axes, then the contracted
  ones, each group flattened in order); each output is ``sum_k PAM(lhs[b, m, k], rhs[b, k, n])``, added in
  float32 sequentially for ``k = 0..K-1`` (float32 additions, nearest even), and the result has
  ``lax.dot_general``'s shape. The gradient is the paper's training rule, not the forward's derivative: both
  backward matmuls are PAM matmuls (``d lhs = g @ rhs^T``, ``d rhs = lhs^T @ g``, accumulated the same way).
  The signature is ``lax.dot_general``'s, for Flax's ``dot_general=`` and ``einsum_dot_general=`` hooks.

  Args:
    lhs: float32 or bfloat16 array.
    rhs: float32 or bfloat16 array.
    dimension_numbers: ``((lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch))``.
    precision: accepted for the hook's signature and ignored (the products are PAM's, the sums float32).
    preferred_element_type: the output dtype (a float dtype); default the operands' common dtype.
    out_sharding: must be None (nnx layers pass it): PAM matmuls leave sharding to the operands.

  Returns:
    The PAM contraction, of ``lax.dot_general``'s shape.

  Raises:
    TypeError: operands of other dtypes, malformed ``dimension_numbers``, shapes that do not contract, or a
      non-float ``preferred_element_type``.
    ValueError: an ``out_sharding``.

  Example:
    >>> import jax.numpy as jnp
    >>> from lpnum import pam
    >>> a = jnp.array([[1.5, 2.0], [3.0, 0.5]])
    >>> pam.dot_general(a, a, (((1,), (0,)), ((), ())))  # 1.5 * 1.5 -> 2.0 under PAM
    Array([[8.  , 4.  ],
           [5.5 , 6.25]], dtype=float32)
  """
  if out_sharding is not None:
    raise ValueError(f"out_sharding={short(out_sharding)}: lpnum.pam.dot_general takes no output sharding")
  (lhs, rhs), dtype = _operands(lhs=lhs, rhs=rhs)
  dimension_numbers = _check_dimension_numbers(dimension_numbers)
  out_dtype = dtype if preferred_element_type is None else jnp.dtype(preferred_element_type)
  if not jnp.issubdtype(out_dtype, jnp.floating):
    raise TypeError(f"preferred_element_type={out_dtype.name} must be a float dtype")
  jax.eval_shape(functools.partial(lax.dot_general, dimension_numbers=dimension_numbers),
                 jax.ShapeDtypeStruct(lhs.shape, dtype), jax.ShapeDtypeStruct(rhs.shape, dtype))
  return _dot_general(lhs, rhs, dimension_numbers, dtype, out_dtype)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _dot_general(lhs, rhs, dimension_numbers, dtype, out_dtype) -> jax.Array:
  """The PAM contraction as ``(B, M, K) @ (B, K, N)`` (see :func:`dot_general`)."""
  lhs, rhs = lhs.astype(dtype), rhs.astype(dtype)
  (lc, rc), (lb, rb) = dimension_numbers
  lc, lb = [a % lhs.ndim for a in lc], [a % lhs.ndim for a in lb]
  rc, rb = [a % rhs.ndim for a in rc], [a % rhs.ndim for a in rb]
  lf = [a for a in range(lhs.ndim) if a not in lc and a not in lb]
  rf = [a for a in range(rhs.ndim) if a not in rc and a not in rb]
  size = lambda x, axes: math.prod(x.shape[a] for a in axes)
  x = jnp.transpose(lhs, lb + lf + lc).reshape(size(lhs, lb), size(lhs, lf), size(lhs, lc))
  y = jnp.transpose(rhs, rb + rc + rf).reshape(size(rhs, rb), size(rhs, rc), size(rhs, rf))
  shape = [lhs.shape[a] for a in lb + lf] + [rhs.shape[a] for a in rf]
  return _bmm(x, y).reshape(shape).astype(out_dtype)


def matmul(a: ArrayLike, b: ArrayLike) -> jax.Array:
  """The PAM matrix product: ``a (..., K) @ b (K, N)`` (or ``b (K,)``), or a batched product of ``a (B..., M, K)``
  and ``b (B..., K, N)`` with the same batch axes; see :func:`dot_general` for the arithmetic and the gradient.

  Raises:
    TypeError: operands of other dtypes.
    ValueError: shapes that are none of these.

  Example:
    >>> import jax.numpy as jnp
    >>> from lpnum import pam
    >>> pam.matmul(jnp.array([[1.5, 3.0]]), jnp.array([[1.5], [0.5]]))
    Array([[3.5]], dtype=float32)
  """
  _operands(a=a, b=b)
  sa, sb = np.shape(a), np.shape(b)
  if len(sa) >= 1 and 1 <= len(sb) <= 2 and sa[-1] == sb[0]:
    return dot_general(a, b, (((len(sa) - 1,), (0,)), ((), ())))
  if len(sa) == len(sb) >= 3 and sa[:-2] == sb[:-2] and sa[-1] == sb[-2]:
    batch = tuple(range(len(sa) - 2))
    return dot_general(a, b, (((len(sa) - 1,), (len(sb) - 2,)), (batch, batch)))
  raise ValueError(f"a of shape {sa} and b of shape {sb}: expected a (..., K) @ b (K, N) or (K,), or "
                   "a (B..., M, K) @ b (B..., K, N) with the same batch axes")
