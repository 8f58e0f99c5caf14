"""The public face of the grouped matmul: :func:`grouped_matmul` picks a face (Pallas on GPU and TPU; on the CPU the
native kernel for few rows, XLA otherwise) and defines the VJP. The semantics are in
:mod:`lpnum.kernels.grouped_matmul`."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from lpnum.kernels import cpu_matmul
from lpnum.kernels.grouped_matmul import cpu
from lpnum.kernels.grouped_matmul.layout import GroupedWeights, pack_experts
from lpnum.kernels.grouped_matmul.pallas import BlockSizes, pallas_grouped_matmul
from lpnum.kernels.grouped_matmul.xla import xla_grouped_matmul
from lpnum.kernels.tiles import IMPLEMENTATIONS as _KERNEL_FACES
from lpnum.kernels.tiles import check_dispatch, pallas_platform
from lpnum.qarray import QArray
from lpnum.validate import as_array

__all__ = ["grouped_matmul", "IMPLEMENTATIONS"]

#: The faces ``implementation=`` picks: the kernel ops' (``"auto"``, ``"pallas"``, ``"xla"``) and ``"native"``, the
#: compiled CPU kernel (:mod:`lpnum.kernels.grouped_matmul.cpu`).
IMPLEMENTATIONS = (*_KERNEL_FACES, "native")

_LHS_DTYPES = (np.dtype(np.float32), np.dtype(jnp.bfloat16), np.dtype(np.float16))


def grouped_matmul(lhs, rhs, group_sizes, *, implementation: str = "auto", platform: str | None = None,
                   block_sizes: BlockSizes | None = None, interpret: bool = False) -> jax.Array:
  """``jax.lax.ragged_dot(lhs, dequantize(rhs), group_sizes)`` with packed per-expert weights.

  Rows ``[start_e, start_e + group_sizes[e])`` of ``lhs`` multiply expert ``e``'s weights (``start_e`` the sum of
  the earlier sizes; empty groups are allowed); rows past ``sum(group_sizes)`` give zeros. The sum must not exceed
  M (as for ``ragged_dot``; not checked, it is traced).

  Args:
    lhs: ``(M, K)`` float32/bfloat16/float16 activations sorted by expert.
    rhs: GroupedWeights (:func:`~lpnum.kernels.grouped_matmul.pack_experts`), or a stacked QArray
      (:func:`~lpnum.kernels.grouped_matmul.quantize_experts`, packed on the fly).
    group_sizes: ``(E,)`` integer rows per expert.
    implementation: ``"auto"`` (Pallas on GPU/TPU; on the CPU the native kernel when M is below
      :func:`lpnum.kernels.cpu_matmul.native_rows` and it builds, XLA otherwise), ``"pallas"``, ``"xla"`` or
      ``"native"`` (the compiled CPU kernel for any M; an error where it cannot be built or does not take the
      format).
    platform: the Pallas flavour, ``"tpu"`` or ``"gpu"``/``"cuda"`` (default: the default backend's; on the CPU,
      with ``interpret=True``, ``"tpu"``).
    block_sizes: BlockSizes overriding the backend's tile sizes.
    interpret: run the Pallas kernel in interpret mode (tests on the CPU).

  Returns:
    ``(M, N)`` in lhs's dtype (float32 products and accumulation, rounded once).

  Example:
    >>> import jax.numpy as jnp, lpnum
    >>> from lpnum.kernels import grouped_matmul as gm
    >>> fmt = lpnum.ScaledFormat("int8", lpnum.per_channel(1))
    >>> w = gm.pack_experts(gm.quantize_experts(jnp.stack([jnp.eye(4), 2 * jnp.eye(4)]), fmt))
    >>> gm.grouped_matmul(jnp.ones((3, 4)), w, jnp.array([1, 2])).tolist()
    [[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0], [2.0, 2.0, 2.0, 2.0]]
  """
  check_dispatch(implementation, platform, interpret, block_sizes, IMPLEMENTATIONS)
  if isinstance(rhs, QArray):
    rhs = pack_experts(rhs)
  if not isinstance(rhs, GroupedWeights):
    raise TypeError(f"rhs must be GroupedWeights (pack_experts) or a stacked QArray (quantize_experts), got "
                    f"{type(rhs).__name__}")
  lhs = as_array(lhs)
  if lhs.dtype not in _LHS_DTYPES:
    raise TypeError(f"lhs must be float32, bfloat16 or float16, got dtype {lhs.dtype}")
  experts, k, _ = rhs.shape
  if lhs.ndim != 2 or lhs.shape[1] != k:
    raise ValueError(f"lhs has shape {lhs.shape}; it must be (M, K) with K={k}, the weights' K")
  group_sizes = as_array(group_sizes)
  if group_sizes.shape != (experts,) or not jnp.issubdtype(group_sizes.dtype, jnp.integer):
    raise ValueError(f"group_sizes has shape {group_sizes.shape} and dtype {group_sizes.dtype}; it must be "
                     f"({experts},) integers, one size per expert")
  if implementation == "native":
    cpu_matmul.check(rhs)
  if interpret:
    implementation = "pallas"
  if implementation == "auto":
    backend = jax.default_backend()
    implementation = "pallas" if backend in ("gpu", "tpu") else "native" if (
        backend == "cpu" and lhs.shape[0] < cpu_matmul.native_rows(rhs)) else "xla"
  if implementation == "pallas":
    platform = pallas_platform(platform, interpret)
  cfg = Config(implementation, platform, block_sizes or BlockSizes(), interpret)
  return _grouped_jit(lhs, rhs, group_sizes.astype(jnp.int32), cfg)


@dataclasses.dataclass(frozen=True)
class Config:
  implementation: str
  platform: str | None
  blocks: BlockSizes
  interpret: bool


@functools.partial(jax.jit, static_argnums=(3,))
def _grouped_jit(lhs, rhs: GroupedWeights, group_sizes, cfg: Config) -> jax.Array:
  return _grouped_vjp(lhs, rhs, group_sizes, cfg)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _grouped_vjp(lhs, rhs, group_sizes, cfg):
  return _forward(lhs, rhs, group_sizes, cfg)


def _fwd(lhs, rhs, group_sizes, cfg):
  return _forward(lhs, rhs, group_sizes, cfg), (rhs, group_sizes)


def _bwd(cfg, res, g):
  """``dlhs = ragged_dot(g, dequantize(W)^T)`` (the XLA face); the packed weights and the group sizes get no
  gradient."""
  rhs, group_sizes = res
  dlhs = xla_grouped_matmul(g.astype(jnp.float32), rhs, group_sizes, transpose=True).astype(g.dtype)
  zeros = lambda a: np.zeros(a.shape, jax.dtypes.float0) if not jnp.issubdtype(a.dtype, jnp.floating) \
      else jnp.zeros_like(a)
  return dlhs, jax.tree.map(zeros, rhs), zeros(group_sizes)


_grouped_vjp.defvjp(_fwd, _bwd)


def _forward(lhs, rhs: GroupedWeights, group_sizes, cfg: Config) -> jax.Array:
  m, n = lhs.shape[0], rhs.shape[2]
  if cfg.implementation == "xla":
    y = xla_grouped_matmul(lhs.astype(jnp.float32), rhs, group_sizes)
  elif cfg.implementation == "native":
    y = cpu.cpu_grouped_matmul(lhs, rhs, group_sizes)
  else:
    y = pallas_grouped_matmul(lhs, rhs, group_sizes, platform=cfg.platform, blocks=cfg.blocks,
                              interpret=cfg.interpret)
  return y[:m, :n].astype(lhs.dtype)
