"""Every family and every deterministic rounding mode against the exact Fraction reference (tests/support/reference.py).

The reference is written apart from lpnum, in integers and fractions, and is itself checked against ml_dtypes,
gfloat and softposit (tests/oracles/test_reference.py).
"""

import math
from fractions import Fraction

import jax
import numpy as np
import pytest

import lpnum
import reference as ref
from tiers import default_share

MODES = ("nearest_even", "nearest_away", "toward_zero", "up", "down", "to_odd")
OVERFLOWS = ("saturate", "non_saturating")

FLOATS = [
    lpnum.get_format(n) for n in ("float8_e4m3fn", "float8_e5m2", "float4_e2m1fn", "float6_e2m3fn", "float6_e3m2fn",
                                  "float8_e8m0fnu", "bfloat16", "float8_e4m3b11fnuz", "tf32")
] + [
    lpnum.p3109(8, 3, extended=True), lpnum.p3109(8, 4, signed=False, extended=True), lpnum.p3109(8, 1),
    lpnum.p3109(8, 5, signed=False), lpnum.p3109(6, 2),
    lpnum.FloatFormat(exponent_bits=4, mantissa_bits=3, bias=7, has_subnormals=False, specials=lpnum.Specials.IEEE),
    lpnum.FloatFormat(exponent_bits=8, mantissa_bits=3, bias=140, specials=lpnum.Specials.FN),  # below float32 normals
    lpnum.FloatFormat(exponent_bits=3, mantissa_bits=0, bias=2, specials=lpnum.Specials.FINITE),
]
SHIFTS = [lpnum.get_format("shift4"), lpnum.get_format("shift4_zero_free"),
          lpnum.ShiftFormat(emin=-3, emax=4, has_zero=False)]
INTS = [lpnum.get_format(n) for n in ("int8", "uint4", "int4_narrow", "int2_narrow", "int16", "uint8")]


def _spec(fmt) -> ref.FloatSpec:
  """The reference's description of an lpnum float (or shift) format: the same facts, stated as data."""
  if isinstance(fmt, lpnum.ShiftFormat):
    exps = fmt.emax - fmt.emin + 1 + int(fmt.has_zero)
    eb = max(1, (exps - 1).bit_length())
    bias = (1 - fmt.emin) if fmt.has_zero else -fmt.emin
    return ref.FloatSpec(exponent_bits=eb, mantissa_bits=0, bias=bias, specials="finite",
                         has_subnormals=fmt.has_zero)
  return ref.FloatSpec(exponent_bits=fmt.exponent_bits, mantissa_bits=fmt.mantissa_bits, bias=fmt.bias,
                       specials=fmt.specials.value, signed=fmt.signed, has_subnormals=fmt.has_subnormals)


def _inputs(values: np.ndarray, n_random: int, seed: int) -> np.ndarray:
  """Values, midpoints and their float32 neighbours, random log-uniform values, specials; both signs."""
  rng = np.random.default_rng(seed)
  v = np.unique(np.abs(values[np.isfinite(values)])).astype(np.float64)
  mids = (v[1:] + v[:-1]) / 2
  v32, m32 = v.astype(np.float32), mids.astype(np.float32)
  lo = max(float(v[v > 0].min()) / 8, 1e-44)
  hi = min(float(v.max()) * 8, 3e38)
  parts = [v32, m32, np.nextafter(m32, np.float32(np.inf)), np.nextafter(m32, np.float32(0)),
           np.exp(rng.uniform(math.log(lo), math.log(hi), n_random)).astype(np.float32),
           np.array([0.0, np.inf, np.nan, 1e-45, 3.4e38], np.float32)]
  x = np.concatenate(parts)
  if x.size > 3000:  # formats with thousands of values (bfloat16, tf32, 12-bit): a random share of the edges
    x = rng.choice(x, 3000, replace=False)
  return np.concatenate([x, -x])


def _as_float(v) -> float:
  if isinstance(v, str):
    return {"nan": math.nan, "+inf": math.inf, "-inf": -math.inf, "-0": -0.0}[v]
  return float(v)


def _assert_same(x, got, want, what):
  got = np.asarray(got, np.float64)
  want = np.asarray(want, np.float64)
  same = (got == want) & (np.signbit(got) == np.signbit(want)) | (np.isnan(got) & np.isnan(want))
  assert same.all(), (what, x[~same][:6], got[~same][:6], want[~same][:6])


