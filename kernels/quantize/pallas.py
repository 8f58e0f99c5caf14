"""The Pallas face of the cast: one kernel body, lowered for TPU (Mosaic) and GPU (Triton), that reads a tile of
``x`` once and writes, for each requested operand (``x``, ``x.T`` or both), its packed codes and scale codes.

Tiles hold whole blocks: along a block's axis the tile is a multiple of the block (the whole axis for per-channel
scales), across it a fixed width (:func:`tile_shape`). Codes are written in their final packed layout (a QArray's
bytes along its last axis, or the packed matmul's bit planes); 6-bit codes, whose groups are three bytes wide, go
out as three byte arrays that one small XLA pass interleaves (0.75 bytes per element read and written). Scale codes
go out tile by tile (``(tiles_r, tiles_c, rows, cols)``, which every backend's block rules accept) and are put in
place by XLA (a pass over ``1/size`` of the elements).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

from lpnum.kernels.quantize.tile import PACKED_BITS, Cast, encode_tile, group, pack_bytes, pack_planes

__all__ = ["Output", "tile_shape", "pallas_cast", "BASE_TILE"]

#: Tile side along and across blocks: TPU tiles of 512 x 512 float32 (1 MiB of VMEM, a whole number of (8, 128)
#: vregs for every output), GPU tiles of 64 x 64 (a Triton block in registers).
BASE_TILE = {"tpu": 512, "gpu": 64}

#: The largest tile, in elements (per-channel scales make a tile span a whole axis; the other side shrinks).
_MAX_ELEMENTS = {"tpu": 512 * 512, "gpu": 64 * 64 * 4}
#: The narrowest tile, rows and columns (TPU: uint8 codes fill (32, 128) tiles).
_MIN_SIDE = {"tpu": (32, 128), "gpu": (1, 1)}


@dataclasses.dataclass(frozen=True)
class Output:
  """One operand written by the kernel: ``x`` quantized with ``cast`` (``transposed``: ``x.T``), its codes as
  QArray bytes (``tile_k=None``) or as the packed matmul's bit planes with K tiles of ``tile_k`` rows, of
  ``plane_dtype`` (:func:`lpnum.kernels.packed_matmul.layout.plane_dtype`: int8 for int8 elements)."""

  cast: Cast
  transposed: bool = False
  tile_k: int | None = None
  plane_widths: tuple[int, ...] = ()
  plane_dtype: np.dtype = np.dtype(np.uint8)


def tile_shape(outputs: tuple[Output, ...], shape: tuple[int, int], platform: str) -> tuple[int, int]:
  """The ``(rows, cols)`` of the kernel's tiles for ``x`` of ``shape``.

  Raises:
    ValueError: the shape does not split into such tiles, or a block is too long for one (the dispatcher then
      takes the XLA face).
  """
  base = BASE_TILE[platform]
  side = [base, base]
  forced = [False, False]
  for o in outputs:
    c = o.cast
    if c.fmt.element.bits not in PACKED_BITS:
      raise ValueError(f"{c.fmt.element.bits}-bit elements: the cast kernels pack {PACKED_BITS}-bit codes")
    if o.tile_k is not None:
      side[0], forced[0] = max(side[0], o.tile_k, c.size if c.axis == 0 else 0), True
    if c.axis is None:
      continue
    b = c.size
    if b <= base and base % b == 0:
      continue
    if forced[c.axis] and side[c.axis] % b:
      raise ValueError(f"blocks of {b} along axis {c.axis} do not fit tiles of {side[c.axis]}")
    side[c.axis], forced[c.axis] = max(side[c.axis], b), True
  if forced[0] and forced[1] and side[0] * side[1] > _MAX_ELEMENTS[platform]:
    raise ValueError(f"tiles of {side[0]} x {side[1]} (whole blocks both ways) are too large for one kernel tile")
  for a in (0, 1):
    if forced[a] and not forced[1 - a]:
      side[1 - a] = max(_MIN_SIDE[platform][1 - a], min(base, _MAX_ELEMENTS[platform] // side[a]))
  side = [min(s, d) if not forced[a] else s for a, (s, d) in enumerate(zip(side, shape))]
  for o in outputs:
    if o.cast.axis is not None and side[o.cast.axis] % o.cast.size:
      raise ValueError(f"x.shape[{o.cast.axis}]={shape[o.cast.axis]} does not hold whole blocks of {o.cast.size}")
  for a in (0, 1):
    if shape[a] % side[a]:
      raise ValueError(f"x.shape[{a}]={shape[a]} is not a multiple of the tile's {side[a]}")
    if platform == "gpu" and side[a] & (side[a] - 1):
      raise ValueError(f"Triton tiles need power-of-two sides; x.shape[{a}]={shape[a]} gives {side[a]}")
  return side[0], side[1]


def pallas_cast(x: jax.Array, outputs: tuple[Output, ...], *, platform: str, interpret: bool,
                ideal: jax.Array | None = None, tensor_amax: jax.Array | None = None,
                tile: tuple[int, int] | None = None) -> list[tuple[list[jax.Array], jax.Array | None]]:
  """Runs the cast kernel over 2-D ``x``; per output, its code arrays (packed bytes, or bit planes) in place and its
  scale codes in place (None for a per-tensor scale).

  ``ideal`` (the per-tensor ideal scale) and ``tensor_amax`` are ``(1, 1)`` float32 arrays, as
  :func:`~lpnum.kernels.quantize.tile.encode_tile` takes them.
  """
  rows, cols = x.shape
  tr, tc = tile or tile_shape(outputs, (rows, cols), platform)
  grid = (rows // tr, cols // tc)
  extra = [a for a in (ideal, tensor_amax) if a is not None]
  in_specs = [pl.BlockSpec((tr, tc), lambda i, j: (i, j))]
  in_specs += [pl.BlockSpec((1, 1), lambda i, j: (0, 0)) for _ in extra]
  out_shapes, out_specs, layout = [], [], []
  for o in outputs:
    c, bits = o.cast, o.cast.fmt.element.bits
    r, cl, sr, sc = (cols, rows, tc, tr) if o.transposed else (rows, cols, tr, tc)
    index = (lambda i, j: (j, i)) if o.transposed else (lambda i, j: (i, j))
    if o.tile_k is None:
      n_codes, n_bytes = group(bits)
      width = cl * bits // 8 if n_bytes == 1 else cl // n_codes
      block_w = sc * bits // 8 if n_bytes == 1 else sc // n_codes
      arrays = [(jax.ShapeDtypeStruct((r, width), jnp.uint8), pl.BlockSpec((sr, block_w), index))
                for _ in range(1 if n_bytes == 1 else n_bytes)]
    else:
      arrays = [(jax.ShapeDtypeStruct((r * w // 8, cl), o.plane_dtype), pl.BlockSpec((sr * w // 8, sc), index))
                for w in o.plane_widths]
    scale_tile = None
    if c.axis is not None:
      axis = 1 - c.axis if o.transposed else c.axis
      scale_tile = (sr, sc // c.size) if axis == 1 else (sr // c.size, sc)
      tiles = (grid[1], grid[0]) if o.transposed else grid
      sdt = c.fmt.scale_format.code_dtype
      four = (lambda i, j: (j, i, 0, 0)) if o.transposed else (lambda i, j: (i, j, 0, 0))
      arrays.append((jax.ShapeDtypeStruct((*tiles, *scale_tile), sdt), pl.BlockSpec((None, None, *scale_tile), four)))
    layout.append((len(arrays), scale_tile))
    for shape, spec in arrays:
      out_shapes.append(shape)
      out_specs.append(spec)

  def kernel(*refs):
    x_ref, rest = refs[0], list(refs[1:])
    ideal_v = rest.pop(0)[...] if ideal is not None else None
    amax_v = rest.pop(0)[...] if tensor_amax is not None else None
    xt = x_ref[...]
    for o, (n, scale_tile) in zip(outputs, layout):
      refs_o, rest = rest[:n], rest[n:]
      codes, scodes = encode_tile(xt, o.cast, ideal=ideal_v, tensor_amax=amax_v)
      if o.transposed:
        codes = codes.T
        scodes = None if scodes is None else scodes.T
      if o.tile_k is None:
        parts = pack_bytes(codes, o.cast.fmt.element.bits)
      else:
        parts = pack_planes(codes, o.plane_widths, o.tile_k, o.plane_dtype)
      for ref, part in zip(refs_o, parts):
        ref[...] = part
      if scale_tile is not None:
        refs_o[-1][...] = scodes.astype(refs_o[-1].dtype)

  if interpret:
    params = None
  elif platform == "tpu":
    params = pltpu.CompilerParams(dimension_semantics=("parallel", "parallel"))
  else:
    params = pltriton.CompilerParams(num_warps=4, num_stages=1)
  flat = pl.pallas_call(kernel, grid=grid, in_specs=in_specs, out_specs=out_specs, out_shape=out_shapes,
                        interpret=interpret, compiler_params=params)(x, *extra)
  results = []
  for o, (n, scale_tile) in zip(outputs, layout):
    arrays, flat = list(flat[:n]), flat[n:]
    scales = None
    if scale_tile is not None:
      tiled = arrays.pop()
      scales = tiled.transpose(0, 2, 1, 3).reshape(tiled.shape[0] * tiled.shape[2], tiled.shape[1] * tiled.shape[3])
    if o.tile_k is None and len(arrays) > 1:
      arrays = [jnp.stack(arrays, axis=-1).reshape(arrays[0].shape[0], -1)]
    results.append((arrays, scales))
  return results
