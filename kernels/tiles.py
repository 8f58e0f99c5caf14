"""What the kernel ops' Pallas faces and dispatchers share: the dispatch arguments and their checks, tile sizes,
and, inside a kernel body, the codes of one chunk of a K tile of bit planes (:mod:`lpnum.kernels.planes`) with
the scale rows that go with it (static offsets, shifts, masks and broadcasts: what Mosaic and Triton lower).
"""

from __future__ import annotations

import dataclasses

import math

import jax
import jax.numpy as jnp

from lpnum.validate import check_flag, short

__all__ = ["IMPLEMENTATIONS", "BlockSizes", "check_dispatch", "pallas_platform", "grid_blocks", "chunk_rows",
           "chunk_codes", "rows_for_chunk", "scale_rows"]

#: The faces a kernel op's ``implementation=`` picks: ``"auto"`` (Pallas on GPU/TPU, XLA elsewhere), ``"pallas"``
#: or ``"xla"``.
IMPLEMENTATIONS = ("auto", "pallas", "xla")


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


def check_dispatch(implementation, platform, interpret, block_sizes=None, implementations=IMPLEMENTATIONS) -> None:
  """Raises ValueError/TypeError naming the argument unless ``implementation`` is one of ``implementations`` (the
  op's faces), ``platform`` None, ``"tpu"``, ``"gpu"`` or ``"cuda"``, ``interpret`` a bool and ``block_sizes``
  None or a BlockSizes."""
  if not isinstance(implementation, str) or implementation not in implementations:
    raise ValueError(f"implementation={short(implementation)} must be one of {implementations}")
  check_flag("interpret", interpret)
  if platform is not None and platform not in ("tpu", "gpu", "cuda"):
    raise ValueError(f"platform={short(platform)} must be None, 'tpu', 'gpu' or 'cuda'")
  if block_sizes is not None and not isinstance(block_sizes, BlockSizes):
    raise TypeError(f"block_sizes={short(block_sizes)} must be a BlockSizes")


def pallas_platform(platform: str | None, interpret: bool) -> str:
  """The Pallas flavour, ``"tpu"`` or ``"gpu"``: ``platform`` (``"cuda"`` is ``"gpu"``), else the default
  backend's; on a CPU only in interpret mode (then ``"tpu"``)."""
  if platform is None:
    platform = jax.default_backend()
    if platform not in ("tpu", "gpu"):
      if not interpret:
        raise ValueError(f"implementation='pallas' needs a GPU or TPU (default backend: {platform}); use "
                         "interpret=True, or platform='tpu'/'gpu' with interpret=True")
      platform = "tpu"
  return "gpu" if platform == "cuda" else platform


def grid_blocks(m: int, n_pad: int, blocks: BlockSizes, default: tuple[int, int]) -> tuple[int, int, int]:
  """``(block_m, block_n, M_pad)`` for ``m`` rows and ``n_pad`` columns: ``blocks``' sizes, else ``default``'s
  (rows: the next power of two of ``m`` from 16, at most the default; columns: their gcd with ``n_pad``).

  Raises:
    ValueError: ``block_n`` does not divide ``n_pad``.
  """
  bm = blocks.block_m or min(default[0], max(16, 1 << (max(m, 1) - 1).bit_length()))
  bn = blocks.block_n or math.gcd(default[1], n_pad)
  if n_pad % bn:
    raise ValueError(f"block_n={bn} must divide the padded N={n_pad}")
  return bm, bn, math.ceil(max(m, 1) / bm) * bm


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