def _float_values(fmt):
  if fmt.bits <= 16:
    return fmt.values()
  # tf32: a strided share of its codes
  codes = np.arange(0, 1 << fmt.bits, 97)
  return fmt.decode_exact(codes)


def _every_mode(fmt, overflows, x, codes: bool = True):
  """``quantize`` (and ``encode``) of ``x`` in every (mode, overflow), compiled as one program per format."""
  combos = [(m, o) for m in MODES for o in overflows]

  def run(v):
    return {(m, o): (lpnum.quantize(v, fmt, rounding=m, overflow=o),
                     lpnum.encode(v, fmt, rounding=m, overflow=o) if codes else None) for m, o in combos}

  return jax.jit(run)(x)


@pytest.mark.parametrize("fmt", default_share(FLOATS + SHIFTS, keep=lambda f: f.name != "float12_e8m3b140fn"),
                         ids=lambda f: f.name)
def test_float_and_shift_formats(fmt):
  """Every deterministic mode and both overflow modes, values and codes, against the Fraction reference."""
  spec = _spec(fmt)
  x = _inputs(_float_values(fmt), 500, seed=hash(fmt.name) % 1000)
  with_codes = isinstance(fmt, lpnum.FloatFormat) and fmt.bits <= 16
  for (mode, overflow), (got, codes) in _every_mode(fmt, OVERFLOWS, x, with_codes).items():
    want = [_as_float(ref.round_float(float(v), spec, mode, overflow)) for v in x]
    _assert_same(x, got, want, (fmt.name, mode, overflow))
    if with_codes:
      codes = np.asarray(codes)
      want_codes = np.array([ref.round_float_code(float(v), spec, mode, overflow) for v in x])
      bad = codes != want_codes
      assert not bad.any(), (fmt.name, mode, overflow, x[bad][:6], codes[bad][:6], want_codes[bad][:6])


