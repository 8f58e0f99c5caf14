"""Every named format, and the only place names live. Presets are data; families are constructors."""

from __future__ import annotations

import difflib
import re

import jax.numpy as jnp
import ml_dtypes
import numpy as np

from lpnum.formats._base import NATIVE_DTYPES, Format
from lpnum.formats._float import FloatFormat, Specials
from lpnum.formats._int import BinaryFormat, IntFormat
from lpnum.formats._posit import PositFormat
from lpnum.formats._shift import ShiftFormat
from lpnum.validate import check_flag, short

__all__ = ["ALL_FORMATS", "get_format", "as_format", "format_of", "p3109", "posit", "int_format",
           "format_from_description"]


def _f(name, e, m, bias, specials, **kw) -> FloatFormat:
  return FloatFormat(name=name, exponent_bits=e, mantissa_bits=m, bias=bias, specials=specials, **kw)


FLOAT8_E4M3FN = _f("float8_e4m3fn", 4, 3, 7, Specials.FN)
FLOAT8_E5M2 = _f("float8_e5m2", 5, 2, 15, Specials.IEEE)
FLOAT8_E4M3FNUZ = _f("float8_e4m3fnuz", 4, 3, 8, Specials.FNUZ)
FLOAT8_E5M2FNUZ = _f("float8_e5m2fnuz", 5, 2, 16, Specials.FNUZ)
FLOAT8_E4M3B11FNUZ = _f("float8_e4m3b11fnuz", 4, 3, 11, Specials.FNUZ)
FLOAT8_E3M4 = _f("float8_e3m4", 3, 4, 3, Specials.IEEE)
FLOAT8_E4M3 = _f("float8_e4m3", 4, 3, 7, Specials.IEEE)
FLOAT6_E3M2FN = _f("float6_e3m2fn", 3, 2, 3, Specials.FINITE)
FLOAT6_E2M3FN = _f("float6_e2m3fn", 2, 3, 1, Specials.FINITE)
FLOAT4_E2M1FN = _f("float4_e2m1fn", 2, 1, 1, Specials.FINITE)
FLOAT8_E8M0FNU = _f("float8_e8m0fnu", 8, 0, 127, Specials.FN, signed=False, has_subnormals=False)
BFLOAT16 = _f("bfloat16", 8, 7, 127, Specials.IEEE)
FLOAT16 = _f("float16", 5, 10, 15, Specials.IEEE)
TF32 = _f("tf32", 8, 10, 127, Specials.IEEE)
#: IEEE binary32 as a format (for float32 scales); not in ALL_FORMATS, being the carrier itself.
FLOAT32 = _f("float32", 8, 23, 127, Specials.IEEE)


def p3109(k: int, precision: int, *, signed: bool = True, extended: bool = False) -> FloatFormat:
  """IEEE P3109 ``binary{k}p{precision}``: k bits, ``precision - 1`` mantissa bits, no -0, one NaN.

  Signed formats keep NaN at the negative-zero code (0x80 for k = 8) and have bias ``2^(k - p - 1)``; unsigned
  formats keep NaN at the all-ones code and have bias ``2^(k - p)``. ``extended`` adds +-inf at the top codes
  (unsigned: the code below NaN); ``finite`` (the default) uses those codes for values. Codes and values are those
  of the P3109 Interim Report v4.0 and its value tables.

  ``3 <= k <= 15``. Formats with more than 8 exponent bits (``k - p`` signed, ``k - p + 1`` unsigned), such as
  ``binary10p1se`` or ``binary9p1ue``, reach beyond float32: quantize and encode need float64 inputs under
  ``jax_enable_x64``. Formats with more than 11 exponent bits (e.g. ``binary13p1sf``, ``binary12p1uf``) reach
  beyond float64, which lpnum does not hold: ValueError.

  Example:
    >>> fmt = p3109(8, 4, extended=True)
    >>> fmt.name, fmt.max_finite, fmt.min_positive
    ('binary8p4se', 224.0, 0.0009765625)
  """
  signed, extended = check_flag("signed", signed), check_flag("extended", extended)
  for arg, v in (("k", k), ("precision", precision)):
    if isinstance(v, bool) or not isinstance(v, int):
      raise TypeError(f"{arg}={v!r} must be an int")
  if not 3 <= k <= 15:
    raise ValueError(f"k={k} must be in [3, 15]")
  exponent_bits = k - precision + (0 if signed else 1)
  if not 1 <= precision or exponent_bits < 1:
    raise ValueError(f"precision={precision} must be in [1, {k - 1 if signed else k}] for k={k}")
  bias = 1 << (exponent_bits - 1)
  if signed:
    specials = Specials.FNUZ_INF if extended else Specials.FNUZ
  else:
    specials = Specials.FN_INF if extended else Specials.FN
  name = f"binary{k}p{precision}{'s' if signed else 'u'}{'e' if extended else 'f'}"
  return FloatFormat(name=name, exponent_bits=exponent_bits, mantissa_bits=precision - 1, bias=bias,
                     specials=specials, signed=signed)


