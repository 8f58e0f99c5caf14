"""IEEE P3109 formats against the working group's published value tables and the Interim Report v4.0.

Oracles: the official value tables (digests in tests/support/p3109_tables.py), gfloat's decoder, and an exact
Fraction transcription of the report's !Project, !RoundToPrecision and !Saturate (tests/support/p3109_reference.py),
itself checked here against the tables. Formats beyond float32's range run with float64 inputs under x64.
"""

import math
from fractions import Fraction

import gfloat
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gfloat.formats import format_info_p3109
from gfloat.types import Domain, Signedness

import lpnum
import p3109_reference as p3
import p3109_tables as tables
import reference as ref
from lpnum.carrier import F32
from tiers import default_share

MODES = p3.ROUNDINGS
SATS = p3.SATURATIONS
NAMES = tuple(tables.DIGESTS)


def _parts(name: str) -> p3.P3109:
  k, rest = name[len("binary"):].split("p")
  return p3.P3109(int(k), int(rest[:-2]), rest[-2] == "s", rest[-1] == "e")


def _wide(fmt) -> bool:
  return fmt.carrier_problem(F32) is not None


#: The default sweep: binary8 formats of every kind (signed/unsigned, extended/finite), p = 1 (parity of exponent
#: codes), p = k (unsigned, one exponent bit), and formats beyond float32 (9 and 11 exponent bits) that need float64.
SAMPLE = ("binary8p4se", "binary8p3sf", "binary8p3ue", "binary8p8uf", "binary8p1se", "binary10p1se", "binary11p1ue")
#: Inputs per format in the default sweep (a seeded choice; the extremes always): the slow sweep takes them all.
SAMPLE_INPUTS = 400


# ---- decoding: the published tables --------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_value_table_matches_the_published_table(name):
  assert tables.digest(lpnum.get_format(name).values()) == tables.DIGESTS[name]


@pytest.mark.parametrize("name", tables.BEYOND_FLOAT64)
def test_formats_beyond_float64_are_rejected(name):
  with pytest.raises(ValueError, match="float64 values"):
    lpnum.get_format(name)


def test_every_p3109_format_of_3_to_15_bits_is_covered():
  names = {f.name for k in range(3, 16) for signed in (True, False) for ext in (True, False)
           for f in [p3.P3109(k, p, signed, ext) for p in range(1, k + (0 if signed else 1))]}
  assert names == set(tables.DIGESTS) | set(tables.BEYOND_FLOAT64)


def test_gfloat_decodes_as_the_published_tables():
  for name in NAMES:
    f = _parts(name)
    fi = format_info_p3109(f.k, f.p, Signedness.Signed if f.signed else Signedness.Unsigned,
                           Domain.Extended if f.extended else Domain.Finite)
    assert tables.digest(gfloat.decode_ndarray(fi, np.arange(1 << f.k))) == tables.DIGESTS[name], name


def _as_float(v) -> float:
  return {"nan": math.nan, "+inf": math.inf, "-inf": -math.inf, "-0": -0.0}[v] if isinstance(v, str) else float(v)


def test_reference_decodes_as_the_published_tables():
  """The reference's decoder (and encoder, its inverse) on every code of the formats up to 10 bits."""
  for name in NAMES:
    f = _parts(name)
    if f.k > 10:
      continue
    values = [p3.decode(f, c) for c in range(1 << f.k)]
    assert tables.digest([_as_float(v) for v in values]) == tables.DIGESTS[name], name
    assert all(p3.encode(f, v) == c for c, v in enumerate(values) if v != "nan"), name


def _decode_codes(fmt):
  codes = jnp.arange(1 << fmt.bits, dtype=fmt.code_dtype)
  return np.asarray(jax.jit(lambda c: lpnum.decode(c, fmt, jnp.float64 if _wide(fmt) else jnp.float32))(codes))


def _check_decode(name):
  fmt = lpnum.get_format(name)
  with jax.enable_x64(_wide(fmt)):
    assert tables.digest(_decode_codes(fmt)) == tables.DIGESTS[name]


