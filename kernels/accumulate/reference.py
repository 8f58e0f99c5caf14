"""The reference semantics of the emulated accumulators: slow and obvious, one addition and one rounding at a time.

Products are formed one K index at a time (the pairwise tree and the aligned chunks materialize theirs); the
order of the additions is exactly the documented one, with no padding, tiling or stack tricks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lpnum.kernels.accumulate import ops
from lpnum.kernels.accumulate.tiled import Plan


def reference(plan: Plan, a: jax.Array, b: jax.Array, words: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """``(out, overflowed)`` of ``a @ b`` for a: (R, K), b: (K, N) in the compute dtypes of ``plan``."""
  if plan.kind == "int":
    return (_int_pairwise if plan.pairwise else _int_sequential)(plan, a, b)
  if plan.kind == "float":
    return _float(plan, a, b, words)
  if plan.kind == "aligned":
    return _aligned(plan, a, b)
  return _exact(plan, a, b)


def _column(x: jax.Array, k) -> jax.Array:
  return jax.lax.dynamic_index_in_dim(x, k, 1, keepdims=True)


def _row(x: jax.Array, k) -> jax.Array:
  return jax.lax.dynamic_index_in_dim(x, k, 0, keepdims=True)


def _chunks(plan: Plan) -> list[tuple[int, int]]:
  c = plan.chunk or plan.k
  return [(lo, min(lo + c, plan.k)) for lo in range(0, plan.k, c)]


def _int_sequential(plan: Plan, a, b):
  shape = (a.shape[0], b.shape[1])

  def add(k, carry):
    acc, flags = carry
    out, over = ops.int_add(acc, _column(a, k) * _row(b, k), plan.bits, plan.saturate)
    return out, flags | over

  outer, flags = jnp.zeros(shape, jnp.int32), jnp.zeros(shape, bool)
  for lo, hi in _chunks(plan):
    inner, flags = jax.lax.fori_loop(lo, hi, add, (jnp.zeros(shape, jnp.int32), flags))
    if plan.chunk is None:
      outer = inner
    else:
      outer, over = ops.int_add(outer, inner, plan.bits, plan.saturate)
      flags = flags | over
  return outer, flags


def _int_pairwise(plan: Plan, a, b):
  products = a[:, :, None] * b[None, :, :]  # (R, K, N)
  nodes, over = ops.int_add(jnp.zeros_like(products), products, plan.bits, plan.saturate)
  flags = jnp.any(over, axis=1)
  while nodes.shape[1] > 1:
    pairs = nodes.shape[1] // 2
    summed, over = ops.int_add(nodes[:, 0:2 * pairs:2], nodes[:, 1:2 * pairs:2], plan.bits, plan.saturate)
    flags = flags | jnp.any(over, axis=1)
    nodes = jnp.concatenate([summed, nodes[:, 2 * pairs:]], axis=1)  # an odd last node moves up as it is
  return nodes[:, 0], flags


def _float(plan: Plan, a, b, words):
  shape = (a.shape[0], b.shape[1])
  idx = ops.output_index(jax.lax.broadcasted_iota(jnp.int32, shape, 0), jax.lax.broadcasted_iota(jnp.int32, shape, 1),
                         plan.n)

  def add(k, carry):
    acc, flags = carry
    p = _column(a, k) * _row(b, k)
    rand = ops.random_bits(idx, (words[0], words[1]), k) if plan.stochastic else None
    out = ops.float_add(acc, p, plan.fmt, plan.mode, rand)
    return out, flags | ops.float_overflowed(acc, p, out)

  outer, flags = jnp.zeros(shape, jnp.float32), jnp.zeros(shape, bool)
  for lo, hi in _chunks(plan):
    inner, flags = jax.lax.fori_loop(lo, hi, add, (jnp.zeros(shape, jnp.float32), flags))
    if plan.chunk is None:
      outer = inner
    else:
      new = outer + inner
      flags = flags | ops.float_overflowed(outer, inner, new)
      outer = new
  return outer, flags


def _aligned(plan: Plan, a, b):
  shape = (a.shape[0], b.shape[1])
  outer, flags = jnp.zeros(shape, jnp.float32), jnp.zeros(shape, bool)
  for lo, hi in _chunks(plan):
    p = a[:, lo:hi, None] * b[None, lo:hi, :]  # (R, chunk, N)
    emax = jnp.max(ops.product_exponent(p), axis=1, initial=ops.NO_EXPONENT)
    units = jnp.sum(ops.aligned_units(p, emax[:, None, :], plan.product_bits), axis=1, dtype=jnp.int32)
    bad = ~ops.finite(p)
    special, any_special = jnp.sum(jnp.where(bad, p, np.float32(0)), axis=1), jnp.any(bad, axis=1)
    value = jnp.where(any_special, special, ops.aligned_value(units, emax, plan.product_bits))
    new = outer + value
    flags = flags | (ops.finite(outer) & ~any_special & ~ops.finite(new))
    outer = new
  return outer, flags


def _exact(plan: Plan, a, b):
  ep = plan.exact
  shape = (a.shape[0], b.shape[1])

  def add(k, carry):
    limbs, special, any_special = carry
    col, row = _column(a, k), _row(b, k)
    limbs = ep.carry(ep.deposit(limbs, col, row))
    col, row = col.astype(jnp.float32), row.astype(jnp.float32)
    bad = ~ops.finite(col) | ~ops.finite(row)
    return limbs, special + jnp.where(bad, col * row, np.float32(0)), any_special | bad

  init = ([jnp.zeros(shape, jnp.int32)] * ep.limbs, jnp.zeros(shape, jnp.float32), jnp.zeros(shape, bool))
  limbs, special, any_special = jax.lax.fori_loop(0, plan.k, add, init)
  out = jnp.where(any_special, special, ep.round(limbs))
  return out, ~any_special & ~ops.finite(out)