def posit(n: int, es: int) -> PositFormat:
  """Posit(n, es) of the 2022 Posit Standard (es = 2 there; any 0 <= es <= 4 here)."""
  name = f"posit{n}" if es == 2 else f"posit{n}_{es}"
  return PositFormat(n=n, es=es, name=name)


def int_format(bits: int, *, signed: bool = True, narrow: bool = False) -> IntFormat:
  """Integers of ``bits`` bits: ``int{bits}``, ``uint{bits}``, with ``_narrow`` for a symmetric range."""
  name = f"{'' if signed else 'u'}int{bits}{'_narrow' if narrow else ''}"
  return IntFormat(bits=bits, signed=signed, narrow=narrow, name=name)


_NATIVE = {
    FLOAT8_E4M3FN: jnp.float8_e4m3fn, FLOAT8_E5M2: jnp.float8_e5m2, FLOAT8_E4M3FNUZ: jnp.float8_e4m3fnuz,
    FLOAT8_E5M2FNUZ: jnp.float8_e5m2fnuz, FLOAT8_E4M3B11FNUZ: jnp.float8_e4m3b11fnuz,
    FLOAT8_E3M4: ml_dtypes.float8_e3m4, FLOAT8_E4M3: ml_dtypes.float8_e4m3,
    FLOAT6_E3M2FN: ml_dtypes.float6_e3m2fn, FLOAT6_E2M3FN: ml_dtypes.float6_e2m3fn,
    FLOAT4_E2M1FN: ml_dtypes.float4_e2m1fn, FLOAT8_E8M0FNU: ml_dtypes.float8_e8m0fnu,
    BFLOAT16: jnp.bfloat16, FLOAT16: np.float16,
    int_format(8): np.int8, int_format(16): np.int16, int_format(8, signed=False): np.uint8,
    int_format(16, signed=False): np.uint16, int_format(4): ml_dtypes.int4, int_format(4, signed=False): ml_dtypes.uint4,
    int_format(2): ml_dtypes.int2, int_format(2, signed=False): ml_dtypes.uint2,
}


NATIVE_DTYPES.update({fmt: np.dtype(native) for fmt, native in _NATIVE.items()})


_NAMED: tuple[Format, ...] = (
    FLOAT8_E4M3FN, FLOAT8_E5M2, FLOAT8_E4M3FNUZ, FLOAT8_E5M2FNUZ, FLOAT8_E4M3B11FNUZ, FLOAT8_E3M4, FLOAT8_E4M3,
    FLOAT6_E3M2FN, FLOAT6_E2M3FN, FLOAT4_E2M1FN, FLOAT8_E8M0FNU, BFLOAT16, FLOAT16, TF32,
    p3109(8, 3), p3109(8, 4), p3109(8, 3, extended=True), p3109(8, 4, extended=True),
    p3109(8, 3, signed=False), p3109(8, 4, signed=False, extended=True),
    int_format(8), int_format(4), int_format(2), int_format(16), int_format(8, narrow=True),
    int_format(4, narrow=True), int_format(8, signed=False), int_format(4, signed=False),
    int_format(2, narrow=True, signed=True), BinaryFormat(name="binary"),
    posit(8, 2), posit(16, 2), posit(32, 2), posit(8, 0), posit(16, 1),
    ShiftFormat(emin=-6, emax=0, has_zero=True, name="shift4"),
    ShiftFormat(emin=-7, emax=0, has_zero=False, name="shift4_zero_free"),
)

#: Aliases: other common spellings of named formats.
_ALIASES = {"ternary": "int2_narrow", "e4m3": "float8_e4m3fn", "e5m2": "float8_e5m2", "fp4": "float4_e2m1fn",
            "e8m0": "float8_e8m0fnu", "float32_tf32": "tf32"}

#: Every named format; drives the tests, ``lpnum formats`` and the benchmarks.
ALL_FORMATS: tuple[Format, ...] = _NAMED

_BY_NAME = {f.name: f for f in (*_NAMED, FLOAT32)}

_PATTERNS = (
    (re.compile(r"binary([1-9]\d*)p([1-9]\d*)([su]?)([ef]?)"),
     lambda k, p, s, e: p3109(int(k), int(p), signed=s != "u", extended=e == "e")),
    (re.compile(r"posit([1-9]\d*)(?:_(0|[1-9]\d*))?"), lambda n, es: posit(int(n), 2 if es is None else int(es))),
    (re.compile(r"(u?)int([1-9]\d*)(_narrow)?"), lambda u, b, nr: int_format(int(b), signed=not u, narrow=bool(nr))),
)