@pytest.mark.parametrize("name", SAMPLE + ("binary3p2sf", "binary9p1uf", "binary12p1sf", "binary15p14sf"))
def test_decode_every_code(name):
  _check_decode(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_decode_every_code_all_formats(name):
  _check_decode(name)


def test_decode_into_float32_rounds_each_value_once():
  fmt = lpnum.get_format("binary10p1se")  # values 2^-255 .. 2^254: float32 holds 2^-149 .. 2^127
  got = np.asarray(lpnum.decode(jnp.array([1, 0x80, 0x100, 0x17F, 0x180], jnp.uint16), fmt))
  np.testing.assert_array_equal(got, np.array([0.0, 2.0**-128, 1.0, 2.0**127, np.inf], np.float32))


# ---- rounding and saturation: the report's !Project ------------------------------------------------------------
def _inputs(fmt, limit: int | None = None) -> np.ndarray:
  """Every value, every midpoint and quarter point between neighbours, values beyond max finite and below the
  smallest subnormal, and specials; both signs (negatives into unsigned formats too). ``limit``: a seeded choice
  of that many, plus the values at both ends of the range and everything beyond them."""
  v = np.unique(np.abs(fmt.values()[np.isfinite(fmt.values())]))
  gaps = np.diff(v)
  top = v[-1]
  step = top - v[-2]
  with np.errstate(over="ignore"):  # beyond float64's max for the widest formats: inf, also an input
    beyond = [top + step / 4, top + step / 2, top + step, top + 1.5 * step, 2 * top, top * 2.0**20]
  x = np.concatenate([v, v[:-1] + gaps / 4, v[:-1] + gaps / 2, v[:-1] + 3 * gaps / 4, beyond,
                      [v[1] / 4, v[1] / 2, v[1] * 0.75, np.inf, np.nan]])
  if x.size > 20000:  # 15-bit formats: a strided share of the grid, all the extremes
    x = np.concatenate([x[::7], v[:64], v[-64:], beyond])
  if limit is not None and x.size > limit:
    x = np.concatenate([np.random.default_rng(fmt.bits).choice(x, limit, replace=False), v[:8], v[-8:], beyond,
                        [v[1] / 2, np.inf, np.nan]])
  return np.concatenate([x, -x])


def _as_input(x, fmt) -> np.ndarray:
  """The inputs in the carrier dtype; the reference reads the values actually held."""
  with np.errstate(over="ignore", under="ignore"):
    return x.astype(np.float64 if _wide(fmt) else np.float32)


def _same(got, want) -> np.ndarray:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return (got == want) | (np.isnan(got) & np.isnan(want))


def _check_project(name, limit=None, overflows=SATS + ("saturate", "non_saturating")):
  """quantize and encode of the inputs, every rounding mode, every saturation mode, against the report (and
  saturate / non_saturating against the general reference), in one jitted program per format."""
  fmt, f = lpnum.get_format(name), _parts(name)
  spec = ref.p3109_spec(f.k, f.p, signed=f.signed, extended=f.extended)
  with jax.enable_x64(_wide(fmt)):
    x = _as_input(_inputs(fmt, limit), fmt)
    combos = [(m, o) for m in MODES for o in overflows]
    run = jax.jit(lambda v: {(m, o): (lpnum.quantize(v, fmt, rounding=m, overflow=o),
                                      lpnum.encode(v, fmt, rounding=m, overflow=o)) for m, o in combos})
    out = {key: (np.asarray(q), np.asarray(c)) for key, (q, c) in run(jnp.asarray(x)).items()}
  for (mode, overflow), (got, codes) in out.items():
    if overflow in SATS or overflow == "saturate":
      sat = "sat_finite" if overflow == "saturate" else overflow
      want = [p3.project(f, float(v), mode, sat) for v in x]
      want_codes = np.array([p3.encode(f, w) for w in want])
      want = [_as_float(w) for w in want]
    else:
      want = [_as_float(ref.round_float(float(v), spec, mode, overflow)) for v in x]
      want_codes = np.array([ref.round_float_code(float(v), spec, mode, overflow) for v in x])
    ok = _same(got, want) & (codes.astype(np.int64) == want_codes)
    assert ok.all(), (name, mode, overflow, x[~ok][:5], got[~ok][:5], np.asarray(want)[~ok][:5])


#: The sample of the sweep that the default run takes (a signed and an unsigned binary8 of each domain kind, p = 1 and
#: a float64 format); the rest of SAMPLE runs with ``-m slow``.
DEFAULT_SWEEP = ("binary8p4se", "binary8p3ue", "binary8p1se", "binary10p1se")


@pytest.mark.parametrize("name", default_share(SAMPLE, DEFAULT_SWEEP))
def test_rounding_and_saturation_against_the_report(name):
  _check_project(name, SAMPLE_INPUTS)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_rounding_and_saturation_against_the_report_all_formats(name):
  _check_project(name)


def test_stochastic_rounding_saturates_as_the_report():
  """Beyond max finite every stochastic draw rounds past it (no RoundAway exception names a stochastic mode)."""
  for name in ("binary8p4se", "binary8p3uf", "binary8p4ue", "binary8p3sf"):
    fmt, f = lpnum.get_format(name), _parts(name)
    x = np.array([2.0 * fmt.max_finite, 1e30, -1e30, np.inf, -np.inf], np.float32)
    for sat in SATS:
      got = np.asarray(lpnum.quantize(x, fmt, rounding="stochastic", overflow=sat, key=jax.random.key(1)))
      want = [_as_float(p3.project(f, float(v), "nearest_even", sat)) for v in x]
      assert _same(got, want).all(), (name, sat, got, want)


# ---- the worked examples, derived by hand --------------------------------------------------------------
def test_to_odd_overflows_to_inf_on_signed_extended_formats():
  # binary8p4se: bias 8, max finite 0x7E = 1.75 * 2^7 = 224. 224.1 = 14.006 * 2^4: floor 14 is even, so ToOdd
  # rounds away to 15 * 2^4 = 240; 232 = 14.5 * 2^4 likewise; 240 is exact. All exceed 224: SatNone (signed,
  # extended, not toward zero) gives +inf, and so does non_saturating.
  x = np.array([224.1, 232.0, 240.0, -232.0], np.float32)
  for overflow in ("non_saturating", "sat_none"):
    got = np.asarray(lpnum.quantize(x, "binary8p4se", rounding="to_odd", overflow=overflow))
    np.testing.assert_array_equal(got, [np.inf, np.inf, np.inf, -np.inf])
  assert p3.project(_parts("binary8p4se"), Fraction(2241, 10), "to_odd", "sat_none") == "+inf"
  # binary8p3se: 1e30 rounds (to odd) far above max finite 1.5 * 2^15 = 49152: +inf.
  assert float(lpnum.quantize(np.float32(1e30), "binary8p3se", rounding="to_odd", overflow="non_saturating")) == np.inf
  # Unsigned extended binary8p4ue: max finite 0xFD is odd, inf 0xFE even: ToOdd stays at max finite.
  fmt = lpnum.get_format("binary8p4ue")
  assert float(lpnum.quantize(np.float32(1e30), fmt, rounding="to_odd", overflow="sat_none")) == fmt.max_finite
  np.testing.assert_array_equal(np.asarray(lpnum.encode(np.float32(1e30), fmt, rounding="to_odd",
                                                        overflow="non_saturating")), 0xFD)


def test_saturation_modes_differ_where_the_report_says():
  x = np.array([1e30, -1e30, np.inf, -np.inf, -3.0], np.float32)
  # Signed finite binary8p3sf (max 1.75 * 2^15 = 57344): SatNone gives the extreme finite values, non_saturating NaN.
  got = np.asarray(lpnum.quantize(x[:4], "binary8p3sf", overflow="sat_none"))
  np.testing.assert_array_equal(got, [57344.0, -57344.0, 57344.0, -57344.0])
  assert np.isnan(np.asarray(lpnum.quantize(x[:4], "binary8p3sf", overflow="non_saturating"))).all()
  # Unsigned: -3 under toward_zero or up is 0 with SatNone (X < M_lo = 0 rounds toward zero), NaN otherwise.
  for mode, want in (("toward_zero", 0.0), ("up", 0.0), ("nearest_even", np.nan), ("down", np.nan)):
    got = float(lpnum.quantize(np.float32(-3.0), "binary8p3uf", rounding=mode, overflow="sat_none"))
    assert got == want or (np.isnan(got) and np.isnan(want)), mode
  # SatPropagate keeps the infinities of an extended format and clamps the rest; -inf into unsigned gives 0.
  got = np.asarray(lpnum.quantize(x, "binary8p3ue", overflow="sat_propagate"))
  fmt = lpnum.get_format("binary8p3ue")
  np.testing.assert_array_equal(got, [fmt.max_finite, 0.0, np.inf, 0.0, 0.0])


# ---- the mapping between lpnum's modes and P3109's, on other float formats -----------------------------------
OTHER_FLOATS = ("float8_e4m3fn", "float8_e5m2", "float8_e8m0fnu", "float4_e2m1fn", "float8_e4m3fnuz", "bfloat16")


@pytest.mark.parametrize("name", OTHER_FLOATS)
def test_sat_finite_is_saturate_and_sat_none_is_non_saturating_with_inf(name):
  fmt = lpnum.get_format(name)
  spec = ref.FloatSpec(exponent_bits=fmt.exponent_bits, mantissa_bits=fmt.mantissa_bits, bias=fmt.bias,
                       specials=fmt.specials.value, signed=fmt.signed, has_subnormals=fmt.has_subnormals)
  v = np.unique(np.abs(fmt.values()[np.isfinite(fmt.values())]))
  v = np.concatenate([v[:100], v[-100:]])
  x = np.concatenate([v, v * 1.3, [fmt.max_finite * 1.01, fmt.max_finite * 4, 1e38, np.inf, np.nan]])
  with np.errstate(over="ignore"):  # bfloat16's largest values times 4 are beyond float32: inf
    x = np.concatenate([x, -x]).astype(np.float32)
  pairs = [("sat_finite", "saturate")] + ([("sat_none", "non_saturating")] if fmt.has_inf and fmt.signed else [])
  combos = [(m, p, o) for m in MODES for p, o in pairs]
  out = jax.jit(lambda v: {c: lpnum.quantize(v, fmt, rounding=c[0], overflow=c[1]) for c in combos})(x)
  for mode, p3109_mode, lpnum_mode in combos:
    want = [_as_float(ref.round_float(float(v), spec, mode, lpnum_mode)) for v in x]
    got = np.asarray(out[mode, p3109_mode, lpnum_mode])
    ok = _same(got, want) & ((np.signbit(got) == np.signbit(want)) | np.isnan(want))
    assert ok.all(), (name, mode, p3109_mode)


def test_shift_formats_saturate_in_every_mode():
  x = np.array([1e6, -1e6, np.inf], np.float32)
  for overflow in SATS:
    np.testing.assert_array_equal(np.asarray(lpnum.quantize(x, "shift4", overflow=overflow)), [1.0, -1.0, 1.0])


# ---- float64, jit, grad and errors --------------------------------------------------------------------------
def test_formats_beyond_float32_need_float64_inputs_under_x64():
  if jax.config.jax_enable_x64:
    pytest.skip("x64 is on")
  for name in ("binary10p1se", "binary9p1ue", "binary11p2sf"):
    for fn in (lpnum.quantize, lpnum.encode):
      with pytest.raises(ValueError, match=f"fmt={name} .*need float64 x, with jax_enable_x64"):
        fn(jnp.ones(3), name)


def test_wide_formats_round_in_float64_once():
  fmt = lpnum.get_format("binary11p1ue")  # 0, powers of two 2^-1023 .. 2^1021, +inf, NaN
  with jax.enable_x64(True):
    x = jnp.array([2.0**-1023, 2.0**-1024, 3 * 2.0**-1025, 1.4 * 2.0**500, 2.0**1021, 2.0**1022], jnp.float64)
    got = np.asarray(jax.jit(lambda v: lpnum.quantize(v, fmt, overflow="sat_none"))(x))
    assert got.dtype == np.float64
    # 2^-1024 is the tie between 0 and 2^-1023: the even code, 0.
    np.testing.assert_array_equal(got, [2.0**-1023, 0.0, 2.0**-1023, 2.0**500, 2.0**1021, np.inf])
    grad = jax.grad(lambda v: lpnum.quantize(v, fmt, overflow="sat_none").sum())(x)
    np.testing.assert_array_equal(np.asarray(grad), np.ones(6))


def test_grad_is_straight_through_in_every_saturation_mode():
  x = jnp.array([0.3, 1e30, -7.0], jnp.float32)
  for overflow in SATS:
    g = jax.jit(jax.grad(lambda v: lpnum.quantize(v, "binary8p3ue", overflow=overflow).sum()))(x)
    np.testing.assert_array_equal(np.asarray(g), np.ones(3))


def test_bad_overflow_names_and_families_that_reject_p3109_modes():
  with pytest.raises(ValueError, match=r"overflow='SatNone'; expected one of \[.*'sat_none'"):
    lpnum.quantize(jnp.ones(2), "binary8p3se", overflow="SatNone")
  for name in ("int8", "uint4"):
    with pytest.raises(ValueError, match=f"overflow='sat_none' is IEEE P3109's, for float formats; {name} takes "
                                         "'saturate', 'wrap'"):
      lpnum.quantize(jnp.ones(2), name, overflow="sat_none")
  for name in ("posit8", "binary"):
    with pytest.raises(ValueError, match=f"overflow='sat_finite' is IEEE P3109's, for float formats; {name} takes "
                                         "'saturate', 'non_saturating'"):
      lpnum.encode(jnp.ones(2), name, overflow="sat_finite")
  with pytest.raises(ValueError, match="overflow='wrap' is for integer formats; binary8p3se takes 'saturate', "
                                       "'non_saturating', 'sat_finite', 'sat_propagate', 'sat_none'"):
    lpnum.quantize(jnp.ones(2), "binary8p3se", overflow="wrap")
