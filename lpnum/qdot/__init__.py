"""The quantized matmul: one typed config (:class:`DotConfig` of :class:`OperandQuant` and :class:`BackwardQuant`)
and one :func:`dot_general` that lpnum's layers, the kernels' VJP and user code all use; :func:`quantize_grad`
rounds a cotangent anywhere in a model."""

from lpnum.qdot.config import SAME, Accumulator, BackwardQuant, DotConfig, Engine, OperandQuant, Scaling
from lpnum.qdot.ops import (OperandState, PackedOperand, amax, dot_general, normalize_dimension_numbers,
                            operand_codes, quantize_grad, quantize_operand, rotated_operands, scale_from_amax)

__all__ = ["SAME", "Accumulator", "BackwardQuant", "DotConfig", "Engine", "OperandQuant", "Scaling", "OperandState",
           "PackedOperand", "amax", "dot_general", "normalize_dimension_numbers", "operand_codes", "quantize_grad",
           "quantize_operand", "rotated_operands", "scale_from_amax"]
