"""Checks the MX / NVFP4 reference (tests/support/mx_reference.py) itself.

Oracles and what they cover.  Where a third party is known to differ, the
reference's answer is asserted on its own (a hand derivation or exact
arithmetic) and the third party's is only required to be either that answer
or its documented one (``ours_or_known``): a release that changes to ours, or
drops a private module, never fails these tests.


* exact Fraction arithmetic: the element rounding (``round_to_element``) on
  every midpoint of every element format and one float64 ulp around it.
* ml_dtypes: float32 -> element conversion (single rounding) end to end.
  ml_dtypes before 0.7 converts float64 -> element through float32 (double
  rounding), which is why the reference does not use it.
* gfloat 0.5.2 (``compute_scale_amax`` / ``encode_block`` / ``quantize_block``):
  the OCP "floor" scale rule and the saturating round-to-nearest-even elements
  for all six MX formats.  Where gfloat 0.5.2 differs:
    - gfloat takes ``log2`` in the input dtype; with float32 input
      ``floor(log2(2**100 - ulp))`` comes out as 100, so we always feed it
      float64 (exact for every float32 amax).
    - gfloat's mxint8 is asymmetric (two's complement with -2.0 = code 0x80);
      ours clamps to -127/64 (0x81).  Elements gfloat puts at 0x80 are excluded
      from the element comparison and checked to be 0x81 here.
    - NaN blocks: gfloat divides by the NaN scale, so every element is the NaN
      code (fp8) or it raises ValueError (fp6, fp4, int8: no NaN).  inf
      blocks: gfloat gives scale 2**127 (code 254) and saturates the inf.  We
      give scale code 255 and quantize the elements at scale 1.
* jax.nn's own MX quantizer (``jax._src.cudnn.scaled_matmul_stablehlo.quantize``)
  for the "rceil" rule (mxfp8 e4m3 / e5m2; also e2m1 data in its mxfp8 mode),
  eager and jitted.  Agreement is exact on normal data and on every rceil
  scale boundary (amax within 3 float32 ulps of max * 2**k, for all k).
  XLA:CPU (jax 0.10.2) evaluates ``amax / MAX`` as ``amax * float32(1/MAX)``:
  it rewrites every division by a broadcast value (constant or not, eager or
  jit, except oddly an eager 1-element array) into a multiplication by the
  float32 reciprocal.  For the fp8/fp6/fp4 formats this never changes a
  clamped rceil scale (checked on the boundary windows, which bracket every
  boundary); for mxint8 (max 127/64) it would, at 127/64 * 2**k + 1 ulp.
  Known differences (jax 0.10.2):
    - XLA:CPU flushes float32 subnormals (inputs and results; a result is
      tiny if it is below 2**-126 after rounding to 24 bits): a block whose
      amax / MAX is below 2**-126 but above 2**-127 gets scale code 0
      instead of 1; subnormal inputs quantize to 0; blocks with scale 2**-127
      (a float32 subnormal) are not comparable (eager: NaN / saturated).
    - NaN blocks: jax's E8M0 round-up wraps the NaN exponent to scale code 0.
    - inf blocks: same scale code 255, but jax's elements are x / inf = +-0.
* jax.nn's nvfp4 mode (given our tensor scale as its global scale): codes
  agree wherever no float32 ordering can change a rounding (away from ties);
  on jax 0.10.2 jit and eager, they equal a numpy emulation (``xla_cpu_nvfp4``): ``y = x * (1/T)``,
  ``scale = e4m3(clip(max|y| * (1/6), 0, 448))``, ``e2m1(y * (1/scale))``, all
  reciprocals float32.  Our recipe is ``(amax / 6) / T`` and
  ``x / (scale * T)`` with true divisions.  The codes agree wherever these
  float32 quantities agree, and differ only at rounding ties (shown with
  concrete values).  jax also has no lower clamp on the e4m3 block scale:
  blocks with max|y| / 6 <= 2**-10 get scale 0 and NaN / saturated elements
  (we clamp to 2**-9).
* torchao's ScaleCalculationMode.EVEN formula, emulated (bit arithmetic on the
  float32 amax), for the "even" rule: equal except (shown) a rounded amax
  overflowing float32 (torchao: NaN scale) and mxint8 with a subnormal amax.
* Hand-derived worked examples.
"""

from __future__ import annotations

import functools
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

import lpnum

import mx_reference as ref

f32 = np.float32
FLOAT_NAMES = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3",
               "mxfp4_e2m1"]
ALL_NAMES = list(ref.MX_FORMATS)
F32_TINY = np.finfo(np.float32).tiny
F32_MAX = np.finfo(np.float32).max


def ulp_step(a, n: int) -> np.float32:
  """The float32 ``n`` representable steps away from a positive float32 ``a``."""
  bits = np.array([a], np.float32).view(np.int32) + np.int32(n)
  return bits.view(np.float32)[0]


def block_of(*vals, n: int = 32) -> np.ndarray:
  """A (1, n) float32 block starting with ``vals``, the rest zeros."""
  x = np.zeros((1, n), np.float32)
  x[0, :len(vals)] = np.array(vals, np.float64).astype(np.float32)
  return x


def quant(vals, name, rule="floor"):
  """Element codes, scale code and values of a single block."""
  e, s, v = ref.mx_quantize(block_of(*vals), name, scale_rule=rule)
  return e[0], int(s[0, 0]), v[0]


def random_blocks(rng: np.random.Generator, n: int) -> np.ndarray:
  """Random finite float32 blocks with amax spread over many binades."""
  kind = rng.integers(0, 3, size=(n, 1))
  g = np.where(kind == 0, rng.standard_normal((n, 32)),
               np.where(kind == 1, rng.laplace(size=(n, 32)),
                        rng.uniform(-1, 1, (n, 32))))
  return (g * np.exp2(rng.integers(-100, 100, size=(n, 1)))).astype(np.float32)


def finite_normal_blocks(x: np.ndarray) -> np.ndarray:
  """Rows of ``x`` that are finite and contain no float32 subnormal."""
  ok = np.all(np.isfinite(x), axis=1)
  ok &= ~np.any((x != 0) & (np.abs(x) < F32_TINY), axis=1)
  return x[ok]


def ours_or_known(got, ours, known, what: str) -> None:
  """A third party's answer where it is known to differ: its known answer, or ours once it changes to it.

  The reference's own answer is asserted separately against a hand derivation; this only checks that the
  documented difference is still the only one.
  """
  same = lambda a, b: np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)  # noqa: E731
  assert same(got, ours) or same(got, known), (what, got, ours, known)


# ---------------------------------------------------------------------------
# Element rounding: exact (Fraction) oracle and ml_dtypes
# ---------------------------------------------------------------------------


_FRACTION_TABLES = {}


def fraction_rne_code(v: float, dtype) -> int:
  """Saturating RNE of the float64 ``v`` by brute force over Fractions."""
  if dtype not in _FRACTION_TABLES:
    codes, table = ref.element_table(dtype)
    _FRACTION_TABLES[dtype] = (codes, [Fraction(float(t)) for t in table])
  codes, table = _FRACTION_TABLES[dtype]
  bits = {ml_dtypes.float4_e2m1fn: 4, ml_dtypes.float6_e2m3fn: 6,
          ml_dtypes.float6_e3m2fn: 6}.get(dtype, 8)
  mag = table[-1] if np.isinf(v) else min(abs(Fraction(v)), table[-1])
  dist = [abs(t - mag) for t in table]
  best = min(dist)
  cands = [i for i, d in enumerate(dist) if d == best]
  i = cands[0] if len(cands) == 1 else next(j for j in cands
                                            if codes[j] % 2 == 0)
  code = int(codes[i])
  if np.signbit(v):
    code |= 1 << (bits - 1)
  return code


