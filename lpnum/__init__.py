"""lpnum: low-precision number formats and kernels for JAX.

``import lpnum`` is cheap: it imports no JAX. Each public name is imported from its module the first time it is
used (PEP 562 module ``__getattr__``), and so are the subpackages that are not part of the core surface
(``lpnum.nn``, ``lpnum.kernels``, ``lpnum.zoo``): ``lpnum.kernels.matmul`` works after ``import lpnum`` alone, and
``lpnum --help`` answers without loading JAX.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Where each public function and class lives: ``{name: module}``.
_EXPORTS = {
    **dict.fromkeys(("Overflow", "Rounding"), "lpnum.rounding"),
    **dict.fromkeys(("ALL_FORMATS", "BinaryFormat", "FloatFormat", "Format", "IntFormat", "PositFormat",
                     "ShiftFormat", "Specials", "format_of", "get_format", "int_format", "p3109", "posit"),
                    "lpnum.formats"),
    **dict.fromkeys(("decode", "encode", "quantize"), "lpnum.quantize"),
    **dict.fromkeys(("Granularity", "per_block", "per_channel", "per_tensor", "per_tile"), "lpnum.blocks"),
    "QArray": "lpnum.qarray",
    **dict.fromkeys(("Calibration", "ScaledFormat", "ScaleRule", "absmax", "dequantize", "fake_quantize", "mse",
                     "percentile", "quantize_scaled"), "lpnum.scaled"),
    **dict.fromkeys(("BackwardQuant", "DotConfig", "Engine", "OperandQuant", "Scaling", "dot_general",
                     "quantize_grad"), "lpnum.qdot"),
}

#: Modules and subpackages reachable as attributes: the public namespaces of ``__all__``, the core's modules, and
#: the layers, kernels and zoo (which import flax or Pallas, so only when first used).
_MODULES = ("estimators", "mx", "nvfp4", "packing", "pam", "qdot", "blocks", "carrier", "description", "exact",
            "formats", "hadamard", "dyadic", "qarray", "rounding", "scaled", "unit_scaling", "validate", "nn", "kernels",
            "zoo")

__all__ = [
    "ALL_FORMATS", "BinaryFormat", "FloatFormat", "Format", "IntFormat", "Overflow", "PositFormat", "Rounding",
    "ShiftFormat", "Specials", "decode", "encode", "format_of", "get_format", "int_format", "p3109", "posit",
    "quantize", "estimators", "qdot", "mx", "nvfp4", "packing", "pam", "Granularity", "per_block", "per_channel", "per_tensor",
    "per_tile", "QArray", "Calibration", "ScaledFormat", "ScaleRule", "absmax", "dequantize", "fake_quantize", "mse",
    "percentile", "quantize_scaled", "BackwardQuant", "DotConfig", "Engine", "OperandQuant", "Scaling", "dot_general",
    "quantize_grad",
]


def __getattr__(name: str) -> Any:
  if name in _EXPORTS:
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
  elif name in _MODULES:
    value = importlib.import_module(f"lpnum.{name}")
  else:
    raise AttributeError(f"module 'lpnum' has no attribute {name!r}")
  globals()[name] = value
  return value


def __dir__() -> list[str]:
  return sorted({*globals(), *__all__, *_MODULES})


class _Package(types.ModuleType):
  """The lpnum package: importing the module ``lpnum.quantize`` leaves ``lpnum.quantize`` the function."""

  def __setattr__(self, name: str, value: Any) -> None:
    if name in _EXPORTS and isinstance(value, types.ModuleType):
      value = getattr(value, name)
    super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:
  from lpnum import estimators, kernels, mx, nn, nvfp4, packing, pam, qdot, zoo
  from lpnum.blocks import Granularity, per_block, per_channel, per_tensor, per_tile
  from lpnum.formats import (ALL_FORMATS, BinaryFormat, FloatFormat, Format, IntFormat, PositFormat, ShiftFormat,
                             Specials, format_of, get_format, int_format, p3109, posit)
  from lpnum.qarray import QArray
  from lpnum.qdot import BackwardQuant, DotConfig, Engine, OperandQuant, Scaling, dot_general, quantize_grad
  from lpnum.quantize import decode, encode, quantize
  from lpnum.rounding import Overflow, Rounding
  from lpnum.scaled import (Calibration, ScaledFormat, ScaleRule, absmax, dequantize, fake_quantize, mse, percentile,
                            quantize_scaled)
