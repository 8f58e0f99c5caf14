"""The Pallas face of the packed matmul: one kernel body, lowered for TPU (Mosaic: grid over M, N and K tiles) and
GPU (Triton: the K loop inside), which reads the packed weight tiles and dequantizes them tile by tile."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

from lpnum.formats import FloatFormat
from lpnum.kernels import dequant
from lpnum.kernels.packed_matmul.layout import PackedWeights
from lpnum.kernels.packed_matmul.reference import HIGHEST
from lpnum.kernels.tiles import BlockSizes, chunk_codes, chunk_rows, grid_blocks, rows_for_chunk, scale_rows
from lpnum.scaled import ScaledFormat

__all__ = ["BlockSizes", "pallas_matmul"]


DEFAULT_BLOCKS = {"tpu": (256, 256), "gpu": (64, 64)}


def pallas_matmul(x2: jax.Array, w: PackedWeights, *, platform: str, blocks: BlockSizes, interpret: bool,
                  integer: bool) -> jax.Array:
  """``x2 (M, K) @ W`` as one pallas_call; returns ``(M_pad, N_pad)`` float32 (int32 on the integer path)."""
  m, k = x2.shape
  k_pad, n_pad = w.padded_shape
  bm, bn, m_pad = grid_blocks(m, n_pad, blocks, DEFAULT_BLOCKS[platform])
  x2 = jnp.pad(x2, ((0, m_pad - m), (0, k_pad - k)))
  if not integer and not bf16_exact(x2.dtype, w.fmt):
    x2 = x2.astype(jnp.float32)
  spec = TileSpec(w.fmt, w.plane_bits, w.tile_k, w.group, integer, x2.dtype == jnp.bfloat16,
                   w.zero_point is not None, w.tensor_scale is not None, w.planes[0].dtype == jnp.int8)
  extras = []
  if w.zero_point is not None:
    extras.append(w.zero_point)
  if w.tensor_scale is not None:
    extras.append(jnp.broadcast_to(w.tensor_scale.astype(jnp.float32).reshape(1, 1), (1, n_pad)))
  out_dtype = jnp.int32 if integer else jnp.float32
  operands = (x2, *w.planes, w.scales, *extras)
  if platform == "tpu":
    return call_tpu(spec, operands, (m_pad, n_pad), bm, bn, out_dtype, interpret)
  return call_gpu(spec, operands, (m_pad, n_pad), bm, bn, out_dtype, interpret)


def bf16_exact(dtype, fmt: ScaledFormat) -> bool:
  """Whether bfloat16 x can meet the weights in bfloat16: products exact, same float32 accumulation."""
  el = fmt.element
  precision = el.mantissa_bits + 1 if isinstance(el, FloatFormat) else el.bits
  return dtype == jnp.bfloat16 and fmt.pow2 and precision <= 8


@dataclasses.dataclass(frozen=True)
class TileSpec:
  fmt: ScaledFormat
  plane_bits: tuple[int, ...]
  tile_k: int
  group: int
  integer: bool
  bf16: bool
  zero: bool
  tensor: bool
  int8_plane: bool

  @property
  def chunk(self) -> int:
    return chunk_rows(self.plane_bits, self.tile_k)


def tile_product(spec: TileSpec, load_x, load_plane, load_scale, load_zero, tensor) -> jax.Array:
  """One K tile's contribution: ``x_tile @ dequantize(W_tile)``, one bit field chunk at a time.

  ``load_x(start, size)`` gives x columns, ``load_plane(i, start, size)`` plane rows, ``load_scale(start, size)``
  and ``load_zero`` scale/zero-point rows of the tile (all static offsets within the tile).
  """
  c = spec.chunk
  acc = None
  for q in range(spec.tile_k // c):
    if spec.integer and spec.int8_plane:  # the int8 plane holds the values: no decoding
      part = jnp.dot(load_x(q * c, c), load_plane(0, q * c, c), preferred_element_type=jnp.int32)
      acc = part if acc is None else acc + part
      continue
    v = dequant.element_values(spec.fmt.element, chunk_codes(spec.plane_bits, spec.tile_k, load_plane, q * c, c))
    if spec.integer:
      w_tile = v.astype(jnp.int8)
      part = jnp.dot(load_x(q * c, c), w_tile, preferred_element_type=jnp.int32)
    else:
      s_rows = lambda load: rows_for_chunk(load, q * c, c, spec.group)
      zero = s_rows(load_zero) if spec.zero else None
      w_tile = dequant.apply_scale(v, spec.fmt, dequant.scale_parts(spec.fmt, s_rows(load_scale)), zero, tensor)
      if spec.bf16:
        part = jnp.dot(load_x(q * c, c), w_tile.astype(jnp.bfloat16), preferred_element_type=jnp.float32)
      else:
        part = jnp.dot(load_x(q * c, c), w_tile, preferred_element_type=jnp.float32, precision=HIGHEST)
    acc = part if acc is None else acc + part
  return acc


def call_tpu(spec, operands, out_shape, bm, bn, out_dtype, interpret):
  x2, *rest = operands
  n_planes = len(spec.plane_bits)
  tk = spec.tile_k
  per_column = spec.group > tk
  s_rows = scale_rows(spec.group, tk)
  grid = (out_shape[0] // bm, out_shape[1] // bn, x2.shape[1] // tk)
  if not per_column and s_rows % 8 and grid[2] > 1:
    raise ValueError(f"the weights' layout has {s_rows} scale rows per K tile (tile_k={tk}, group={spec.group}); "
                     f"Mosaic (TPU) needs a multiple of 8: pack_weights(q, tile_k={8 * spec.group}) or larger")

  def kernel(*refs):
    x_ref, planes, s_ref = refs[0], refs[1:1 + n_planes], refs[1 + n_planes]
    extra = list(refs[2 + n_planes:-1])
    o_ref = refs[-1]
    z_ref = extra.pop(0) if spec.zero else None
    t_ref = extra.pop(0) if spec.tensor else None
    part = tile_product(
        spec, lambda a, n: x_ref[:, a:a + n], lambda i, a, n: planes[i][a:a + n, :],
        lambda a, n: s_ref[a:a + n, :], lambda a, n: z_ref[a:a + n, :],
        t_ref[...] if t_ref is not None else None)

    @pl.when(pl.program_id(2) == 0)
    def _():
      o_ref[...] = jnp.zeros_like(o_ref)

    o_ref[...] += part

  in_specs = [pl.BlockSpec((bm, tk), lambda i, j, k: (i, k))]
  in_specs += [pl.BlockSpec((tk * wd // 8, bn), lambda i, j, k: (k, j)) for wd in spec.plane_bits]
  scale_map = (lambda i, j, k: (0, j)) if per_column else (lambda i, j, k: (k, j))
  in_specs.append(pl.BlockSpec((s_rows, bn), scale_map))
  if spec.zero:
    in_specs.append(pl.BlockSpec((s_rows, bn), scale_map))
  if spec.tensor:
    in_specs.append(pl.BlockSpec((1, bn), lambda i, j, k: (0, j)))
  params = None if interpret else pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary"))
  return pl.pallas_call(kernel, grid=grid, in_specs=in_specs,
                        out_specs=pl.BlockSpec((bm, bn), lambda i, j, k: (i, j)),
                        out_shape=jax.ShapeDtypeStruct(out_shape, out_dtype), interpret=interpret,
                        compiler_params=params)(*operands)


def call_gpu(spec, operands, out_shape, bm, bn, out_dtype, interpret):
  x2, *rest = operands
  n_planes = len(spec.plane_bits)
  tk = spec.tile_k
  k_pad = x2.shape[1]
  per_column = spec.group > tk
  s_rows = scale_rows(spec.group, tk)
  grid = (out_shape[0] // bm, out_shape[1] // bn)

  def kernel(*refs):
    x_ref, planes, s_ref = refs[0], refs[1:1 + n_planes], refs[1 + n_planes]
    extra = list(refs[2 + n_planes:-1])
    o_ref = refs[-1]
    z_ref = extra.pop(0) if spec.zero else None
    t_ref = extra.pop(0) if spec.tensor else None

    def body(t, acc):
      srow = lambda a: 0 if per_column else t * s_rows + a
      part = tile_product(
          spec, lambda a, n: x_ref[:, pl.ds(t * tk + a, n)],
          lambda i, a, n: planes[i][pl.ds(t * (tk * spec.plane_bits[i] // 8) + a, n), :],
          lambda a, n: s_ref[pl.ds(srow(a), n), :], lambda a, n: z_ref[pl.ds(srow(a), n), :],
          t_ref[...] if t_ref is not None else None)
      return acc + part

    o_ref[...] = jax.lax.fori_loop(0, k_pad // tk, body, jnp.zeros(o_ref.shape, o_ref.dtype))

  in_specs = [pl.BlockSpec((bm, k_pad), lambda i, j: (i, 0))]
  in_specs += [pl.BlockSpec((k_pad * wd // 8, bn), lambda i, j: (0, j)) for wd in spec.plane_bits]
  s_all = 1 if per_column else k_pad // spec.group
  in_specs.append(pl.BlockSpec((s_all, bn), lambda i, j: (0, j)))
  if spec.zero:
    in_specs.append(pl.BlockSpec((s_all, bn), lambda i, j: (0, j)))
  if spec.tensor:
    in_specs.append(pl.BlockSpec((1, bn), lambda i, j: (0, j)))
  params = None if interpret else pltriton.CompilerParams(num_warps=4, num_stages=2)
  return pl.pallas_call(kernel, grid=grid, in_specs=in_specs,
                        out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
                        out_shape=jax.ShapeDtypeStruct(out_shape, out_dtype), interpret=interpret,
                        compiler_params=params)(*operands)
