"""Scaled and block-scaled quantization: one mechanism for per-tensor, per-channel, per-group, tile, MX and NVFP4.

A :class:`ScaledFormat` names an element format, a granularity (which elements share a scale), the format the
scales are stored in, the rule that turns a block's range into a scale, and how that range is measured
(calibration). :func:`quantize_scaled` returns a :class:`~lpnum.QArray` holding packed element codes and scale
codes; :func:`dequantize` inverts it; :func:`fake_quantize` does both in one fused pass for training. The README
("Scaled formats: the arithmetic") states every rounding these make.

Modules, one job each: :mod:`~lpnum.scaled.format` (the descriptors), :mod:`~lpnum.scaled.presets` (MX and
NVFP4 as data), :mod:`~lpnum.scaled.scales` (scale computation), :mod:`~lpnum.scaled.elements` (the element
pass), :mod:`~lpnum.scaled.ops` (the public operations) and :mod:`~lpnum.scaled.xla_cpu` (the workarounds for
XLA on the CPU).
"""

from lpnum.scaled.format import Calibration, ScaledFormat, ScaleRule, absmax, mse, percentile
from lpnum.scaled.ops import clip_range, dequantize, fake_quantize, quantize_scaled

__all__ = ["ScaleRule", "Calibration", "ScaledFormat", "absmax", "percentile", "mse", "quantize_scaled",
           "dequantize", "fake_quantize", "clip_range"]
