"""Integer-only inference: batch-norm folding and int8 programs with dyadic requantization (HAWQ-V3).

Jacob et al. 2018 ("Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference") and Yao et al. 2021 ("HAWQ-V3: Dyadic Neural Network Quantization") run a quantized network with no
floating-point operation between its quantized input and its output: every real scale is folded into an integer
multiplier ``M0`` and a shift (:mod:`lpnum.dyadic`). A converted program here is:

- Weights: int8 per output channel, ``s_w = max|w| / 127`` (lpnum's ``ScaledFormat("int8", per_channel(-1))``),
  after batch norm is folded into the preceding convolution (:func:`fold_batch_norm`).
- Activations: int8 per tensor, zero point 0, static scales ``s = max|a| / 127`` calibrated on data (the float
  model's activations at each point; 1 where a tensor is all zeros). Codes saturate to ``[-128, 127]``.
- Biases: int32 at scale ``s_in * s_w``, ``round(b / (s_in * s_w))`` (half to even, on the host).
- Each Dense/Conv: int8 x int8 products accumulated in int32, plus the bias, then :func:`lpnum.dyadic.requantize`
  with ``M = s_in * s_w / s_out`` per output channel. ReLU is a clamp of the int8 codes at 0.
- Residual adds (TFLite's int8 ADD): both branches are shifted left by 20 bits, rescaled by the dyadic
  multipliers ``s_a / (2 max(s_a, s_b))`` and ``s_b / (2 max(s_a, s_b))``, added in int32 and requantized by
  ``2 max(s_a, s_b) / (2^20 s_out)``; then the ReLU clamp.
- Global average pooling: the int32 sum over the ``n = H W`` positions divided by ``n`` with an int32 division,
  rounded to nearest with ties away from zero (TFLite's AveragePool: ``(sum +- n // 2) / n`` truncated), at the
  input's scale.
- The head: int32 accumulators plus int32 bias are the output (logits at scale ``s_in * s_w[c]``); they are
  dequantized, a float multiply, only by :meth:`IntegerMLP.dequantize` after the integer program.

Programs are pytrees of integer arrays (the float scales are static metadata, used only outside the integer
program: to quantize the input, to dequantize the logits, and by ``fake_quant``, which evaluates the same
quantized model in float32 with quantize-dequantize at the same points, the reference integer-only inference is
compared with). :func:`integer_mlp` converts a linen MLP (``Dense_0 ... Dense_n`` with ReLU between, like
``lpnum.zoo.models.MLP``); :func:`integer_cnn` converts the variables of ``lpnum.zoo.models.CNN`` (a conv, BN,
ReLU stem; residual blocks of two conv-BN with a conv-BN projection where the shape changes; global average
pooling; a Dense head). Other architectures compose :class:`IntegerLinear` and :class:`IntegerAdd`.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from lpnum.blocks import per_channel, per_tensor
from lpnum.dyadic import multiply_by_quantized_multiplier, quantize_multiplier, requantize
from lpnum.quantize import decode
from lpnum.scaled import ScaledFormat, fake_quantize, quantize_scaled
from lpnum.validate import as_float_array, check_number, short

__all__ = ["fold_batch_norm", "IntegerLinear", "IntegerAdd", "IntegerBlock", "IntegerMLP", "IntegerCNN",
           "integer_mlp", "integer_cnn", "ADD_LEFT_SHIFT"]

#: Bits both operands of an integer residual add are shifted left by before rescaling (TFLite's int8 ADD).
ADD_LEFT_SHIFT = 20
#: Weights: int8, one float32 scale per output channel (of each kernel of a stack of kernels).
_STACKED_WEIGHTS = ScaledFormat("int8", per_channel((0, 2)))
_ACTIVATIONS = ScaledFormat("int8", per_tensor())
_CONV_DIMS = ("NHWC", "HWIO", "NHWC")


def fold_batch_norm(kernel: ArrayLike, bias: ArrayLike | None, scale: ArrayLike, offset: ArrayLike,
                    mean: ArrayLike, var: ArrayLike, epsilon: float = 1e-5) -> tuple[jax.Array, jax.Array]:
  """Folds an inference-mode batch norm into the Dense or Conv before it.

  ``BN(y) = scale (y - mean) / sqrt(var + epsilon) + offset`` of ``y = x @ kernel + bias`` (or a convolution)
  equals the layer with ``kernel * k`` and bias ``(bias - mean) k + offset``, ``k = scale / sqrt(var + epsilon)``
  per output channel (the kernel's last axis). Computed in float64, returned as float32.

  Args:
    kernel: the layer's kernel, output channels last (Dense ``(K, N)``, Conv ``(kh, kw, cin, N)``).
    bias: its bias ``(N,)``, or None (``use_bias=False``).
    scale, offset: the batch norm's ``scale`` (gamma) and ``bias`` (beta) params, ``(N,)``.
    mean, var: its running statistics (``batch_stats``), ``(N,)``.
    epsilon: the batch norm's epsilon (flax's default 1e-5).

  Returns:
    ``(kernel, bias)`` of the folded layer.

  Raises:
    TypeError: for non-float arrays or a non-number epsilon.
    ValueError: if a per-channel vector does not have the kernel's ``N`` entries, epsilon is negative, or
      ``var + epsilon`` is not positive.

  Example:
    >>> import jax.numpy as jnp
    >>> k, b = fold_batch_norm(jnp.ones((3, 2)), None, jnp.array([2.0, 1.0]), jnp.zeros(2), jnp.array([1.0, 0.0]),
    ...                        jnp.array([3.0, 0.0]), epsilon=1.0)
    >>> k[0].tolist(), b.tolist()
    ([1.0, 1.0], [-1.0, 0.0])
  """
  epsilon = check_number("epsilon", epsilon, at_least=0.0)
  w = np.asarray(as_float_array(kernel, "kernel"), np.float64)
  n = w.shape[-1] if w.ndim else 0
  vectors = {}
  for name, value in (("bias", bias), ("scale", scale), ("offset", offset), ("mean", mean), ("var", var)):
    if value is None and name == "bias":
      value = jnp.zeros(n, jnp.float32)
    v = np.asarray(as_float_array(value, name), np.float64)
    if v.shape != (n,):
      raise ValueError(f"{name} has shape {v.shape}; expected ({n},), one per output channel of kernel "
                       f"{w.shape}")
    vectors[name] = v
  if not np.all(vectors["var"] + epsilon > 0):  # also catches NaN
    raise ValueError(f"var + epsilon must be positive (running variances are at least 0): var={short(var)}, "
                     f"epsilon={epsilon}")
  k = vectors["scale"] / np.sqrt(vectors["var"] + epsilon)
  folded_bias = (vectors["bias"] - vectors["mean"]) * k + vectors["offset"]
  return jnp.asarray(w * k, jnp.float32), jnp.asarray(folded_bias, jnp.float32)


def _accumulate(x: jax.Array, weight: jax.Array, bias: jax.Array, strides: int) -> jax.Array:
  """int8 x int8 -> int32 Dense (on ``x`` flattened) or SAME-padded Conv, plus the int32 bias."""
  if weight.ndim == 4:
    acc = lax.conv_general_dilated(x, weight, (strides, strides), "SAME", dimension_numbers=_CONV_DIMS,
                                   preferred_element_type=jnp.int32)
  else:
    acc = lax.dot_general(x.reshape(x.shape[0], -1), weight, (((1,), (0,)), ((), ())),
                          preferred_element_type=jnp.int32)
  return acc + bias


@functools.partial(jax.jit, static_argnums=3)
def _float_layer(x: jax.Array, weight: jax.Array, bias: jax.Array, strides: int) -> jax.Array:
  """The float32 Dense or SAME Conv that :func:`_accumulate` computes in integers."""
  if weight.ndim == 4:
    y = lax.conv_general_dilated(x, weight, (strides, strides), "SAME", dimension_numbers=_CONV_DIMS,
                                 precision=lax.Precision.HIGHEST)
  else:
    y = jnp.dot(x.reshape(x.shape[0], -1), weight, precision=lax.Precision.HIGHEST)
  return y + bias


def _quantize_weights(kernels: tuple[jax.Array, ...]) -> list[tuple[jax.Array, np.ndarray]]:
  """Each kernel's int8 codes and float32 per-output-channel scales (lpnum's per-channel int8).

  The kernels, as ``(K, N)`` matrices, are zero-padded to one shape and stacked, so that one
  ``quantize_scaled`` call with a scale per (kernel, channel) quantizes them all (zeros change no absmax).
  """
  mats = [k.reshape(-1, k.shape[-1]) for k in kernels]
  rows, cols = max(m.shape[0] for m in mats), max(m.shape[1] for m in mats)
  stack = jnp.stack([jnp.pad(m, ((0, rows - m.shape[0]), (0, cols - m.shape[1]))) for m in mats])
  q = quantize_scaled(stack, _STACKED_WEIGHTS)
  codes = decode(q.element_codes, _STACKED_WEIGHTS.element).astype(jnp.int8)
  scales = np.asarray(decode(q.scales, _STACKED_WEIGHTS.scale_format), np.float32).reshape(len(mats), cols)
  return [(codes[i, :m.shape[0], :m.shape[1]].reshape(k.shape), scales[i, :m.shape[1]])
          for i, (k, m) in enumerate(zip(kernels, mats))]


def _layers(specs: list[tuple[jax.Array, jax.Array, float, float | None, bool, int]]) -> list[IntegerLinear]:
  """:class:`IntegerLinear` layers of ``(kernel, bias, input_scale, output_scale, relu, strides)``."""
  quantized = _quantize_weights(tuple(jnp.asarray(spec[0], jnp.float32) for spec in specs))
  return [IntegerLinear._from_codes(codes, s_w, *spec[1:]) for (codes, s_w), spec in zip(quantized, specs)]


def _fake(x: jax.Array, scale: float) -> jax.Array:
  return fake_quantize(x, _ACTIVATIONS, scale=np.float32(scale))


@dataclasses.dataclass(frozen=True)
class IntegerLinear:
  """One Dense or Conv layer of an integer-only program, with its requantization.

  ``y = requantize(x @ weight + bias, multiplier, shift)`` (a SAME Conv for a 4-D weight), clamped at 0 if
  ``relu``; without a multiplier (the head) the int32 accumulators are the output.

  Attributes:
    weight: int8 codes, ``(K, N)`` or ``(kh, kw, cin, N)``.
    bias: int32 ``(N,)`` at scale ``input_scale * weight_scale``.
    multiplier, shift: int32 ``(N,)``, the dyadic form of ``input_scale * weight_scale / output_scale``, or None.
    strides: the convolution's stride (static).
    relu: clamp the output codes at 0 (static).
    input_scale: the input codes' scale (static).
    weight_scale: the weights' per-channel scales (static).
    output_scale: the output codes' scale, None for the head (static).
  """

  weight: jax.Array
  bias: jax.Array
  multiplier: jax.Array | None
  shift: jax.Array | None
  strides: int = dataclasses.field(default=1, metadata=dict(static=True))
  relu: bool = dataclasses.field(default=False, metadata=dict(static=True))
  input_scale: float = dataclasses.field(default=1.0, metadata=dict(static=True))
  weight_scale: tuple[float, ...] = dataclasses.field(default=(), metadata=dict(static=True))
  output_scale: float | None = dataclasses.field(default=None, metadata=dict(static=True))

  @classmethod
  def from_float(cls, kernel: ArrayLike, bias: ArrayLike, input_scale: float, output_scale: float | None, *,
                 relu: bool = False, strides: int = 1) -> IntegerLinear:
    """Quantizes a float layer: int8 per-channel weights, int32 bias, dyadic multipliers (None for the head).

    Args:
      kernel: float weights, output channels last (Dense ``(K, N)``, Conv ``(kh, kw, cin, N)``).
      bias: float bias ``(N,)``.
      input_scale: the scale of the input codes.
      output_scale: the scale of the output codes, None for a head that returns int32 accumulators.
      relu: clamp the output codes at 0.
      strides: the convolution's stride.
    """
    (codes, s_w), = _quantize_weights((as_float_array(kernel, "kernel"),))
    return cls._from_codes(codes, s_w, bias, input_scale, output_scale, relu, strides)

  @classmethod
  def _from_codes(cls, codes: jax.Array, s_w: np.ndarray, bias: ArrayLike, input_scale: float,
                  output_scale: float | None, relu: bool, strides: int) -> IntegerLinear:
    acc_scale = np.float64(input_scale) * s_w.astype(np.float64)
    b = np.rint(np.asarray(bias, np.float64) / acc_scale)
    multiplier = shift = None
    if output_scale is not None:
      multiplier, shift = (jnp.asarray(v) for v in quantize_multiplier(acc_scale / np.float64(output_scale)))
    return cls(codes, jnp.asarray(np.clip(b, -(2**31), 2**31 - 1).astype(np.int32)), multiplier, shift, strides,
               relu, float(input_scale), tuple(float(s) for s in s_w),
               None if output_scale is None else float(output_scale))

  def accumulate(self, x: jax.Array) -> jax.Array:
    """The int32 accumulators ``x @ weight + bias`` of int8 input codes ``x``."""
    return _accumulate(x, self.weight, self.bias, self.strides)

  def __call__(self, x: jax.Array) -> jax.Array:
    """The output codes (int8), or the int32 accumulators of the head."""
    acc = self.accumulate(x)
    if self.multiplier is None:
      return acc
    y = requantize(acc, self.multiplier, self.shift)
    return jnp.maximum(y, jnp.int8(0)) if self.relu else y

  def fake_quant(self, x: jax.Array) -> jax.Array:
    """The same layer in float32: dequantized weights and bias, the output quantized and dequantized."""
    s_w = jnp.asarray(self.weight_scale, jnp.float32)
    w = self.weight.astype(jnp.float32) * s_w
    b = self.bias.astype(jnp.float32) * (jnp.float32(self.input_scale) * s_w)
    y = _float_layer(x, w, b, self.strides)
    if self.relu:
      y = jnp.maximum(y, 0.0)
    return y if self.output_scale is None else _fake(y, self.output_scale)


@dataclasses.dataclass(frozen=True)
class IntegerAdd:
  """A residual add of two int8 tensors at scales ``left_scale`` and ``right_scale`` into ``output_scale``.

  TFLite's int8 ADD: ``a' = mbqm(a << 20, M_a)``, ``b' = mbqm(b << 20, M_b)`` with ``M_a = s_a / (2 m)``,
  ``M_b = s_b / (2 m)``, ``m = max(s_a, s_b)``, then ``requantize(a' + b', 2 m / (2^20 s_out))`` and the ReLU
  clamp (``mbqm`` is :func:`lpnum.dyadic.multiply_by_quantized_multiplier`).

  Attributes:
    multipliers, shifts: int32 ``(3,)``: left, right, output.
    relu: clamp at 0 (static).
    left_scale, right_scale, output_scale: the scales (static).
  """

  multipliers: jax.Array
  shifts: jax.Array
  relu: bool = dataclasses.field(default=True, metadata=dict(static=True))
  left_scale: float = dataclasses.field(default=1.0, metadata=dict(static=True))
  right_scale: float = dataclasses.field(default=1.0, metadata=dict(static=True))
  output_scale: float = dataclasses.field(default=1.0, metadata=dict(static=True))

  @classmethod
  def from_scales(cls, left_scale: float, right_scale: float, output_scale: float, *, relu: bool = True
                  ) -> IntegerAdd:
    """The add of codes at ``left_scale`` and ``right_scale`` into codes at ``output_scale``.

    Example:
      >>> import jax.numpy as jnp
      >>> add = IntegerAdd.from_scales(0.5, 0.25, 0.5, relu=False)
      >>> add(jnp.array([10, -10], jnp.int8), jnp.array([4, 4], jnp.int8)).tolist()   # 5 + 1, -5 + 1
      [12, -8]
    """
    twice_max = 2.0 * max(float(left_scale), float(right_scale))
    reals = [left_scale / twice_max, right_scale / twice_max, twice_max / (2.0**ADD_LEFT_SHIFT * output_scale)]
    m, s = quantize_multiplier(np.array(reals, np.float64))
    return cls(jnp.asarray(m), jnp.asarray(s), relu, float(left_scale), float(right_scale), float(output_scale))

  def __call__(self, a: jax.Array, b: jax.Array) -> jax.Array:
    """The int8 codes of ``a + b`` (ReLU-clamped if ``relu``)."""
    a = multiply_by_quantized_multiplier(a.astype(jnp.int32) << ADD_LEFT_SHIFT, self.multipliers[0], self.shifts[0])
    b = multiply_by_quantized_multiplier(b.astype(jnp.int32) << ADD_LEFT_SHIFT, self.multipliers[1], self.shifts[1])
    y = requantize(a + b, self.multipliers[2], self.shifts[2])
    return jnp.maximum(y, jnp.int8(0)) if self.relu else y

  def fake_quant(self, a: jax.Array, b: jax.Array) -> jax.Array:
    """The same add in float32, the sum quantized and dequantized."""
    y = a + b
    return _fake(jnp.maximum(y, 0.0) if self.relu else y, self.output_scale)


@dataclasses.dataclass(frozen=True)
class IntegerBlock:
  """A residual block: ``add(conv2(conv1(x)), shortcut(x) or x)``, each conv with its batch norm folded in.

  Attributes:
    conv1: the first convolution (ReLU).
    conv2: the second (no ReLU).
    shortcut: the 1x1 projection, or None for the identity.
    add: the residual add (ReLU).
  """

  conv1: IntegerLinear
  conv2: IntegerLinear
  shortcut: IntegerLinear | None
  add: IntegerAdd

  def __call__(self, x: jax.Array) -> jax.Array:
    """The block on int8 codes."""
    return self.add(self.conv2(self.conv1(x)), x if self.shortcut is None else self.shortcut(x))

  def fake_quant(self, x: jax.Array) -> jax.Array:
    """The block in float32 with quantize-dequantize."""
    return self.add.fake_quant(self.conv2.fake_quant(self.conv1.fake_quant(x)),
                               x if self.shortcut is None else self.shortcut.fake_quant(x))


def _mean_pool(x: jax.Array) -> jax.Array:
  """The int8 mean over axes 1 and 2: the int32 sum divided by ``n = H W``, ties away from zero."""
  n = x.shape[1] * x.shape[2]
  total = jnp.sum(x.astype(jnp.int32), axis=(1, 2))
  half = jnp.where(total >= 0, jnp.int32(n // 2), jnp.int32(-(n // 2)))
  return lax.div(total + half, jnp.int32(n)).astype(jnp.int8)


class _Program:
  """What the integer MLP and CNN share: input quantization, logits dequantization, float evaluation."""

  input_scale: float
  head: IntegerLinear

  def quantize_input(self, x: ArrayLike) -> jax.Array:
    """The int8 codes of a float input at the calibrated input scale (nearest even, saturating)."""
    q = quantize_scaled(as_float_array(x, "x"), _ACTIVATIONS, scale=np.float32(self.input_scale))
    return decode(q.element_codes, _ACTIVATIONS.element).astype(jnp.int8)

  def dequantize(self, logits: ArrayLike) -> jax.Array:
    """Float32 logits from the program's int32 output: ``logits * input_scale * weight_scale`` of the head."""
    s = jnp.float32(self.head.input_scale) * jnp.asarray(self.head.weight_scale, jnp.float32)
    return jnp.asarray(logits).astype(jnp.float32) * s

  def logits(self, x: ArrayLike) -> jax.Array:
    """Float input to float logits: quantize, run the integer program, dequantize."""
    return self.dequantize(self(self.quantize_input(x)))

  def fake_quant_logits(self, x: ArrayLike) -> jax.Array:
    """The same quantized model evaluated in float32 (quantize-dequantize at every point the program quantizes)."""
    return self.fake_quant(_fake(as_float_array(x, "x"), self.input_scale))


