"""Scaled formats as values: :class:`ScaledFormat` (element format, granularity, scale format, scale rule,
calibration) and the calibrations :func:`absmax`, :func:`percentile`, :func:`mse`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from lpnum import blocks
from lpnum.blocks import Granularity
from lpnum.formats import (BinaryFormat, FloatFormat, Format, IntFormat, PositFormat, ShiftFormat, as_format,
                           format_from_description)
from lpnum.rounding import ParsedEnum
from lpnum.validate import check_flag, check_int, check_number, short

__all__ = ["ScaleRule", "Calibration", "ScaledFormat", "absmax", "percentile", "mse", "is_pow2", "pow2_range",
           "significand_bits", "element_precision", "MIN_NORMAL"]

#: float32's smallest normal: general scales are never below it.
MIN_NORMAL = 2.0 ** -126


class ScaleRule(ParsedEnum):
  """How a block's range becomes a scale (see the module docstring)."""

  FLOOR = "floor"
  CEIL = "ceil"
  EVEN = "even"
  RCEIL = "rceil"
  NEAREST = "nearest"


@dataclasses.dataclass(frozen=True)
class Calibration:
  """How a block's range is measured: build one with :func:`absmax`, :func:`percentile` or :func:`mse`."""

  kind: str = "absmax"
  q: float = 100.0
  ratios: tuple[float, ...] = ()


def absmax() -> Calibration:
  """The range is the block's largest magnitude: nothing is clipped."""
  return Calibration("absmax")


def percentile(q: float) -> Calibration:
  """The range is the ``q``-th percentile of the block's magnitudes (linear interpolation, as numpy's default);
  larger values saturate."""
  q = check_number("q", q, positive=True)
  if q > 100:
    raise ValueError(f"q={q!r} must be a number in (0, 100]")
  return Calibration("percentile", q=float(q))


def mse(ratios: Sequence[float] | int = 64) -> Calibration:
  """The range is ``c * amax`` for the clipping ratio ``c`` that minimises the block's squared error.

  Args:
    ratios: candidate ratios in (0, 1], or a count ``n`` for ``n`` ratios evenly spaced over [0.3, 1] (the
      search of LLM-FP4 and the quantization whitepaper). Ties go to the earlier ratio (for a count, the larger).

  The candidates are searched in one ``jax.lax.scan``: compile time does not grow with their number.
  """
  if isinstance(ratios, int | np.integer) and not isinstance(ratios, bool):
    if ratios < 1:
      raise ValueError(f"ratios={ratios} must be at least 1")
    ratios = tuple(float(r) for r in np.linspace(1.0, 0.3, ratios)) if ratios > 1 else (1.0,)
  if not isinstance(ratios, Sequence) or isinstance(ratios, str | bytes):
    raise TypeError(f"ratios={short(ratios)} must be a count or a sequence of ratios in (0, 1]")
  ratios = tuple(check_number("ratios", r, positive=True) for r in ratios)
  if not ratios or any(r > 1 for r in ratios):
    raise ValueError(f"ratios={ratios!r} must be non-empty, each in (0, 1]")
  return Calibration("mse", ratios=ratios)


