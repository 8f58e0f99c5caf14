"""Flax layers, quantization recipes and model integration.

The quantized matmul and its config are the core's (:class:`lpnum.DotConfig`, :func:`lpnum.dot_general`); this
package plugs them into Flax:

- :func:`make_dot_general`, :func:`make_conv_general_dilated`: the plain ``dot_general=`` hooks (stateless configs).
- :mod:`lpnum.nn.linen`, :mod:`lpnum.nn.nnx`: modules for the stock layers' injection hooks, with state (delayed
  and static scales, learned LSQ steps and PACT clips).
- :func:`quantize_model` with :class:`Rule`: quantize an existing model by module paths.
- :func:`ptq`: post-training quantization of a params tree into packed kernels.
- :mod:`lpnum.nn.serialization`: importing :mod:`lpnum.nn` registers QArray, PackedWeights, GroupedWeights and
  QuantizedKernel with ``flax.serialization``, each with its description (the core does not import flax);
  :mod:`lpnum.nn.checkpoint` (import it as a module) saves and restores them with orbax.
- :mod:`lpnum.nn.attention` (quantized attention, clipped softmax, gated attention, quantized einsum),
  :mod:`lpnum.nn.a2q_layers` (A2QDense), :mod:`lpnum.nn.mixed_precision`, :mod:`lpnum.nn.a2q`,
  :mod:`lpnum.nn.comm`, :mod:`lpnum.nn.sensitivity` (HAWQ-V2 per-layer Hessian sensitivity),
  :mod:`lpnum.nn.allocation` (one format per layer by an exact ILP, as rules), :mod:`lpnum.nn.grouped` (the
  expert bank of mixture-of-experts layers, linen and nnx, which rules and PTQ quantize per expert),
  :mod:`lpnum.nn.pam` (a model's matmuls with piecewise-affine multiplication), :mod:`lpnum.nn.unit_scaling` and
  :mod:`lpnum.nn.integer_only`: import them as modules. The model zoo, data sets and training loop are :mod:`lpnum.zoo`.
"""

from lpnum.nn import linen, nnx
from lpnum.nn.hooks import make_conv_general_dilated, make_dot_general
from lpnum.nn.ptq import QuantizedKernel, dequantize_kernel, params_nbytes, ptq
from lpnum.nn.rule import Rule
from lpnum.nn.rules import QuantizedModel, kernel_views, ptq_nnx, quantize_model
from lpnum.nn import serialization  # noqa: F401  (registers QArray and packed kernels with flax.serialization)

__all__ = [
    "make_dot_general", "make_conv_general_dilated", "linen", "nnx", "QuantizedKernel", "dequantize_kernel",
    "params_nbytes", "ptq", "QuantizedModel", "Rule", "kernel_views", "ptq_nnx", "quantize_model",
]
