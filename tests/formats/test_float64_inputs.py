"""float64 inputs without jax_enable_x64: still rounded once, against the exact reference (tests/support/reference.py).

Values sit on a format's rounding breakpoints (midpoints, values, the overflow threshold) and a hair beside them,
closer than float32 can tell apart: rounding them to float32 to nearest first would put them on the breakpoint and
round them wrongly; lpnum rounds them to odd first, which keeps their side.
"""

from __future__ import annotations

import warnings
from fractions import Fraction

import jax
import numpy as np
import pytest
import reference as ref

import lpnum

MODES = ("nearest_even", "nearest_away", "toward_zero", "up", "down", "to_odd")


def _near_breakpoints(values: np.ndarray) -> np.ndarray:
  """Values, their midpoints, and both sides of each at a relative distance float32 cannot hold (2^-35)."""
  v = np.unique(np.abs(values[np.isfinite(values)]))
  if v.size > 300:  # wide formats: a spread sample, the extremes included
    v = v[np.unique(np.r_[np.linspace(0, v.size - 1, 300).astype(int), [0, 1, v.size - 2, v.size - 1]])]
  points = np.concatenate([v, (v[1:] + v[:-1]) / 2, [v[-1] + (v[-1] - v[-2]) / 2]])
  points = points[points > 0]
  side = np.concatenate([points, points * (1 + 2.0 ** -35), points * (1 - 2.0 ** -35)])
  return np.concatenate([side, -side, [0.0, -0.0, np.inf, -np.inf, np.nan, 1e300, 1e-300]])


def _as_float(v) -> float:
  if isinstance(v, Fraction):
    return float(v)
  return {"-0": -0.0, "nan": np.nan, "+inf": np.inf, "-inf": -np.inf}[v]


@pytest.mark.parametrize("name", ["float8_e4m3fn", "float8_e5m2", "float4_e2m1fn", "float6_e3m2fn", "bfloat16",
                                  "float16", "float8_e8m0fnu"])
@pytest.mark.parametrize("mode", [m if m in ("nearest_even", "to_odd", "up") else pytest.param(m, marks=pytest.mark.slow)
                                  for m in MODES])
def test_float64_numpy_input_is_rounded_once_without_x64(name, mode):
  assert not jax.config.jax_enable_x64
  spec = ref.SPECS[name]
  x = _near_breakpoints(np.array([_as_float(v) for v in ref.float_values(spec)], np.float64))
  if not spec.signed:
    x = x[~(x < 0)]
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # exact through to-odd: no warning
    got = np.asarray(lpnum.quantize(x, name, rounding=mode, overflow="saturate"), np.float64)
  want = np.array([_as_float(ref.round_float(float(v), spec, mode, "saturate")) for v in x])
  assert got.dtype == np.float64 and np.asarray(lpnum.quantize(x, name)).dtype == np.float32
  np.testing.assert_array_equal(got, want)
  assert np.array_equal(np.signbit(got), np.signbit(want))


@pytest.mark.parametrize("n,es", [(8, 2), (16, 1)])
def test_float64_input_to_posits_is_rounded_once(n, es):
  values = np.array([_as_float(ref.posit_code_value(c, n + 1, es)) if ref.posit_code_value(c, n + 1, es) != "nar"
                     else np.nan for c in range(0, 1 << (n + 1), 7 if n == 16 else 1)])
  x = _near_breakpoints(values)
  got = np.asarray(lpnum.encode(x, lpnum.posit(n, es)), np.int64)
  want = np.array([ref.round_posit_code(float(v), n, es) for v in x])
  np.testing.assert_array_equal(got, want)


def test_python_floats_are_float64_values():
  # A hair above the midpoint of e4m3 values 0.09375 (code 0x1c, even) and 0.1015625: float32 would make it the tie,
  # which goes to the even code; rounded once it goes up.
  x = 0.09765625 * (1 + 2.0 ** -40)
  assert lpnum.quantize(x, "float8_e4m3fn").item() == 0.1015625
  assert lpnum.quantize([x, -x], "float8_e4m3fn").tolist() == [0.1015625, -0.1015625]


def test_wide_formats_warn_when_float32_first_changes_a_value():
  exact = np.array([1.0, 0.5, -3.0])
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    lpnum.quantize(exact, "posit32")  # float32 holds these: nothing to warn about
  with pytest.warns(UserWarning, match="jax_enable_x64"):
    lpnum.quantize(np.array([1 + 2.0 ** -40]), "posit32")


def test_scaled_formats_warn_on_float64_values_float32_cannot_hold():
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    lpnum.fake_quantize(np.ones(32), "mxfp8_e4m3")
  with pytest.warns(UserWarning, match="float32 first"):
    lpnum.fake_quantize(np.full(32, 1 + 2.0 ** -40), "mxfp8_e4m3")