@dataclasses.dataclass(frozen=True)
class ScaledFormat:
  """A block-scaled number format: elements of ``element`` sharing scales stored in ``scale_format``.

  Attributes:
    element: the element format (any lpnum format whose smallest positive value is at least 2^-100).
    granularity: which elements share a scale (:mod:`lpnum.blocks`).
    scale_format: the scale's own format; ``float8_e8m0fnu`` (or any format whose values are all powers of two)
      makes power-of-two scales; ``float32``, ``bfloat16``, ``float8_e4m3fn``... store general scales exactly.
    scale_rule: ``floor``/``ceil``/``even``/``rceil`` for power-of-two scales (default ``floor``, the OCP MX
      rule); ``nearest`` (default) or ``rceil`` (round up) for the others.
    calibration: how a block's range is measured (:func:`absmax`, :func:`percentile`, :func:`mse`).
    asymmetric: integer elements with a zero point per block.
    tensor_scale: a second, float32 per-tensor scale (NVFP4).
    element_exponent: the element's value unit is ``2^element_exponent`` (MXINT8's elements are ``k * 2^-6``).
    name: a display name.

  Example:
    >>> import jax.numpy as jnp, lpnum
    >>> fmt = lpnum.ScaledFormat("int8", lpnum.per_channel(0))
    >>> q = lpnum.quantize_scaled(jnp.array([[1.0, -2.0], [0.5, 0.25]]), fmt)
    >>> lpnum.dequantize(q).tolist()
    [[1.0078740119934082, -2.0], [0.5, 0.25196850299835205]]
  """

  element: Format | str
  granularity: Granularity = dataclasses.field(default_factory=blocks.per_tensor)
  scale_format: Format | str = "float32"
  scale_rule: ScaleRule | str | None = None
  calibration: Calibration = dataclasses.field(default_factory=absmax)
  asymmetric: bool = False
  tensor_scale: bool = False
  element_exponent: int = 0
  name: str | None = None

  def __post_init__(self) -> None:
    object.__setattr__(self, "asymmetric", check_flag("asymmetric", self.asymmetric))
    object.__setattr__(self, "tensor_scale", check_flag("tensor_scale", self.tensor_scale))
    element = as_format(self.element, "element")
    scale = as_format(self.scale_format, "scale_format")
    object.__setattr__(self, "element", element)
    object.__setattr__(self, "scale_format", scale)
    if not isinstance(self.granularity, Granularity):
      raise TypeError(f"granularity={self.granularity!r} must be made by lpnum.per_tensor/per_channel/...")
    if not isinstance(self.calibration, Calibration):
      raise TypeError(f"calibration={self.calibration!r} must be made by lpnum.absmax/percentile/mse")
    pow2 = is_pow2(scale)
    rule = ScaleRule.parse(self.scale_rule if self.scale_rule is not None
                           else ("floor" if pow2 else "nearest"), "scale_rule")
    if pow2 and rule is ScaleRule.NEAREST:
      raise ValueError(f"scale_rule='nearest' is for general scale formats; {scale.name} holds powers of two: "
                       "use floor, ceil, even or rceil")
    if not pow2 and rule not in (ScaleRule.NEAREST, ScaleRule.RCEIL):
      raise ValueError(f"scale_rule={rule.value!r} needs a power-of-two scale format (e.g. float8_e8m0fnu), "
                       f"not {scale.name}; use 'nearest' or 'rceil'")
    object.__setattr__(self, "scale_rule", rule)
    if not element.has_zero or element.min_positive < 2.0 ** -100:
      raise ValueError(f"element={element.name} must have a zero and a smallest positive value of at least "
                       "2^-100 (quotients far below it are only rounded to zero)")
    if isinstance(scale, IntFormat | BinaryFormat):
      raise ValueError(f"scale_format={scale.name} cannot hold fractional scales; use float32, bfloat16, "
                       "float8_e4m3fn or float8_e8m0fnu")
    if scale.max_finite / scale.min_positive < 2.0 ** 8:
      raise ValueError(f"scale_format={scale.name} spans {math.log2(scale.max_finite / scale.min_positive):.0f} "
                       "binades; a scale format needs at least 8 to hold the range of block scales")
    if scale.max_finite > np.finfo(np.float32).max or (not pow2 and scale.min_positive < 2.0 ** -149):
      raise ValueError(f"scale_format={scale.name} does not fit in float32")
    object.__setattr__(self, "element_exponent", check_int("element_exponent", self.element_exponent, -64, 64))
    if self.asymmetric:
      if not isinstance(element, IntFormat):
        raise ValueError(f"asymmetric=True needs an integer element format, not {element.name}")
      if pow2 or self.tensor_scale or self.calibration.kind != "absmax":
        raise ValueError("asymmetric=True works with a general scale format, absmax calibration and no "
                         "tensor_scale")
    if self.tensor_scale and pow2:
      raise ValueError("tensor_scale=True needs a general scale format (a power-of-two scale needs none)")
    if self.name is None:
      object.__setattr__(self, "name", f"{element.name}/{self.granularity}/{scale.name}")

  @property
  def pow2(self) -> bool:
    """Whether scales are powers of two (exponent-only scale formats such as E8M0)."""
    return is_pow2(self.scale_format)

  @property
  def element_max(self) -> float:
    """The element value a block's range maps to, in units of the scale: the element format's largest finite
    value (posits: ``useed``)."""
    el = self.element
    top = min(2.0 ** (2 ** el.es), el.max_finite) if isinstance(el, PositFormat) else el.max_finite
    return math.ldexp(top, self.element_exponent)

  @property
  def emax(self) -> int:
    """``floor(log2(element max))``, the exponent a power-of-two scale aligns the block's largest value with."""
    return math.frexp(self.element_max)[1] - 1

  def describe(self) -> dict:
    """The scaled format as JSON-able data (for checkpoints, :mod:`lpnum.description`): element and scale formats
    (:meth:`lpnum.formats.Format.describe`), granularity, scale rule, calibration, flags and name.

    Example:
      >>> from lpnum.scaled import presets
      >>> d = presets.preset("mxfp4_e2m1").describe()
      >>> d["element"]["name"], d["granularity"], d["scale_rule"]
      ('float4_e2m1fn', {'kind': 'block', 'axes': [-1], 'sizes': [32]}, 'floor')
    """
    g, c = self.granularity, self.calibration
    return {"name": self.name, "element": self.element.describe(), "scale_format": self.scale_format.describe(),
            "granularity": {"kind": g.kind, "axes": list(g.axes), "sizes": list(g.sizes)},
            "scale_rule": self.scale_rule.value, "asymmetric": self.asymmetric, "tensor_scale": self.tensor_scale,
            "element_exponent": self.element_exponent,
            "calibration": {"kind": c.kind, "q": c.q, "ratios": list(c.ratios)}}

  @classmethod
  def from_description(cls, desc: dict) -> ScaledFormat:
    """The ScaledFormat that :meth:`describe` described (equal to it, name and calibration included).

    Raises:
      ValueError: ``desc`` is not such a description, or describes an invalid format.
    """
    try:
      g, c = desc["granularity"], desc["calibration"]
      return cls(format_from_description(desc["element"]), Granularity(g["kind"], tuple(g["axes"]), tuple(g["sizes"])),
                 format_from_description(desc["scale_format"]), desc["scale_rule"],
                 Calibration(c["kind"], c["q"], tuple(c["ratios"])), asymmetric=desc["asymmetric"],
                 tensor_scale=desc["tensor_scale"], element_exponent=desc["element_exponent"], name=desc["name"])
    except (KeyError, TypeError) as e:
      raise ValueError(f"desc={desc!r} does not describe a ScaledFormat ({type(e).__name__}: {e})") from None

  def __str__(self) -> str:
    return self.name


def is_pow2(fmt: Format) -> bool:
  if isinstance(fmt, ShiftFormat):
    return True
  return isinstance(fmt, FloatFormat) and fmt.mantissa_bits == 0 and not fmt.has_zero


def pow2_range(fmt: Format) -> tuple[int, int]:
  """The exponents of the smallest and largest values of a power-of-two scale format."""
  return math.frexp(fmt.min_positive)[1] - 1, math.frexp(fmt.max_finite)[1] - 1


def significand_bits(fmt: Format) -> int:
  if isinstance(fmt, FloatFormat):
    return fmt.mantissa_bits + 1
  return 24


def element_precision(el: Format) -> int:
  """At most how many significant bits the element format's values have."""
  if isinstance(el, FloatFormat):
    return el.mantissa_bits + 1
  if isinstance(el, IntFormat):
    return el.bits - int(el.signed)
  if isinstance(el, ShiftFormat | BinaryFormat):
    return 1
  return 24
