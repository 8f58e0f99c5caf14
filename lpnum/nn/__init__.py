"""Flax layers, quantization recipes and model integration.

- :mod:`lpnum.nn.config`: :class:`TensorQuant`, :class:`Backward`, :class:`QuantConfig` (one frozen config per
  layer).
- :func:`dot_general`: the quantized dot_general every layer uses; :func:`make_dot_general` for the plain
  ``dot_general=`` hook.
- :mod:`lpnum.nn.linen`, :mod:`lpnum.nn.nnx`: modules for the stock layers' injection hooks.
- :func:`quantize_model` with :class:`Rule`: quantize an existing model by module paths.
- :func:`ptq`: post-training quantization of a params tree into packed kernels.
- :mod:`lpnum.nn.serialization`: importing :mod:`lpnum.nn` registers QArray, PackedWeights and QuantizedKernel with
  ``flax.serialization`` (the core does not import flax).
- :mod:`lpnum.nn.attention` (quantized attention, clipped softmax, gated attention, quantized einsum),
  :mod:`lpnum.nn.a2q_layers` (A2QDense), :mod:`lpnum.nn.mixed_precision`, :mod:`lpnum.nn.a2q`,
  :mod:`lpnum.nn.comm`: import them as modules. The model zoo, data sets and training loop are :mod:`lpnum.zoo`.
"""

from lpnum.nn import linen, nnx
from lpnum.nn.config import Backward, QuantConfig, TensorQuant
from lpnum.nn.dot import OperandState, dot_general, make_conv_general_dilated, make_dot_general
from lpnum.nn.ptq import QuantizedKernel, dequantize_kernel, params_nbytes, ptq
from lpnum.nn.rules import QuantizedModel, Rule, kernel_views, ptq_nnx, quantize_model
from lpnum.nn import serialization  # noqa: F401  (registers QArray and packed kernels with flax.serialization)

__all__ = [
    "Backward", "QuantConfig", "TensorQuant", "OperandState", "dot_general", "make_dot_general", "make_conv_general_dilated", "linen", "nnx",
    "QuantizedKernel", "dequantize_kernel", "params_nbytes", "ptq", "QuantizedModel", "Rule", "kernel_views", "ptq_nnx",
    "quantize_model",
]
