"""A mixture-of-experts feed-forward layer: router, top-k, sort by expert, two grouped matmuls, unsort.

Its experts are :class:`lpnum.nn.grouped.GroupedDense` banks (``up`` and ``down``, each ``(E, K, N)``) and its
router a stock ``nn.Dense``, so :func:`lpnum.nn.quantize_model` rules and :func:`lpnum.nn.ptq` quantize all three
like any Dense layer (each expert on its own, along K). :class:`NnxMoE` is the ``flax.nnx`` twin (``nnx.Linear``
router, :class:`lpnum.nn.grouped.NnxGroupedDense` experts; :func:`lpnum.nn.ptq_nnx` packs it).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from lpnum.nn.grouped import GroupedDense, NnxGroupedDense

__all__ = ["MoE", "NnxMoE", "route"]


def route(logits: jax.Array, top_k: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Top-k routing of ``T`` tokens over ``E`` experts.

  Args:
    logits: ``(T, E)`` router logits.
    top_k: experts per token.

  Returns:
    ``(token, gate, group_sizes, order)``: for each of the ``T * top_k`` assignments sorted by expert (stably), its
    token and gate (the softmax of the token's top-k logits); the rows per expert ``(E,)``; and the sorting
    permutation of the token-major assignments.
  """
  t, e = logits.shape
  top, experts = jax.lax.top_k(logits, top_k)
  gates = jax.nn.softmax(top, axis=-1).reshape(-1)
  flat = experts.reshape(-1)
  order = jnp.argsort(flat, stable=True)
  sizes = jnp.zeros((e,), jnp.int32).at[flat].add(1)
  return order // top_k, gates[order], sizes, order


class MoE(nn.Module):
  """Mixture-of-experts MLP: ``y[t] = sum over t's top-k experts e of gate * down_e(gelu(up_e(x[t])))``.

  Attributes:
    num_experts: E.
    top_k: experts per token.
    hidden: the experts' hidden width.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from lpnum.zoo.moe import MoE
    >>> moe = MoE(num_experts=4, top_k=2, hidden=16)
    >>> x = jnp.ones((2, 3, 8))
    >>> variables = moe.init(jax.random.key(0), x)
    >>> variables["params"]["up"]["kernel"].shape, moe.apply(variables, x).shape
    ((4, 8, 16), (2, 3, 8))
  """

  num_experts: int = 4
  top_k: int = 2
  hidden: int = 64

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    router = nn.Dense(self.num_experts, name="router")
    up = GroupedDense(self.hidden, self.num_experts, name="up")
    down = GroupedDense(x.shape[-1], self.num_experts, name="down")
    return _moe(x, router, up, down, self.top_k)


class NnxMoE(nnx.Module):
  """The ``flax.nnx`` :class:`MoE`: the same computation and parameter shapes.

  Args:
    features: the model width (input and output).
    num_experts: E.
    top_k: experts per token.
    hidden: the experts' hidden width.
    rngs: parameter randomness.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from lpnum.zoo.moe import NnxMoE
    >>> moe = NnxMoE(8, num_experts=4, top_k=2, hidden=16, rngs=nnx.Rngs(0))
    >>> moe.up.kernel[...].shape, moe(jnp.ones((2, 3, 8))).shape
    ((4, 8, 16), (2, 3, 8))
  """

  def __init__(self, features: int, *, num_experts: int = 4, top_k: int = 2, hidden: int = 64,
               rngs: nnx.Rngs) -> None:
    self.router = nnx.Linear(features, num_experts, rngs=rngs)
    self.up = NnxGroupedDense(features, hidden, num_experts, rngs=rngs)
    self.down = NnxGroupedDense(hidden, features, num_experts, rngs=rngs)
    self.top_k = top_k

  def __call__(self, x: jax.Array) -> jax.Array:
    return _moe(x, self.router, self.up, self.down, self.top_k)


def _moe(x: jax.Array, router: Callable, up: Callable, down: Callable, top_k: int) -> jax.Array:
  tokens = x.reshape(-1, x.shape[-1])
  token, gate, sizes, _ = route(router(tokens), top_k)
  h = nn.gelu(up(tokens[token], sizes))
  y = down(h, sizes) * gate[:, None].astype(x.dtype)
  return jnp.zeros_like(tokens).at[token].add(y).reshape(x.shape)