@dataclasses.dataclass(frozen=True)
class IntegerMLP(_Program):
  """An integer-only MLP: int8 input codes -> :class:`IntegerLinear` layers with ReLU -> int32 logits.

  Attributes:
    layers: the hidden layers (ReLU, requantized) and the head (int32 output), in order.
    input_scale: the input codes' scale (static).
  """

  layers: tuple[IntegerLinear, ...]
  input_scale: float = dataclasses.field(default=1.0, metadata=dict(static=True))

  @property
  def head(self) -> IntegerLinear:
    return self.layers[-1]

  def __call__(self, x: jax.Array) -> jax.Array:
    """int8 input codes (batch first; flattened) to int32 logits, in integer arithmetic only."""
    for layer in self.layers:
      x = layer(x)
    return x

  def fake_quant(self, x: jax.Array) -> jax.Array:
    for layer in self.layers:
      x = layer.fake_quant(x)
    return x


@dataclasses.dataclass(frozen=True)
class IntegerCNN(_Program):
  """An integer-only residual CNN (``lpnum.zoo.models.CNN``): stem, blocks, integer mean pooling, int32 head.

  Attributes:
    stem: the first convolution (ReLU).
    blocks: the residual blocks.
    head: the Dense head (int32 output).
    input_scale: the input codes' scale (static).
  """

  stem: IntegerLinear
  blocks: tuple[IntegerBlock, ...]
  head: IntegerLinear
  input_scale: float = dataclasses.field(default=1.0, metadata=dict(static=True))

  def __call__(self, x: jax.Array) -> jax.Array:
    """int8 NHWC input codes to int32 logits, in integer arithmetic only."""
    x = self.stem(x)
    for block in self.blocks:
      x = block(x)
    return self.head(_mean_pool(x))

  def fake_quant(self, x: jax.Array) -> jax.Array:
    x = self.stem.fake_quant(x)
    for block in self.blocks:
      x = block.fake_quant(x)
    return self.head.fake_quant(_fake(jnp.mean(x, axis=(1, 2)), self.head.input_scale))


