"""Small reference models made only of stock Flax layers, for tests, studies and benchmarks.

Every matrix product is a stock layer's (``nn.Dense``, ``nn.Conv``, ``nn.MultiHeadDotProductAttention``), so
quantized arithmetic can be swapped in through Flax's own injection points (``dot_general``,
``dot_general_cls``, ``conv_general_dilated``, ``attention_fn``) or by intercepting the layers with
``nn.intercept_methods``, without editing the models.

=====================  ===============================================================================
``MLP``                flatten, ReLU ``Dense`` layers, ``Dense`` head
``CNN``                conv stem, residual blocks with BatchNorm, global average pooling, ``Dense`` head
``Transformer``        token and position embeddings, pre-LN blocks, mean pooling, ``Dense`` head
``ZOO``                name -> constructor of a default :class:`ZooEntry` (model, example input, task)
=====================  ===============================================================================
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["MLP", "CNN", "ResidualBlock", "Transformer", "TransformerBlock", "ZooEntry", "ZOO"]


class MLP(nn.Module):
  """Multi-layer perceptron: flattens all but the batch axis, then ReLU ``Dense`` layers and a ``Dense`` head.

  Attributes:
    features: widths of the hidden layers.
    num_classes: width of the output (logits).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from lpnum.zoo.models import MLP
    >>> model = MLP(features=(32,))
    >>> x = jnp.zeros((2, 8, 8, 1))
    >>> variables = model.init(jax.random.key(0), x)
    >>> model.apply(variables, x).shape
    (2, 10)
  """
  features: Sequence[int] = (256, 256)
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    for width in self.features:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(self.num_classes)(x)


class ResidualBlock(nn.Module):
  """Two 3x3 convolutions with BatchNorm and ReLU, plus a shortcut: identity, or a strided 1x1 convolution with
  BatchNorm when the stride or channel count changes.

  Attributes:
    channels: output channels.
    strides: stride of the first convolution (and of the projection).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from lpnum.zoo.models import ResidualBlock
    >>> block = ResidualBlock(channels=4, strides=2)
    >>> x = jnp.zeros((2, 8, 8, 4))
    >>> variables = block.init(jax.random.key(0), x, train=False)
    >>> block.apply(variables, x, train=False).shape
    (2, 4, 4, 4)
  """
  channels: int
  strides: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9)
    y = nn.Conv(self.channels, (3, 3), strides=self.strides, use_bias=False)(x)
    y = nn.relu(norm()(y))
    y = nn.Conv(self.channels, (3, 3), use_bias=False)(y)
    y = norm()(y)
    if self.strides != 1 or x.shape[-1] != self.channels:
      x = nn.Conv(self.channels, (1, 1), strides=self.strides, use_bias=False)(x)
      x = norm()(x)
    return nn.relu(x + y)


class CNN(nn.Module):
  """Small residual network for NHWC images.

  A 3x3 convolution, BatchNorm and ReLU stem with ``channels[0]`` channels, then one :class:`ResidualBlock`
  per entry of ``channels`` (stride 1 for the first, 2 after), global average pooling and a ``Dense`` head.
  BatchNorm keeps running statistics (momentum 0.9, so short runs evaluate well) in the ``batch_stats``
  collection: call with ``train=True`` and ``mutable=["batch_stats"]`` to train, ``train=False`` to evaluate.

  Attributes:
    channels: output channels of the residual blocks.
    num_classes: width of the output (logits).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from lpnum.zoo.models import CNN
    >>> model = CNN(channels=(4,))
    >>> x = jnp.zeros((2, 8, 8, 1))
    >>> variables = model.init(jax.random.key(0), x, train=False)
    >>> sorted(variables)
    ['batch_stats', 'params']
    >>> logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    >>> logits.shape
    (2, 10)
  """
  channels: Sequence[int] = (16, 32)
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if not self.channels:
      raise ValueError(f"channels={self.channels!r} must name at least one residual block")
    x = nn.Conv(self.channels[0], (3, 3), use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    for i, c in enumerate(self.channels):
      x = ResidualBlock(c, strides=1 if i == 0 else 2)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes)(x)


class TransformerBlock(nn.Module):
  """Pre-LN transformer block: ``x + attention(LayerNorm(x))``, then ``x + MLP(LayerNorm(x))``, the MLP being
  ``Dense(mlp_dim)``, GELU, ``Dense(dim)``. Attention is bidirectional (no mask).

  Attributes:
    heads: attention heads; they divide the model width.
    mlp_dim: hidden width of the MLP.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from lpnum.zoo.models import TransformerBlock
    >>> block = TransformerBlock(heads=2, mlp_dim=16)
    >>> x = jnp.zeros((2, 5, 8))
    >>> variables = block.init(jax.random.key(0), x)
    >>> block.apply(variables, x).shape
    (2, 5, 8)
  """
  heads: int
  mlp_dim: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dim = x.shape[-1]
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads, qkv_features=dim)(nn.LayerNorm()(x))
    y = nn.gelu(nn.Dense(self.mlp_dim)(nn.LayerNorm()(x)))
    return x + nn.Dense(dim)(y)


class Transformer(nn.Module):
  """Encoder-only transformer classifier over token sequences of at most ``length`` tokens.

  Token embedding plus a learned position embedding (both ``nn.Embed``), ``layers`` pre-LN
  :class:`TransformerBlock` s, a final LayerNorm, mean pooling over positions and a ``Dense`` head.

  Attributes:
    vocab: number of token ids.
    length: maximum sequence length (number of learned positions).
    dim: model width.
    heads: attention heads; they divide ``dim``.
    layers: number of blocks.
    mlp_dim: hidden width of each block's MLP.
    num_classes: width of the output (logits); ``None`` means ``vocab`` (predict a token).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from lpnum.zoo.models import Transformer
    >>> model = Transformer(vocab=12, length=6, dim=16, heads=2, layers=1, mlp_dim=32)
    >>> tokens = jnp.zeros((3, 6), jnp.int32)
    >>> variables = model.init(jax.random.key(0), tokens)
    >>> model.apply(variables, tokens).shape
    (3, 12)
  """
  vocab: int
  length: int
  dim: int = 64
  heads: int = 4
  layers: int = 2
  mlp_dim: int = 128
  num_classes: int | None = None

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    if tokens.ndim != 2 or tokens.shape[1] > self.length:
      raise ValueError(f"tokens of shape {tokens.shape} must be (batch, n) with n <= length={self.length}")
    if self.dim % self.heads:
      raise ValueError(f"heads={self.heads} must divide dim={self.dim}")
    x = nn.Embed(self.vocab, self.dim, name="token_embed")(tokens)
    x = x + nn.Embed(self.length, self.dim, name="position_embed")(jnp.arange(tokens.shape[1]))
    for _ in range(self.layers):
      x = TransformerBlock(self.heads, self.mlp_dim)(x)
    x = jnp.mean(nn.LayerNorm()(x), axis=1)
    return nn.Dense(self.vocab if self.num_classes is None else self.num_classes)(x)


@dataclasses.dataclass(frozen=True)
class ZooEntry:
  """A default model, an input batch of the shape and dtype it expects, and the task it is meant for.

  Attributes:
    model: the Flax module.
    example_input: a batch of two inputs (zeros), for ``init`` and shape checks.
    task: ``"digits"`` (:func:`lpnum.zoo.data.digits`, 10 classes) or ``"sequence"``
      (:func:`lpnum.zoo.data.sequence_task` with its default length and vocabulary).
  """
  model: nn.Module
  example_input: np.ndarray
  task: str


def _mlp() -> ZooEntry:
  return ZooEntry(MLP(), np.zeros((2, 8, 8, 1), np.float32), "digits")


def _cnn() -> ZooEntry:
  return ZooEntry(CNN(), np.zeros((2, 8, 8, 1), np.float32), "digits")


def _transformer() -> ZooEntry:
  return ZooEntry(Transformer(vocab=16, length=16), np.zeros((2, 16), np.int32), "sequence")


#: Model name -> zero-argument constructor of its default :class:`ZooEntry`.
ZOO: dict[str, Callable[[], ZooEntry]] = {"mlp": _mlp, "cnn": _cnn, "transformer": _transformer}
