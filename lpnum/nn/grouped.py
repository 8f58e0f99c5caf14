"""A bank of experts' Dense kernels, multiplied as a grouped (ragged) matmul: the layer mixture-of-experts models
use and lpnum's rules and PTQ quantize like a Dense kernel.

:class:`GroupedDense` holds an ``(E, K, N)`` kernel and multiplies rows sorted by expert with
``jax.lax.ragged_dot`` semantics. Float, it runs ``jax.lax.ragged_dot``. Under a :class:`~lpnum.nn.Rule` (through
:func:`lpnum.nn.quantize_model`), each expert's kernel is fake-quantized on its own along K with the rule's weight
format (and the rows with its activation format), straight-through, so training updates the float expert
weights. After :func:`lpnum.nn.ptq` (pass ``views=lpnum.nn.kernel_views(model, x)``, which marks the kernel as
``"experts"``) the kernel is packed per expert (:class:`lpnum.kernels.grouped_matmul.GroupedWeights`) and the layer
runs :func:`lpnum.kernels.grouped_matmul.grouped_matmul` on it. :class:`NnxGroupedDense` is the ``flax.nnx`` twin
(:func:`lpnum.nn.quantize_model` and :func:`lpnum.nn.ptq_nnx` treat it alike).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from lpnum.kernels.grouped_matmul import grouped_matmul
from lpnum.nn.ptq import PackedKernel, check_rule
from lpnum.qdot import DotConfig, Scaling, quantize_operand

__all__ = ["GroupedDense", "NnxGroupedDense", "grouped_dense", "check_grouped_config"]

#: Fan-in K of each expert's ``(K, N)`` kernel.
_KERNEL_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=1, out_axis=2,
                                                batch_axis=(0,))


def check_grouped_config(config: DotConfig | None) -> None:
  """Raises NotImplementedError for what a grouped matmul does not emulate: non-dynamic scaling, quantized backward
  matmuls, accumulators and rotations."""
  if config is None:
    return
  for role in ("lhs", "rhs"):
    oq = getattr(config, role)
    if oq is not None and oq.scaling is not Scaling.DYNAMIC:
      raise NotImplementedError(f"GroupedDense quantizes with dynamic scaling only; the rule's {role} has "
                                f"scaling={oq.scaling.value!r}")
    if oq is not None and oq.estimator.learned is not None:
      raise NotImplementedError(f"GroupedDense does not learn quantizer parameters; the rule's {role} has "
                                f"estimator={oq.estimator!r}")
  for name in ("dlhs", "drhs", "accumulator", "rotate"):
    if getattr(config, name) is not None:
      raise NotImplementedError(f"GroupedDense runs its backward matmuls in float32 and emulates no accumulator or "
                                f"rotation; the rule's config sets {name}={getattr(config, name)!r} (for W8A8 use "
                                "DotConfig.w8a8(backward=False))")


class GroupedDense(nn.Module):
  """``E`` Dense kernels ``(E, K, N)`` applied to rows sorted by expert (``jax.lax.ragged_dot`` semantics).

  Attributes:
    features: N, the output width.
    num_experts: E.
    kernel_init: initializer of the ``(E, K, N)`` kernel (fan-in K).
    config: the quantization config (set by :func:`lpnum.nn.quantize_model`'s rules; None: float).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from lpnum.nn.grouped import GroupedDense
    >>> layer = GroupedDense(features=4, num_experts=3)
    >>> x, sizes = jnp.ones((5, 8)), jnp.array([2, 0, 3])
    >>> variables = layer.init(jax.random.key(0), x, sizes)
    >>> variables["params"]["kernel"].shape, layer.apply(variables, x, sizes).shape
    ((3, 8, 4), (5, 4))
  """

  features: int
  num_experts: int
  kernel_init: nn.initializers.Initializer = _KERNEL_INIT
  config: DotConfig | None = None

  @nn.compact
  def __call__(self, x: jax.Array, group_sizes: jax.Array) -> jax.Array:
    """``x (M, K)`` sorted by expert, ``group_sizes (E,)`` -> ``(M, N)``."""
    kernel = self.param("kernel", self.kernel_init, (self.num_experts, x.shape[-1], self.features), jnp.float32)
    return grouped_dense(x, kernel, group_sizes, self.config, "/".join(self.scope.path))


class NnxGroupedDense(nnx.Module):
  """The ``flax.nnx`` :class:`GroupedDense`: the same computation and kernel shape ``(E, K, N)``, quantized by
  :func:`lpnum.nn.quantize_model` (which sets ``config``) and packed per expert by :func:`lpnum.nn.ptq_nnx`.

  Args:
    in_features: K.
    features: N, the output width.
    num_experts: E.
    kernel_init: initializer of the ``(E, K, N)`` kernel (fan-in K).
    config: the quantization config (None: float).
    rngs: parameter randomness.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from lpnum.nn.grouped import NnxGroupedDense
    >>> layer = NnxGroupedDense(8, 4, 3, rngs=nnx.Rngs(0))
    >>> layer.kernel[...].shape, layer(jnp.ones((5, 8)), jnp.array([2, 0, 3])).shape
    ((3, 8, 4), (5, 4))
  """

  def __init__(self, in_features: int, features: int, num_experts: int, *,
               kernel_init: nn.initializers.Initializer = _KERNEL_INIT, config: DotConfig | None = None,
               rngs: nnx.Rngs) -> None:
    for name, v in (("in_features", in_features), ("features", features), ("num_experts", num_experts)):
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name}={v!r} must be a positive int")
    self.kernel = nnx.Param(kernel_init(rngs.params(), (num_experts, in_features, features), jnp.float32))
    self.config = config

  def __call__(self, x: jax.Array, group_sizes: jax.Array) -> jax.Array:
    """``x (M, K)`` sorted by expert, ``group_sizes (E,)`` -> ``(M, N)``."""
    return grouped_dense(x, self.kernel[...], group_sizes, self.config, type(self).__name__)


def grouped_dense(x: jax.Array, kernel, group_sizes: jax.Array, config: DotConfig | None, path: str) -> jax.Array:
  """What both layers compute: ``ragged_dot`` of ``x`` with the float ``(E, K, N)`` kernel (fake-quantized per
  expert under ``config``), or :func:`lpnum.kernels.grouped_matmul.grouped_matmul` with a packed one (a
  :class:`~lpnum.nn.ptq.PackedKernel`, checked against ``config`` and named by the layer's ``path``)."""
  if isinstance(kernel, PackedKernel):
    check_rule(path, kernel, config)
    lhs = quantize_operand(x.astype(jnp.float32), config.lhs, "lhs")
    return grouped_matmul(lhs, kernel.value, group_sizes).astype(x.dtype)
  check_grouped_config(config)
  lhs, rhs = x, kernel.astype(x.dtype)
  if config is not None:
    lhs = quantize_operand(lhs, config.lhs, "lhs")
    rhs = quantize_operand(rhs, config.rhs, "rhs")
  return jax.lax.ragged_dot(lhs, rhs, group_sizes.astype(jnp.int32), preferred_element_type=jnp.float32
                            ).astype(x.dtype)
