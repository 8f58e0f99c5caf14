"""The tiled accumulation algorithm, run on (bm, bn) tiles by the Pallas kernels (:mod:`.pallas`) and on the whole
output by XLA (:mod:`.xla`).

One algorithm per accumulator kind, written against ``fetch(pos)``: the ``g`` pairs ``(column of a, row of b)``
at padded positions ``pos .. pos + g - 1`` of the K axis, as (rows, 1) and (1, cols) arrays of the compute dtype.
K is laid out as chunks, each padded to a multiple of ``g`` with zeros (see :class:`Layout`); padding never
changes a result (integer and aligned sums add 0, float products at padded positions are replaced by -0, which
leaves every accumulator value unchanged, the exact accumulator deposits nothing).

Kernels (grid over output tiles, all of K resident, K looped inside):

* TPU (Mosaic): ``a`` is passed transposed, (K, M), so that ``g`` consecutive K rows are an aligned sublane slice
  (``g`` = 8, 16 or 32 for 32-, 16- and 8-bit inputs); the (g, bm) slice is widened to 32 bits and transposed,
  and its columns are static lane slices. bm and bn are multiples of 128.
* GPU (Triton): each step loads a (bm, 1) column of ``a`` and a (1, bn) row of ``b``; bm and bn are powers of 2
  and 8-bit inputs are widened to 32 bits on load.

XLA runs the same algorithms with ``g = 1``, one fused rank-1 update of the whole output per product, except for
the pairwise tree (see :func:`_xla_pairwise`) and for wrap-around without statistics (an int32 ``dot``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from lpnum.rounding import Rounding
from lpnum.formats import FloatFormat

from lpnum.kernels.accumulate import ops

#: Default (bm, bn) output tiles per kernel.
TPU_BLOCK = (128, 128)
GPU_BLOCK = (32, 32)


@dataclasses.dataclass(frozen=True)
class Plan:
  """Everything static about one emulated matmul (built and validated by ``lpnum.kernels.accumulate``)."""

  kind: str  # "int", "float", "aligned" or "exact"
  k: int
  n: int  # columns of the output: the random bits are keyed on row * n + col
  chunk: int | None = None  # None: one chunk of all K
  pairwise: bool = False
  stats: bool = False
  bits: int = 0
  saturate: bool = False
  fmt: FloatFormat | None = None
  mode: Rounding | None = None
  product_bits: int = 0
  exact: ops.ExactPlan | None = None

  @property
  def stochastic(self) -> bool:
    return self.mode is Rounding.STOCHASTIC


@dataclasses.dataclass(frozen=True)
class Layout:
  """The K axis as ``nchunks`` chunks of ``length`` products (the last one ``last``), each padded to ``padded``
  positions, a multiple of the fetch group ``g``."""

  g: int
  nchunks: int
  length: int
  last: int
  padded: int

  @classmethod
  def of(cls, plan: Plan, g: int) -> Layout:
    k = plan.k
    if plan.kind == "exact":  # one chunk, padded to whole carry intervals
      unit = max(g, plan.exact.carry_every)
      return cls(g, 1, k, k, -(-k // unit) * unit)
    if plan.chunk is None:
      return cls(g, 1, k, k, -(-k // g) * g)
    c = plan.chunk
    nchunks = -(-k // c)
    return cls(g, nchunks, c, k - (nchunks - 1) * c, -(-c // g) * g)

  @property
  def size(self) -> int:
    return self.nchunks * self.padded

  @property
  def has_padding(self) -> bool:
    return self.padded != self.length or self.last != self.length

  def apply(self, x: jax.Array, axis: int) -> jax.Array:
    """``x`` with its K axis (``axis``) laid out: chunks padded with zeros to ``padded`` positions."""
    x = jnp.moveaxis(x, axis, -1)
    lead = x.shape[:-1]
    x = jnp.pad(x, [(0, 0)] * len(lead) + [(0, self.nchunks * self.length - x.shape[-1])])
    x = x.reshape(*lead, self.nchunks, self.length)
    x = jnp.pad(x, [(0, 0)] * (len(lead) + 1) + [(0, self.padded - self.length)])
    return jnp.moveaxis(x.reshape(*lead, self.size), -1, axis)


# ---- the algorithms ----------------------------------------------------------------------------------------
def run_tile(plan: Plan, lay: Layout, fetch, words, idx, shape) -> tuple[jax.Array, jax.Array]:
  """The accumulated tile (int32 or float32) and where it overflowed (bool), for ``shape`` = (rows, cols).

  ``words`` are the two uint32 key words and ``idx`` the uint32 output indices of the tile (both used by
  stochastic rounding only).
  """
  if plan.kind == "int":
    return (_int_pairwise if plan.pairwise else _int_sequential)(plan, lay, fetch, shape)
  if plan.kind == "float":
    return _float_sequential(plan, lay, fetch, words, idx, shape)
  if plan.kind == "aligned":
    return _aligned(plan, lay, fetch, shape)
  return _exact(plan, lay, fetch, shape)


def _chunk_loop(lay: Layout, body, init):
  return jax.lax.fori_loop(0, lay.nchunks, body, init)


def _group_loop(lay: Layout, body, init):
  return jax.lax.fori_loop(0, lay.padded // lay.g, body, init)


def _int_sequential(plan: Plan, lay: Layout, fetch, shape):
  def add(acc, x, flags):
    out, over = ops.int_add(acc, x, plan.bits, plan.saturate)
    return out, (flags | over) if plan.stats else flags

  def chunk(q, carry):
    outer, flags = carry

    def group(i, carry):
      inner, flags = carry
      for col, row in fetch(q * lay.padded + i * lay.g):
        inner, flags = add(inner, col * row, flags)
      return inner, flags

    inner, flags = _group_loop(lay, group, (jnp.zeros(shape, jnp.int32), flags))
    return (inner, flags) if plan.chunk is None else add(outer, inner, flags)

  return _chunk_loop(lay, chunk, (jnp.zeros(shape, jnp.int32), jnp.zeros(shape, bool)))


def _int_pairwise(plan: Plan, lay: Layout, fetch, shape):
  """The pairwise tree of :func:`lpnum.kernels.accumulate.reference_matmul`, evaluated as a binary counter:
  each group of ``g`` (a power of 2) leaves is reduced by a perfect tree, then pushed onto a stack of subtrees
  (slot j holds a subtree of ``g * 2^j`` leaves); zero leaves from the padding change no sum."""
  ngroups = lay.size // lay.g
  levels = max(ngroups.bit_length(), 1)

  def add(acc, x, flags):
    out, over = ops.int_add(acc, x, plan.bits, plan.saturate)
    return out, (flags | over) if plan.stats else flags

  def group(i, carry):
    slots, flags = carry
    nodes = []
    for col, row in fetch(i * lay.g):
      leaf, flags = add(jnp.zeros(shape, jnp.int32), col * row, flags)
      nodes.append(leaf)
    while len(nodes) > 1:
      pairs = []
      for left, right in zip(nodes[::2], nodes[1::2]):
        node, flags = add(left, right, flags)
        pairs.append(node)
      nodes = pairs
    x, active, slots = nodes[0], None, list(slots)
    for j in range(levels):
      # Slot j holds the subtree to the left of x: merge and carry on up, or store x there and stop (adding 0
      # instead of merging leaves x as it is).
      full = ((i >> j) & 1) == 1
      merge = full if active is None else (active & full)
      store = ~full if active is None else (active & ~full)
      slots[j], (x, flags) = jnp.where(store, x, slots[j]), add(jnp.where(merge, slots[j], np.int32(0)), x, flags)
      active = merge
    return slots, flags

  init = ([jnp.zeros(shape, jnp.int32)] * levels, jnp.zeros(shape, bool))
  slots, flags = jax.lax.fori_loop(0, ngroups, group, init)
  out = None
  for j in range(levels):  # fold the remaining subtrees, smallest (rightmost) first
    if (ngroups >> j) & 1:
      if out is None:
        out = slots[j]
      else:
        out, flags = add(slots[j], out, flags)
  return out, flags


def _float_sequential(plan: Plan, lay: Layout, fetch, words, idx, shape):
  """Sequential float accumulation. The loop carries the last sum unrounded (:func:`ops.pending_sum`) and rounds
  it to the format at the start of the next step (then adds that step's product): the same additions, but XLA
  then fuses each step without recomputing the sum for every use the rounding makes of it (about 1.3x faster)."""

  def rounded(pending, k):  # the sum of addition k (at padded position k - 1 or beyond: exact, any bits will do)
    return ops.round_to(pending, plan.fmt, plan.mode, ops.random_bits(idx, words, k) if plan.stochastic else None)

  def chunk(q, carry):
    outer, flags = carry
    length = jnp.where(q == lay.nchunks - 1, np.int32(lay.last), np.int32(lay.length))

    def group(i, carry):
      pending, finite_operands, flags = carry
      for t, (col, row) in enumerate(fetch(q * lay.padded + i * lay.g)):
        k = q * lay.length + i * lay.g + t  # the product's index in K
        acc = rounded(pending, k - 1)
        p = col * row
        if lay.has_padding:
          p = jnp.where(i * lay.g + t < length, p, np.float32(-0.0))
        if plan.stats:  # did the previous addition overflow?
          flags = flags | (finite_operands & ~ops.finite(acc))
          finite_operands = ops.finite(acc) & ops.finite(p)
        pending = ops.pending_sum(acc, p, plan.fmt)
      return pending, finite_operands, flags

    init = (ops.zero_sum(shape, plan.fmt), jnp.zeros(shape, bool), flags)
    pending, finite_operands, flags = _group_loop(lay, group, init)
    inner = rounded(pending, q * lay.length + lay.padded - 1)
    if plan.stats:
      flags = flags | (finite_operands & ~ops.finite(inner))
    if plan.chunk is None:
      return inner, flags
    new = outer + inner
    if plan.stats:
      flags = flags | ops.float_overflowed(outer, inner, new)
    return new, flags

  return _chunk_loop(lay, chunk, (jnp.zeros(shape, jnp.float32), jnp.zeros(shape, bool)))


def _aligned(plan: Plan, lay: Layout, fetch, shape):
  def chunk(q, carry):
    outer, flags = carry

    def largest(i, emax):
      for col, row in fetch(q * lay.padded + i * lay.g):
        emax = jnp.maximum(emax, ops.product_exponent(col * row))
      return emax

    emax = _group_loop(lay, largest, jnp.full(shape, ops.NO_EXPONENT, jnp.int32))

    def total(i, carry):
      units, special, any_special = carry
      for col, row in fetch(q * lay.padded + i * lay.g):
        p = col * row
        units = units + ops.aligned_units(p, emax, plan.product_bits)
        bad = ~ops.finite(p)
        special = special + jnp.where(bad, p, np.float32(0))
        any_special = any_special | bad
      return units, special, any_special

    init = (jnp.zeros(shape, jnp.int32), jnp.zeros(shape, jnp.float32), jnp.zeros(shape, bool))
    units, special, any_special = _group_loop(lay, total, init)
    value = jnp.where(any_special, special, ops.aligned_value(units, emax, plan.product_bits))
    new = outer + value
    if plan.stats:
      flags = flags | (ops.finite(outer) & ~any_special & ~ops.finite(new))
    return new, flags

  return _chunk_loop(lay, chunk, (jnp.zeros(shape, jnp.float32), jnp.zeros(shape, bool)))


def _exact(plan: Plan, lay: Layout, fetch, shape):
  ep = plan.exact
  floats = ep.a.is_float or ep.b.is_float
  every = ep.carry_every

  def interval(s, carry):
    def group(i, carry):
      limbs, special, any_special = carry
      for col, row in fetch(s * every + i * lay.g):
        limbs = ep.deposit(limbs, col, row)
        if floats:
          bad = ~ops.finite(col.astype(jnp.float32)) | ~ops.finite(row.astype(jnp.float32))
          special = special + jnp.where(bad, col.astype(jnp.float32) * row.astype(jnp.float32), np.float32(0))
          any_special = any_special | bad
      return limbs, special, any_special

    limbs, special, any_special = jax.lax.fori_loop(0, every // lay.g, group, carry)
    return ep.carry(limbs), special, any_special

  init = ([jnp.zeros(shape, jnp.int32)] * ep.limbs, jnp.zeros(shape, jnp.float32), jnp.zeros(shape, bool))
  limbs, special, any_special = jax.lax.fori_loop(0, lay.size // every, interval, init)
  out = ep.round(limbs)
  if floats:
    out = jnp.where(any_special, special, out)
  return out, ~any_special & ~ops.finite(out)


# ---- drivers -----------------------------------------------------------------------------------------------
def compute_dtype(plan: Plan, dtype: np.dtype) -> np.dtype:
  """The 32-bit type products are formed in: int32 for integer accumulators, float32 for float and aligned ones;
  the exact accumulator reads each operand as int32 (integers) or float32 (floats)."""
  if plan.kind == "int" or (plan.kind == "exact" and jnp.issubdtype(dtype, jnp.integer)):
    return np.dtype(np.int32)
  return np.dtype(np.float32)


