"""A mixture-of-experts feed-forward layer: router, top-k, sort by expert, two grouped matmuls, unsort.

Its experts are :class:`lpnum.nn.grouped.GroupedDense` banks (``up`` and ``down``, each ``(E, K, N)``) and its
router a stock ``nn.Dense``, so :func:`lpnum.nn.quantize_model` rules and :func:`lpnum.nn.ptq` quantize all three
like any Dense layer (each expert on its own, along K).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lpnum.nn.grouped import GroupedDense

__all__ = ["MoE", "route"]


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
    d = x.shape[-1]
    tokens = x.reshape(-1, d)
    token, gate, sizes, _ = route(nn.Dense(self.num_experts, name="router")(tokens), self.top_k)
    h = nn.gelu(GroupedDense(self.hidden, self.num_experts, name="up")(tokens[token], sizes))
    y = GroupedDense(d, self.num_experts, name="down")(h, sizes) * gate[:, None].astype(x.dtype)
    return jnp.zeros_like(tokens).at[token].add(y).reshape(x.shape)
