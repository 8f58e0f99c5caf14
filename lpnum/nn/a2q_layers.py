"""A2Q layers: dense layers whose integer weights provably never overflow a narrow accumulator.

After Colbert, Pappalardo and Petri-Koenig, "A2Q: Accumulator-Aware Quantization with Guaranteed Overflow
Avoidance", ICCV 2023. :class:`A2QDense` keeps its kernel in the A2Q weight-normalized form of
:mod:`lpnum.nn.a2q` (direction ``v``, per-channel norm ``g`` and step ``scale``, learned as ``log2_scale``), so
that whatever the training does, each output channel's integer weights ``q`` satisfy
``||q||_1 <= a2q_bound(input_bits, accumulator_bits)``;
its inputs are quantized to ``input_bits``-bit integers with one dynamic per-tensor scale (straight-through
gradient). The layer's matmul is then ``s_x * (x_int @ q) * scale``: an integer dot product of ``input_bits``-bit
inputs with the integer weights, which a signed ``accumulator_bits``-bit accumulator adds without overflow in any
order (check it with :func:`lpnum.kernels.accumulate.matmul` and an ``IntAccumulator``).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from lpnum.formats import IntFormat
from lpnum.nn import a2q as _a2q
from lpnum.qdot import DotConfig, OperandQuant, dot_general

__all__ = ["A2QDense"]


class A2QDense(nn.Module):
  """A dense layer with A2Q weights and integer inputs: ``y = Q_N(x) @ w_q + bias``.

  Params: ``v`` (in_features, features), ``g`` and ``log2_scale`` (features,), initialized by
  :func:`lpnum.nn.a2q.a2q_init` from a ``kernel_init`` kernel, and ``bias``. The kernel is
  ``w_q = a2q_quantize(v, g, scale, ...)`` with ``scale = 2^log2_scale``: the step is learned in the log domain,
  so that it stays positive and gradient steps change it relatively (a raw step of about 1e-3 would be driven
  negative by a few optimizer steps of ordinary size). The inputs are rounded to ``input_bits``-bit integers (signed, or
  unsigned for non-negative inputs such as ReLU outputs: negative values clip to 0) with a per-tensor dynamic
  scale, through :func:`lpnum.dot_general`. :meth:`integer_weights` gives the integer weights
  (``w_q = scale * q``).

  Attributes:
    features: output features.
    weight_bits: M, bits of the signed integer weights (2..16).
    input_bits: N, bits of the integer inputs (2..16 signed, 1..16 unsigned).
    accumulator_bits: P, bits of the signed accumulator the guarantee is for.
    signed_input: whether the inputs are signed integers.
    use_bias: add a (float) bias after the integer matmul.
    kernel_init: the float kernel that ``a2q_init`` starts from.
    bias_init: the bias initializer.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from lpnum.kernels.accumulate import a2q_bound
    >>> from lpnum.nn.a2q_layers import A2QDense
    >>> layer = A2QDense(3, weight_bits=4, input_bits=4, accumulator_bits=10)
    >>> variables = layer.init(jax.random.key(0), jnp.ones((1, 16)))
    >>> q = layer.apply(variables, method=layer.integer_weights)
    >>> q.dtype, bool((jnp.abs(q.astype(jnp.int32)).sum(0) <= a2q_bound(4, 10)).all())
    (dtype('int8'), True)
    >>> layer.apply(variables, jnp.ones((2, 16))).shape
    (2, 3)
  """

  features: int
  weight_bits: int = 8
  input_bits: int = 8
  accumulator_bits: int = 16
  signed_input: bool = True
  use_bias: bool = True
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros_init()

  def __post_init__(self) -> None:
    if isinstance(self.features, bool) or not isinstance(self.features, int) or self.features < 1:
      raise ValueError(f"features={self.features!r} must be a positive int")
    if not isinstance(self.signed_input, bool):
      raise TypeError(f"signed_input={self.signed_input!r} must be a bool")
    lo = 2 if self.signed_input else 1
    if isinstance(self.input_bits, bool) or not isinstance(self.input_bits, int) or not lo <= self.input_bits <= 16:
      raise ValueError(f"input_bits={self.input_bits!r} must be an integer in [{lo}, 16]")
    _a2q.check_bits("weight_bits", self.weight_bits, 2, 16)
    _a2q.a2q_limit(1, input_bits=self.input_bits, accumulator_bits=self.accumulator_bits,
                   signed_input=self.signed_input)
    super().__post_init__()

  def _kwargs(self) -> dict:
    return dict(weight_bits=self.weight_bits, input_bits=self.input_bits, accumulator_bits=self.accumulator_bits,
                signed_input=self.signed_input)

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    """Applies the layer to ``inputs`` (..., in_features)."""
    inputs = jnp.asarray(inputs)
    if not jnp.issubdtype(inputs.dtype, jnp.floating) or inputs.ndim < 1:
      raise TypeError(f"inputs must be a float array (..., in_features), got {inputs.dtype} {inputs.shape}")
    shape = (inputs.shape[-1], self.features)
    v = self.param("v", lambda key: _a2q.a2q_init(self.kernel_init(key, shape, jnp.float32), **self._kwargs())[0])
    g = self.param("g", lambda _: _a2q.a2q_init(v, **self._kwargs())[1])
    log2_scale = self.param("log2_scale", lambda _: jnp.log2(_a2q.a2q_init(v, **self._kwargs())[2]))
    kernel = _a2q.a2q_quantize(v, g, jnp.exp2(log2_scale), **self._kwargs())
    cfg = DotConfig(lhs=OperandQuant(IntFormat(bits=self.input_bits, signed=self.signed_input)))
    y = dot_general(inputs, kernel, (((inputs.ndim - 1,), (0,)), ((), ())), cfg)
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,), jnp.float32)
    return y

  def integer_weights(self) -> jax.Array:
    """The integer weights ``q`` (in_features, features), int8 (int16 for ``weight_bits > 8``): every column's L1
    norm is at most ``a2q_bound(input_bits, accumulator_bits, signed_input=...)``."""
    p = self.variables["params"]
    return _a2q.a2q_integer_weights(p["v"], p["g"], jnp.exp2(p["log2_scale"]), **self._kwargs())