@pytest.mark.parametrize("name", FLOAT_NAMES)
def test_round_to_element_matches_fraction_oracle(name):
  dtype = ref.MX_FORMATS[name].dtype
  _, table = ref.element_table(dtype)
  mids = (table[1:] + table[:-1]) / 2
  vals = np.concatenate([
      table, mids, np.nextafter(mids, np.inf), np.nextafter(mids, -np.inf),
      [table[-1] * 1.01, table[-1] * 1.5, 1e300, np.inf, 0.0, 2.0**-200],
  ])
  vals = np.concatenate([vals, -vals])
  got = ref.round_to_element(vals, dtype)
  want = np.array([fraction_rne_code(float(v), dtype) for v in vals])
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", FLOAT_NAMES)
def test_round_to_element_matches_ml_dtypes_float32(name):
  # ml_dtypes float32 -> element is a single correct RNE (non-saturating, so
  # stay within +-max), and our MX element path must reproduce it.
  dtype = ref.MX_FORMATS[name].dtype
  mx = ref.MX_FORMATS[name].max_value
  rng = np.random.default_rng(1)
  _, table = ref.element_table(dtype)
  mids = (table[1:] + table[:-1]) / 2
  v = np.concatenate([mids, rng.uniform(-mx, mx, 20000),
                      rng.standard_normal(5000) * 2.0**-10]).astype(np.float32)
  np.testing.assert_array_equal(
      ref.round_to_element(v.astype(np.float64), dtype),
      v.astype(dtype).view(np.uint8))


def test_round_to_element_rounds_float64_once():
  # Why the reference rounds itself: ml_dtypes before 0.7 converted float64
  # through float32, rounding twice; 0.7 rounds once.  Either way the
  # reference gives the single rounding.  0.25 + 2**-54 is just above the
  # 0 / 0.5 tie of e2m1; 2**-10 + 2**-60 just above half the e4m3 min
  # subnormal.
  cases = [(0.25 + 2.0**-54, ml_dtypes.float4_e2m1fn),
           (2.0**-10 + 2.0**-60, ml_dtypes.float8_e4m3fn)]
  for v, dtype in cases:
    assert fraction_rne_code(v, dtype) == 1
    assert ref.round_to_element(np.array([v]), dtype)[0] == 1
    once_or_twice = np.array([v]).astype(dtype).view(np.uint8)[0]
    assert once_or_twice in (1, 0)  # 0: ml_dtypes < 0.7 (through float32)


def test_round_to_element_nan():
  # The format's NaN by sign; the zero of the opposite sign where there is no
  # NaN.  ml_dtypes 0.5 to 0.7 convert a float32 NaN the same way; a release
  # that keeps the sign instead is the one known alternative.
  want = {"mxfp8_e4m3": [0x7F, 0xFF], "mxfp8_e5m2": [0x7E, 0xFE],
          "mxfp6_e3m2": [0x20, 0x00], "mxfp6_e2m3": [0x20, 0x00],
          "mxfp4_e2m1": [0x08, 0x00]}
  for name, codes in want.items():
    dtype = ref.MX_FORMATS[name].dtype
    nans = np.array([np.nan, -np.nan])
    assert list(ref.round_to_element(nans, dtype)) == codes, name
    got = nans.astype(np.float32).astype(dtype).view(np.uint8)
    ours_or_known(got, codes, codes[::-1], f"ml_dtypes NaN -> {name}")


@pytest.mark.parametrize("name", FLOAT_NAMES)
@pytest.mark.parametrize("rule", ref.SCALE_RULES)
def test_elements_match_ml_dtypes_at_the_reference_scale(name, rule):
  # End to end: element = ml_dtypes(float32(clip(x / 2**s))) for finite blocks.
  rng = np.random.default_rng(2)
  fmt = ref.MX_FORMATS[name]
  x = np.concatenate([ref.edge_blocks(rng, name), random_blocks(rng, 50)])
  x = x[np.all(np.isfinite(x), axis=1)]
  e, s, _ = ref.mx_quantize(x, name, scale_rule=rule)
  v = np.ldexp(x.astype(np.float64), -(s.astype(np.int64) - 127))
  v = np.clip(v, -fmt.max_value, fmt.max_value).astype(np.float32)
  np.testing.assert_array_equal(e, v.astype(fmt.dtype).view(np.uint8))


# ---------------------------------------------------------------------------
# gfloat: the OCP floor rule
# ---------------------------------------------------------------------------

gfloat = pytest.importorskip("gfloat")
from gfloat import formats as gf_formats

GF_FORMATS = {
    "mxfp8_e4m3": gf_formats.format_info_mxfp8_e4m3,
    "mxfp8_e5m2": gf_formats.format_info_mxfp8_e5m2,
    "mxfp6_e3m2": gf_formats.format_info_mxfp6_e3m2,
    "mxfp6_e2m3": gf_formats.format_info_mxfp6_e2m3,
    "mxfp4_e2m1": gf_formats.format_info_mxfp4_e2m1,
    "mxint8": gf_formats.format_info_mxint8,
}


def gfloat_block(name: str, blk: np.ndarray):
  """gfloat's floor-rule codes and values for one block (fed as float64)."""
  fi = GF_FORMATS[name]
  vals = blk.astype(np.float64)  # gfloat's log2 runs in the input dtype
  scale = gfloat.compute_scale_amax(fi.etype.emax, vals)
  enc = [int(c) for c in gfloat.encode_block(fi, scale, vals / scale)]
  deq = gfloat.quantize_block(fi, vals, gfloat.compute_scale_amax)
  return enc[0], np.array(enc[1:], np.uint8), deq


@pytest.mark.parametrize("name", ALL_NAMES)
def test_gfloat_floor_agrees(name):
  fi = GF_FORMATS[name]
  fmt = ref.MX_FORMATS[name]
  assert fi.etype.emax == fmt.emax and fi.k == 32
  if fmt.dtype is not None:
    assert fi.etype.max == fmt.max_value
  rng = np.random.default_rng(3)
  x = np.concatenate([ref.edge_blocks(rng, name), random_blocks(rng, 60)])
  x = x[np.all(np.isfinite(x), axis=1)]
  e, s, v = ref.mx_quantize(x, name)
  for b in range(x.shape[0]):
    g_scale, g_elems, g_vals = gfloat_block(name, x[b])
    assert g_scale == s[b, 0], (b, x[b])
    if fmt.dtype is None:
      # gfloat's int8 is asymmetric: -128/64 (0x80) where we clamp to -127
      # (see the next test).
      asym = g_elems == 0x80
      assert np.all(e[b][asym] == 0x81)
      np.testing.assert_array_equal(e[b][~asym], g_elems[~asym])
      np.testing.assert_array_equal(v[b][~asym], g_vals[~asym])
    else:
      np.testing.assert_array_equal(e[b], g_elems)
      np.testing.assert_array_equal(v[b], g_vals)  # exact, incl. signs of 0
      assert np.array_equal(np.signbit(v[b]), np.signbit(g_vals))


