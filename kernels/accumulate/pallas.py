"""The Pallas face of the emulated accumulators: the tiled algorithms in a kernel over (bm, bn) output tiles,
lowered for TPU (Mosaic) and GPU (Triton); see :mod:`lpnum.kernels.accumulate.tiled` for the layout."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

from lpnum.kernels.accumulate import ops
from lpnum.kernels.accumulate.tiled import GPU_BLOCK, TPU_BLOCK, Layout, Plan, compute_dtype, run_tile

__all__ = ["pallas", "tpu_group"]

_TPU_SCOPED_VMEM = 16 * 2**20


def tpu_group(a_dtype, b_dtype) -> int:
  """K rows loaded at once by the TPU kernel: one (8, 128) tile of 32-bit values (16 / 32 rows when packed)."""
  return max(32 // np.dtype(a_dtype).itemsize, 32 // np.dtype(b_dtype).itemsize)


def pallas(plan: Plan, a: jax.Array, b: jax.Array, words: jax.Array | None, *, target: str,
           block: tuple[int, int] | None, interpret: bool) -> tuple[jax.Array, jax.Array]:
  """The tiled algorithm as a Pallas kernel for ``target`` "tpu" (Mosaic) or "gpu" (Triton)."""
  r, n = a.shape[0], b.shape[1]
  tpu = target == "tpu"
  lay = Layout.of(plan, tpu_group(a.dtype, b.dtype) if tpu else 8)
  bm, bn = block or (TPU_BLOCK if tpu else GPU_BLOCK)
  mp, np_ = -(-r // bm) * bm, -(-n // bn) * bn
  a_l = jnp.pad(lay.apply(a, 1), ((0, mp - r), (0, 0)))
  b_l = jnp.pad(lay.apply(b, 0), ((0, 0), (0, np_ - n)))
  ca, cb = compute_dtype(plan, a.dtype), compute_dtype(plan, b.dtype)
  out_dtype = jnp.int32 if plan.kind == "int" else jnp.float32

  def kernel(*refs):
    refs = list(refs)
    words_ref = refs.pop(0) if plan.stochastic else None
    a_ref, b_ref, out_ref = refs[:3]
    i, j = pl.program_id(0), pl.program_id(1)
    if tpu:
      def fetch(pos):
        pos = pl.multiple_of(pos, lay.g)
        cols = a_ref[pl.ds(pos, lay.g), :].astype(ca).T  # (bm, g)
        rows = b_ref[pl.ds(pos, lay.g), :].astype(cb)  # (g, bn)
        return [(cols[:, t:t + 1], rows[t:t + 1, :]) for t in range(lay.g)]
    else:
      def fetch(pos):
        return [(a_ref[:, pl.ds(pos + t, 1)].astype(ca), b_ref[pl.ds(pos + t, 1), :].astype(cb))
                for t in range(lay.g)]
    idx = None
    if plan.stochastic:
      rows = i * bm + jax.lax.broadcasted_iota(jnp.int32, (bm, bn), 0)
      cols = j * bn + jax.lax.broadcasted_iota(jnp.int32, (bm, bn), 1)
      idx = ops.output_index(rows, cols, plan.n)
    words = (words_ref[0], words_ref[1]) if plan.stochastic else None
    out, flags = run_tile(plan, lay, fetch, words, idx, (bm, bn))
    out_ref[...] = out
    if plan.stats:
      refs[3][...] = flags.astype(jnp.int32)

  tile = pl.BlockSpec((bm, bn), lambda i, j: (i, j))
  if tpu:
    operands = [a_l.T, b_l]
    in_specs = [pl.BlockSpec((lay.size, bm), lambda i, j: (0, i)), pl.BlockSpec((lay.size, bn), lambda i, j: (0, j))]
    words_spec = pl.BlockSpec(memory_space=pltpu.SMEM)
    need = 2 * lay.size * (bm * a.dtype.itemsize + bn * b.dtype.itemsize) + 4 * bm * bn * 4
    params = pltpu.CompilerParams(dimension_semantics=("parallel", "parallel"),
                                  vmem_limit_bytes=None if need < _TPU_SCOPED_VMEM else 2 * need)
  else:
    operands = [a_l, b_l]
    in_specs = [pl.BlockSpec((bm, lay.size), lambda i, j: (i, 0)), pl.BlockSpec((lay.size, bn), lambda i, j: (0, j))]
    words_spec = pl.BlockSpec((2,), lambda i, j: (0,))
    params = pltriton.CompilerParams(num_warps=4, num_stages=1)
  if plan.stochastic:
    operands.insert(0, words)
    in_specs.insert(0, words_spec)
  out_shape = [jax.ShapeDtypeStruct((mp, np_), out_dtype)]
  if plan.stats:
    out_shape.append(jax.ShapeDtypeStruct((mp, np_), jnp.int32))
  outs = pl.pallas_call(kernel, grid=(mp // bm, np_ // bn), in_specs=in_specs, out_specs=[tile] * len(out_shape),
                        out_shape=out_shape, compiler_params=params, interpret=interpret)(*operands)
  flags = outs[1][:r, :n] != 0 if plan.stats else jnp.zeros((r, n), bool)
  return outs[0][:r, :n], flags
