"""The Pallas face of the grouped matmul: one tile body, lowered for TPU (Mosaic) and GPU (Triton), which reads an
expert's packed weight tiles, dequantizes them tile by tile and keeps the rows of the tile that belong to it.

- TPU: a grid over (N tiles, visits, K tiles). A *visit* is an (M tile, expert) pair whose rows meet; the visits
  are listed in M-tile order from the group sizes before the call (at most ``M tiles + E - 1`` of them) and
  prefetched into scalar memory, so the index maps fetch only the experts a tile needs, and consecutive visits of
  one M tile accumulate into the same output block. A tile that no group reaches gets one visit that writes zeros.
- GPU: a grid over (M tiles, N tiles); each program loops over the experts, skips those whose rows miss its tile
  and, for the others, loops over K tiles.

Rows of a tile outside the visited group (a group that does not fill the tile, or ends inside it) are masked out
of the product, so NaN or inf weights of one expert never reach another expert's rows.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

from lpnum.kernels import dequant
from lpnum.kernels.grouped_matmul.layout import GroupedWeights
from lpnum.kernels.grouped_matmul.reference import HIGHEST
from lpnum.kernels.tiles import BlockSizes, chunk_codes, chunk_rows, grid_blocks, rows_for_chunk, scale_rows
from lpnum.scaled import ScaledFormat

__all__ = ["BlockSizes", "pallas_grouped_matmul", "visits"]


DEFAULT_BLOCKS = {"tpu": (128, 256), "gpu": (64, 64)}


@dataclasses.dataclass(frozen=True)
class TileSpec:
  fmt: ScaledFormat
  plane_bits: tuple[int, ...]
  tile_k: int
  group: int
  zero: bool
  tensor: bool

  @property
  def chunk(self) -> int:
    return chunk_rows(self.plane_bits, self.tile_k)

  @property
  def scale_rows(self) -> int:
    return scale_rows(self.group, self.tile_k)


def tile_product(spec: TileSpec, load_x, load_plane, load_scale, load_zero, tensor) -> jax.Array:
  """One K tile's ``x_tile @ dequantize(W_tile)`` (float32), one bit-field chunk at a time.

  ``load_x(start, size)`` gives x columns, ``load_plane(i, start, size)`` rows of plane ``i``, ``load_scale`` and
  ``load_zero(start, size)`` scale and zero-point rows of the tile; ``tensor`` is the expert's tensor scale row.
  """
  c = spec.chunk
  acc = None
  for q in range(spec.tile_k // c):
    v = dequant.element_values(spec.fmt.element, chunk_codes(spec.plane_bits, spec.tile_k, load_plane, q * c, c))
    rows = lambda load: rows_for_chunk(load, q * c, c, spec.group)
    zero = rows(load_zero) if spec.zero else None
    w_tile = dequant.apply_scale(v, spec.fmt, dequant.scale_parts(spec.fmt, rows(load_scale)), zero, tensor)
    part = jnp.dot(load_x(q * c, c), w_tile, preferred_element_type=jnp.float32, precision=HIGHEST)
    acc = part if acc is None else acc + part
  return acc


def bounds(group_sizes: jax.Array) -> tuple[jax.Array, jax.Array]:
  """int32 ``(starts, ends)`` of the groups' rows."""
  sizes = group_sizes.astype(jnp.int32)
  ends = jnp.cumsum(sizes)
  return ends - sizes, ends


def visits(group_sizes: jax.Array, tiles: int, bm: int) -> tuple[jax.Array, jax.Array]:
  """The (M tile, expert) pairs whose rows meet, in M-tile order: int32 ``(tile_ids, group_ids)``, each of length
  ``tiles + E - 1``. A tile no group reaches is visited once with the expert index ``E`` (no rows); the list is
  filled up with that visit of the last tile."""
  e = group_sizes.shape[0]
  starts, ends = bounds(group_sizes)
  t0 = jnp.arange(tiles, dtype=jnp.int32)[:, None] * bm
  hit = (starts[None] < t0 + bm) & (ends[None] > t0) & (ends > starts)[None]
  hit = jnp.concatenate([hit, ~hit.any(axis=1, keepdims=True)], axis=1)
  flat = jnp.nonzero(hit.reshape(-1), size=tiles + e - 1, fill_value=tiles * (e + 1) - 1)[0].astype(jnp.int32)
  return flat // (e + 1), flat % (e + 1)