def test_gfloat_mxint8_asymmetric():
  # amax = 127.5/64 -> s = 0 under floor; -127.5 is a tie: half-to-even gives
  # -128, which gfloat keeps (code 0x80, value -2) and we clamp to -127 (0x81).
  x = block_of(-127.5 / 64, 1.0)
  g_scale, g_elems, g_vals = gfloat_block("mxint8", x[0])
  e, s, v = quant([-127.5 / 64, 1.0], "mxint8")
  assert s == 127 and e[0] == 0x81 and v[0] == -127 / 64 and e[1] == 64
  assert g_scale == s and g_elems[1] == e[1]
  ours_or_known((g_elems[0], g_vals[0]), (0x81, -127 / 64), (0x80, -2.0), "gfloat mxint8 -127.5/64")


def test_gfloat_float32_log2():
  # gfloat's compute_scale_amax takes log2 in the input dtype: in float32
  # (gfloat 0.5.2), log2(2**100 - 2**76) rounds to 100.0 and the floor scale
  # comes out one too large.  In float64 it is right, and so is the reference.
  a = ulp_step(f32(2.0**100), -1)
  assert quant([a], "mxfp8_e4m3")[1] == 127 + 91
  assert gfloat.compute_scale_amax(8, np.array([a], np.float64)) == 2.0**91
  ours_or_known(gfloat.compute_scale_amax(8, np.array([a], np.float32)), 2.0**91, 2.0**92, "float32 log2")


def test_gfloat_special_blocks():
  nan_blk = block_of(np.nan, 1.0, -3.0)[0]
  inf_blk = block_of(np.inf, 1.0, -3.0)[0]
  # Ours: the NaN scale (255) for NaN and inf blocks, elements quantized at
  # scale 1, every value NaN.
  e, s, v = quant(nan_blk, "mxfp8_e4m3")
  assert s == 255 and list(e[:3]) == [0x7F, 0x38, 0xC4] and np.all(np.isnan(v))
  e_inf, s_inf, v_inf = quant(inf_blk, "mxfp8_e4m3")
  assert s_inf == 255 and list(e_inf[:3]) == [0x7E, 0x38, 0xC4] and np.all(np.isnan(v_inf))
  # gfloat 0.5.2: a NaN block gets the NaN scale and every element NaN (it
  # divides by the NaN scale); an inf block gets scale 2**127 (code 254) and
  # the inf saturates.
  g_scale, g_elems, g_vals = gfloat_block("mxfp8_e4m3", nan_blk)
  assert g_scale == 255 and np.all(np.isnan(g_vals))
  ours_or_known(g_elems, e, np.full(32, 0xFF), "gfloat NaN block elements")
  g_scale, g_elems, g_vals = gfloat_block("mxfp8_e4m3", inf_blk)
  ours_or_known((g_scale, *g_elems[:3]), (255, 0x7E, 0x38, 0xC4), (254, 0x7E, 0x00, 0x80), "gfloat inf block")
  # e2m1 has no NaN: gfloat 0.5.2 raises on a NaN block; ours is as above.
  e, s, v = quant(nan_blk, "mxfp4_e2m1")
  assert s == 255 and np.all(np.isnan(v))
  try:
    g_scale, g_elems, _ = gfloat_block("mxfp4_e2m1", nan_blk)
  except ValueError:
    return
  assert g_scale == s  # a gfloat that stops raising must agree with us
  np.testing.assert_array_equal(g_elems, e)


# ---------------------------------------------------------------------------
# torchao EVEN (emulated from its published formula)
# ---------------------------------------------------------------------------


def torchao_even_code(amax: np.float32, fmt: ref.MXFormat) -> int:
  """E8M0 code of torchao's EVEN mode, emulated from its description.

  torchao adds half an ulp at ``m`` mantissa bits to the float32 bit pattern,
  clears the mantissa, reads the biased exponent field, subtracts
  ``emax``, clamps to [-127, 128] and maps a non-finite rounded amax to 255.
  """
  bits = int(np.array([amax], np.float32).view(np.uint32)[0])
  bits = (bits + (1 << (23 - fmt.mbits - 1))) & 0xFF800000
  field = (bits >> 23) & 0xFF
  if field == 0xFF:
    return 255
  return min(max(field - 127 - fmt.emax, -127), 128) + 127


@pytest.mark.parametrize("name", ALL_NAMES)
def test_even_rule_matches_torchao_formula(name):
  fmt = ref.MX_FORMATS[name]
  rng = np.random.default_rng(4)
  amax = np.abs(np.concatenate([
      random_blocks(rng, 200).reshape(-1), ref.edge_blocks(rng, name).reshape(-1)
  ]))
  sig = np.ldexp(1.0, -fmt.mbits - 1)
  thr = [f32(np.ldexp(2 - sig, k)) for k in range(-125, 127)]
  amax = np.concatenate([amax] + [[ulp_step(t, d) for d in (-1, 0, 1)]
                                  for t in thr]).astype(np.float32)
  amax = amax[np.isfinite(amax) & (amax > 0)]
  # Pinned separately: a rounded amax overflowing to inf, and (for mxint8
  # only, the others clamp) subnormal amax.
  amax = amax[amax < f32(np.ldexp(2 - sig, 127))]
  if fmt.dtype is None:
    amax = amax[amax >= F32_TINY]
  assert amax.size > 5000
  for a in amax:
    assert ref.shared_exponent(a, fmt, "even") + 127 == torchao_even_code(
        a, fmt), a


def test_even_rule_differs_from_torchao_bits_pinned():
  # 1. Rounded amax overflowing float32: torchao gives scale NaN (255); the
  #    real-number rule gives 2**128 -> s = 128 - emax (e4m3: 120, code 247).
  fmt = ref.MX_FORMATS["mxfp8_e4m3"]
  fmax = f32(F32_MAX)
  assert torchao_even_code(fmax, fmt) == 255
  assert ref.shared_exponent(fmax, fmt, "even") == 120
  # 2. Subnormal amax (matters only for mxint8, emax 0): with m = 6 and
  #    amax = 2**-126 - 2**-133, the bit trick carries into the exponent
  #    (s = -126); the real-number rule keeps 1.984375 * 2**-127 (s = -127).
  fmt = ref.MX_FORMATS["mxint8"]
  a = f32(2.0**-126 - 2.0**-133)
  assert ref.shared_exponent(a, fmt, "even") == -127
  assert torchao_even_code(a, fmt) == 127 - 126


# ---------------------------------------------------------------------------
# jax.nn: rceil (mxfp8 mode) and nvfp4
# ---------------------------------------------------------------------------

jax = pytest.importorskip("jax")
import jax.numpy as jnp

try:  # jax.nn's block-scaled quantizer is private: a jax without it skips these checks
  from jax._src.cudnn import scaled_matmul_stablehlo as jsm
except ImportError:
  jsm = None

JAX_MX = {
    "mxfp8_e4m3": jnp.float8_e4m3fn,
    "mxfp8_e5m2": jnp.float8_e5m2,
    "mxfp4_e2m1": jnp.float4_e2m1fn,  # not a cuDNN config, but the code works
}


#: float32 values just above a tie of each element format, which a float16
#: intermediate rounds onto the tie (then to the even neighbour), and the
#: code of their single rounding: 34 + 2**-10 (e4m3: 32 | 36 -> 36),
#: 36 + 2**-9 (e5m2: 32 | 40 -> 40), 2.5 + 2**-12 (e2m1: 2 | 3 -> 3).
_DOUBLE_ROUNDING_PROBES = {jnp.float8_e4m3fn: (34 + 2.0**-10, 0x61),
                           jnp.float8_e5m2: (36 + 2.0**-9, 0x51),
                           jnp.float4_e2m1fn: (2.5 + 2.0**-12, 0x5)}