_FAMILIES = "binary{k}p{p}[s|u][e|f], posit{n}[_{es}], [u]int{bits}[_narrow]"


def get_format(name: str) -> Format:
  """The format called ``name``: a preset (``float8_e4m3fn``, ``posit16``, ``int4``...) or a family name
  (``binary8p3``, ``binary6p2ue``, ``posit12_1``, ``uint7``, ``int5_narrow``). Names are exact: no whitespace,
  case folding or leading zeros.

  Raises:
    TypeError: ``name`` is not a str.
    ValueError: the name is unknown (the message suggests close names, and points block-scaled presets such as
      ``mxfp8_e4m3`` to :func:`lpnum.quantize_scaled`).
  """
  return _lookup(name, "name")


def _lookup(name: object, arg: str) -> Format:
  if not isinstance(name, str):
    raise TypeError(f"{arg} must be a format name (str), got {type(name).__name__}")
  name = _ALIASES.get(name, name)
  if name in _BY_NAME:
    return _BY_NAME[name]
  for pattern, make in _PATTERNS:
    match = pattern.fullmatch(name)
    if match:
      try:
        return make(*match.groups())
      except (TypeError, ValueError) as err:
        raise ValueError(f"{arg}={name!r} names no format: {err}") from None
  if name.lower() in SCALED_PRESET_NAMES:
    raise ValueError(f"{arg}={name!r} is a block-scaled format (elements with shared scales), not an element "
                     "format: use lpnum.quantize_scaled, lpnum.fake_quantize or lpnum.mx.quantize")
  close = difflib.get_close_matches(name.strip().lower(), [*_BY_NAME, *_ALIASES], n=3, cutoff=0.6)
  hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
  raise ValueError(f"unknown format {arg}={name!r}{hint} Known: {sorted(_BY_NAME)} and the families {_FAMILIES}")


#: Names of the block-scaled presets, for a clear error when one is taken for an element format; filled by
#: :mod:`lpnum.scaled.presets` (above this module), where those formats live.
SCALED_PRESET_NAMES: set[str] = set()


def as_format(fmt: Format | str, name: str = "fmt") -> Format:
  """Accepts a format or its name (or a native dtype with a format); errors name the argument ``name``."""
  if isinstance(fmt, Format):
    return fmt
  if isinstance(fmt, str):
    return _lookup(fmt, name)
  if hasattr(fmt, "element") and hasattr(fmt, "granularity"):
    raise TypeError(f"{name}={short(fmt)} is a block-scaled format, not an element format: use "
                    "lpnum.quantize_scaled or lpnum.fake_quantize")
  try:
    return format_of(fmt)
  except (TypeError, ValueError):
    raise TypeError(f"{name}={short(fmt)} must be an lpnum format or a format name") from None


def format_of(dtype) -> Format:
  """The lpnum format of a native dtype, e.g. ``format_of(jnp.float8_e4m3fn) is FLOAT8_E4M3FN``."""
  try:
    dt = np.dtype(dtype)
  except TypeError:
    raise TypeError(f"dtype={dtype!r} is not a dtype") from None
  for fmt, native in _NATIVE.items():
    if np.dtype(native) == dt:
      return fmt
  raise ValueError(f"dtype={dt} has no lpnum format (float32/float64 are the carriers, not formats)")


_FAMILIES = {cls.__name__: cls for cls in (FloatFormat, IntFormat, BinaryFormat, PositFormat, ShiftFormat)}


def format_from_description(desc: dict) -> Format:
  """The format that :meth:`Format.describe` described: the named format when the name is known and its fields
  agree, else the family built from the fields.

  Raises:
    ValueError: an unknown family or fields the family rejects.

  Example:
    >>> format_from_description(get_format("float8_e4m3fn").describe()) is get_format("float8_e4m3fn")
    True
  """
  if not isinstance(desc, dict) or desc.get("family") not in _FAMILIES:
    raise ValueError(f"desc={desc!r} must describe a format of family {sorted(_FAMILIES)}")
  fields = {k: v for k, v in desc.items() if k != "family"}
  if "specials" in fields:
    fields["specials"] = Specials(fields["specials"])
  try:
    fmt = _FAMILIES[desc["family"]](**fields)
  except TypeError as e:
    raise ValueError(f"desc={desc!r} does not describe a {desc['family']}: {e}") from None
  named = _BY_NAME.get(fmt.name)
  return named if named == fmt and type(named) is type(fmt) else fmt
