"""Slow, exact, obviously-correct pure-Python reference for lpnum number formats.

This module is deliberately independent of ``lpnum``: it never imports it and
implements every format from its written definition using only Python integers,
:class:`fractions.Fraction` and :mod:`math`.  It is validated against third-party
oracles (ml_dtypes, softposit, gfloat) in ``tests/oracles/test_reference.py``.

Value convention (used by every function here)
------------------------------------------------
A value is one of

* a :class:`~fractions.Fraction` (exact finite value; ``Fraction(0)`` is +0),
* the string ``"-0"`` (negative zero),
* the strings ``"nan"``, ``"+inf"``, ``"-inf"``,
* ``"nar"`` (posit Not-a-Real; only returned by :func:`posit_code_value`).

Inputs ``x`` to the rounding functions may be a Fraction, an int, a Python float
(converted exactly with ``Fraction(x)``; ``nan``/``inf``/``-0.0`` handled), or one
of the strings ``"nan"``, ``"-nan"``, ``"+inf"``, ``"inf"``, ``"-inf"``, ``"-0"``, ``"+0"``.

P3109 findings
--------------
Checked against gfloat 0.5.2 (``gfloat.formats.format_info_p3109``), by decoding
every code of every binary8 P3109 format gfloat defines (p = 1..8, signed and
unsigned, finite and extended) plus a few narrower widths:

* signed binary{K}p{P}: exponent_bits = K-P, mantissa_bits = P-1,
  bias = 2**(K-P-1)  (gfloat computes ``floor(2**(K-P-1))``, which is the same
  whenever K-P >= 1, i.e. whenever there is at least one exponent bit;
  for P == K gfloat would use bias 0 with a zero-width exponent, which FloatSpec
  does not support).  Specials: finite domain -> "fnuz" (0x80 is the only NaN,
  no -0, no inf); extended domain -> "fnuz_inf" (additionally 0x7F = +inf,
  0xFF = -inf).
* unsigned binary{K}p{P}: exponent_bits = K-P+1, mantissa_bits = P-1,
  bias = 2**(K-P).  Specials: finite domain -> "fn" (0xFF is NaN, nothing else
  special); extended domain -> "fn_inf" (0xFF NaN, 0xFE +inf).
* Subnormals are present in all P3109 formats (also for P = 1, where the only
  "subnormal" is zero and code 1 is 2**(1-bias)).
* All of this agrees with the parameters given in the lpnum brief; gfloat and
  this reference agree on every code tested.  Round-to-nearest-even with P = 1
  (mantissa_bits = 0) breaks ties towards the even *code* (even exponent field),
  which is what gfloat does too (see "Parity" below).

Parity (ties-to-even / to_odd)
------------------------------
The parity of a grid point is the least significant bit of its code in the
(upward-unbounded) format; zero counts as even.  For mantissa_bits >= 1 this is
the mantissa LSB, i.e. the parity of value/spacing, and a power of two at a
binade boundary is even.  For mantissa_bits == 0 (E8M0, P3109 p=1) every grid
point is a power of two and the code LSB is the exponent-field LSB; this is the
"ties to the even code" rule (gfloat agrees; ml_dtypes' E8M0 rounds ties up).

Known deviations of ml_dtypes from this reference (see tests; checked with 0.5 to 0.7)
----------------------------------------------------------------------------------------
* For formats without NaN (float6_e3m2fn, float6_e2m3fn, float4_e2m1fn)
  ml_dtypes converts a NaN with the sign bit CLEAR to -0 and a NaN with the sign
  bit SET to +0 (sign inverted).  lpnum follows this convention as a fixed rule,
  so this reference does too; a release that keeps the sign is accepted as the
  one alternative.
* E8M0: ml_dtypes rounds ties up (we round to the even code), and before 0.7
  mis-rounded inputs strictly between 2**-127 and 2**-126.  Every negative
  input (however tiny) is a negative in an unsigned format without zero: NaN
  when non-saturating (as ml_dtypes), minpos when saturating.
* float16/bfloat16 conversions propagate NaN payloads; the spec (and this
  reference) always produce the canonical NaN code (sign kept).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction

__all__ = [
    "ROUNDINGS",
    "OVERFLOWS",
    "FloatSpec",
    "SPECS",
    "p3109_spec",
    "float_code_value",
    "float_values",
    "float_max",
    "float_minpos",
    "round_float",
    "round_float_code",
    "float_value_to_code",
    "posit_code_value",
    "round_posit_code",
    "int_round",
    "numpy_to_list",
]

ROUNDINGS = ("nearest_even", "nearest_away", "toward_zero", "up", "down", "to_odd")
OVERFLOWS = ("saturate", "non_saturating")
SPECIALS = ("ieee", "fn", "fnuz", "fnuz_inf", "fn_inf", "finite")


# ---------------------------------------------------------------------------
# Small exact helpers
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _pow2(e: int) -> Fraction:
    """Exact 2**e as a Fraction (e may be negative)."""
    return Fraction(1 << e) if e >= 0 else Fraction(1, 1 << -e)


def _floor_log2(a: Fraction) -> int:
    """floor(log2(a)) for an exact positive Fraction a."""
    assert a > 0
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if a < _pow2(e):
        e -= 1
    return e


def _parse(x):
    """Classify an input.

    Returns ``(kind, neg, mag)`` where kind is "nan", "inf" or "num", neg is the
    sign bit (bool) and mag is the exact magnitude (Fraction) for "num".
    """
    if isinstance(x, str):
        s = x.strip().lower()
        if s in ("nan", "+nan"):
            return "nan", False, None
        if s == "-nan":
            return "nan", True, None
        if s in ("inf", "+inf"):
            return "inf", False, None
        if s == "-inf":
            return "inf", True, None
        if s == "-0":
            return "num", True, Fraction(0)
        if s == "+0":
            return "num", False, Fraction(0)
        raise ValueError(f"unrecognised value string {x!r}")
    if isinstance(x, Fraction):
        return "num", x < 0, abs(x)
    if isinstance(x, bool):
        raise TypeError("bool is not a number here")
    if isinstance(x, int):
        return "num", x < 0, Fraction(abs(x))
    # Python float (or anything float() accepts exactly, e.g. numpy scalars)
    f = float(x)
    neg = math.copysign(1.0, f) < 0
    if math.isnan(f):
        return "nan", neg, None
    if math.isinf(f):
        return "inf", neg, None
    return "num", neg, abs(Fraction(f))


def _signed(neg: bool, mag: Fraction):
    """Attach a sign to a magnitude (zero magnitudes must be handled by caller)."""
    assert mag != 0
    return -mag if neg else mag


def _round_to_int(v: Fraction, rounding: str) -> int:
    """Round a signed exact value to an integer.

    nearest_even: ties to the even integer; nearest_away: ties away from zero;
    toward_zero: truncate; up: ceiling; down: floor; to_odd: keep exact
    integers, otherwise the odd one of floor/ceil.
    """
    fl = math.floor(v)
    if v == fl:
        return fl
    ce = fl + 1
    if rounding == "nearest_even":
        d = v - fl
        if d < Fraction(1, 2):
            return fl
        if d > Fraction(1, 2):
            return ce
        return fl if fl % 2 == 0 else ce
    if rounding == "nearest_away":
        d = v - fl
        if d < Fraction(1, 2):
            return fl
        if d > Fraction(1, 2):
            return ce
        return ce if v > 0 else fl
    if rounding == "toward_zero":
        return fl if v > 0 else ce
    if rounding == "up":
        return ce
    if rounding == "down":
        return fl
    if rounding == "to_odd":
        return fl if fl % 2 == 1 else ce
    raise ValueError(f"unknown rounding {rounding!r}")


# ---------------------------------------------------------------------------
# Floating-point formats
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FloatSpec:
    """A small binary floating-point format.

    Bit layout (MSB first): [sign (only if signed)] [exponent_bits] [mantissa_bits].

    Finite value of a code with exponent field E and mantissa field M:
      * has_subnormals and E == 0:  (-1)^s * M * 2**(1 - bias - mantissa_bits)
      * otherwise:                  (-1)^s * (1 + M/2**m) * 2**(E - bias)
    ``has_subnormals=False`` makes E == 0 an ordinary normal binade (E8M0): such
    a format has no zero.

    ``specials`` selects which codes are NaN / inf:
      * "ieee":     E all ones: M == 0 -> +-inf, M != 0 -> nan.
      * "fn":       only the all-ones non-sign pattern (each sign) is nan.
      * "fnuz":     the sign-only code (0x80) is the only nan; no -0, no inf.
      * "fnuz_inf": as fnuz, plus all-ones non-sign pattern = +-inf.
      * "fn_inf":   unsigned only: all ones = nan, all ones - 1 = +inf.
      * "finite":   every code finite.
    """

    exponent_bits: int
    mantissa_bits: int
    bias: int
    specials: str
    signed: bool = True
    has_subnormals: bool = True

    def __post_init__(self):
        if not 1 <= self.exponent_bits <= 11:  # up to float64's exponent field (P3109 formats up to 11 bits)
            raise ValueError("exponent_bits must be in 1..11")
        if not 0 <= self.mantissa_bits <= 23:
            raise ValueError("mantissa_bits must be in 0..23")
        if self.specials not in SPECIALS:
            raise ValueError(f"unknown specials {self.specials!r}")
        if self.specials in ("fnuz", "fnuz_inf") and not self.signed:
            raise ValueError(f"{self.specials} requires a signed format")
        if self.specials == "fn_inf" and self.signed:
            raise ValueError("fn_inf is only defined for unsigned formats")

    # -- derived properties -------------------------------------------------
    @property
    def bits(self) -> int:
        return int(self.signed) + self.exponent_bits + self.mantissa_bits

    @property
    def body_bits(self) -> int:
        """Number of non-sign bits."""
        return self.exponent_bits + self.mantissa_bits

    @property
    def sign_mask(self) -> int:
        return (1 << self.body_bits) if self.signed else 0

    @property
    def has_nan(self) -> bool:
        if self.specials == "ieee":
            return self.mantissa_bits >= 1
        return self.specials != "finite"

    @property
    def has_inf(self) -> bool:
        return self.specials in ("ieee", "fnuz_inf", "fn_inf")

    @property
    def has_zero(self) -> bool:
        return self.has_subnormals

    @property
    def has_negzero(self) -> bool:
        return (
            self.signed
            and self.has_zero
            and self.specials in ("ieee", "fn", "finite")
        )


def p3109_spec(k: int, p: int, signed: bool = True, extended: bool = True) -> FloatSpec:
    """FloatSpec of IEEE P3109 binary{k}p{p} (see "P3109 findings" above)."""
    if signed:
        return FloatSpec(k - p, p - 1, 2 ** (k - p - 1), "fnuz_inf" if extended else "fnuz", True)
    return FloatSpec(k - p + 1, p - 1, 2 ** (k - p), "fn_inf" if extended else "fn", False)


#: Named formats (ml_dtypes names), for tests and convenience.
SPECS = {
    "float8_e4m3fn": FloatSpec(4, 3, 7, "fn"),
    "float8_e5m2": FloatSpec(5, 2, 15, "ieee"),
    "float8_e4m3fnuz": FloatSpec(4, 3, 8, "fnuz"),
    "float8_e5m2fnuz": FloatSpec(5, 2, 16, "fnuz"),
    "float8_e4m3b11fnuz": FloatSpec(4, 3, 11, "fnuz"),
    "float8_e3m4": FloatSpec(3, 4, 3, "ieee"),
    "float8_e4m3": FloatSpec(4, 3, 7, "ieee"),
    "float6_e3m2fn": FloatSpec(3, 2, 3, "finite"),
    "float6_e2m3fn": FloatSpec(2, 3, 1, "finite"),
    "float4_e2m1fn": FloatSpec(2, 1, 1, "finite"),
    "float8_e8m0fnu": FloatSpec(8, 0, 127, "fn", signed=False, has_subnormals=False),
    "bfloat16": FloatSpec(8, 7, 127, "ieee"),
    "float16": FloatSpec(5, 10, 15, "ieee"),
}


def _body_special(body: int, neg: bool, spec: FloatSpec):
    """Return "nan"/"+inf"/"-inf" if the (sign, body) pair is special, else None."""
    m = spec.mantissa_bits
    all_e = (1 << spec.exponent_bits) - 1
    top = (1 << spec.body_bits) - 1
    E, M = body >> m, body & ((1 << m) - 1)
    sp = spec.specials
    if sp == "ieee":
        if E == all_e:
            if M == 0:
                return "-inf" if neg else "+inf"
            return "nan"
        return None
    if sp == "fn":
        return "nan" if body == top else None
    if sp == "fnuz":
        return "nan" if (neg and body == 0) else None
    if sp == "fnuz_inf":
        if neg and body == 0:
            return "nan"
        if body == top:
            return "-inf" if neg else "+inf"
        return None
    if sp == "fn_inf":
        if body == top:
            return "nan"
        if body == top - 1:
            return "+inf"
        return None
    return None  # "finite"


def _body_magnitude(body: int, spec: FloatSpec) -> Fraction:
    """Magnitude of the finite value encoded by the non-sign bits ``body``."""
    m = spec.mantissa_bits
    E, M = body >> m, body & ((1 << m) - 1)
    if spec.has_subnormals and E == 0:
        return M * _pow2(1 - spec.bias - m)
    return (1 + Fraction(M, 1 << m)) * _pow2(E - spec.bias)


def float_code_value(code: int, spec: FloatSpec):
    """Decode ``code`` (an unsigned integer of ``spec.bits`` bits) to a value.

    Returns a Fraction, "-0", "nan", "+inf" or "-inf".
    """
    if not 0 <= code < (1 << spec.bits):
        raise ValueError(f"code {code} out of range for {spec.bits}-bit format")
    neg = bool(code & spec.sign_mask)
    body = code & ((1 << spec.body_bits) - 1)
    special = _body_special(body, neg, spec)
    if special is not None:
        return special
    mag = _body_magnitude(body, spec)
    if mag == 0:
        return "-0" if neg else Fraction(0)
    return -mag if neg else mag


def float_values(spec: FloatSpec) -> list:
    """All values of the format, indexed by code (length 2**spec.bits)."""
    return [float_code_value(c, spec) for c in range(1 << spec.bits)]


def _is_finite_value(v) -> bool:
    return isinstance(v, Fraction) or v == "-0"


def _max_body(spec: FloatSpec) -> int:
    """Non-sign bits of the largest finite positive value."""
    if spec.specials == "ieee":
        body = (((1 << spec.exponent_bits) - 2) << spec.mantissa_bits) | (
            (1 << spec.mantissa_bits) - 1
        )
    else:
        body = (1 << spec.body_bits) - 1
    while _body_special(body, False, spec) is not None:
        body -= 1
    return body


@functools.lru_cache(maxsize=None)
def float_max(spec: FloatSpec) -> Fraction:
    """Largest finite value of the format."""
    return _body_magnitude(_max_body(spec), spec)


@functools.lru_cache(maxsize=None)
def float_minpos(spec: FloatSpec) -> Fraction:
    """Smallest positive finite value of the format."""
    return _body_magnitude(0 if not spec.has_subnormals else 1, spec)


def _grid_neighbours(a: Fraction, spec: FloatSpec):
    """Bracket a magnitude a >= 0 on the format grid, unbounded upwards.

    Returns ``(lo, lo_code, hi, hi_code)`` with lo <= a < hi adjacent grid
    points.  Codes are the non-sign code of the grid point in the format
    extended upward with unlimited exponent range (so codes may exceed the
    format's width).  For formats without zero, the pseudo grid point 0 below
    the lowest binade has code None (counted as even).
    """
    m = spec.mantissa_bits
    if spec.has_subnormals:
        emin = 1 - spec.bias  # exponent of the smallest normal binade
        if a < _pow2(emin):
            q = _pow2(emin - m)  # subnormal spacing
            k = math.floor(a / q)
            # Subnormal (and zero) codes are exactly k.
            return k * q, k, (k + 1) * q, k + 1
        e = _floor_log2(a)
        s = _pow2(e - m)
        j = math.floor(a / s)  # in [2**m, 2**(m+1))
        code = (e - emin + 1) * (1 << m) + (j - (1 << m))
        return j * s, code, (j + 1) * s, code + 1
    emin = -spec.bias  # E == 0 is the lowest (normal) binade
    if a < _pow2(emin):
        return Fraction(0), None, _pow2(emin), 0
    e = _floor_log2(a)
    s = _pow2(e - m)
    j = math.floor(a / s)
    code = (e - emin) * (1 << m) + (j - (1 << m))
    return j * s, code, (j + 1) * s, code + 1


def _is_odd(code) -> bool:
    return code is not None and code % 2 == 1


def _round_magnitude(a: Fraction, neg: bool, spec: FloatSpec, rounding: str) -> Fraction:
    """Round |x| = a > 0 (sign ``neg``) to the upward-unbounded grid."""
    lo, lo_code, hi, hi_code = _grid_neighbours(a, spec)
    if a == lo:
        return lo
    if rounding in ("nearest_even", "nearest_away"):
        dlo, dhi = a - lo, hi - a
        if dlo < dhi:
            return lo
        if dhi < dlo:
            return hi
        if rounding == "nearest_away":
            return hi
        # tie: pick the even code; if both are even (only possible between the
        # pseudo-zero and the lowest binade of a zero-less format) pick hi.
        if _is_odd(lo_code) and not _is_odd(hi_code):
            return hi
        if _is_odd(hi_code) and not _is_odd(lo_code):
            return lo
        return hi
    if rounding == "toward_zero":
        return lo
    if rounding == "up":
        return lo if neg else hi
    if rounding == "down":
        return hi if neg else lo
    if rounding == "to_odd":
        if _is_odd(lo_code):
            return lo
        if _is_odd(hi_code):
            return hi
        return hi  # degenerate zero-less case; result becomes minpos anyway
    raise ValueError(f"unknown rounding {rounding!r}")


def _smallest_nonneg(spec: FloatSpec) -> Fraction:
    return Fraction(0) if spec.has_zero else float_minpos(spec)


def round_float(x, spec: FloatSpec, rounding: str = "nearest_even", overflow: str = "non_saturating"):
    """Round ``x`` to the format (lpnum.quantize semantics). Returns a value.

    Steps (see module docstring for the value convention):
      1. nan -> "nan" if the format has one, else the zero of the opposite sign (as ml_dtypes).
      2. +-inf -> saturate: +-max; non_saturating: +-inf, else "nan", else +-max.
      3. |x| is rounded on the grid unbounded upward (real bottom: subnormals,
         or {0, 2**-bias} for zero-less formats) with the rounding mode.
      4. Overflow (after rounding, r > max): saturate -> +-max; non_saturating ->
         +-inf/"nan"/+-max if the mode rounds this sign away from zero
         (nearest_*, up for x>0, down for x<0, to_odd but in unsigned formats
         with inf), else +-max.
      5. Zero/sign: r == 0 -> "-0" (if the format has -0 and x < 0) else 0;
         unsigned formats with x < 0 and r != 0 -> saturate: smallest value
         >= 0, non_saturating: "nan" if available (else smallest value >= 0);
         zero-less formats: nonzero x rounding to 0 -> +-minpos; x == +-0 ->
         saturate: +-minpos, non_saturating: "nan" if available else +-minpos.
    """
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown rounding {rounding!r}")
    if overflow not in OVERFLOWS:
        raise ValueError(f"unknown overflow {overflow!r}")
    kind, neg, a = _parse(x)
    if not spec.signed and neg:
        neg_unsigned = True
    else:
        neg_unsigned = False
    sat = overflow == "saturate"
    fmax = float_max(spec)
    minpos = float_minpos(spec)

    def zero_result(negative: bool):
        if spec.has_zero:
            return "-0" if (negative and spec.has_negzero) else Fraction(0)
        return minpos if (not spec.signed or not negative) else -minpos

    def negative_in_unsigned():
        if sat or not spec.has_nan:
            return _smallest_nonneg(spec)
        return "nan"

    # 1. NaN
    if kind == "nan":
        if spec.has_nan:
            return "nan"
        return zero_result(not neg)  # ml_dtypes' convention: the zero of the opposite sign

    # 2. Infinities
    if kind == "inf":
        if neg_unsigned:
            return negative_in_unsigned()
        if sat:
            return _signed(neg, fmax)
        if spec.has_inf:
            return "-inf" if neg else "+inf"
        if spec.has_nan:
            return "nan"
        return _signed(neg, fmax)

    # Exact zero input
    if a == 0:
        if spec.has_zero:
            return zero_result(neg)
        if sat or not spec.has_nan:
            return minpos if (not spec.signed or not neg) else -minpos
        return "nan"

    # 3. Round the magnitude on the unbounded grid
    r = _round_magnitude(a, neg, spec, rounding)

    # 5a. Rounded to zero (a format without zero has no zero to round to: a negative is out of range)
    if r == 0:
        if neg_unsigned and not spec.has_zero:
            return negative_in_unsigned()
        return zero_result(neg)

    # 5b. Negative nonzero in an unsigned format
    if neg_unsigned:
        return negative_in_unsigned()

    # 4. Overflow
    if r > fmax:
        if sat:
            return _signed(neg, fmax)
        # to_odd goes to the odd neighbour of max: inf, except in unsigned formats with inf, whose max has the
        # odd code (P3109 Interim Report v4.0, 4.7.5); without inf it overflows as the nearest modes do.
        away = rounding in ("nearest_even", "nearest_away") or (
            (rounding == "up" and not neg) or (rounding == "down" and neg)
        ) or (rounding == "to_odd" and (spec.signed or not spec.has_inf))
        if not away:
            return _signed(neg, fmax)
        if spec.has_inf:
            return "-inf" if neg else "+inf"
        if spec.has_nan:
            return "nan"
        return _signed(neg, fmax)

    return _signed(neg, r)


def _nan_code(spec: FloatSpec, neg: bool) -> int:
    """Canonical NaN code (matches ml_dtypes' conversions from float32)."""
    sp = spec.specials
    sign = spec.sign_mask if neg else 0
    m = spec.mantissa_bits
    if sp == "ieee":
        if m == 0:
            raise ValueError("ieee format without mantissa bits has no NaN")
        all_e = (1 << spec.exponent_bits) - 1
        return sign | (all_e << m) | (1 << (m - 1))
    if sp == "fn":
        return sign | ((1 << spec.body_bits) - 1)
    if sp in ("fnuz", "fnuz_inf"):
        return spec.sign_mask
    if sp == "fn_inf":
        return (1 << spec.body_bits) - 1
    raise ValueError("format has no NaN")


def float_value_to_code(v, spec: FloatSpec, nan_negative: bool = False) -> int:
    """Code of a value of the format (inverse of float_code_value).

    ``v`` must be a value of the format ("nan" uses the canonical NaN code, with
    the sign ``nan_negative`` where the format keeps NaN signs).
    """
    if v == "nan":
        return _nan_code(spec, nan_negative)
    if v in ("+inf", "-inf"):
        if not spec.has_inf:
            raise ValueError("format has no infinities")
        neg = v == "-inf"
        sp = spec.specials
        if sp == "ieee":
            body = ((1 << spec.exponent_bits) - 1) << spec.mantissa_bits
        elif sp == "fnuz_inf":
            body = (1 << spec.body_bits) - 1
        else:  # fn_inf
            body = (1 << spec.body_bits) - 2
        return (spec.sign_mask if neg else 0) | body
    if v == "-0":
        if not spec.has_negzero:
            raise ValueError("format has no negative zero")
        return spec.sign_mask
    assert isinstance(v, Fraction)
    neg = v < 0
    a = abs(v)
    if a == 0:
        if not spec.has_zero:
            raise ValueError("format has no zero")
        return 0
    lo, lo_code, _, _ = _grid_neighbours(a, spec)
    if lo != a or lo_code is None:
        raise ValueError(f"{v} is not on the grid of {spec}")
    code = (spec.sign_mask if neg else 0) | lo_code
    if neg and not spec.signed:
        raise ValueError("negative value in unsigned format")
    if float_code_value(code, spec) != v:
        raise ValueError(f"{v} is not a finite value of {spec}")
    return code


def round_float_code(x, spec: FloatSpec, rounding: str = "nearest_even", overflow: str = "non_saturating") -> int:
    """Code of ``round_float(x, ...)`` (lpnum.encode semantics).

    NaN results use the canonical NaN code: ieee -> sign of x, exponent all
    ones, only the top mantissa bit set (e5m2: 0x7E/0xFE, as ml_dtypes);
    fn -> all-ones body with the sign of x (0x7F/0xFF); fnuz/fnuz_inf -> the
    sign-only code (0x80); fn_inf (unsigned) -> all ones.
    """
    res = round_float(x, spec, rounding, overflow)
    _, neg, _ = _parse(x)
    return float_value_to_code(res, spec, nan_negative=neg)


# ---------------------------------------------------------------------------
# Posits (2022 Posit Standard, general es)
# ---------------------------------------------------------------------------


def _check_posit(n: int, es: int):
    if not 2 <= n <= 64:
        raise ValueError("posit width n must be in 2..64")
    if not 0 <= es <= 8:
        raise ValueError("posit es must be in 0..8")


def posit_code_value(code: int, n: int, es: int):
    """Decode an n-bit posit code with es exponent bits.

    Returns Fraction(0) for code 0, "nar" for 2**(n-1), else the exact value.
    The regime is the run of identical bits after the sign (terminated by the
    opposite bit or the end of the word); R = k-1 for a run of k ones, -k for k
    zeros.  Then es exponent bits (missing trailing bits are 0), then fraction.
    value = 2**(R * 2**es + e) * (1 + f); negative codes are two's complements.
    """
    _check_posit(n, es)
    if not 0 <= code < (1 << n):
        raise ValueError("code out of range")
    if code == 0:
        return Fraction(0)
    if code == 1 << (n - 1):
        return "nar"
    neg = bool(code >> (n - 1))
    c = ((1 << n) - code) if neg else code
    bits = format(c, f"0{n}b")[1:]  # the n-1 bits after the (now zero) sign bit
    first = bits[0]
    k = len(bits) - len(bits.lstrip(first))
    R = k - 1 if first == "1" else -k
    rest = bits[k + 1 :]  # skip the terminating bit (if any)
    ebits = rest[:es].ljust(es, "0")
    e = int(ebits, 2) if es else 0
    fbits = rest[es:]
    f = Fraction(int(fbits, 2), 1 << len(fbits)) if fbits else Fraction(0)
    v = _pow2(R * (1 << es) + e) * (1 + f)
    return -v if neg else v


def _posit_bitstring(a: Fraction, es: int) -> Fraction:
    """The infinite posit bit string (after the sign bit) of a > 0, read as a
    binary fraction 0.b1 b2 b3 ... in (0, 1)."""
    s = _floor_log2(a)
    R = s >> es  # floor division by 2**es
    e = s - (R << es)
    f = a / _pow2(s) - 1  # in [0, 1)
    if R >= 0:
        L = R + 2  # R+1 ones then a zero
        prefix = ((1 << (R + 1)) - 1) << 1
    else:
        L = -R + 1  # -R zeros then a one
        prefix = 1
    return Fraction(prefix, 1 << L) + Fraction(e, 1 << (L + es)) + f / (1 << (L + es))


def round_posit_code(x, n: int, es: int, rounding: str = "nearest_even") -> int:
    """Round x to an n-bit posit with es exponent bits; returns the code.

    The (infinite) bit string of |x| is rounded to n-1 bits after the sign as a
    binary fraction (nearest_even: ties to the even code; directed modes act on
    the code, which is monotone in value; the sign of x decides what up/down
    mean).  Nonzero x never becomes 0 or NaR: magnitudes clamp to
    [minpos, maxpos].  x == 0 -> 0; nan, +-inf -> NaR.  Negative x -> two's
    complement of the code of -x (rounded with the mode's meaning for x < 0).
    """
    _check_posit(n, es)
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown rounding {rounding!r}")
    kind, neg, a = _parse(x)
    if kind != "num":
        return 1 << (n - 1)
    if a == 0:
        return 0
    scaled = _posit_bitstring(a, es) * (1 << (n - 1))
    # Round the signed value so that up/down keep their meaning for x < 0.
    k = abs(_round_to_int(-scaled if neg else scaled, rounding))
    k = min(max(k, 1), (1 << (n - 1)) - 1)
    return ((1 << n) - k) % (1 << n) if neg else k


# ---------------------------------------------------------------------------
# Integers
# ---------------------------------------------------------------------------


def int_round(x, bits: int, signed: bool = True, narrow: bool = False,
              rounding: str = "nearest_even", overflow: str = "saturate") -> int:
    """Round x to a ``bits``-bit integer.

    Rounding modes as for floats (nearest_even: ties to even, 0 even).  Range:
    signed [-(2**(b-1)), 2**(b-1)-1] (narrow: lower bound -(2**(b-1)-1)),
    unsigned [0, 2**b - 1].  overflow="saturate" clamps; "wrap" reduces modulo
    2**b (two's complement for signed).  With narrow=True and wrap, the one
    two's-complement result outside the narrow range, -2**(b-1), is clamped to
    the narrow lower bound (so results are always in range).
    nan -> 0; +-inf -> the corresponding bound (also in wrap mode).
    """
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown rounding {rounding!r}")
    if overflow not in ("saturate", "wrap"):
        raise ValueError(f"unknown overflow {overflow!r}")
    if signed:
        lo = -(1 << (bits - 1)) + (1 if narrow else 0)
        hi = (1 << (bits - 1)) - 1
    else:
        lo, hi = 0, (1 << bits) - 1
    kind, neg, a = _parse(x)
    if kind == "nan":
        return 0
    if kind == "inf":
        return lo if neg else hi
    v = -a if neg else a
    k = _round_to_int(v, rounding)
    if overflow == "saturate":
        return min(max(k, lo), hi)
    w = k % (1 << bits)
    if signed and w >= (1 << (bits - 1)):
        w -= 1 << bits
    return max(w, lo)


# ---------------------------------------------------------------------------
# Thin numpy helper (the only place numpy is touched)
# ---------------------------------------------------------------------------


def numpy_to_list(arr) -> list:
    """Convert a numpy float array (any float dtype numpy can cast to float64
    exactly, e.g. float16/32/64 or ml_dtypes types) to a flat list of Python
    floats.  NaN/inf/-0.0 survive as Python floats."""
    import numpy as np  # local import: core logic stays numpy-free

    with np.errstate(invalid="ignore"):
        flat = np.asarray(arr).astype(np.float64).ravel()
    return [float(v) for v in flat]