@functools.cache
def xla_cast_rounds_once(dtype, jit: bool) -> bool:
  """Whether this jax's float32 -> ``dtype`` cast on the CPU rounds once.

  jax 0.7.1's XLA:CPU converts through float16 and rounds twice; jax.nn's
  quantizer is then no oracle for element codes.
  """
  value, code = _DOUBLE_ROUNDING_PROBES[dtype]
  cast = lambda v: v.astype(dtype)  # noqa: E731
  got = (jax.jit(cast) if jit else cast)(jnp.full((4,), value, jnp.float32))
  return bool(np.all(np.asarray(got).view(np.uint8) == code))


def require_jax_oracle(dtype, jit: bool) -> None:
  """Skips (naming the reason) where this jax cannot serve as an oracle."""
  if jsm is None:
    pytest.skip("this jax has no jax._src.cudnn.scaled_matmul_stablehlo")
  if not xla_cast_rounds_once(dtype, jit):
    pytest.skip(f"this jax ({jax.__version__}) rounds float32 -> {dtype.__name__} twice on the CPU")


def jax_mx(x: np.ndarray, name: str, jit: bool):
  """jax.nn MX quantization along the last axis: (element codes, scale codes)."""
  require_jax_oracle(JAX_MX[name], jit)
  cfg = jsm.BlockScaleConfig(mode="mxfp8", block_size=32,
                             data_type=JAX_MX[name],
                             scale_type=jnp.float8_e8m0fnu, global_scale=None,
                             infer_only=False)
  fn = lambda v: jsm.quantize(v, cfg)  # noqa: E731
  q, s = (jax.jit(fn) if jit else fn)(jnp.asarray(x))
  bits = ref.MX_FORMATS[name].bits
  return (np.asarray(q).view(np.uint8) & ((1 << bits) - 1),
          np.asarray(s).view(np.uint8))


def jax_nvfp4(x: np.ndarray, t: np.float32, jit: bool):
  """jax.nn NVFP4 quantization with global scale ``t``."""
  require_jax_oracle(jnp.float4_e2m1fn, jit)
  require_jax_oracle(jnp.float8_e4m3fn, jit)
  cfg = jsm.BlockScaleConfig(mode="nvfp4", block_size=16,
                             data_type=jnp.float4_e2m1fn,
                             scale_type=jnp.float8_e4m3fn,
                             global_scale=jnp.asarray(t, jnp.float32),
                             infer_only=False)
  fn = lambda v: jsm.quantize(v, cfg)  # noqa: E731
  q, s = (jax.jit(fn) if jit else fn)(jnp.asarray(x))
  return np.asarray(q).view(np.uint8) & 0xF, np.asarray(s).view(np.uint8)


def boundary_amax(fmt: ref.MXFormat) -> np.ndarray:
  """float32 amax within 3 ulps of max * 2**k, for every k in range."""
  amax = []
  for k in range(-130, 128):
    c = np.float64(fmt.max_value) * 2.0**k
    if F32_TINY <= c <= F32_MAX:
      amax.append([ulp_step(f32(c), d) for d in range(-3, 4)])
  amax = np.array(amax, np.float32)
  return amax[np.all(np.isfinite(amax), axis=1)]


def clamped_ceil_log2(d: np.float32) -> int:
  """``ceil(log2(d))`` clamped to [-127, 127] (-127 for d == 0)."""
  return -127 if d == 0 else min(max(ref.ceil_log2(d), -127), 127)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_rceil_boundary_windows_bracket_the_boundaries(name):
  # The 7-ulp windows of boundary_amax contain every rceil scale boundary:
  # the rule is monotone in amax and the window ends differ by one step
  # (unless clamped).  So agreement on the windows is agreement everywhere.
  fmt = ref.MX_FORMATS[name]
  for row in boundary_amax(fmt):
    lo = ref.shared_exponent(row[0], fmt, "rceil")
    hi = ref.shared_exponent(row[-1], fmt, "rceil")
    ss = [ref.shared_exponent(a, fmt, "rceil") for a in row]
    assert ss == sorted(ss)
    assert hi == lo + 1 or lo == -127 or hi == 127, row


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("name", list(JAX_MX))
def test_jax_rceil_agrees(name, jit):
  # Normal data (edge blocks and random blocks without float32 subnormals),
  # plus amax within 3 ulps of every rceil scale boundary.  XLA:CPU computes
  # amax / MAX as amax * float32(1 / MAX) (division by a constant) and
  # flushes subnormal results to zero.  Neither changes an rceil scale for
  # these formats, except where the ratio is below 2**-126 but above
  # 2**-127: flushed to 0, giving scale code 0 instead of 1.  Blocks whose
  # scale is 2**-127 (a float32 subnormal) are excluded: see the pins.
  fmt = ref.MX_FORMATS[name]
  rng = np.random.default_rng(5)
  data = finite_normal_blocks(
      np.concatenate([ref.edge_blocks(rng, name), random_blocks(rng, 300)]))
  amax = boundary_amax(fmt).reshape(-1)
  bnd = np.zeros((amax.size, 32), np.float32)
  bnd[:, 0] = amax
  bnd[:, 1] = -amax / 3  # something to round
  x = np.concatenate([data, bnd])
  e, s, _ = ref.mx_quantize(x, name, scale_rule="rceil")
  je, js = jax_mx(x, name, jit)
  # XLA:CPU flushes a tiny float32 result to zero.  Whether a ratio just
  # below 2**-126 counts as tiny depends on the arithmetic jax emits (a
  # reciprocal product rounded before or after the test), so every block whose
  # exact ratio is within 2**-24 relative of 2**-126 or below it, and whose
  # scale is 1, may also get the flushed scale code 0.
  xamax = np.max(np.abs(x), axis=1).astype(np.float64)
  near_tiny = (xamax / fmt.max_value < 2.0**-126 * (1 + 2.0**-23)) & (s[:, 0] == 1)
  assert near_tiny.sum() >= 2
  assert np.all((js[near_tiny, 0] == 0) | (js[near_tiny, 0] == 1))
  np.testing.assert_array_equal(js[~near_tiny], s[~near_tiny])
  normal = ~near_tiny & (s[:, 0] >= 1)
  assert normal[:data.shape[0]].sum() > 300
  np.testing.assert_array_equal(je[normal], e[normal])


def test_reciprocal_rceil_only_matters_for_mxint8():
  # amax * float32(1 / max) instead of amax / max (what XLA:CPU does for a
  # constant divisor, and what torchao's RCEIL writes): after clamping, the
  # rceil scale is unchanged for every float element format (boundary windows
  # suffice, see above), but not for mxint8 (max 127/64): one ulp above
  # 127/64 * 2**k the true quotient rounds up past 2**k and the product not.
  for name, fmt in ref.MX_FORMATS.items():
    mx = f32(fmt.max_value)
    recip = f32(1) / mx
    diffs = sum(
        clamped_ceil_log2(a / mx) != clamped_ceil_log2(a * recip)
        for a in boundary_amax(fmt).reshape(-1))
    assert (diffs > 0) == (name == "mxint8"), name
  mx = f32(127 / 64)
  a = ulp_step(f32(127 / 64), 1)
  assert ref.ceil_log2(a / mx) == 1 and ref.ceil_log2(a * (f32(1) / mx)) == 0
  assert ref.shared_exponent(a, ref.MX_FORMATS["mxint8"], "rceil") == 1


