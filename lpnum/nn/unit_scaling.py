"""Unit-scaled Flax linen layers (Blake et al., "Unit Scaling: Out-of-the-Box Low-Precision Training", ICML 2023).

Each layer calls the op of :mod:`lpnum.unit_scaling` that states its forward and backward scales, and initializes
its weights with unit variance (``N(0, 1)`` kernels and tables, LayerNorm scales 1, biases 0): the scales live in
the ops, not in the initialization, so activations and gradients start at unit variance.

- :class:`UnitDense`: :func:`lpnum.unit_scaling.linear`; ``config=`` quantizes its matmul with
  :func:`lpnum.dot_general` (``lpnum.unit_scaling.FP8_CAST``: E4M3 forward, E5M2 backward, plain casts).
- :class:`UnitLayerNorm`: :func:`lpnum.unit_scaling.layer_norm`.
- :class:`UnitEmbed`: :func:`lpnum.unit_scaling.embedding`.
- :class:`UnitSelfAttention`: ``UnitDense`` projections around
  :func:`lpnum.unit_scaling.scaled_dot_product_attention`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lpnum import unit_scaling as us
from lpnum.qdot import DotConfig

__all__ = ["UnitDense", "UnitLayerNorm", "UnitEmbed", "UnitSelfAttention"]

_unit_normal = nn.initializers.normal(stddev=1.0)


class UnitDense(nn.Module):
  """Unit-scaled dense layer over the last axis: ``linear(x, kernel, bias)`` with an ``N(0, 1)`` kernel.

  Attributes:
    features: output features N.
    use_bias: add a bias (initialized to zero; its gradient scaled like the kernel's).
    constraint: ``"gmean"`` (forward and input-gradient scale ``(K N)^-1/4``) or None (``K^-1/2`` and
      ``N^-1/2``: only where the input is a cut-edge, see :mod:`lpnum.unit_scaling`).
    config: a :class:`~lpnum.DotConfig` for the matmul (deterministic rounding), or None for float32.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from lpnum.nn.unit_scaling import UnitDense
    >>> layer = UnitDense(32)
    >>> x = jax.random.normal(jax.random.key(0), (256, 64))
    >>> variables = layer.init(jax.random.key(1), x)
    >>> round(float(jnp.std(variables["params"]["kernel"])), 1), layer.apply(variables, x).shape
    (1.0, (256, 32))
  """
  features: int
  use_bias: bool = True
  constraint: str | None = "gmean"
  config: DotConfig | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", _unit_normal, (jnp.shape(x)[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32) if self.use_bias else None
    return us.linear(x, kernel, bias, constraint=self.constraint, config=self.config)


class UnitLayerNorm(nn.Module):
  """Unit-scaled layer normalization over the last axis (scale initialized to 1, bias to 0).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from lpnum.nn.unit_scaling import UnitLayerNorm
    >>> x = jnp.array([[1.0, 3.0]])
    >>> variables = UnitLayerNorm().init(jax.random.key(0), x)
    >>> [round(float(v), 3) for v in UnitLayerNorm().apply(variables, x)[0]]
    [-1.0, 1.0]
  """
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = jnp.shape(x)[-1]
    scale = self.param("scale", nn.initializers.ones_init(), (width,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (width,), jnp.float32)
    return us.layer_norm(x, scale, bias, eps=self.epsilon)


class UnitEmbed(nn.Module):
  """Unit-scaled embedding table of ``num_embeddings`` rows of ``features``, initialized ``N(0, 1)``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from lpnum.nn.unit_scaling import UnitEmbed
    >>> layer = UnitEmbed(10, 4)
    >>> ids = jnp.array([[1, 2, 3]])
    >>> layer.apply(layer.init(jax.random.key(0), ids), ids).shape
    (1, 3, 4)
  """
  num_embeddings: int
  features: int

  @nn.compact
  def __call__(self, ids: jax.Array) -> jax.Array:
    table = self.param("embedding", _unit_normal, (self.num_embeddings, self.features), jnp.float32)
    return us.embedding(ids, table)


class UnitSelfAttention(nn.Module):
  """Unit-scaled multi-head self-attention over ``(batch, length, dim)``, without a mask.

  One ``UnitDense(3 * dim)`` projection ``qkv`` (as the paper's implementation: its input gradient is the sum of
  the three, and the fan-out of ``3 * dim`` scales it accordingly), split into queries, keys and values of
  ``num_heads`` heads, :func:`lpnum.unit_scaling.scaled_dot_product_attention`, and a ``UnitDense(dim)`` output
  projection ``out``. ``config`` quantizes both projections (the attention products stay float32, as in Flax's
  attention under :func:`lpnum.nn.quantize_model`).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from lpnum.nn.unit_scaling import UnitSelfAttention
    >>> layer = UnitSelfAttention(num_heads=2)
    >>> x = jnp.ones((3, 5, 8))
    >>> variables = jax.eval_shape(layer.init, jax.random.key(0), x)
    >>> jax.eval_shape(layer.apply, variables, x).shape
    (3, 5, 8)
  """
  num_heads: int
  config: DotConfig | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    *lead, length, dim = jnp.shape(x)
    if dim % self.num_heads:
      raise ValueError(f"num_heads={self.num_heads} must divide the model width {dim}")
    qkv = UnitDense(3 * dim, config=self.config, name="qkv")(x)
    q, k, v = jnp.split(qkv.reshape(*lead, length, 3, self.num_heads, dim // self.num_heads), 3, axis=-3)
    out = us.scaled_dot_product_attention(q[..., 0, :, :], k[..., 0, :, :], v[..., 0, :, :])
    return UnitDense(dim, config=self.config, name="out")(out.reshape(*lead, length, dim))
