"""``Format.round_values(..., in_kernel=True)`` (the operations every Pallas lowering has: no round-to-integral)
equals the default rounding code for code, for the element and scale formats the cast kernels use."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lpnum
from lpnum.carrier import F32
from lpnum.formats import get_format
from lpnum.rounding import Overflow, Rounding

FORMATS = ["float8_e4m3fn", "float8_e5m2", "float6_e2m3fn", "float6_e3m2fn", "float4_e2m1fn", "int8", "int8_narrow",
           "int4", "uint8", "float8_e8m0fnu", "bfloat16", "float16"]


def _probes(fmt) -> np.ndarray:
  """Every value of the format (or a strided sample of 16-bit ones), the midpoints between neighbours and the
  float32 values just around them, float32 subnormals, zeros, infinities, NaN and values beyond the range."""
  codes = np.arange(0, 1 << fmt.bits, 1 if fmt.bits <= 8 else 97)
  v = np.asarray(lpnum.decode(codes, fmt, jnp.float32), np.float64)
  v = np.unique(v[np.isfinite(v)])
  mids = (v[1:] + v[:-1]) / 2
  near = np.concatenate([np.nextafter(mids.astype(np.float32), np.float32(np.inf)),
                         np.nextafter(mids.astype(np.float32), np.float32(-np.inf))])
  special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e38, -1e38, 2.0 ** -149, -(2.0 ** -140), 2.0 ** -127])
  x = np.concatenate([v, mids, near, special]).astype(np.float32)
  return np.concatenate([x, -x])


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("mode", [Rounding.NEAREST_EVEN, Rounding.UP])
def test_in_kernel_rounding_equals_the_default(name, mode):
  fmt = get_format(name)
  x = jnp.asarray(_probes(fmt))
  ov = Overflow.SATURATE
  run = jax.jit(lambda x, k: fmt.encode_values(fmt.round_values(x, F32, mode, ov, None, None, in_kernel=k), F32),
                static_argnums=1)
  np.testing.assert_array_equal(np.asarray(run(x, True)), np.asarray(run(x, False)))