def pallas_grouped_matmul(x: jax.Array, w: GroupedWeights, group_sizes: jax.Array, *, platform: str,
                          blocks: BlockSizes, interpret: bool) -> jax.Array:
  """``x (M, K)`` times the experts as one pallas_call; returns ``(M_pad, N_pad)`` float32."""
  m, k = x.shape
  k_pad, n_pad = w.padded_shape
  bm, bn, m_pad = grid_blocks(m, n_pad, blocks, DEFAULT_BLOCKS[platform])
  x = jnp.pad(x.astype(jnp.float32), ((0, m_pad - m), (0, k_pad - k)))
  spec = TileSpec(w.fmt, w.plane_bits, w.tile_k, w.group, w.zero_point is not None, w.tensor_scale is not None)
  extras = [] if w.zero_point is None else [w.zero_point]
  if w.tensor_scale is not None:
    extras.append(jnp.broadcast_to(w.tensor_scale[:, None, None], (w.shape[0], 1, n_pad)))
  operands = (x, *w.planes, w.scales, *extras)
  call = _call_tpu if platform == "tpu" else _call_gpu
  return call(spec, operands, group_sizes.astype(jnp.int32), (m_pad, n_pad), bm, bn, interpret)


def _unpack(spec: TileSpec, refs):
  """``(x, planes, scales, zero, tensor, out)`` refs from the kernel's operand refs."""
  n = len(spec.plane_bits)
  x_ref, planes, s_ref = refs[0], refs[1:1 + n], refs[1 + n]
  extra = list(refs[2 + n:-1])
  z_ref = extra.pop(0) if spec.zero else None
  t_ref = extra.pop(0) if spec.tensor else None
  return x_ref, planes, s_ref, z_ref, t_ref, refs[-1]


