"""quantize, encode and decode called eagerly: the same bits as under jax.jit (and vmap), the straight-through
gradient, and one trace per static configuration (a second eager call runs the compiled computation)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lpnum
from lpnum.formats import FloatFormat, PositFormat, Specials

NAMES = ("float8_e4m3fn", "float8_e5m2", "float4_e2m1fn", "bfloat16", "float8_e8m0fnu", "binary8p3se", "int4",
         "uint8", "posit8", "posit16", "posit32", "shift4", "binary", "tf32")
#: (rounding, overflow) pairs; stochastic ones get a key.
MODES = (("nearest_even", "saturate"), ("toward_zero", "non_saturating"), ("stochastic", "saturate"))


def _x(seed: int = 0, shape=(4, 257)) -> jax.Array:
  """Normal values over many binades, with the specials."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(shape).astype(np.float32) * np.float32(2.0) ** rng.integers(-30, 30, shape)
  x.reshape(-1)[:6] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45]
  return jnp.asarray(x)


def _same_bits(a, b) -> None:
  a, b = np.asarray(a), np.asarray(b)
  assert a.dtype == b.dtype and a.shape == b.shape
  np.testing.assert_array_equal(a.view(f"uint{8 * a.dtype.itemsize}"), b.view(f"uint{8 * b.dtype.itemsize}"))


def _kwargs(rounding: str, overflow: str, fmt: lpnum.Format) -> dict:
  kwargs = {"rounding": rounding, "overflow": overflow}
  if rounding == "stochastic":
    kwargs.update(key=jax.random.key(3), stochastic_bits=8)
  if isinstance(fmt, lpnum.IntFormat) and overflow == "non_saturating":
    kwargs["overflow"] = "wrap"
  return kwargs


#: Formats of test_eager_equals_jit in the default run (one per family); the others run with -m slow.
DEFAULT_NAMES = ("float8_e4m3fn", "float4_e2m1fn", "binary8p3se", "int4", "posit16", "shift4")


@pytest.mark.parametrize("rounding,overflow", MODES, ids=[m[0] for m in MODES])
@pytest.mark.parametrize("name", [n if n in DEFAULT_NAMES else pytest.param(n, marks=pytest.mark.slow) for n in NAMES])
def test_eager_equals_jit(name, rounding, overflow):
  fmt = lpnum.get_format(name)
  x = _x()
  kwargs = _kwargs(rounding, overflow, fmt)
  if isinstance(fmt, lpnum.BinaryFormat) and overflow == "non_saturating":
    pytest.skip("binary takes saturate")
  try:
    want_q = jax.jit(lambda v: lpnum.quantize(v, fmt, **kwargs))(x)
  except ValueError:
    pytest.skip(f"{name} does not take {kwargs}")
  _same_bits(lpnum.quantize(x, fmt, **kwargs), want_q)
  codes = lpnum.encode(x, fmt, **kwargs)
  _same_bits(codes, jax.jit(lambda v: lpnum.encode(v, fmt, **kwargs))(x))
  _same_bits(lpnum.decode(codes, fmt), jax.jit(lambda c: lpnum.decode(c, fmt))(codes))
  back, want = np.asarray(lpnum.decode(codes, fmt)), np.asarray(want_q)
  nan = np.isnan(want)
  np.testing.assert_array_equal(np.isnan(back), nan)  # decode(encode(x)) == quantize(x); NaN codes decode to +NaN
  _same_bits(back[~nan], want[~nan])
  if rounding != "stochastic":
    _same_bits(jax.vmap(lambda v: lpnum.quantize(v, fmt, **kwargs))(x[:, None])[:, 0], want_q)


@pytest.mark.parametrize("name", ("float8_e4m3fn", "int4", "posit16"))
def test_eager_and_jitted_gradients_are_straight_through(name):
  x = _x(1)
  loss = lambda v, k: jnp.sum(lpnum.quantize(v, name, rounding="stochastic", key=k) * v)
  key = jax.random.key(0)
  want = lpnum.quantize(x, name, rounding="stochastic", key=key) + x  # d/dv (q(v) * v) with dq/dv = 1
  _same_bits(jax.grad(loss)(x, key), want)
  _same_bits(jax.jit(jax.grad(loss))(x, key), want)


def _count_calls(monkeypatch, cls, method: str) -> list:
  calls = []
  original = getattr(cls, method)

  def counting(self, *args, **kwargs):
    calls.append(self)
    return original(self, *args, **kwargs)

  monkeypatch.setattr(cls, method, counting)
  return calls


def test_a_second_eager_call_does_not_retrace(monkeypatch):
  traced = _count_calls(monkeypatch, FloatFormat, "round_values")
  x = jnp.linspace(-3, 3, 3 * 5 * 11, dtype=jnp.float32).reshape(3, 5, 11)  # a shape no other test uses
  same = FloatFormat(exponent_bits=4, mantissa_bits=3, bias=7, specials=Specials.FN, name="my_e4m3")
  assert same == lpnum.get_format("float8_e4m3fn") and hash(same) == hash(lpnum.get_format("float8_e4m3fn"))
  for op in (lpnum.quantize, lpnum.encode):
    del traced[:]
    first = op(x, "float8_e4m3fn")
    assert len(traced) == 1  # the first call traces the format's rounding once
    _same_bits(op(x, "float8_e4m3fn"), first)
    _same_bits(op(x, same), first)  # an equal format, built apart, shares the compiled computation
    op(x, "float8_e4m3fn", rounding="toward_zero")  # another configuration traces again
    assert len(traced) == 2


def test_a_second_eager_decode_does_not_retrace(monkeypatch):
  traced = _count_calls(monkeypatch, PositFormat, "decode_values")
  codes = jnp.arange(3 * 7 * 13, dtype=jnp.uint32).reshape(3, 7, 13)
  first = lpnum.decode(codes, "posit32")
  lpnum.decode(codes, "posit32")
  lpnum.decode(codes, lpnum.PositFormat(n=32, es=2))
  assert len(traced) == 1
  _same_bits(lpnum.decode(codes, "posit32"), first)