def test_xla_cpu_division_by_a_constant():
  # The root cause of the differences below: XLA:CPU (jax 0.10.2) computes
  # jnp x / 6.0 as x * float32(1/6), eager or jit, while dividing by an array
  # operand is the IEEE quotient.  lpnum divides exactly either way (its NVFP4
  # scale here is the IEEE one, e4m3 code 9; the reciprocal gives code 10).
  a = ulp_step(f32(1.1875 * 2.0**-6 * 6), -1)
  x = np.full(16, a, np.float32)
  ieee = x / f32(6)
  recip = x * (f32(1) / f32(6))
  assert ieee[0] != recip[0]
  ours_or_known(np.asarray(jnp.asarray(x) / f32(6)), ieee, recip, "eager x / 6")
  ours_or_known(np.asarray(jax.jit(lambda v: v / f32(6))(x)), ieee, recip, "jit x / 6")
  np.testing.assert_array_equal(
      np.asarray(jnp.asarray(x) / jnp.full(16, 6.0, jnp.float32)), ieee)
  q = lpnum.nvfp4.quantize(np.tile(x, (4, 1)), tensor_scale=False)
  np.testing.assert_array_equal(np.asarray(q.scale_codes), 9)


def test_jax_rceil_special_blocks():
  jit = True
  name = "mxfp8_e4m3"
  x = np.concatenate([
      block_of(np.nan, 1.0, -3.0),  # NaN block
      block_of(np.inf, 1.0, -3.0),  # inf block
      block_of(448 * 1.5 * 2.0**-127),  # rceil ratio subnormal
      block_of(3 * 2.0**-149, -2.0**-140),  # subnormal-only block
  ])
  e, s, _ = ref.mx_quantize(x, name, scale_rule="rceil")
  assert list(s[:, 0]) == [255, 255, 1, 0]
  assert list(e[1, :3]) == [0x7E, 0x38, 0xC4]
  je, js = jax_mx(x, name, jit)
  # Known differences of jax 0.10.2 on XLA:CPU: its round-up of the E8M0
  # exponent wraps the NaN scale 0xFF + 1 to 0; an inf block gets the same NaN
  # scale but elements x / inf = +-0; a subnormal amax / MAX is flushed to
  # zero (scale code 0 instead of 1).
  ours_or_known(js[0, 0], 255, 0, "NaN block scale")
  assert js[1, 0] == 255
  ours_or_known(je[1, 1:3], e[1, 1:3], [0x00, 0x80], "inf block elements")
  ours_or_known(js[2, 0], 1, 0, "subnormal ratio scale")
  # Subnormal-only blocks: both give scale code 0 (2**-127), and we then
  # divide exactly (2**-130 / 2**-127 = 0.125 -> 0x20, -5 * 2**-11 -> -2**-9
  # -> 0x81).  XLA:CPU flushes the subnormal inputs and scale, so jax's
  # elements there are not comparable (jax 0.10.2: +-0; 0.7.1: NaN).
  assert js[3, 0] == 0
  big_sub = block_of(2.0**-130, -5 * 2.0**-138)
  e2, s2, _ = ref.mx_quantize(big_sub, name, scale_rule="rceil")
  assert s2[0, 0] == 0 and list(e2[0, :2]) == [0x20, 0x81]
  assert jax_mx(big_sub, name, jit)[1][0, 0] == 0


def nvfp4_friendly(rng: np.random.Generator, n: int) -> np.ndarray:
  """Finite normal data whose blocks all have e4m3 scales well above 2**-10."""
  rows = rng.standard_normal((n, 64)) * np.exp2(rng.integers(-3, 3, (n, 1)))
  return (rows * 2.0**rng.integers(-30, 30)).astype(np.float32)


def near_a_tie(v: np.ndarray, dtype, rel: float = 2.0**-20) -> np.ndarray:
  """Where the exact ``|v|`` is within ``rel`` (relative) of a rounding tie of ``dtype``.

  A float32 computation of ``v`` in another order (a reciprocal, a product
  rounded before a division: a few float32 roundings, each within 2**-24)
  can round to another code only there.
  """
  _, table = ref.element_table(dtype)
  mids = (table[1:] + table[:-1]) / 2
  a = np.abs(v)[..., None]
  return np.any(np.abs(a - mids) <= rel * mids, axis=-1)


def compare_with_jax_nvfp4(x: np.ndarray, tensor_scale: bool, jit: bool) -> tuple[int, int]:
  """Asserts jax.nn's NVFP4 codes equal ours wherever no float32 ordering can change them.

  Excluded: blocks whose exact scale is near an e4m3 tie or that jax gives
  scale code 0 (it has no lower clamp), and elements near an e2m1 tie.
  Returns the numbers of blocks and elements compared.
  """
  e, s, t, _ = ref.nvfp4_quantize(x, tensor_scale=tensor_scale)
  je, js = jax_nvfp4(x, t, jit)
  blocks = x.reshape(-1, 16).astype(np.float64)
  s, js, e, je = s.reshape(-1), js.reshape(-1), e.reshape(-1, 16), je.reshape(-1, 16)
  exact_scale = np.max(np.abs(blocks), axis=1) / 6 / np.float64(t)
  keep = (js != 0) & ~near_a_tie(exact_scale, ml_dtypes.float8_e4m3fn)
  np.testing.assert_array_equal(js[keep], s[keep])
  scale_value = s.view(ml_dtypes.float8_e4m3fn).astype(np.float64)
  exact_elem = blocks / (scale_value * np.float64(t))[:, None]
  elem_keep = keep[:, None] & ~near_a_tie(exact_elem, ml_dtypes.float4_e2m1fn)
  np.testing.assert_array_equal(je[elem_keep], e[elem_keep])
  return int(keep.sum()), int(elem_keep.sum())


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("tensor_scale", [True, False])
def test_jax_nvfp4_agrees_on_random_data(tensor_scale, jit):
  # jax multiplies by float32 reciprocals (see below), so codes near a tie
  # may differ; everywhere else they must agree.
  rng = np.random.default_rng(6)
  for _ in range(2):
    n_blocks, n_elems = compare_with_jax_nvfp4(nvfp4_friendly(rng, 256), tensor_scale, jit)
    assert n_blocks > 0.8 * 256 * 4 and n_elems > 0.8 * 256 * 64


def xla_cpu_nvfp4(x: np.ndarray, t: np.float32):
  """jax.nn's nvfp4 quantize as XLA:CPU evaluates it, emulated in numpy.

  XLA:CPU turns every division by a broadcast value (the global scale, the
  constant 6, the per-block scale) into a multiplication by its float32
  reciprocal.  Flushing of subnormals is not modelled: use normal data.
  """
  y = x.reshape(-1, 16) * (f32(1) / f32(t))
  d = np.max(np.abs(y), axis=1) * (f32(1) / f32(6))
  scale = np.clip(d, 0, 448).astype(ml_dtypes.float8_e4m3fn)
  s32 = scale.astype(np.float32)
  with np.errstate(divide="ignore"):
    q = y * (f32(1) / s32)[:, None]
  elems = np.clip(q, -6, 6).astype(ml_dtypes.float4_e2m1fn)
  return (elems.view(np.uint8).reshape(x.shape),
          scale.view(np.uint8).reshape(x.shape[0], -1))