def _call_tpu(spec, operands, group_sizes, out_shape, bm, bn, interpret):
  x = operands[0]
  experts = operands[1].shape[0]
  tk = spec.tile_k
  per_column = spec.group > tk
  s_rows = spec.scale_rows
  tiles, k_tiles = out_shape[0] // bm, x.shape[1] // tk
  if not per_column and s_rows % 8 and k_tiles > 1:
    raise ValueError(f"the weights' layout has {s_rows} scale rows per K tile (tile_k={tk}, group={spec.group}); "
                     f"Mosaic (TPU) needs a multiple of 8: pack_experts(q, tile_k={8 * spec.group}) or larger")
  tile_ids, group_ids = visits(group_sizes, tiles, bm)
  starts, ends = bounds(group_sizes)
  starts = jnp.concatenate([starts, jnp.zeros((1,), jnp.int32)])
  ends = jnp.concatenate([ends, jnp.zeros((1,), jnp.int32)])

  def kernel(tile_ref, group_ref, start_ref, end_ref, *refs):
    x_ref, planes, s_ref, z_ref, t_ref, o_ref = _unpack(spec, refs)
    v, kk = pl.program_id(1), pl.program_id(2)
    tile, g = tile_ref[v], group_ref[v]
    first = jnp.logical_or(v == 0, tile != tile_ref[jnp.maximum(v - 1, 0)])

    @pl.when(jnp.logical_and(kk == 0, first))
    def _():
      o_ref[...] = jnp.zeros_like(o_ref)

    lo, hi = start_ref[g], end_ref[g]

    @pl.when(hi > lo)
    def _():
      part = tile_product(spec, lambda a, n: x_ref[:, a:a + n], lambda i, a, n: planes[i][a:a + n, :],
                          lambda a, n: s_ref[a:a + n, :], lambda a, n: z_ref[a:a + n, :],
                          t_ref[...] if t_ref is not None else None)
      rows = tile * bm + jax.lax.broadcasted_iota(jnp.int32, part.shape, 0)
      o_ref[...] += jnp.where((rows >= lo) & (rows < hi), part, 0.0)

  last = experts - 1
  expert = lambda g: jnp.minimum(g, last)
  in_specs = [pl.BlockSpec((bm, tk), lambda j, v, kk, t, g, *_: (t[v], kk))]
  in_specs += [pl.BlockSpec((pl.Squeezed(), tk * wd // 8, bn), lambda j, v, kk, t, g, *_: (expert(g[v]), kk, j))
               for wd in spec.plane_bits]
  if per_column:
    scale_map = lambda j, v, kk, t, g, *_: (expert(g[v]), 0, j)
  else:
    scale_map = lambda j, v, kk, t, g, *_: (expert(g[v]), kk, j)
  in_specs.append(pl.BlockSpec((pl.Squeezed(), s_rows, bn), scale_map))
  if spec.zero:
    in_specs.append(pl.BlockSpec((pl.Squeezed(), s_rows, bn), scale_map))
  if spec.tensor:
    in_specs.append(pl.BlockSpec((pl.Squeezed(), 1, bn), lambda j, v, kk, t, g, *_: (expert(g[v]), 0, j)))
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=4, grid=(out_shape[1] // bn, tile_ids.shape[0], k_tiles), in_specs=in_specs,
      out_specs=pl.BlockSpec((bm, bn), lambda j, v, kk, t, *_: (t[v], j)))
  params = None if interpret else pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary", "arbitrary"))
  return pl.pallas_call(kernel, grid_spec=grid_spec, out_shape=jax.ShapeDtypeStruct(out_shape, jnp.float32),
                        interpret=interpret, compiler_params=params)(tile_ids, group_ids, starts, ends, *operands)


def _call_gpu(spec, operands, group_sizes, out_shape, bm, bn, interpret):
  x = operands[0]
  experts = operands[1].shape[0]
  tk = spec.tile_k
  k_pad = x.shape[1]
  per_column = spec.group > tk
  s_rows = spec.scale_rows
  starts, ends = bounds(group_sizes)

  def kernel(start_ref, end_ref, *refs):
    x_ref, planes, s_ref, z_ref, t_ref, o_ref = _unpack(spec, refs)
    t0 = pl.program_id(0) * bm
    rows = t0 + jax.lax.broadcasted_iota(jnp.int32, o_ref.shape, 0)

    def expert(g, acc):
      lo, hi = start_ref[g], end_ref[g]

      def product(acc):
        def k_tile(t, a):
          srow = lambda r: 0 if per_column else t * s_rows + r
          return a + tile_product(
              spec, lambda r, n: x_ref[:, pl.ds(t * tk + r, n)],
              lambda i, r, n: planes[i][g, pl.ds(t * (tk * spec.plane_bits[i] // 8) + r, n), :],
              lambda r, n: s_ref[g, pl.ds(srow(r), n), :], lambda r, n: z_ref[g, pl.ds(srow(r), n), :],
              t_ref[g] if t_ref is not None else None)

        part = jax.lax.fori_loop(0, k_pad // tk, k_tile, jnp.zeros(o_ref.shape, jnp.float32))
        return acc + jnp.where((rows >= lo) & (rows < hi), part, 0.0)

      meets = (lo < t0 + bm) & (hi > t0) & (hi > lo)
      return jax.lax.cond(meets, product, lambda a: a, acc)

    o_ref[...] = jax.lax.fori_loop(0, experts, expert, jnp.zeros(o_ref.shape, jnp.float32))

  in_specs = [pl.BlockSpec((experts,), lambda i, j: (0,)), pl.BlockSpec((experts,), lambda i, j: (0,)),
              pl.BlockSpec((bm, k_pad), lambda i, j: (i, 0))]
  in_specs += [pl.BlockSpec((experts, k_pad * wd // 8, bn), lambda i, j: (0, 0, j)) for wd in spec.plane_bits]
  s_all = 1 if per_column else k_pad // spec.group
  in_specs.append(pl.BlockSpec((experts, s_all, bn), lambda i, j: (0, 0, j)))
  if spec.zero:
    in_specs.append(pl.BlockSpec((experts, s_all, bn), lambda i, j: (0, 0, j)))
  if spec.tensor:
    in_specs.append(pl.BlockSpec((experts, 1, bn), lambda i, j: (0, 0, j)))
  params = None if interpret else pltriton.CompilerParams(num_warps=4, num_stages=2)
  return pl.pallas_call(kernel, grid=(out_shape[0] // bm, out_shape[1] // bn), in_specs=in_specs,
                        out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
                        out_shape=jax.ShapeDtypeStruct(out_shape, jnp.float32), interpret=interpret,
                        compiler_params=params)(starts, ends, *operands)
