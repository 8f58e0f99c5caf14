"""The in-kernel tile pieces the Pallas faces of the kernel ops share: tile sizes, the codes of one chunk of a
K tile of bit planes (:mod:`lpnum.kernels.planes`), and the scale rows that go with it.

Everything here runs inside a Pallas kernel body (Mosaic and Triton): static offsets, shifts, masks, broadcasts.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

__all__ = ["BlockSizes", "chunk_rows", "chunk_codes", "rows_for_chunk", "scale_rows"]


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes of the Pallas kernels (rows of the activations per tile, output columns per tile); K tiles come
  from the weights' layout (their ``tile_k``). None picks the backend's default."""

  block_m: int | None = None
  block_n: int | None = None

  def __post_init__(self) -> None:
    for name in ("block_m", "block_n"):
      v = getattr(self, name)
      if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 8 or v & (v - 1)):
        raise ValueError(f"{name}={v!r} must be a power of two >= 8")


def chunk_rows(plane_bits: tuple[int, ...], tile_k: int) -> int:
  """K rows decoded per dot: one bit field of the narrowest plane."""
  return tile_k * min(plane_bits) // 8


def chunk_codes(plane_bits: tuple[int, ...], tile_k: int, load_plane, start: int, size: int) -> jax.Array:
  """int32 codes of rows ``[start, start + size)`` of a K tile (``size`` at most one bit field of the narrowest
  plane, so each plane serves them from one field); ``load_plane(i, row, n)`` loads ``n`` byte rows of plane ``i``
  of the tile."""
  codes, low = None, 0
  for i, width in enumerate(plane_bits):
    field, off = divmod(start, tile_k * width // 8)
    f = (load_plane(i, off, size).astype(jnp.int32) >> (width * field)) & ((1 << width) - 1)
    codes = f << low if codes is None else codes | (f << low)
    low += width
  return codes


def rows_for_chunk(load, start: int, size: int, group: int) -> jax.Array:
  """Scale rows for tile rows ``[start, start + size)``, broadcast to ``(size, bn)``; ``load(row, n)`` loads ``n``
  scale rows of the tile."""
  if group >= size:
    return load(start // group, 1)
  s = load(start // group, size // group)
  return jnp.broadcast_to(s[:, None, :], (size // group, group, s.shape[-1])).reshape(size, s.shape[-1])


def scale_rows(group: int, tile_k: int) -> int:
  """Rows of the scale array per K tile (1 for per-column scales)."""
  return tile_k // group if group <= tile_k else 1