def nvfp4_tie_rows() -> np.ndarray:
  """16-element rows whose block scale or elements sit on (or 1 ulp from) ties."""
  _, t4 = ref.element_table(ml_dtypes.float8_e4m3fn)
  m4 = (t4[1:] + t4[:-1]) / 2
  _, t2 = ref.element_table(ml_dtypes.float4_e2m1fn)
  m2 = (t2[1:] + t2[:-1]) / 2
  rows = []
  for m in m4[m4 > 2.0**-6]:
    for d in (-1, 0, 1):
      row = np.zeros(16, np.float32)
      row[0] = ulp_step(f32(m * 6), d)
      rows.append(row)
  for sc in t4[t4 >= 2.0**-6]:
    row = np.zeros(16, np.float32)
    row[0] = f32(6 * sc)
    row[1:8] = (m2 * sc).astype(np.float32)
    row[8:15] = -(m2 * sc).astype(np.float32)
    rows.append(row)
    row = row.copy()
    row[1:15] = [ulp_step(abs(v), 1) * np.sign(v) for v in row[1:15]]
    rows.append(row)
  return np.stack(rows)


def nvfp4_cases():
  """(x, tensor_scale) pairs: ties at T = 1, the same rows under a T != 1."""
  ties = nvfp4_tie_rows()
  scaled = ties.copy()
  scaled[0, 0] = f32(448 * 6 * 1.7)  # amax_t: T = 1.7 (rounded)
  return [(ties, False), (scaled, True),
          (nvfp4_friendly(np.random.default_rng(10), 128), True)]


@pytest.mark.parametrize("jit", [False, True])
def test_jax_nvfp4_agrees_away_from_ties_on_the_tie_rows(jit):
  for x, ts in nvfp4_cases():
    n_blocks, n_elems = compare_with_jax_nvfp4(x, ts, jit)
    assert n_blocks > 0 and n_elems > 0


def test_reference_differs_from_jax_nvfp4_only_by_arithmetic():
  # Where the reference's float32 quantities equal the XLA:CPU ones, the
  # codes agree; the differences are real (the reciprocals bite at ties).
  n_scale_diff = n_elem_diff = 0
  for x, ts in nvfp4_cases():
    e, s, t, _ = ref.nvfp4_quantize(x, tensor_scale=ts)
    je, js = xla_cpu_nvfp4(x, t)
    b = x.reshape(-1, 16)
    amax = np.max(np.abs(b), axis=1)
    sb_ref = (amax / f32(6)) / t
    y = b * (f32(1) / t)
    sb_xla = np.max(np.abs(y), axis=1) * (f32(1) / f32(6))
    s, js = s.reshape(-1), js.reshape(-1)
    same = sb_ref == sb_xla
    np.testing.assert_array_equal(s[same], js[same])
    n_scale_diff += int(np.sum(s != js))
    e4m3 = s.view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    q_ref = b / (e4m3 * t)[:, None]
    q_xla = y * (f32(1) / e4m3)[:, None]
    ok = (s == js)[:, None] & (q_ref == q_xla)
    e, je = e.reshape(-1, 16), je.reshape(-1, 16)
    np.testing.assert_array_equal(e[ok], je[ok])
    n_elem_diff += int(np.sum((e != je) & (s == js)[:, None]))
  assert n_scale_diff >= 5 and n_elem_diff >= 5


def test_jax_nvfp4_reciprocal():
  # T = 1, one ulp below 6 * 1.1875 * 2**-6: amax / 6 is just below the tie
  # between e4m3 codes 9 and 10 (-> 9), amax * float32(1/6) is on it (-> 10).
  # (4 rows: eager XLA:CPU divides a 1-element array exactly.)
  x = np.zeros((4, 16), np.float32)
  x[:, 0] = ulp_step(f32(1.1875 * 2.0**-6 * 6), -1)
  _, s, t, _ = ref.nvfp4_quantize(x, tensor_scale=False)
  assert np.all(s == 9)
  _, js = jax_nvfp4(x, t, True)
  ours_or_known(js, s, np.full_like(s, 10), "jax nvfp4 scale at a reciprocal tie")


def test_jax_nvfp4_tensor_scale_arithmetic():
  # amax_t = 0x1.261732p+12 -> T = 0x1.c02358p+0.
  amax_t = f32(float.fromhex("0x1.261732p+12"))
  t = amax_t / f32(2688)
  assert float(t) == float.fromhex("0x1.c02358p+0")
  # Block scale: jax's (a / T) * float32(1/6) = 1.4375 exactly (an e4m3 tie
  # -> 1.5, code 60) but our (a / 6) / T = 1.4374999 (-> 1.375, code 59).
  a = f32(float.fromhex("0x1.e3261ap+3"))
  assert (a / t) * (f32(1) / f32(6)) == f32(1.4375)
  assert (a / f32(6)) / t < f32(1.4375)
  x = np.zeros((1, 32), np.float32)
  x[0, 0], x[0, 16] = amax_t, a
  _, s, _, _ = ref.nvfp4_quantize(x)
  assert s[0, 1] == 59
  _, js = jax_nvfp4(x, t, True)
  ours_or_known(js[0, 1], 59, 60, "jax nvfp4 block scale")
  # Elements: block scale 0.34375 (code 43) in both; our x / (0.34375 * T)
  # = 1.75 exactly (tie -> 2.0, code 4) but jax's (x * (1/T)) * (1/0.34375)
  # = 1.7499999 (-> 1.5, code 3).
  ab = f32(float.fromhex("0x1.ce2472p+1"))
  xe = f32(float.fromhex("0x1.0d9542p+0"))
  sc = f32(0.34375)
  assert xe / (sc * t) == f32(1.75)
  assert (xe * (f32(1) / t)) * (f32(1) / sc) < f32(1.75)
  x[0, 16], x[0, 17] = ab, xe
  e, s, _, _ = ref.nvfp4_quantize(x)
  assert s[0, 1] == 43 and e[0, 17] == 4
  je, js = jax_nvfp4(x, t, True)
  assert js[0, 1] == 43
  ours_or_known(je[0, 17], 4, 3, "jax nvfp4 element")


def test_jax_nvfp4_small_blocks():
  # jax clips the block scale to [0, 448]: an all-zero block gets scale 0 and
  # its elements are 0 / 0 = NaN (-> e2m1 code 8); we clamp to 2**-9.
  x = np.zeros((1, 32), np.float32)
  x[0, :16] = 1.0
  e, s, t, _ = ref.nvfp4_quantize(x)
  assert s[0, 1] == 1 and np.all(e[0, 16:] == 0)
  je, js = jax_nvfp4(x, t, True)
  ours_or_known((js[0, 1], *je[0, 16:]), (1, *e[0, 16:]), (0, *[8] * 16), "jax nvfp4 all-zero block")


# ---------------------------------------------------------------------------
# Hand-derived worked examples
# ---------------------------------------------------------------------------


def test_worked_e4m3_amax_448_times_8():
  # 3584 = 448 * 2**3 = 1.75 * 2**11.  floor: 11 - 8 = 3.  ceil: 12 - 8 = 4.
  # even: 1.75 < 2 - 2**-4 keeps 2**11 -> 3.  rceil: 3584 / 448 = 8 -> 3.
  want = {"floor": 130, "ceil": 131, "even": 130, "rceil": 130}
  for rule, code in want.items():
    e, s, v = quant([3584.0, -1.0], "mxfp8_e4m3", rule)
    assert s == code, rule
  e, s, v = quant([3584.0, -1.0], "mxfp8_e4m3", "floor")
  # 3584 / 8 = 448 = 0 1111 110; -1 / 8 = -0.125 = 1 0100 000.
  assert e[0] == 0x7E and e[1] == 0xA0 and v[0] == 3584 and v[1] == -1
  e, s, v = quant([3584.0, -1.0], "mxfp8_e4m3", "ceil")
  assert e[0] == 0x76 and v[0] == 3584  # 224 = 0 1110 110


