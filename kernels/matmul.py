"""Packed low-bit matmul: ``x @ W`` with W quantized (int8/int4/int2/ternary, FP8, FP6, FP4, MX, NVFP4).

Semantics (what every face computes):

- **Weight-only** (x in float32/bfloat16/float16): ``y = x @ dequantize(W)`` with float32 products and float32
  accumulation, where ``dequantize`` is :func:`lpnum.dequantize` (weights that are normal float32 numbers are
  bit-identical; see :mod:`lpnum.kernels._dequant`). Only the order of the float32 additions differs between the
  faces, so results agree to float32 summation error.
- **Quantized x** (``x`` a QArray, or ``x_format`` given): ``y = dequantize(x) @ dequantize(W)`` as above (FP8 x
  FP8, MX x MX...), except for the integer path: integer x with one scale per row (or per tensor) and integer W
  with one scale per column (or per tensor) multiply their integer values with exact int32 accumulation, then
  ``y = (float32(acc) * sx) * sw`` (W8A8). The integer path is bit-exact across faces.
- The output has x's float dtype (float32 accumulation, rounded once).

Faces: :func:`reference_matmul` (the obvious jnp version on the QArray), the XLA path (dequantize once, one
``jnp.dot``; what runs on the CPU) and the Pallas kernels (TPU through Mosaic, GPU through Triton), which read
the packed weight tiles and dequantize them tile by tile in VMEM/registers. :func:`matmul` dispatches: Pallas on
GPU and TPU, XLA elsewhere; ``implementation=`` forces one, ``interpret=True`` runs the Pallas kernel on the CPU.

The VJP: ``dx = g @ dequantize(W)^T`` (through the dequantized weights; W gets no gradient). ``grad_format``
rounds the cotangent ``g`` first (:func:`lpnum.qdot.quantize_grad`).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from lpnum.qdot import quantize_grad
from lpnum.formats import FloatFormat, IntFormat
from lpnum.kernels import _dequant, layout
from lpnum.kernels.layout import PackedWeights, pack_weights
from lpnum.qarray import QArray
from lpnum.scaled import ScaledFormat, dequantize, quantize_scaled

__all__ = ["BlockSizes", "matmul", "reference_matmul", "IMPLEMENTATIONS"]

IMPLEMENTATIONS = ("auto", "pallas", "xla")
_HIGHEST = jax.lax.Precision.HIGHEST
_X_DTYPES = (np.dtype(np.float32), np.dtype(jnp.bfloat16), np.dtype(np.float16))


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes of the Pallas kernels (rows of x per tile, output columns per tile); K tiles come from the
  weights' layout (``PackedWeights.tile_k``). None picks the backend's default."""

  block_m: int | None = None
  block_n: int | None = None

  def __post_init__(self) -> None:
    for name in ("block_m", "block_n"):
      v = getattr(self, name)
      if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 8 or v & (v - 1)):
        raise ValueError(f"{name}={v!r} must be a power of two >= 8")


