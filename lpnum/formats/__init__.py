"""Number formats: families (constructors) and named presets."""

from lpnum.formats._base import TABLE_BITS, Format, table_decode
from lpnum.formats._float import FloatFormat, Specials
from lpnum.formats._int import BinaryFormat, IntFormat
from lpnum.formats._posit import PositFormat
from lpnum.formats._shift import ShiftFormat
from lpnum.formats._table import (ALL_FORMATS, FLOAT32, SCALED_PRESET_NAMES, as_format, format_from_description,
                                  format_of, get_format, int_format, p3109, posit)

__all__ = [
    "ALL_FORMATS", "FLOAT32", "SCALED_PRESET_NAMES", "TABLE_BITS", "table_decode", "BinaryFormat", "FloatFormat",
    "Format", "IntFormat", "PositFormat", "ShiftFormat", "Specials", "as_format", "format_from_description",
    "format_of", "get_format", "int_format", "p3109", "posit",
]