# Expected E8M0 codes (127 + s) for mxfp8_e4m3 (emax 8, max 448, m = 3).
E4M3_TABLE = [
    # amax, floor, ceil, even, rceil
    (448.0, 127, 128, 127, 127),  # 1.75 * 2**8; 448 / 448 = 1
    (float(ulp_step(f32(448), 1)), 127, 128, 127, 128),  # ratio 1 + 2**-23
    (float(ulp_step(f32(448), -1)), 127, 128, 127, 127),  # ratio 1 - 2**-24
    (480.0, 127, 128, 127, 128),  # 1.875: below the even threshold 1.9375
    (496.0, 127, 128, 128, 128),  # 1.9375: at the threshold -> up (half up)
    (float(ulp_step(f32(512), -1)), 127, 128, 128, 128),  # 1 ulp below 2**9
    (512.0, 128, 128, 128, 128),  # power of two: all agree, 9 - 8 = 1
    (float(ulp_step(f32(512), 1)), 128, 129, 128, 128),  # 1 ulp above 2**9
    (1.5, 119, 120, 119, 119),  # 1.5 / 448 = 2**-8.22 -> -8
    (1.0, 119, 119, 119, 119),  # 2**0 - 8; 1/448 = 2**-8.81 -> -8
    (2.0**-20, 99, 99, 99, 99),
]


@pytest.mark.parametrize("row", E4M3_TABLE)
def test_worked_e4m3_scale_table(row):
  amax, *codes = row
  for rule, code in zip(ref.SCALE_RULES, codes):
    assert quant([amax], "mxfp8_e4m3", rule)[1] == code, (amax, rule)


def test_worked_e4m3_saturation_and_ulp_below_power_of_two():
  a = float(ulp_step(f32(2.0), -1))  # 2 - 2**-23
  e, s, v = quant([a], "mxfp8_e4m3", "floor")
  assert s == 119 and e[0] == 0x7E and v[0] == 448 / 256  # 511.99997 -> 448
  for rule in ("ceil", "even", "rceil"):
    e, s, v = quant([a], "mxfp8_e4m3", rule)
    assert s == 120 and e[0] == 0x78 and v[0] == 2.0  # 255.99998 -> 256


def test_worked_e2m1_power_of_two_neighbours():
  # e2m1: emax 2, max 6 = 1.5 * 4, m = 1 (even threshold 1.75).
  four = f32(4.0)
  rows = [
      (4.0, [127, 127, 127, 127]),  # 2**2: s = 0 for all; 4/6 -> ceil 0
      (ulp_step(four, -1), [126, 127, 127, 127]),  # floor 1-2, even -> 4
      (ulp_step(four, 1), [127, 128, 127, 127]),  # rceil: 0.6666668 -> 0
      (6.0, [127, 128, 127, 127]),  # rceil: 6 / 6 = 1 -> 0
      (ulp_step(f32(6.0), 1), [127, 128, 127, 128]),  # 1 + 2**-23 -> 1
      (7.0, [127, 128, 128, 128]),  # 1.75: even rounds up
  ]
  for amax, codes in rows:
    for rule, code in zip(ref.SCALE_RULES, codes):
      assert quant([amax], "mxfp4_e2m1", rule)[1] == code, (amax, rule)


def test_worked_element_ties():
  # e4m3 at s = 0 (amax 448): 17 -> 16 (even mantissa), 19 -> 20, 2**-10 ->
  # 0 (half the smallest subnormal), 3 * 2**-10 -> 2**-8, -17 -> -16.
  e, s, v = quant([448, 17, 19, 2.0**-10, 3 * 2.0**-10, -17], "mxfp8_e4m3")
  assert s == 127
  assert list(e[:6]) == [0x7E, 0x58, 0x5A, 0x00, 0x02, 0xD8]
  assert list(v[:6]) == [448, 16, 20, 0, 2.0**-8, -16]
  # 464 and 480 are above 448 but floor(log2 480) = 8 keeps s = 0: saturate.
  e, s, v = quant([464, 480], "mxfp8_e4m3")
  assert s == 127 and list(e[:2]) == [0x7E, 0x7E]
  # e2m1 at s = 0 (amax 6): ties 0.25 0.75 1.25 1.75 2.5 3.5 5 -5.
  e, s, v = quant([6, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5, -5], "mxfp4_e2m1")
  assert s == 127
  assert list(e[:9]) == [7, 0, 2, 2, 4, 4, 6, 6, 14]
  # mxint8 at s = 0 (amax 1): k = rint(64 x), half to even.
  e, s, v = quant([1.0, 0.5 / 64, 1.5 / 64, -2.5 / 64, -1.0], "mxint8")
  assert s == 127 and list(e[:5]) == [64, 0, 2, 0xFE, 0xC0]
  # Symmetric clamp: -127.99999 -> -128 -> -127 (0x81), never 0x80.
  e, s, v = quant([-float(ulp_step(f32(2.0), -1))], "mxint8")
  assert s == 127 and e[0] == 0x81 and v[0] == -127 / 64


def test_worked_subnormal_only_block():
  # amax 2**-130: floor gives -130 - emax < -127 -> clamped, code 0 for all
  # rules; elements are x / 2**-127 exactly.
  vals = [2.0**-130, -5 * 2.0**-138, 2.0**-149, -3 * 2.0**-149]
  for rule in ref.SCALE_RULES:
    e, s, v = quant(vals, "mxfp8_e4m3", rule)
    assert s == 0
    # 2**-3 = 0 0100 000; -5 * 2**-11 = -1.25 * 2**-9 -> -2**-9 (subnormal 1);
    # 2**-22 -> +0; -3 * 2**-22 -> -0.
    assert list(e[:4]) == [0x20, 0x81, 0x00, 0x80]
    assert list(v[:4]) == [2.0**-130, -(2.0**-136), 0.0, 0.0]
    assert np.signbit(v[3])
  e, s, v = quant(vals, "mxint8")  # k = rint(x * 2**133): 8, -0.15625 -> 0
  assert s == 0 and list(e[:4]) == [8, 0, 0, 0] and v[0] == 2.0**-130


def test_worked_huge_values():
  # amax = float32 max = (2 - 2**-23) * 2**127.
  fmax = float(F32_MAX)
  # Float formats: floor 127 - emax, the others 128 - emax (never clamped,
  # since emax >= 2); e4m3: floor s = 119 -> element 511.99997 saturates to
  # 448; ceil/even/rceil s = 120 -> element 256 -> value 2**128 = inf.
  e, s, v = quant([fmax], "mxfp8_e4m3", "floor")
  assert s == 127 + 119 and e[0] == 0x7E and v[0] == 448 * 2.0**119
  for rule in ("ceil", "even", "rceil"):
    e, s, v = quant([fmax], "mxfp8_e4m3", rule)
    assert s == 127 + 120 and e[0] == 0x78 and v[0] == np.inf
  for name in FLOAT_NAMES:
    emax = ref.MX_FORMATS[name].emax
    for rule, want in zip(ref.SCALE_RULES, (127, 128, 128, 128)):
      assert quant([fmax], name, rule)[1] == 127 + want - emax
  # mxint8 (emax 0): floor gives exactly 127; ceil, even and rceil give 128,
  # clamped to 127.  Element rint(127.99999) = 128 -> clamped to 127.
  for rule in ref.SCALE_RULES:
    e, s, v = quant([fmax, -fmax], "mxint8", rule)
    assert s == 254 and list(e[:2]) == [0x7F, 0x81]
    assert v[0] == 127 * 2.0**121
  # Lower clamp: every rule, every format.
  for name in ALL_NAMES:
    for rule in ref.SCALE_RULES:
      assert quant([2.0**-149], name, rule)[1] == 0


