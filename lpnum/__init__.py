"""lpnum: low-precision number formats and kernels for JAX."""

from lpnum._rounding import Overflow, Rounding
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

__version__ = "0.1.0"

__all__ = [
    "ALL_FORMATS", "BinaryFormat", "FloatFormat", "Format", "IntFormat", "Overflow", "PositFormat", "Rounding",
    "ShiftFormat", "Specials", "decode", "encode", "format_of", "get_format", "int_format", "p3109", "posit",
    "quantize",
]