@pytest.mark.parametrize("fmt", INTS, ids=lambda f: f.name)
def test_integer_formats(fmt):
  """Every deterministic mode, saturating and (but for narrow formats) wrapping, against the reference."""
  rng = np.random.default_rng(0)
  span = fmt.max_finite * 3
  x = np.concatenate([np.arange(-span, span, 0.25, dtype=np.float32)[:: max(1, int(span) // 300)],
                      rng.uniform(-span, span, 2000).astype(np.float32),
                      np.array([0.5, -0.5, 1.5, -2.5, 1e-30, 1e30, -1e30, np.inf, -np.inf, np.nan], np.float32)])
  overflows = ("saturate",) if fmt.narrow else ("saturate", "wrap")
  for (mode, overflow), (got, codes) in _every_mode(fmt, overflows, x).items():
    want = [float(ref.int_round(float(v), fmt.bits, fmt.signed, fmt.narrow, mode, overflow)) for v in x]
    _assert_same(x, got, want, (fmt.name, mode, overflow))
    np.testing.assert_array_equal(np.asarray(codes).astype(np.int64), np.array(want, np.int64) & ((1 << fmt.bits) - 1))


def test_wrap_is_rejected_for_narrow_formats():
  with pytest.raises(ValueError, match="overflow='wrap'"):
    lpnum.quantize(np.ones(2, np.float32), "int4_narrow", overflow="wrap")


POSITS = [(8, 0), (8, 1), (8, 2), (8, 3), (6, 1), (10, 4), (12, 2), (16, 1), (16, 2), (2, 0), (3, 1), (32, 2)]


# By default every posit(8, es), posit(16, 1), posit(32, 2) and the smallest, posit(2, 0); the others in the slow set.
POSITS_DEFAULT = [(8, 0), (8, 1), (8, 2), (8, 3), (16, 1), (32, 2), (2, 0)]


@pytest.mark.parametrize("n, es", default_share([p for p in POSITS if p[0] <= 16], keep=POSITS_DEFAULT, unpack=True),
                         ids=str)
def test_posit_decode_every_code(n, es):
  fmt = lpnum.posit(n, es)
  codes = np.arange(1 << n, dtype=np.uint32)
  want = np.array([_as_float(v) if isinstance(v, str) else float(v) for v in
                   (ref.posit_code_value(int(c), n, es) if int(c) != 1 << (n - 1) else "nan" for c in codes)])
  _assert_same(codes, fmt.values(), want, "table")
  # The arithmetic decoder (used above 16 bits) agrees with the table on every code.
  got = fmt.decode_values(jax.numpy.asarray(codes), lpnum.carrier.F32)
  with np.errstate(over="ignore"):  # posit(10, 4) reaches 2^128: inf in float32, as a cast gives
    _assert_same(codes, got, want.astype(np.float32), "arithmetic")


@pytest.mark.parametrize("n, es", default_share(POSITS, keep=POSITS_DEFAULT, unpack=True), ids=str)
def test_posit_rounding(n, es):
  """Every deterministic mode, codes and values, against the reference's rounding of the bit string."""
  fmt = lpnum.posit(n, es)
  if fmt.carrier_problem(lpnum.carrier.F32) is not None:
    pytest.skip("range beyond float32")
  # Values, bit-string midpoints (the odd codes of posit(n+1, es)) and their float32 neighbours.
  codes = np.arange(1 << min(n, 12)) if n <= 12 else np.random.default_rng(n).integers(0, 1 << n, 4000)
  vals = lpnum.posit(n, es).decode_exact(codes)
  longer = lpnum.posit(min(n + 1, 32), es).decode_exact(2 * codes + 1) if n < 32 else vals
  x = _inputs(np.concatenate([vals, longer]), 300, seed=n * 10 + es)
  for (mode, _), (values, got) in _every_mode(fmt, ("saturate",), x).items():
    got = np.asarray(got).astype(np.int64)
    want = np.array([ref.round_posit_code(float(v), n, es, mode) for v in x])
    bad = got != want
    assert not bad.any(), (mode, x[bad][:6], got[bad][:6], want[bad][:6])
    _assert_same(x, np.asarray(values, np.float64), fmt.decode_exact(want), ("values", mode))


@pytest.mark.slow
@pytest.mark.parametrize("es", [0, 1, 2, 3])
def test_posit16_nearest_even_exhaustive(es):
  n = 16
  fmt = lpnum.posit(n, es)
  codes = np.arange(1 << n)
  mids = lpnum.posit(n + 1, es).decode_exact(2 * codes + 1)
  x = np.concatenate([fmt.decode_exact(codes), mids]).astype(np.float32)
  x = x[np.isfinite(x)]
  x = np.concatenate([x, np.nextafter(x, np.float32(np.inf)), np.nextafter(x, np.float32(-np.inf))])
  got = np.asarray(jax.jit(lambda v: lpnum.encode(v, fmt))(x)).astype(np.int64)
  want = np.array([ref.round_posit_code(float(v), n, es, "nearest_even") for v in x])
  assert (got == want).all()


def test_posit_standard_example_rounds_on_the_bit_string():
  # 144179.2 lies between posit8 values 65536 and 262144 and above the 9-bit midpoint 131072.
  assert float(lpnum.quantize(np.float32(144179.2), "posit8")) == 262144.0
  assert float(lpnum.quantize(np.float32(131071.0), "posit8")) == 65536.0


@pytest.mark.parametrize("mode", MODES)
def test_binary_format_rules(mode):
  x = np.array([-3.0, -1.0, -0.5, -0.0, 0.0, 0.5, 1.0, 3.0, np.nan], np.float32)
  want = {
      "nearest_even": [-1, -1, -1, 1, 1, 1, 1, 1, 1],
      "nearest_away": [-1, -1, -1, -1, 1, 1, 1, 1, 1],
      "toward_zero": [-1, -1, -1, -1, 1, 1, 1, 1, 1],
      "up": [-1, -1, 1, 1, 1, 1, 1, 1, 1],
      "down": [-1, -1, -1, -1, -1, -1, 1, 1, 1],
      "to_odd": [-1, -1, -1, -1, -1, -1, 1, -1, 1],
  }[mode]
  np.testing.assert_array_equal(np.asarray(lpnum.quantize(x, "binary", rounding=mode)), want)
  np.testing.assert_array_equal(np.asarray(lpnum.encode(x, "binary", rounding=mode)),
                                (np.array(want) < 0).astype(np.uint8))


def test_fraction_reference_spot_checks_by_hand():
  e4m3 = _spec(lpnum.get_format("float8_e4m3fn"))
  assert ref.round_float(Fraction(464), e4m3, "nearest_even", "non_saturating") == 448
  assert ref.round_float(465.0, e4m3, "nearest_even", "non_saturating") == "nan"
  assert float(lpnum.quantize(np.float32(464), "float8_e4m3fn", overflow="non_saturating")) == 448
  assert math.isnan(float(lpnum.quantize(np.float32(465), "float8_e4m3fn", overflow="non_saturating")))