# ---- public API -------------------------------------------------------------------------------------------------
def matmul(x, w, *, x_format: ScaledFormat | None = None, implementation: str = "auto", platform: str | None = None,
           block_sizes: BlockSizes | None = None, interpret: bool = False, grad_format=None) -> jax.Array:
  """``x @ W`` with quantized weights, dequantized inside the kernel tile by tile.

  Args:
    x: ``(..., K)`` float32/bfloat16/float16 activations, or a QArray of them (quantized along K).
    w: PackedWeights (:func:`lpnum.kernels.pack_weights`), or a 2-D QArray ``(K, N)`` (packed on the fly).
    x_format: quantize float ``x`` with this ScaledFormat first (e.g. int8 ``per_channel(0)`` for W8A8, or
      ``mx.format(name, axis=-1)``); gradients pass straight through that quantization.
    implementation: ``"auto"`` (Pallas on GPU/TPU, XLA otherwise), ``"pallas"`` or ``"xla"``.
    platform: the Pallas flavour, ``"tpu"`` or ``"gpu"``/``"cuda"`` (default: the default backend's; on the CPU
      only with ``interpret=True``, where either flavour runs).
    block_sizes: BlockSizes overriding the backend's tile sizes.
    interpret: run the Pallas kernel in interpret mode (tests on the CPU).
    grad_format: round the output cotangent to this format (a Format or ScaledFormat) in the backward pass.

  Returns:
    ``(..., N)`` in x's float dtype.

  Example:
    >>> import jax, jax.numpy as jnp, lpnum
    >>> from lpnum import kernels
    >>> wq = lpnum.quantize_scaled(jnp.eye(4), lpnum.ScaledFormat("int4", lpnum.per_channel(1)))
    >>> kernels.matmul(jnp.arange(4.0)[None], kernels.pack_weights(wq)).tolist()
    [[0.0, 1.0, 2.0, 3.0]]
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation={implementation!r} must be one of {IMPLEMENTATIONS}")
  if block_sizes is not None and not isinstance(block_sizes, BlockSizes):
    raise TypeError(f"block_sizes={block_sizes!r} must be a BlockSizes")
  w = _as_packed(w)
  x_float, xq = _check_x(x, x_format, w)
  if implementation == "auto":
    implementation = "pallas" if jax.default_backend() in ("gpu", "tpu") and not interpret else "xla"
  if interpret:
    implementation = "pallas"
  if implementation == "pallas":
    platform = _platform(platform, interpret)
  cfg = _Config(implementation, platform, block_sizes or BlockSizes(), interpret, x_format)
  return _matmul_jit(x_float if xq is None else xq, w, cfg, grad_format)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _matmul_jit(x, w: PackedWeights, cfg: "_Config", grad_format) -> jax.Array:
  if isinstance(x, QArray):
    return _forward(x, w, cfg)
  y = _matmul_vjp(x, w, cfg)
  if grad_format is not None:
    y = quantize_grad(y, grad_format)
  return y


def reference_matmul(x, w: QArray, *, x_format: ScaledFormat | None = None) -> jax.Array:
  """The semantics of :func:`matmul`, written the obvious way on the QArray (slow; for tests).

  ``jnp.dot`` of ``lpnum.dequantize`` of both sides at HIGHEST precision with float32 accumulation; for the integer
  path, the exact int32 dot of the element values, then ``(acc * sx) * sw``.
  """
  if not isinstance(w, QArray):
    raise TypeError(f"w must be a QArray, got {type(w).__name__}")
  xq = quantize_scaled(x, x_format) if x_format is not None else x
  if isinstance(xq, QArray):
    if _integer_path(xq, w.fmt, w.block[0] >= w.shape[0]):
      vx = _int_values(xq)
      acc = jnp.einsum("...k,kn->...n", vx, _int_values(w), preferred_element_type=jnp.int32)
      sx = dequantize(_unit_scale(xq))[..., :1]
      sw = dequantize(_unit_scale(w))[:1]
      return ((acc.astype(jnp.float32) * sx) * sw).astype(xq.dtype)
    xf, dtype = dequantize(xq, jnp.float32), xq.dtype
  else:
    xf, dtype = jnp.asarray(x).astype(jnp.float32), jnp.asarray(x).dtype
  return jnp.einsum("...k,kn->...n", xf, dequantize(w, jnp.float32), precision=_HIGHEST,
                    preferred_element_type=jnp.float32).astype(dtype)


def _int_values(q: QArray) -> jax.Array:
  from lpnum.quantize import decode

  return decode(q.element_codes, q.fmt.element).astype(jnp.int32)


def _unit_scale(q: QArray) -> QArray:
  """q with every element code replaced by the code of 1 (so dequantize gives the scales)."""
  from lpnum import packing
  from lpnum.quantize import encode

  one = jnp.full(q.shape, encode(jnp.float32(1.0), q.fmt.element), q.element_codes.dtype)
  return dataclasses.replace(q, data=packing.pack(one, q.fmt.element.bits, axis=-1))


# ---- configuration and checks ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Config:
  implementation: str
  platform: str | None
  blocks: BlockSizes
  interpret: bool
  x_format: ScaledFormat | None


def _as_packed(w) -> PackedWeights:
  if isinstance(w, PackedWeights):
    return w
  if isinstance(w, QArray):
    return pack_weights(w)
  raise TypeError(f"w must be PackedWeights (lpnum.kernels.pack_weights) or a QArray, got {type(w).__name__}")


def _check_x(x, x_format, w: PackedWeights):
  k = w.shape[0]
  if isinstance(x, QArray):
    if x_format is not None:
      raise ValueError("x_format is for float x; x is already a QArray")
    shape = x.shape
  else:
    x = jnp.asarray(x)
    if x.dtype not in _X_DTYPES:
      raise TypeError(f"x must be float32, bfloat16 or float16 (or a QArray), got dtype {x.dtype}")
    if x_format is not None and not isinstance(x_format, ScaledFormat):
      raise TypeError(f"x_format={x_format!r} must be a ScaledFormat")
    shape = x.shape
  if len(shape) < 1 or shape[-1] != k:
    raise ValueError(f"x has shape {shape}; its last axis must be K={k}, the weights' first axis")
  return (None, x) if isinstance(x, QArray) else (x, None)


def _platform(platform, interpret: bool) -> str:
  if platform is None:
    platform = jax.default_backend()
    if platform not in ("tpu", "gpu"):
      if not interpret:
        raise ValueError(f"implementation='pallas' needs a GPU or TPU (default implementation: {platform}); use interpret=True "
                         "or platform='tpu'/'gpu' with interpret=True")
      platform = "tpu"
  if platform == "cuda":
    platform = "gpu"
  if platform not in ("tpu", "gpu"):
    raise ValueError(f"platform={platform!r} must be 'tpu', 'gpu' or 'cuda'")
  return platform


def _integer_path(xq: QArray, wfmt: ScaledFormat, w_per_column: bool) -> bool:
  """Whether x and W multiply as integers: int8-valued elements, x scaled per row, W per column."""
  def int8_valued(f: ScaledFormat) -> bool:
    el = f.element
    return isinstance(el, IntFormat) and el.bits - int(el.signed) <= 7 and not f.asymmetric
  return int8_valued(xq.fmt) and int8_valued(wfmt) and xq.block[-1] >= xq.shape[-1] and w_per_column


# ---- forward and VJP ----------------------------------------------------------------------------------------------
@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul_vjp(x, w, cfg):
  return _forward(x, w, cfg)


def _fwd(x, w, cfg):
  return _forward(x, w, cfg), w


def _bwd(cfg, w, g):
  k, _ = w.shape
  wf = layout.dequantize(w)[:k, :g.shape[-1]]
  dx = jnp.einsum("...n,kn->...k", g.astype(jnp.float32), wf, precision=_HIGHEST).astype(g.dtype)
  dw = jax.tree.map(lambda a: np.zeros(a.shape, jax.dtypes.float0) if not jnp.issubdtype(a.dtype, jnp.floating)
                    else jnp.zeros_like(a), w)
  return dx, dw


_matmul_vjp.defvjp(_fwd, _bwd)


def _forward(x, w: PackedWeights, cfg: _Config) -> jax.Array:
  if isinstance(x, QArray) or cfg.x_format is not None:
    xq = x if isinstance(x, QArray) else quantize_scaled(x, cfg.x_format)
    out_dtype = xq.dtype
    if _integer_path(xq, w.fmt, w.group == w.padded_shape[0]):
      return _int_matmul(xq, w, cfg).astype(out_dtype)
    xf = dequantize(xq, jnp.float32)
  else:
    xf, out_dtype = x, x.dtype
  lead, k = xf.shape[:-1], xf.shape[-1]
  x2 = xf.reshape(-1, k)
  if cfg.implementation == "xla":
    y = _xla_matmul(x2.astype(jnp.float32), w)
  else:
    y = _pallas_matmul(x2, w, cfg, integer=False)
  return y[:x2.shape[0], :w.shape[1]].reshape(*lead, w.shape[1]).astype(out_dtype)


#: From this many rows on, the XLA path dequantizes W whole and runs one dot: the dequantization pass is then
#: small next to the matmul, and XLA's single large dot beats a scan of tile products.
WHOLE_DEQUANTIZE_ROWS = 128


def _xla_matmul(x2: jax.Array, w: PackedWeights) -> jax.Array:
  """``x2 (M, K) @ W`` in XLA. For M < WHOLE_DEQUANTIZE_ROWS, one layout tile of K at a time: each tile is
  dequantized while it is in cache and multiplied at once, so the float32 weights are never written out whole
  (2.5x faster for small M on the CPU); for larger M, W is dequantized whole and multiplied in one dot."""
  k_pad, n_pad = w.padded_shape
  if x2.shape[0] >= WHOLE_DEQUANTIZE_ROWS:
    x2 = jnp.pad(x2, ((0, 0), (0, k_pad - x2.shape[1])))
    return jnp.dot(x2, layout.dequantize(w), precision=_HIGHEST, preferred_element_type=jnp.float32)
  tiles = k_pad // w.tile_k
  x3 = jnp.pad(x2, ((0, 0), (0, k_pad - x2.shape[1]))).reshape(-1, tiles, w.tile_k).transpose(1, 0, 2)
  per_column = w.group == k_pad
  by_tile = lambda a: None if a is None or per_column else a.reshape(tiles, -1, n_pad)
  group = w.tile_k if per_column else w.group

  def step(acc, inputs):
    xt, planes, scales, zero = inputs
    tile = dataclasses.replace(w, planes=planes, scales=w.scales if per_column else scales,
                               zero_point=w.zero_point if per_column else zero, group=group)
    return acc + jnp.dot(xt, layout.dequantize(tile), precision=_HIGHEST, preferred_element_type=jnp.float32), None

  planes = tuple(p.reshape(tiles, -1, n_pad) for p in w.planes)
  acc0 = jnp.zeros((x2.shape[0], n_pad), jnp.float32)
  return jax.lax.scan(step, acc0, (x3, planes, by_tile(w.scales), by_tile(w.zero_point)))[0]


def _int_matmul(xq: QArray, w: PackedWeights, cfg: _Config) -> jax.Array:
  """The W8A8 path: exact int32 accumulation of integer values, then ``(acc * sx) * sw``."""
  k, n = w.shape
  lead = xq.shape[:-1]
  vx = _int8_values(xq.fmt.element, xq.data, lambda: xq.element_codes).reshape(-1, k)
  if cfg.implementation == "xla":
    vw = _int8_values(w.fmt.element, w.planes[0], lambda: layout.unpack_codes(w))[:k]
    acc = jnp.dot(vx, vw, preferred_element_type=jnp.int32)
  else:
    acc = _pallas_matmul(vx, w, cfg, integer=True)
  sx = _row_scales(xq).reshape(-1, 1)
  sw = _dequant.apply_scale(jnp.float32(1), w.fmt, _dequant.scale_parts(w.fmt, w.scales[:1]), None,
                            w.tensor_scale)
  y = (acc[:vx.shape[0]].astype(jnp.float32) * sx) * sw
  return y[:, :n].reshape(*lead, n)


def _int8_values(el, data: jax.Array, codes) -> jax.Array:
  """int8 values of integer elements: 8-bit codes are their own values (reinterpreted, no unpacking pass)."""
  if el.bits == 8 and el.signed and not el.narrow:
    return jax.lax.bitcast_convert_type(data, jnp.int8)
  return _dequant.element_values(el, codes().astype(jnp.int32)).astype(jnp.int8)


def _row_scales(xq: QArray) -> jax.Array:
  """One float32 scale per row of x (per-tensor scales broadcast)."""
  s = _dequant.apply_scale(jnp.float32(1), xq.fmt, _dequant.scale_parts(xq.fmt, xq.scales), None, xq.tensor_scale)
  return jnp.broadcast_to(s[..., :1], (*xq.shape[:-1], 1))


# ---- Pallas ---------------------------------------------------------------------------------------------------------
_DEFAULT_BLOCKS = {"tpu": (256, 256), "gpu": (64, 64)}


def _pallas_matmul(x2: jax.Array, w: PackedWeights, cfg: _Config, *, integer: bool) -> jax.Array:
  """``x2 (M, K) @ W`` as one pallas_call; returns ``(M_pad, N_pad)`` float32 (int32 on the integer path)."""
  m, k = x2.shape
  k_pad, n_pad = w.padded_shape
  dm, dn = _DEFAULT_BLOCKS[cfg.platform]
  bm = cfg.blocks.block_m or min(dm, max(16, 1 << (max(m, 1) - 1).bit_length()))
  bn = cfg.blocks.block_n or math.gcd(dn, n_pad)
  if n_pad % bn:
    raise ValueError(f"block_n={bn} must divide the padded N={n_pad}")
  m_pad = math.ceil(max(m, 1) / bm) * bm
  x2 = jnp.pad(x2, ((0, m_pad - m), (0, k_pad - k)))
  if not integer and not _bf16_exact(x2.dtype, w.fmt):
    x2 = x2.astype(jnp.float32)
  spec = _TileSpec(w.fmt, w.plane_bits, w.tile_k, w.group, integer, x2.dtype == jnp.bfloat16,
                   w.zero_point is not None, w.tensor_scale is not None)
  extras = []
  if w.zero_point is not None:
    extras.append(w.zero_point)
  if w.tensor_scale is not None:
    extras.append(jnp.broadcast_to(w.tensor_scale.astype(jnp.float32).reshape(1, 1), (1, n_pad)))
  out_dtype = jnp.int32 if integer else jnp.float32
  operands = (x2, *w.planes, w.scales, *extras)
  if cfg.platform == "tpu":
    return _call_tpu(spec, operands, (m_pad, n_pad), bm, bn, out_dtype, cfg.interpret)
  return _call_gpu(spec, operands, (m_pad, n_pad), bm, bn, out_dtype, cfg.interpret)


def _bf16_exact(dtype, fmt: ScaledFormat) -> bool:
  """Whether bfloat16 x can meet the weights in bfloat16: products exact, same float32 accumulation."""
  el = fmt.element
  precision = el.mantissa_bits + 1 if isinstance(el, FloatFormat) else el.bits
  return dtype == jnp.bfloat16 and fmt.pow2 and precision <= 8


@dataclasses.dataclass(frozen=True)
class _TileSpec:
  fmt: ScaledFormat
  plane_bits: tuple[int, ...]
  tile_k: int
  group: int
  integer: bool
  bf16: bool
  zero: bool
  tensor: bool

  @property
  def chunk(self) -> int:
    """K rows dequantized per dot: one bit field of the narrowest plane."""
    return self.tile_k * min(self.plane_bits) // 8


def _tile_product(spec: _TileSpec, load_x, load_plane, load_scale, load_zero, tensor) -> jax.Array:
  """One K tile's contribution: ``x_tile @ dequantize(W_tile)``, one bit field chunk at a time.

  ``load_x(start, size)`` gives x columns, ``load_plane(i, start, size)`` plane rows, ``load_scale(start, size)``
  and ``load_zero`` scale/zero-point rows of the tile (all static offsets within the tile).
  """
  c = spec.chunk
  acc = None
  for q in range(spec.tile_k // c):
    codes, low = None, 0
    for i, width in enumerate(spec.plane_bits):
      rows = spec.tile_k * width // 8
      field, off = divmod(q * c, rows)
      f = (load_plane(i, off, c).astype(jnp.int32) >> (width * field)) & ((1 << width) - 1)
      codes = f << low if codes is None else codes | (f << low)
      low += width
    v = _dequant.element_values(spec.fmt.element, codes)
    if spec.integer:
      w_tile = v.astype(jnp.int8)
      part = jnp.dot(load_x(q * c, c), w_tile, preferred_element_type=jnp.int32)
    else:
      s_rows = lambda load: _rows_for_chunk(load, q * c, c, spec.group)
      zero = s_rows(load_zero) if spec.zero else None
      w_tile = _dequant.apply_scale(v, spec.fmt, _dequant.scale_parts(spec.fmt, s_rows(load_scale)), zero, tensor)
      if spec.bf16:
        part = jnp.dot(load_x(q * c, c), w_tile.astype(jnp.bfloat16), preferred_element_type=jnp.float32)
      else:
        part = jnp.dot(load_x(q * c, c), w_tile, preferred_element_type=jnp.float32, precision=_HIGHEST)
    acc = part if acc is None else acc + part
  return acc


def _rows_for_chunk(load, start: int, size: int, group: int) -> jax.Array:
  """Scale rows for tile rows ``[start, start + size)``, broadcast to ``(size, bn)``."""
  if group >= size:
    return load(start // group, 1)
  s = load(start // group, size // group)
  return jnp.broadcast_to(s[:, None, :], (size // group, group, s.shape[-1])).reshape(size, s.shape[-1])


def _scale_rows(group: int, tile_k: int) -> int:
  """Rows of the scale array per K tile (1 for per-column scales)."""
  return tile_k // group if group <= tile_k else 1


def _call_tpu(spec, operands, out_shape, bm, bn, out_dtype, interpret):
  from jax.experimental.pallas import tpu as pltpu

  x2, *rest = operands
  n_planes = len(spec.plane_bits)
  tk = spec.tile_k
  per_column = spec.group > tk
  s_rows = _scale_rows(spec.group, tk)
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
    part = _tile_product(
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


def _call_gpu(spec, operands, out_shape, bm, bn, out_dtype, interpret):
  from jax.experimental.pallas import triton as pltriton

  x2, *rest = operands
  n_planes = len(spec.plane_bits)
  tk = spec.tile_k
  k_pad = x2.shape[1]
  per_column = spec.group > tk
  s_rows = _scale_rows(spec.group, tk)
  grid = (out_shape[0] // bm, out_shape[1] // bn)

  def kernel(*refs):
    x_ref, planes, s_ref = refs[0], refs[1:1 + n_planes], refs[1 + n_planes]
    extra = list(refs[2 + n_planes:-1])
    o_ref = refs[-1]
    z_ref = extra.pop(0) if spec.zero else None
    t_ref = extra.pop(0) if spec.tensor else None

    def body(t, acc):
      srow = lambda a: 0 if per_column else t * s_rows + a
      part = _tile_product(
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
