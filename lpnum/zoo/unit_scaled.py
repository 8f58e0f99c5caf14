"""The unit-scaled twin of the zoo's Transformer (Blake et al., "Unit Scaling", ICML 2023).

:class:`UnitTransformer` has the shape, parameters and task of :class:`lpnum.zoo.models.Transformer` (token and
position embeddings, pre-LN blocks of self-attention and a GELU MLP, a final LayerNorm, mean pooling and a dense
head), built of the unit-scaled layers of :mod:`lpnum.nn.unit_scaling` with residual connections weighted by
``tau`` (:func:`lpnum.unit_scaling.residual_split` / ``residual_add``). Train it with the unit-scaled loss:
``fit(model, data, loss=lpnum.unit_scaling.cross_entropy)``. ``config=lpnum.unit_scaling.FP8_CAST`` casts every
dense layer's operands to E4M3 and its output gradients to E5M2 with no scaling; the standard Transformer gets the
same casts from ``lpnum.nn.quantize_model(model, [Rule(".*", FP8_CAST)])``.

``probe=True`` records every op's output: in the ``intermediates`` collection (``sow``) and as a zero
``perturbations`` variable added to it, whose gradient is the gradient with respect to that output.
"""

from __future__ import annotations


import flax.linen as nn
import jax
import jax.numpy as jnp

from lpnum import unit_scaling as us
from lpnum.nn.unit_scaling import UnitDense, UnitEmbed, UnitLayerNorm, UnitSelfAttention
from lpnum.qdot import DotConfig

__all__ = ["UnitTransformerBlock", "UnitTransformer"]


class _Probed(nn.Module):
  """A module whose ``tap`` records an op's output when ``probe`` is set."""

  def tap(self, name: str, x: jax.Array) -> jax.Array:
    if not self.probe:
      return x
    self.sow("intermediates", name, x)
    return self.perturb(name, x)


class UnitTransformerBlock(_Probed):
  """Unit-scaled pre-LN block: ``x = residual_add(attention(LN(r)), skip, tau)`` with ``r, skip =
  residual_split(x, tau)``, then the same around ``UnitDense(dim)(gelu(UnitDense(mlp_dim)(LN(r))))``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from lpnum.zoo.unit_scaled import UnitTransformerBlock
    >>> block = UnitTransformerBlock(heads=2, mlp_dim=16)
    >>> x = jnp.ones((2, 5, 8))
    >>> variables = jax.eval_shape(block.init, jax.random.key(0), x)
    >>> jax.eval_shape(block.apply, variables, x).shape
    (2, 5, 8)
  """
  heads: int
  mlp_dim: int
  tau: float = 0.1
  config: DotConfig | None = None
  probe: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dim = x.shape[-1]
    r, skip = us.residual_split(x, self.tau)
    h = self.tap("attention_norm", UnitLayerNorm()(r))
    h = self.tap("attention", UnitSelfAttention(self.heads, config=self.config)(h))
    x = self.tap("attention_residual", us.residual_add(h, skip, self.tau))
    r, skip = us.residual_split(x, self.tau)
    h = self.tap("mlp_norm", UnitLayerNorm()(r))
    h = self.tap("mlp_in", UnitDense(self.mlp_dim, config=self.config)(h))
    h = self.tap("gelu", us.gelu(h))
    h = self.tap("mlp_out", UnitDense(dim, config=self.config)(h))
    return self.tap("mlp_residual", us.residual_add(h, skip, self.tau))


class UnitTransformer(_Probed):
  """Unit-scaled encoder-only transformer classifier, the twin of :class:`lpnum.zoo.models.Transformer`.

  The token and position embeddings (``N(0, 1)`` tables) are added and scaled by ``2^-1/2`` forward (the sum of
  two unit-variance vectors; a cut-edge, so its backward is 1). Mean pooling over the ``n`` positions is a
  cut-edge too: its backward scale ``n`` gives every position the pooled gradient; its forward scale is
  ``n^1/4``, the geometric mean of ``sqrt(n)`` (independent positions) and 1 (identical ones), because attention
  correlates the positions (unit-scaled attention's outputs at two positions have correlation about ``1/e`` at
  initialization). Every other op is a :mod:`lpnum.unit_scaling` op; ``tau = 0.1`` as in the paper's code.

  Attributes:
    vocab, length, dim, heads, layers, mlp_dim, num_classes: as :class:`lpnum.zoo.models.Transformer`.
    tau: the residual branches' share of the variance, in (0, 1).
    config: a :class:`~lpnum.DotConfig` for every dense layer (``lpnum.unit_scaling.FP8_CAST``), or None.
    probe: record every op's output (see the module docs).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from lpnum.zoo.unit_scaled import UnitTransformer
    >>> model = UnitTransformer(vocab=12, length=6, dim=16, heads=2, layers=1, mlp_dim=32)
    >>> tokens = jnp.zeros((3, 6), jnp.int32)
    >>> variables = jax.eval_shape(model.init, jax.random.key(0), tokens)
    >>> jax.eval_shape(model.apply, variables, tokens).shape
    (3, 12)
  """
  vocab: int
  length: int
  dim: int = 64
  heads: int = 4
  layers: int = 2
  mlp_dim: int = 128
  num_classes: int | None = None
  tau: float = 0.1
  config: DotConfig | None = None
  probe: bool = False

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    if tokens.ndim != 2 or tokens.shape[1] > self.length:
      raise ValueError(f"tokens of shape {tokens.shape} must be (batch, n) with n <= length={self.length}")
    if self.dim % self.heads:
      raise ValueError(f"heads={self.heads} must divide dim={self.dim}")
    n = tokens.shape[1]
    tok = UnitEmbed(self.vocab, self.dim, name="token_embed")(tokens)
    pos = UnitEmbed(self.length, self.dim, name="position_embed")(jnp.broadcast_to(jnp.arange(n), tokens.shape))
    x = self.tap("embed", us.scaled(tok + pos, 2 ** -0.5, 1.0))
    for _ in range(self.layers):
      x = UnitTransformerBlock(self.heads, self.mlp_dim, self.tau, self.config, self.probe)(x)
    x = self.tap("final_norm", UnitLayerNorm()(x))
    x = self.tap("pool", us.scaled(jnp.mean(x, axis=1), n ** 0.25, n))
    head = UnitDense(self.vocab if self.num_classes is None else self.num_classes, config=self.config)
    return self.tap("logits", head(x))
