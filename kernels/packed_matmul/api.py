"""The public face of the packed matmul: :func:`matmul` picks a face (Pallas on GPU and TPU; on the CPU the native
kernel for few rows of x, XLA otherwise) and defines the VJP. The semantics are in
:mod:`lpnum.kernels.packed_matmul`."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from lpnum.kernels import dequant
from lpnum.kernels import cpu_matmul as cpu
from lpnum.kernels.packed_matmul import layout
from lpnum.kernels.packed_matmul.layout import PackedWeights, pack_weights
from lpnum.kernels.packed_matmul.pallas import BlockSizes, pallas_matmul
from lpnum.kernels.packed_matmul.reference import HIGHEST, integer_path
from lpnum.kernels.packed_matmul.xla import xla_matmul
from lpnum.kernels import tiles
from lpnum.kernels.tiles import check_dispatch
from lpnum.qarray import QArray
from lpnum.qdot import quantize_grad
from lpnum.scaled import ScaledFormat, dequantize, quantize_scaled
from lpnum.validate import as_array, short

__all__ = ["matmul", "IMPLEMENTATIONS"]

#: The faces ``implementation=`` picks: the kernel ops' (``"auto"``, ``"pallas"``, ``"xla"``) and ``"native"``, the
#: compiled CPU kernel (:mod:`lpnum.kernels.cpu_matmul`).
IMPLEMENTATIONS = (*tiles.IMPLEMENTATIONS, "native")

X_DTYPES = (np.dtype(np.float32), np.dtype(jnp.bfloat16), np.dtype(np.float16))


def matmul(x, w, *, x_format: ScaledFormat | None = None, implementation: str = "auto", platform: str | None = None,
           block_sizes: BlockSizes | None = None, interpret: bool = False, grad_format=None) -> jax.Array:
  """``x @ W`` with quantized weights, dequantized inside the kernel tile by tile.

  Args:
    x: ``(..., K)`` float32/bfloat16/float16 activations, or a QArray of them (quantized along K).
    w: PackedWeights (:func:`lpnum.kernels.pack_weights`), or a 2-D QArray ``(K, N)`` (packed on the fly).
    x_format: quantize float ``x`` with this ScaledFormat first (e.g. int8 ``per_channel(0)`` for W8A8, or
      ``mx.format(name, axis=-1)``); gradients pass straight through that quantization.
    implementation: ``"auto"`` (Pallas on GPU/TPU; on the CPU the native kernel for few rows of x and weights of
      4-bit codes, 8-bit integers or FP8, :func:`lpnum.kernels.cpu_matmul.native_rows`, and for W8A8's integer sums the
      native int8 kernel below :func:`lpnum.kernels.cpu_matmul.int8_rows`; XLA otherwise), ``"pallas"``, ``"xla"``
      or ``"native"`` (the compiled CPU kernels for any M; an error where they cannot be built or do not take the
      format). The platform is chosen when the program is lowered
      (``jax.lax.platform_dependent``), as :func:`lpnum.kernels.accumulate.matmul` does: a function traced on a CPU
      host and exported for ``tpu`` or ``cuda`` carries that platform's kernel; lowering ``"pallas"`` for a platform
      without a kernel (the CPU) is an error. The native kernel is an FFI custom call that exists only in the
      process that built it: export for ``cpu`` with ``implementation="xla"``.
    platform: fix the Pallas flavour at trace time, ``"tpu"`` or ``"gpu"``/``"cuda"`` (default None: chosen when
      lowered; with ``interpret=True``, the default backend's flavour, TPU on the CPU).
    block_sizes: BlockSizes overriding the backend's tile sizes.
    interpret: run the Pallas kernel in interpret mode (tests on the CPU).
    grad_format: round the output cotangent to this format (a Format or ScaledFormat) in the backward pass.

  Returns:
    ``(..., N)`` in x's float dtype.

  Example:
    >>> import jax, jax.numpy as jnp, lpnum
    >>> from lpnum import kernels
    >>> wq = lpnum.quantize_scaled(7 * jnp.eye(4), lpnum.ScaledFormat("int4", lpnum.per_channel(1)))
    >>> kernels.matmul(jnp.arange(4.0)[None], kernels.pack_weights(wq)).tolist()
    [[0.0, 7.0, 14.0, 21.0]]
  """
  check_dispatch(implementation, platform, interpret, block_sizes, IMPLEMENTATIONS)
  w = _as_packed(w)
  if implementation == "native":
    cpu.check(w)
  x_float, xq = _check_x(x, x_format, w)
  if interpret:
    implementation = "pallas"
  if platform is not None or interpret:
    platform = _platform(platform)
  cfg = Config(implementation, platform, block_sizes or BlockSizes(), interpret, x_format)
  return _matmul_jit(x_float if xq is None else xq, w, cfg, grad_format)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _matmul_jit(x, w: PackedWeights, cfg: "Config", grad_format) -> jax.Array:
  if isinstance(x, QArray):
    return _forward(x, w, cfg)
  y = _matmul_vjp(x, w, cfg)
  if grad_format is not None:
    y = quantize_grad(y, grad_format)
  return y


@dataclasses.dataclass(frozen=True)
class Config:
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
    x = as_array(x)
    if x.dtype not in X_DTYPES:
      raise TypeError(f"x must be float32, bfloat16 or float16 (or a QArray), got dtype {x.dtype}")
    if x_format is not None and not isinstance(x_format, ScaledFormat):
      raise TypeError(f"x_format={short(x_format)} must be a ScaledFormat")
    shape = x.shape
  if len(shape) < 1 or shape[-1] != k:
    raise ValueError(f"x has shape {shape}; its last axis must be K={k}, the weights' first axis")
  return (None, x) if isinstance(x, QArray) else (x, None)


def _cpu_matmul(x2: jax.Array, w: PackedWeights, implementation: str) -> jax.Array:
  """``x2 @ W`` on the CPU: the native kernel where ``implementation`` asks for it (``"native"``, or ``"auto"``
  with the CPU as the default backend and fewer rows than :func:`cpu.native_rows` gives for the format and this
  machine's build), else the XLA path. ``(M, N_pad)`` float32."""
  m = x2.shape[0]
  native = implementation == "native" or (
      implementation == "auto" and jax.default_backend() == "cpu" and m < cpu.native_rows(w))
  x2 = x2.astype(jnp.float32)
  if not native:
    return xla_matmul(x2, w)
  return cpu.matmul(jnp.pad(x2, ((0, 0), (0, w.padded_shape[0] - x2.shape[1]))), w)


def _platform(platform) -> str:
  """The Pallas flavour fixed at trace time: ``platform``, else the default backend's (TPU on other hosts)."""
  if platform is None:
    platform = jax.default_backend() if jax.default_backend() in ("tpu", "gpu") else "tpu"
  return "gpu" if platform == "cuda" else platform


def _dispatch(cfg: Config, xla_fn, pallas_fn, *args):
  """``xla_fn(*args)`` or ``pallas_fn(flavour)(*args)`` as ``cfg`` says; without a fixed platform the choice is
  made when the program is lowered: the TPU kernel on ``tpu``, the GPU kernel on ``cuda`` and ``rocm``, and XLA
  elsewhere for ``"auto"``."""
  if cfg.implementation in ("xla", "native"):
    return xla_fn(*args)
  if cfg.platform is not None:
    return pallas_fn(cfg.platform)(*args)
  gpu = pallas_fn("gpu")
  return jax.lax.platform_dependent(*args, tpu=pallas_fn("tpu"), cuda=gpu, rocm=gpu,
                                    default=xla_fn if cfg.implementation == "auto" else None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul_vjp(x, w, cfg):
  return _forward(x, w, cfg)


def _fwd(x, w, cfg):
  return _forward(x, w, cfg), w


def _bwd(cfg, w, g):
  k, _ = w.shape
  wf = layout.dequantize(w)[:k, :g.shape[-1]]
  dx = jnp.einsum("...n,kn->...k", g.astype(jnp.float32), wf, precision=HIGHEST).astype(g.dtype)
  dw = jax.tree.map(lambda a: np.zeros(a.shape, jax.dtypes.float0) if not jnp.issubdtype(a.dtype, jnp.floating)
                    else jnp.zeros_like(a), w)
  return dx, dw


_matmul_vjp.defvjp(_fwd, _bwd)


def _forward(x, w: PackedWeights, cfg: Config) -> jax.Array:
  if isinstance(x, QArray) or cfg.x_format is not None:
    xq = x if isinstance(x, QArray) else quantize_scaled(x, cfg.x_format)
    out_dtype = xq.dtype
    if integer_path(xq, w.fmt, w.group == w.padded_shape[0]):
      return _int_matmul(xq, w, cfg).astype(out_dtype)
    xf = dequantize(xq, jnp.float32)
  else:
    xf, out_dtype = x, x.dtype
  lead, k = xf.shape[:-1], xf.shape[-1]
  x2 = xf.reshape(-1, k)
  m, n = x2.shape[0], w.shape[1]
  y = _dispatch(cfg, lambda x2, w: _cpu_matmul(x2, w, cfg.implementation)[:m, :n],
                lambda flavour: lambda x2, w: pallas_matmul(x2, w, platform=flavour, blocks=cfg.blocks,
                                                            interpret=cfg.interpret, integer=False)[:m, :n],
                x2, w)
  return y.reshape(*lead, n).astype(out_dtype)


def _int_matmul(xq: QArray, w: PackedWeights, cfg: Config) -> jax.Array:
  """The W8A8 path: exact int32 accumulation of integer values, then ``(acc * sx) * sw``."""
  k, n = w.shape
  lead = xq.shape[:-1]
  vx = dequant.int8_values(xq.fmt.element, xq.data, lambda: xq.element_codes).reshape(-1, k)
  m = vx.shape[0]
  acc = _dispatch(cfg, lambda vx, w: _cpu_int_dot(vx, w, cfg.implementation),
                  lambda flavour: lambda vx, w: pallas_matmul(vx, w, platform=flavour, blocks=cfg.blocks,
                                                              interpret=cfg.interpret, integer=True)[:m, :n], vx, w)
  sx = dequant.row_scales(xq).reshape(-1, 1)
  sw = dequant.apply_scale(jnp.float32(1), w.fmt, dequant.scale_parts(w.fmt, w.scales[:1, :n]), None,
                            w.tensor_scale)
  y = (acc.astype(jnp.float32) * sx) * sw
  return y.reshape(*lead, n)


def _cpu_int_dot(vx: jax.Array, w: PackedWeights, implementation: str) -> jax.Array:
  """``vx (M, K) int8 @ W`` with int32 accumulation, ``(M, N)``: XLA's int8 dot, or the native int8 kernel
  (:func:`cpu.int8_matmul`, the same bits) where ``implementation`` is ``"native"``, or ``"auto"`` on the CPU with
  fewer rows than :func:`cpu.int8_rows`."""
  k, n = w.shape
  native = implementation == "native" or (
      implementation == "auto" and jax.default_backend() == "cpu" and vx.shape[0] < cpu.int8_rows())
  vx = jnp.pad(vx, ((0, 0), (0, w.padded_shape[0] - k)))
  if w.planes[0].dtype == jnp.int8:  # the stored plane is the int8 values: multiplied as it is, no copy
    vw = w.planes[0]
  else:
    vw = dequant.element_values(w.fmt.element, layout.unpack_codes(w)).astype(jnp.int8)
  if native:
    return cpu.int8_matmul(vx, vw)[:, :n]
  return jnp.dot(vx, vw, preferred_element_type=jnp.int32)[:, :n]
