"""lpnum: low-precision number formats and kernels for JAX."""

from lpnum.rounding import Overflow, Rounding
from lpnum.formats import (
    ALL_FORMATS,
    BinaryFormat,
    FloatFormat,
    Format,
    IntFormat,
    PositFormat,
    ShiftFormat,
    Specials,
    format_of,
    get_format,
    int_format,
    p3109,
    posit,
)
from lpnum.quantize import decode, encode, quantize
from lpnum import estimators, mx, nvfp4, packing, qdot  # noqa: E402  (modules as namespaces)
from lpnum.blocks import Granularity, per_block, per_channel, per_tensor, per_tile
from lpnum.qarray import QArray
from lpnum.scaled import (Calibration, ScaledFormat, ScaleRule, absmax, dequantize, fake_quantize, mse, percentile,
                          quantize_scaled)
from lpnum.qdot import BackwardQuant, DotConfig, Engine, OperandQuant, Scaling, dot_general, quantize_grad

__version__ = "0.1.0"

__all__ = [
    "ALL_FORMATS", "BinaryFormat", "FloatFormat", "Format", "IntFormat", "Overflow", "PositFormat", "Rounding",
    "ShiftFormat", "Specials", "decode", "encode", "format_of", "get_format", "int_format", "p3109", "posit",
    "quantize", "estimators", "qdot", "mx", "nvfp4", "packing", "Granularity", "per_block", "per_channel", "per_tensor", "per_tile",
    "QArray", "Calibration", "ScaledFormat", "ScaleRule", "absmax", "dequantize", "fake_quantize", "mse",
    "percentile", "quantize_scaled", "BackwardQuant", "DotConfig", "Engine", "OperandQuant", "Scaling", "dot_general",
    "quantize_grad",
]