def _register(cls: type) -> None:
  """Registers a program dataclass as a pytree: its integer arrays are leaves, its static fields metadata."""
  fields = dataclasses.fields(cls)
  jax.tree_util.register_dataclass(cls, data_fields=[f.name for f in fields if not f.metadata.get("static")],
                                   meta_fields=[f.name for f in fields if f.metadata.get("static")])


for _cls in (IntegerLinear, IntegerAdd, IntegerBlock, IntegerMLP, IntegerCNN):
  _register(_cls)


def _scale(a: jax.Array) -> float:
  """The static per-tensor scale ``max|a| / 127`` as a float32 number (1 for an all-zero tensor)."""
  amax = np.float32(np.max(np.abs(np.asarray(a, np.float32)), initial=0.0))
  return float(np.float32(amax / np.float32(127))) if amax > 0 else 1.0


def _numbered(tree: dict[str, Any], prefix: str, what: str) -> list[Any]:
  """The entries ``{prefix}_0, {prefix}_1, ...`` of ``tree`` in order."""
  names = sorted((k for k in tree if re.fullmatch(rf"{prefix}_\d+", k)), key=lambda k: int(k.rsplit("_", 1)[1]))
  if not names:
    raise ValueError(f"{what} has no {prefix}_0, {prefix}_1... entries; got keys {sorted(tree)}")
  return [tree[k] for k in names]


