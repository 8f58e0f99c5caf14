"""lpnum.decode of every code of every format of at most 16 bits: the arithmetic decoders (float and integer
families, into float32) against the exact value table (``fmt.values()``, numpy float64 from the format's fields)
and against ml_dtypes, bit for bit (NaN codes give the positive quiet NaN, -0 keeps its sign)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lpnum
from lpnum.formats import FloatFormat, IntFormat, Specials

NARROW = [f for f in lpnum.ALL_FORMATS if f.bits <= 16]
#: Float layouts beyond the presets: no subnormals (signed), the other special conventions, binades at the ends of
#: float32's normal range (the field-building path) and beyond them (the general path).
EXTRA_FLOATS = [
    FloatFormat(exponent_bits=3, mantissa_bits=2, bias=3, specials=Specials.FINITE, has_subnormals=False),
    FloatFormat(exponent_bits=4, mantissa_bits=3, bias=7, specials=Specials.FNUZ_INF),
    FloatFormat(exponent_bits=4, mantissa_bits=3, bias=7, specials=Specials.FN_INF, signed=False),
    FloatFormat(exponent_bits=5, mantissa_bits=2, bias=15, specials=Specials.IEEE, signed=False),
    FloatFormat(exponent_bits=7, mantissa_bits=3, bias=124, specials=Specials.FN),  # subnormals down to 2^-126
    FloatFormat(exponent_bits=7, mantissa_bits=3, bias=125, specials=Specials.FN),  # down to 2^-127
    FloatFormat(exponent_bits=8, mantissa_bits=2, bias=127, specials=Specials.FINITE, has_subnormals=False),
    FloatFormat(exponent_bits=7, mantissa_bits=1, bias=0, specials=Specials.IEEE),  # up to 2^126
]
EXTRA_INTS = [IntFormat(bits=b, signed=s, narrow=n) for b in (1, 3, 5, 12, 16) for s in (True, False)
              for n in ((False, True) if s and b > 1 else (False,))]
FORMATS = NARROW + EXTRA_FLOATS + EXTRA_INTS
TRANSFORMS = {"eager": lambda f: f, "jit": jax.jit}


def _expected_bits(fmt: lpnum.Format, dtype) -> np.ndarray:
  """Bit patterns of the exact values rounded to ``dtype`` by numpy; NaN as the positive quiet NaN."""
  with np.errstate(over="ignore"):
    values = fmt.values().astype(dtype)
  values[np.isnan(values)] = np.array(np.nan, dtype)
  return values.view(np.uint32 if np.dtype(dtype).itemsize == 4 else np.uint16)


def _codes(fmt: lpnum.Format) -> jax.Array:
  return jnp.arange(1 << fmt.bits, dtype=jnp.uint32).astype(fmt.code_dtype)


@pytest.mark.parametrize("transform", TRANSFORMS.values(), ids=TRANSFORMS.keys())
@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_every_code_matches_the_value_table(fmt, transform):
  got = np.asarray(transform(lambda c: lpnum.decode(c, fmt))(_codes(fmt)))
  np.testing.assert_array_equal(got.view(np.uint32), _expected_bits(fmt, np.float32))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, np.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("fmt", [f for f in FORMATS if isinstance(f, FloatFormat | IntFormat)], ids=str)
def test_narrow_outputs_round_once_like_numpy(fmt, dtype):
  got = np.asarray(lpnum.decode(_codes(fmt), fmt, dtype))
  np.testing.assert_array_equal(got.view(np.uint16), _expected_bits(fmt, dtype))


@pytest.mark.parametrize("fmt", [f for f in NARROW if f.dtype is not None], ids=str)
def test_every_code_matches_ml_dtypes(fmt):
  codes = np.arange(1 << fmt.bits, dtype=np.uint32).astype(np.dtype(f"uint{8 * np.dtype(fmt.dtype).itemsize}"))
  if np.dtype(fmt.dtype).itemsize * 8 != fmt.bits:  # 4- and 6-bit dtypes hold their code in a byte
    want = np.array([np.array(c, np.uint8).view(fmt.dtype) for c in codes]).astype(np.float32)
  else:
    want = codes.view(fmt.dtype).astype(np.float32)
  got = np.asarray(lpnum.decode(jnp.asarray(codes), fmt))
  nan = np.isnan(want)
  np.testing.assert_array_equal(np.isnan(got), nan)
  np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))  # -0 included


@pytest.mark.parametrize("fmt", [lpnum.get_format(n) for n in ("float8_e4m3fn", "float4_e2m1fn", "int4")], ids=str)
def test_decode_under_vmap(fmt):
  codes = _codes(fmt).reshape(2, -1)
  got = np.asarray(jax.vmap(lambda c: lpnum.decode(c, fmt))(codes)).reshape(-1)
  np.testing.assert_array_equal(got.view(np.uint32), _expected_bits(fmt, np.float32))

