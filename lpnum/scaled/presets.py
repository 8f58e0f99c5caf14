"""The named block-scaled formats, as data: OCP Microscaling (MX v1.0) and NVIDIA's NVFP4.

==============  ===================  =====  =====  ==============  ===========================================
name            element              block  emax   scale           element max
==============  ===================  =====  =====  ==============  ===========================================
mxfp8_e4m3      float8_e4m3fn        32     8      E8M0, floor     448
mxfp8_e5m2      float8_e5m2          32     15     E8M0, floor     57344
mxfp6_e3m2      float6_e3m2fn        32     4      E8M0, floor     28
mxfp6_e2m3      float6_e2m3fn        32     2      E8M0, floor     7.5
mxfp4_e2m1      float4_e2m1fn        32     2      E8M0, floor     6
mxint8          int8, unit 2^-6      32     0      E8M0, floor     127/64 (symmetric: -128 is never produced)
nvfp4           float4_e2m1fn        16     2      E4M3, nearest   6, with a float32 per-tensor scale
==============  ===================  =====  =====  ==============  ===========================================

MX: where the spec leaves a choice, an all-zero block gets the smallest scale (E8M0 code 0, 2^-127); a block
holding NaN or +-inf gets the NaN scale code 0xFF, its elements encoded as if the scale were 1, and dequantizes to
NaN; MXINT8 saturates to +-127 (symmetric, so that negation is exact).

NVFP4 (as NVIDIA's and torchao's recipe): the per-tensor scale is ``T = amax / (448 * 6)`` (at least 2^-126);
each block's scale is ``(block amax / 6) / T`` rounded to nearest even into E4M3 and clamped to ``[2^-9, 448]``;
elements are ``x / (s_block * T)`` rounded to nearest even into E2M1, saturated to +-6.
"""

from __future__ import annotations

import dataclasses

from lpnum import blocks
from lpnum.formats import SCALED_PRESET_NAMES, Format, int_format
from lpnum.scaled.format import ScaledFormat
from lpnum.validate import check_flag, check_int

__all__ = ["Preset", "PRESETS", "MX_NAMES", "preset"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Preset:
  """A named scaled format, before the axis it scales along is chosen."""

  element: Format | str
  block_size: int
  scale_format: str
  scale_rule: str
  element_exponent: int = 0
  tensor_scale: bool = False


#: Every preset, by name.
PRESETS: dict[str, Preset] = {
    "mxfp8_e4m3": Preset(element="float8_e4m3fn", block_size=32, scale_format="float8_e8m0fnu", scale_rule="floor"),
    "mxfp8_e5m2": Preset(element="float8_e5m2", block_size=32, scale_format="float8_e8m0fnu", scale_rule="floor"),
    "mxfp6_e3m2": Preset(element="float6_e3m2fn", block_size=32, scale_format="float8_e8m0fnu", scale_rule="floor"),
    "mxfp6_e2m3": Preset(element="float6_e2m3fn", block_size=32, scale_format="float8_e8m0fnu", scale_rule="floor"),
    "mxfp4_e2m1": Preset(element="float4_e2m1fn", block_size=32, scale_format="float8_e8m0fnu", scale_rule="floor"),
    "mxint8": Preset(element=int_format(8, narrow=True), block_size=32, scale_format="float8_e8m0fnu",
                     scale_rule="floor", element_exponent=-6),
    "nvfp4": Preset(element="float4_e2m1fn", block_size=16, scale_format="float8_e4m3fn", scale_rule="nearest",
                    tensor_scale=True),
}

SCALED_PRESET_NAMES.update(PRESETS)

#: The MX preset names.
MX_NAMES: tuple[str, ...] = tuple(name for name in PRESETS if name.startswith("mx"))


def preset(name: str, *, axis: int = -1, block_size: int | None = None, scale_rule: str | None = None,
           tensor_scale: bool | None = None, tile: bool = False, arg: str = "name") -> ScaledFormat:
  """The :class:`~lpnum.ScaledFormat` of preset ``name``, in blocks along ``axis``.

  Args:
    name: a key of :data:`PRESETS`.
    axis: the axis the blocks run along.
    block_size, scale_rule, tensor_scale: override the preset's own (the name then says so where it changes:
      ``mxfp8_e4m3_b16``, ``nvfp4_no_tensor_scale``).
    tile: square tiles of ``block_size`` over the last two axes instead of blocks along ``axis``.
    arg: the caller's name for ``name``, in error messages.

  Example:
    >>> from lpnum.scaled import presets
    >>> presets.preset("mxfp4_e2m1").emax
    2
  """
  check_flag("tile", tile)
  if tensor_scale is not None:
    check_flag("tensor_scale", tensor_scale)
  axis = check_int("axis", axis)
  if not isinstance(name, str):
    raise TypeError(f"{arg} must be a preset name (str) or a ScaledFormat, got {type(name).__name__}")
  if name not in PRESETS:
    raise ValueError(f"{arg}={name!r} is not a scaled preset; expected one of {list(PRESETS)} (element formats such "
                     "as 'int8' go to lpnum.quantize, or to lpnum.ScaledFormat('int8', ...))")
  p = PRESETS[name]
  size = p.block_size if block_size is None else check_int("block_size", block_size, 1)
  with_tensor = p.tensor_scale if tensor_scale is None else tensor_scale
  granularity = blocks.per_tile((size, size)) if tile else blocks.per_block(size, axis)
  label = name + ("" if size == p.block_size else f"_b{size}") + ("_tile" if tile else "")
  if p.tensor_scale and not with_tensor:
    label += "_no_tensor_scale"
  return ScaledFormat(p.element, granularity, p.scale_format, p.scale_rule if scale_rule is None else scale_rule,
                      tensor_scale=with_tensor, element_exponent=p.element_exponent, name=label)