def test_worked_zero_nan_inf_blocks():
  for name in ALL_NAMES:
    fmt = ref.MX_FORMATS[name]
    sign = 0 if fmt.dtype is None else 1 << (fmt.bits - 1)
    for rule in ref.SCALE_RULES:
      e, s, v = quant([0.0, -0.0], name, rule)
      assert s == 0 and e[0] == 0 and e[1] == sign and np.all(v == 0)
      assert np.signbit(v[1]) == (sign != 0)
      for special in (np.nan, np.inf, -np.inf):
        e, s, v = quant([special, 1.0], name, rule)
        assert s == 255 and np.all(np.isnan(v))
  # Elements of special blocks: quantized at scale 1, saturating.
  e, s, v = quant([np.nan, 1.0, 500.0, -3.0, -np.inf], "mxfp8_e4m3")
  assert list(e[:5]) == [0x7F, 0x38, 0x7E, 0xC4, 0xFE]
  e, s, v = quant([np.nan, -np.nan, np.inf, 5.0], "mxfp4_e2m1")
  assert list(e[:4]) == [0x8, 0x0, 0x7, 0x6]  # ml_dtypes: NaN -> inverted 0
  e, s, v = quant([np.nan, np.inf, -np.inf, 0.5], "mxint8")
  assert list(e[:4]) == [0, 127, 0x81, 32]
  e, s, v = quant([np.nan, 1e6], "mxfp8_e5m2")
  assert list(e[:2]) == [0x7E, 0x7B]  # e5m2 NaN; 1e6 -> 57344


def test_worked_nvfp4():
  # T = 1: block amax 6 -> d = 1 -> e4m3 1.0 (0x38); elements 6, 3, 1, 2.5.
  x = np.zeros((1, 32), np.float32)
  x[0, :4] = [6, 3, 1, 2.5]
  x[0, 16:18] = [6000, -1]  # d = 1000 -> clamped to 448 (0x7E)
  e, s, t, v = ref.nvfp4_quantize(x, tensor_scale=False)
  assert t == 1 and list(s[0]) == [0x38, 0x7E]
  assert list(e[0, :4]) == [7, 5, 2, 4]  # 2.5 is a tie -> 2 (code 4)
  assert list(e[0, 16:18]) == [7, 8]  # 6000/448 -> 6; -1/448 -> -0
  assert list(v[0, 16:18]) == [2688, 0] and np.signbit(v[0, 17])
  # Tensor scale: amax_t = 5376 -> T = 2.  Block amax 12 -> d = 2 -> sb = 1.
  x = np.zeros((1, 48), np.float32)
  x[0, 0] = 5376
  x[0, 16:18] = [12, 5]  # 5 / 2 = 2.5 -> tie -> 2
  e, s, t, v = ref.nvfp4_quantize(x)
  assert t == 2 and list(s[0]) == [0x7E, 0x38, 0x01]  # zero block -> 2**-9
  assert list(e[0, 16:18]) == [7, 4] and list(v[0, 16:18]) == [12, 4]
  assert v[0, 0] == 5376 and np.all(e[0, 32:] == 0)
  with pytest.raises(ValueError):
    ref.nvfp4_quantize(block_of(np.nan, n=16))
  with pytest.raises(ValueError):
    ref.nvfp4_quantize(block_of(2.0**-130, n=16))  # T would be subnormal
  e, s, t, v = ref.nvfp4_quantize(block_of(2.0**-130, n=16),
                                  tensor_scale=False)
  assert t == 1 and s[0, 0] == 1 and e[0, 0] == 0


# ---------------------------------------------------------------------------
# Structural properties
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_NAMES)
def test_edge_blocks_cover_the_cases(name):
  x = ref.edge_blocks(np.random.default_rng(7), name)
  assert x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == 32
  finite = np.all(np.isfinite(x), axis=1)
  assert np.any(np.isnan(x).any(axis=1))
  assert np.any(np.isinf(x).any(axis=1) & ~np.isnan(x).any(axis=1))
  amax = np.max(np.abs(x[finite]), axis=1)
  assert np.any(amax == 0) and np.any(amax == F32_MAX)
  assert np.any((amax > 0) & (amax < F32_TINY))
  mant, _ = np.frexp(amax)
  assert np.any(mant == 0.5)  # powers of two
  for rule in ref.SCALE_RULES:
    e, s, v = ref.mx_quantize(x, name, scale_rule=rule)
    assert np.array_equal(ref.mx_dequantize(e, s, name), v, equal_nan=True)
  # The scale rules really differ on these blocks.
  codes = {r: ref.mx_quantize(x, name, scale_rule=r)[1] for r in ref.SCALE_RULES}
  assert not np.array_equal(codes["floor"], codes["ceil"])
  assert not np.array_equal(codes["floor"], codes["rceil"])
  assert not np.array_equal(codes["ceil"], codes["even"])


@pytest.mark.parametrize("name", ["mxfp8_e4m3", "mxint8", "mxfp4_e2m1"])
def test_axis_and_block_size(name):
  rng = np.random.default_rng(8)
  x = random_blocks(rng, 6).reshape(2, 3, 32)
  e, s, v = ref.mx_quantize(x, name, axis=-1)
  assert e.shape == x.shape and s.shape == (2, 3, 1) and v.dtype == np.float32
  xt = np.ascontiguousarray(np.moveaxis(x, 2, 0))  # (32, 2, 3)
  et, st, vt = ref.mx_quantize(xt, name, axis=0)
  assert st.shape == (1, 2, 3)
  np.testing.assert_array_equal(np.moveaxis(et, 0, 2), e)
  np.testing.assert_array_equal(np.moveaxis(st, 0, 2), s)
  np.testing.assert_array_equal(np.moveaxis(vt, 0, 2), v)
  e16, s16, _ = ref.mx_quantize(x, name, block=16)
  assert s16.shape == (2, 3, 2)
  e1, s1, _ = ref.mx_quantize(x.reshape(12, 16), name, block=16)
  np.testing.assert_array_equal(e16.reshape(12, 16), e1)
  with pytest.raises(ValueError):
    ref.mx_quantize(x, name, block=5)
  with pytest.raises(TypeError):
    ref.mx_quantize(x.astype(np.float64), name)


def test_nvfp4_axis():
  rng = np.random.default_rng(9)
  x = nvfp4_friendly(rng, 4)  # (4, 64)
  e, s, t, v = ref.nvfp4_quantize(x)
  assert s.shape == (4, 4)
  et, st, tt, vt = ref.nvfp4_quantize(np.ascontiguousarray(x.T), axis=0)
  assert tt == t
  np.testing.assert_array_equal(et.T, e)
  np.testing.assert_array_equal(st.T, s)
  np.testing.assert_array_equal(vt.T, v)
