"""How lpnum gets exact and fast block-scaled code out of XLA on the CPU: every scheduling workaround lives here.

XLA on the CPU flushes subnormal operands of float arithmetic and comparisons, drops NaN in its float max
reduction, rewrites divisions by a broadcast into multiplications by the reciprocal, fuses small per-block work
into elementwise loops (repeating it per element) and runs elementwise passes fastest over rows of 32 to 64
elements. Each function states which of these it works around; the results never depend on the workaround (the
other backends compute the same values). ``python -m benchmarks.scaled`` measures the effect (its ``xla_cpu``
table).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["div", "per_block", "cond", "row_view", "ROW", "MAX_ROW", "abs_max", "max_min", "MAX_UNROLLED"]


def div(x: jax.Array, d: jax.Array) -> jax.Array:
  """``x / d`` as IEEE float32 division (correctly rounded), never as a multiplication by ``1 / d``.

  XLA rewrites a division by a broadcast into a multiplication by the reciprocal; a per-element select on the
  divisor (a no-op: NaN / d is NaN anyway) keeps the division.
  """
  d = jnp.broadcast_to(d, jnp.broadcast_shapes(x.shape, d.shape))
  return x / jnp.where(jnp.isnan(x), jnp.float32(1), d)


def per_block(compute, size: int, first: jax.Array, *rest):
  """``compute(first, *rest)`` (per-block work such as the scales), kept out of the elementwise loop that
  consumes it.

  XLA would fuse the (small) per-block computation into the elementwise pass and repeat it for every element; the
  CPU compiler drops optimization barriers, so the work runs in one branch of a conditional. The other branch
  gives zeros and is never taken: the predicate asks whether a sign bit (0 or 1) of ``first`` exceeds 1, which XLA
  does not fold. (Two branches that both compute would also keep the work apart, but compile it twice: a
  weight-only int8 layer then compiled to about 40% more code, and took 30% longer to compile.)

  The arrays cross the conditional without their size-1 axes: XLA on the CPU may give such an operand a layout
  that orders the size-1 axes differently from the branch's, and then copies it (the whole tensor) inside.
  """
  if size == 0:
    return compute(first, *rest)
  probe = jax.tree_util.tree_leaves(first)[0].reshape(-1)[0]
  bits = (probe.astype(jnp.int32) if not jnp.issubdtype(probe.dtype, jnp.floating)
          else jax.lax.bitcast_convert_type(probe.astype(jnp.float32), jnp.int32))
  never = jax.lax.shift_right_logical(bits, np.int32(31)) > 1

  def zeros(*args):
    return jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(compute, *args))

  return cond(never, zeros, compute, first, *rest)


def cond(pred: jax.Array, true_fn, false_fn, *args):
  """``jax.lax.cond(pred, true_fn, false_fn, *args)``, the arrays crossing it without their size-1 axes (see
  ``per_block``)."""
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


#: XLA's CPU loops ran the fused element pass fastest over rows of 32 to 64 elements when this was written; blocks of
#: 16, or of 128 and more, ran slower as rows. ``python -m benchmarks.scaled`` (its ``xla_cpu`` table) measures the
#: premise on the installed jax.
ROW = 32


MAX_ROW = 64


def row_view(xb: jax.Array, s):
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
  if b > MAX_ROW and b % MAX_ROW == 0:
    split = [a.reshape(a.shape[:-1] + (1, 1)) if a.ndim else a for a in leaves]
    return (xb.reshape(xb.shape[:-1] + (b // MAX_ROW, MAX_ROW)), jax.tree_util.tree_unflatten(treedef, split),
            None, lambda sr, _: sr)
  g = ROW // b
  if b not in (8, 16) or n % g or any(a.ndim and a.shape[-2] not in (1, n) for a in leaves):
    return None
  grouped = [a.reshape(a.shape[:-2] + (n // g, g)) if a.ndim and a.shape[-2] == n else a for a in leaves]

  def spread(sr, width):
    position = jax.lax.broadcasted_iota(jnp.int32, (1,) * (xb.ndim - 1) + (ROW,), xb.ndim - 1)

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
  return xb.reshape(xb.shape[:-2] + (n // g, ROW)), jax.tree_util.tree_unflatten(treedef, grouped), width, spread


#: Groups along a non-minor axis take their abs-max as elementwise maxima over at most this many slices at a time.
MAX_UNROLLED = 32


def _chunks(n: int) -> list[int]:
  """Slice counts whose product is ``n``, each at most ``MAX_UNROLLED`` (the first at least 16, so that only
  the first pass reads the whole input); empty if there are none."""
  if n <= MAX_UNROLLED:
    return [n]
  k = max(d for d in range(1, MAX_UNROLLED + 1) if n % d == 0)
  rest = _chunks(n // k) if k >= 16 else []
  return [k] + rest if rest else []


def _abs_max_over_slices(v: jax.Array, axis: int) -> jax.Array:
  """``max |v|`` over ``axis`` (removed) as elementwise maxima of slices, NaN wherever a slice holds NaN; exact
  where the maximum is at least 2^-126. (Each slice is read by its own operations: XLA would not fuse an
  elementwise producer shared by all slices into their pass.)"""
  n = v.shape[axis]
  k = _chunks(n)[0]
  if k < n:  # the innermost k slices first, then the n / k partial maxima
    v = v.reshape(v.shape[:axis] + (n // k, k) + v.shape[axis + 1:])
    return _abs_max_over_slices(_abs_max_over_slices(v, axis + 1), axis)
  parts = [jax.lax.index_in_dim(v, i, axis, keepdims=False) for i in range(n)]
  out, nan = jnp.abs(parts[0]), jnp.isnan(parts[0])
  for part in parts[1:]:
    out, nan = jnp.maximum(out, jnp.abs(part)), nan | jnp.isnan(part)
  return jnp.where(nan, np.float32(np.nan), out)


def abs_max(x: jax.Array, axis, keepdims: bool = True) -> jax.Array:
  """``max |x|`` over ``axis`` of float32 ``x``, exact for subnormals, NaN if any element is NaN.

  XLA on the CPU treats subnormal operands of float comparisons as zero and its float max reduction drops NaN, so
  one pass reduces ``(|x|, isnan(x))`` together (a variadic reduction, which XLA also runs faster than a plain
  max), exact wherever the maximum is at least 2^-126. Only if some group's is not (all-zero or all-subnormal
  groups) does a conditional take the maximum again over the bit patterns, which order like the magnitudes.
  Along non-minor axes (e.g. one scale per column) the maximum and the NaN test are computed otherwise (see
  below).
  """
  axes = tuple(range(x.ndim)) if axis is None else ((axis,) if isinstance(axis, int) else tuple(axis))
  axes = tuple(a % x.ndim for a in axes)
  out_shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape)) if keepdims else tuple(
      d for i, d in enumerate(x.shape) if i not in axes)
  # Size-1 axes slow XLA's reductions down (and may make it copy x); a reduction to one value runs faster flat.
  kept = [i for i, d in enumerate(x.shape) if d != 1]
  axes = tuple(sorted(kept.index(a) for a in axes if a in kept))
  x = x.reshape([x.shape[i] for i in kept])
  if len(axes) == x.ndim > 1:
    x, axes = x.reshape(-1), (0,)
  elif len(axes) > 1 and axes == tuple(range(axes[0], axes[-1] + 1)):  # adjacent axes reduce as one
    x = x.reshape(x.shape[:axes[0]] + (-1,) + x.shape[axes[-1] + 1:])
    axes = (axes[0],)
  unsure = np.False_
  if x.ndim == 0 or x.ndim - 1 in axes:
    amax, nan = _reduce_max_flag(jnp.abs(x), jnp.isnan(x), np.float32(0), axes)
  elif len(axes) == 1 and _chunks(x.shape[axes[0]]):
    # Along a non-minor axis XLA's reductions were slow when this was written (its variadic one, and the plain
    # max, which XLA hands to YNNPACK), and an elementwise max over slices is one pass that also marks NaN.
    # ``python -m benchmarks.scaled`` (its ``xla_cpu`` table) measures the premise on the installed jax.
    amax = _abs_max_over_slices(x, axes[0])
    nan = jnp.isnan(amax)
  else:
    # Other non-minor groups (a length without small factors, or axes apart): a plain max, and for the NaN test
    # (a reduction of booleans is slow) a sum of ``x * 0``, NaN exactly where some element is NaN or infinite.
    # YNNPACK's max may drop a NaN, and an inf with it, so a group whose maximum is infinite is left unsure: it
    # takes the exact path below.
    amax, inexact = jnp.max(jnp.abs(x), axis=axes), jnp.isnan(jnp.sum(x * np.float32(0), axis=axes))
    nan, unsure = inexact & (amax != np.float32(np.inf)), jnp.any(inexact & (amax == np.float32(np.inf)))
  amax = jnp.where(nan, np.float32(np.nan), amax)

  def exact(_):
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32) & np.uint32(0x7FFFFFFF)
    m, _ = _reduce_max_flag(bits, jnp.zeros(x.shape, bool), np.uint32(0), axes)
    return jax.lax.bitcast_convert_type(m, jnp.float32)

  amax = jax.lax.cond(jnp.any(amax < np.float32(2.0 ** -126)) | unsure, exact, lambda a: a, amax)
  return amax.reshape(out_shape)


def _reduce_max_flag(v, flag, init, axes):
  return jax.lax.reduce((v, flag), (init, np.False_), lambda p, q: (jnp.maximum(p[0], q[0]), p[1] | q[1]), axes)


def _ordered(x: jax.Array) -> jax.Array:
  """int32 keys ordered as the float32 values (NaN aside; -0 just below +0)."""
  i = jax.lax.bitcast_convert_type(x, jnp.int32)
  return jnp.where(i < 0, i ^ np.int32(0x7FFFFFFF), i)


def max_min(x: jax.Array, axis) -> tuple[jax.Array, jax.Array]:
  """``(max x, min x)`` over ``axis`` (keepdims) of float32 ``x``, compared as bit patterns."""
  k = _ordered(x)
  back = lambda v: jax.lax.bitcast_convert_type(jnp.where(v < 0, v ^ np.int32(0x7FFFFFFF), v), jnp.float32)
  return back(jnp.max(k, axis=axis, keepdims=True)), back(jnp.min(k, axis=axis, keepdims=True))
