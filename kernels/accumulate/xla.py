"""The XLA face of the emulated accumulators: the tiled algorithms run once over the whole output with ``g = 1``
(one fused rank-1 update per product), a pairwise tree, or an int32 ``dot`` for wrap-around without statistics."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lpnum.kernels.accumulate import ops
from lpnum.kernels.accumulate.tiled import Layout, Plan, compute_dtype, run_tile

__all__ = ["xla"]


def xla(plan: Plan, a: jax.Array, b: jax.Array, words: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """The tiled algorithm on the whole (R, N) output: a loop over K with rank-1 updates, one fused step each."""
  (r, k), n = a.shape, b.shape[1]
  if plan.kind == "int" and not plan.saturate and not plan.stats and _dot_is_exact(a.dtype, b.dtype, k):
    # Wrap-around is arithmetic modulo 2^bits: any order gives the wrapped exact sum, which fits int32 here.
    s = jnp.dot(a.astype(jnp.int32), b.astype(jnp.int32), preferred_element_type=jnp.int32)
    return ops.wrap(s, plan.bits), jnp.zeros((r, n), bool)
  if plan.pairwise:
    return _xla_pairwise(plan, a.T.astype(jnp.int32), b.astype(jnp.int32))
  lay = Layout.of(plan, 1)
  at = lay.apply(a, 1).T.astype(compute_dtype(plan, a.dtype))
  bt = lay.apply(b, 0).astype(compute_dtype(plan, b.dtype))

  def fetch(pos):
    ra = jax.lax.dynamic_slice_in_dim(at, pos, lay.g, 0)
    rb = jax.lax.dynamic_slice_in_dim(bt, pos, lay.g, 0)
    return [(ra[t][:, None], rb[t][None, :]) for t in range(lay.g)]

  idx = ops.output_index(jax.lax.broadcasted_iota(jnp.int32, (r, n), 0),
                         jax.lax.broadcasted_iota(jnp.int32, (r, n), 1), plan.n)
  return run_tile(plan, lay, fetch, None if words is None else (words[0], words[1]), idx, (r, n))


def _xla_pairwise(plan: Plan, at: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The pairwise tree for XLA: each product is pushed onto a stack of subtrees (a binary counter over K) and
  every merge is its own loop iteration. (XLA's loop fusion recomputes a value once per use, so a tree of
  saturating additions inside one fusion would cost exponentially many operations in its depth.)"""
  k, shape = at.shape[0], (at.shape[1], b.shape[1])
  levels = max(k.bit_length(), 1)

  def add(acc, x, flags):
    out, over = ops.int_add(acc, x, plan.bits, plan.saturate)
    return out, (flags | over) if plan.stats else flags

  def push(i, carry):
    stack, flags = carry
    x, flags = add(jnp.zeros(shape, jnp.int32), at[i][:, None] * b[i][None, :], flags)
    merges = jax.lax.population_count(i ^ (i + 1)) - 1  # trailing ones of i: the subtrees x completes
    x, flags = jax.lax.fori_loop(0, merges, lambda j, c: add(stack[j], *c), (x, flags))
    return stack.at[merges].set(x), flags

  stack, flags = jax.lax.fori_loop(0, k, push, (jnp.zeros((levels, *shape), jnp.int32), jnp.zeros(shape, bool)))
  out = None
  for j in range(levels):  # fold the remaining subtrees, smallest (rightmost) first
    if (k >> j) & 1:
      if out is None:
        out = stack[j]
      else:
        out, flags = add(stack[j], out, flags)
  return out, flags


def _dot_is_exact(a_dtype, b_dtype, k: int) -> bool:
  a, b = jnp.iinfo(a_dtype), jnp.iinfo(b_dtype)
  largest = max(abs(int(x) * int(y)) for x in (a.min, a.max) for y in (b.min, b.max))
  return k * largest < 2**31