def _params(variables: Any) -> dict[str, Any]:
  if not isinstance(variables, dict) or "params" not in variables:
    raise TypeError(f"variables={short(variables)} must be a linen variables dict with a 'params' collection")
  return variables["params"]


def integer_mlp(variables: dict[str, Any], calibration_x: ArrayLike) -> IntegerMLP:
  """Converts a linen MLP (``Dense_0 ... Dense_n``, ReLU between, no ReLU after the last) to integer-only.

  The activation scales are calibrated on ``calibration_x``: ``max|a| / 127`` of the float model's input and of
  each hidden layer's ReLU output.

  Args:
    variables: the model's variables (``{"params": {"Dense_0": {"kernel", "bias"}, ...}}``), e.g. of
      ``lpnum.zoo.models.MLP``.
    calibration_x: a float batch of inputs (flattened per example, as the model does).

  Returns:
    The :class:`IntegerMLP`.

  Raises:
    TypeError: for variables that are not a linen variables dict, or non-float calibration data.
    ValueError: for params without ``Dense_i`` layers.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from lpnum.zoo.models import MLP
    >>> x = jax.random.uniform(jax.random.key(0), (16, 8, 8, 1))
    >>> variables = MLP(features=(32,)).init(jax.random.key(1), x)
    >>> program = integer_mlp(variables, x)
    >>> program(program.quantize_input(x)).dtype                 # int32 logits
    dtype('int32')
  """
  layers = _numbered(_params(variables), "Dense", "variables['params']")
  x = as_float_array(calibration_x, "calibration_x")
  k = int(np.prod(np.shape(layers[0]["kernel"])[:-1]))
  if x.ndim < 1 or x[:1].size != k:
    raise ValueError(f"calibration_x has shape {x.shape}; each example must hold {k} values, Dense_0's inputs")
  x = x.reshape(x.shape[0], -1)
  scales = [_scale(x)]
  for p in layers[:-1]:
    x = jnp.maximum(_float_layer(x, jnp.asarray(p["kernel"]), jnp.asarray(p["bias"]), 1), 0.0)
    scales.append(_scale(x))
  specs = [(p["kernel"], p["bias"], scales[i], scales[i + 1], True, 1) for i, p in enumerate(layers[:-1])]
  return IntegerMLP(tuple(_layers(specs + [(layers[-1]["kernel"], layers[-1]["bias"], scales[-1], None, False, 1)])),
                    scales[0])


def _folded(params: dict[str, Any], stats: dict[str, Any], conv: str, norm: str) -> tuple[jax.Array, jax.Array]:
  p, s = params[norm], stats[norm]
  return fold_batch_norm(params[conv]["kernel"], params[conv].get("bias"), p["scale"], p["bias"], s["mean"],
                         s["var"])


def integer_cnn(variables: dict[str, Any], calibration_x: ArrayLike) -> IntegerCNN:
  """Converts a ``lpnum.zoo.models.CNN``'s variables to integer-only, folding every batch norm into its conv.

  The layout read is the zoo CNN's: ``Conv_0`` + ``BatchNorm_0`` + ReLU (stem); ``ResidualBlock_i`` with
  ``Conv_0``/``BatchNorm_0`` (ReLU, stride 1 for the first block and 2 after), ``Conv_1``/``BatchNorm_1``, and
  ``Conv_2``/``BatchNorm_2`` (1x1 projection) where the shape changes; global average pooling; ``Dense_0``.
  Activation scales are calibrated on ``calibration_x`` with the folded float model: the input, the stem's
  output, and in each block the first conv's output, the second conv's and the projection's (the add's inputs)
  and the block's output.

  Args:
    variables: ``{"params": ..., "batch_stats": ...}`` of a trained zoo ``CNN``.
    calibration_x: a float NHWC batch.

  Returns:
    The :class:`IntegerCNN`.

  Raises:
    TypeError: for variables that are not a linen variables dict, or non-float calibration data.
    ValueError: for variables without the zoo CNN's layers.

  Example:
    >>> import jax
    >>> from lpnum.zoo.models import CNN
    >>> x = jax.random.uniform(jax.random.key(0), (4, 8, 8, 1))
    >>> variables = jax.jit(lambda v: CNN(channels=(2,)).init(jax.random.key(1), v, train=False))(x)
    >>> program = integer_cnn(variables, x)
    >>> program.stem.weight.dtype, program.blocks[0].shortcut is None
    (dtype('int8'), True)
  """
  params = _params(variables)
  stats = variables.get("batch_stats", {})
  if "Conv_0" not in params or "BatchNorm_0" not in stats or "Dense_0" not in params:
    raise ValueError(f"variables must be a lpnum.zoo.models.CNN's (Conv_0, BatchNorm_0 with batch_stats, "
                     f"ResidualBlock_i, Dense_0); got params {sorted(params)}")
  x = as_float_array(calibration_x, "calibration_x")
  cin = np.shape(params["Conv_0"]["kernel"])[-2]
  if x.ndim != 4 or x.shape[-1] != cin:
    raise ValueError(f"calibration_x has shape {x.shape}; it must be an NHWC batch with {cin} channels, Conv_0's "
                     "inputs")
  s_in = _scale(x)
  w, b = _folded(params, stats, "Conv_0", "BatchNorm_0")
  x = jnp.maximum(_float_layer(x, w, b, 1), 0.0)
  s_x = _scale(x)
  specs = [(w, b, s_in, s_x, True, 1)]
  adds, projected = [], []
  for i, (bp, bs) in enumerate(zip(_numbered(params, "ResidualBlock", "variables['params']"),
                                   _numbered(stats, "ResidualBlock", "variables['batch_stats']"))):
    stride = 1 if i == 0 else 2
    w1, b1 = _folded(bp, bs, "Conv_0", "BatchNorm_0")
    w2, b2 = _folded(bp, bs, "Conv_1", "BatchNorm_1")
    h = jnp.maximum(_float_layer(x, w1, b1, stride), 0.0)
    y = _float_layer(h, w2, b2, 1)
    s_h, s_y = _scale(h), _scale(y)
    specs += [(w1, b1, s_x, s_h, True, stride), (w2, b2, s_h, s_y, False, 1)]
    short_in, s_short = x, s_x
    projected.append("Conv_2" in bp)
    if projected[-1]:
      w3, b3 = _folded(bp, bs, "Conv_2", "BatchNorm_2")
      short_in = _float_layer(x, w3, b3, stride)
      s_short = _scale(short_in)
      specs.append((w3, b3, s_x, s_short, False, stride))
    x = jnp.maximum(y + short_in, 0.0)
    s_out = _scale(x)
    adds.append(IntegerAdd.from_scales(s_y, s_short, s_out))
    s_x = s_out
  specs.append((params["Dense_0"]["kernel"], params["Dense_0"]["bias"], s_x, None, False, 1))
  layers = iter(_layers(specs))
  stem = next(layers)
  blocks = []
  for add, projection in zip(adds, projected):
    conv1, conv2 = next(layers), next(layers)
    blocks.append(IntegerBlock(conv1, conv2, next(layers) if projection else None, add))
  head = next(layers)
  return IntegerCNN(stem, tuple(blocks), head, s_in)
