"""Hadamard rotation inside the quantized matmul: several contracting axes, the scales of delayed and static
scaling, and packed weights. References: explicit Hadamard matrices in NumPy (float64)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lpnum
from lpnum import nn as lnn
from lpnum.hadamard import hadamard_matrix


def _kron_rotation(*sizes):
  """The orthonormal rotation of a flattened K = prod(sizes) that "auto" blocks give per axis."""
  h = np.ones((1, 1))
  for n in sizes:
    b = n & -n
    h = np.kron(h, np.kron(np.eye(n // b), hadamard_matrix(b)))
  return h


def test_two_contracting_axes_rotate_by_the_kronecker_product():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((5, 12, 32)).astype(np.float32)
  x[:, 3, 7] = 60.0  # an outlier feature
  w = rng.standard_normal((12, 32, 16)).astype(np.float32)
  dn = (((1, 2), (0, 1)), ((), ()))
  h = _kron_rotation(12, 32)
  xr, wr = x.reshape(5, -1) @ h, h @ w.reshape(-1, 16)
  int8 = lpnum.OperandQuant("int8", scaling="none")
  got = jax.jit(functools.partial(lpnum.dot_general, dimension_numbers=dn,
                                  config=lpnum.DotConfig(lhs=int8, rhs=int8, rotate="auto")))(x, w)
  want = np.asarray(lpnum.quantize(xr.astype(np.float32), "int8")) @ np.asarray(lpnum.quantize(wr.astype(np.float32), "int8"))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)
  float_rot = lpnum.dot_general(x, w, dn, lpnum.DotConfig(rotate="auto"))
  np.testing.assert_allclose(float_rot, np.einsum("bij,ijn->bn", x, w), rtol=1e-4, atol=1e-3)


def test_dense_general_with_two_contracting_axes_quantizes_rotated_operands():
  """The attention output projection of flax (a DenseGeneral over heads x head_dim) runs rotated."""
  x = jax.random.normal(jax.random.key(1), (2, 3, 4, 8))
  layer = nn.DenseGeneral(6, axis=(-2, -1))
  params = layer.init(jax.random.key(2), x)
  cfg = lpnum.DotConfig(lhs="int8", rhs="int8", rotate="auto")
  y = lnn.quantize_model(layer, [lnn.Rule(".*", cfg)]).apply(params, x)
  h = _kron_rotation(4, 8)
  k = np.asarray(params["params"]["kernel"]).reshape(32, 6)
  xr = (np.asarray(x).reshape(6, 32) @ h).astype(np.float32)
  wr = (h @ k).astype(np.float32)
  q = lambda v: np.asarray(lpnum.fake_quantize(v, lpnum.ScaledFormat("int8")))
  want = (q(xr) @ q(wr)).reshape(2, 3, 6) + np.asarray(params["params"]["bias"])
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("scaling", ["static", "delayed"])
def test_static_and_delayed_scales_come_from_the_rotated_operand(scaling):
  x = np.zeros((4, 64), np.float32)
  x[:, 0] = 8.0  # rotated by a 64-block, column 0 spreads to 8 / 8 = 1 in every column
  cfg = lpnum.DotConfig(lhs=lpnum.OperandQuant("int8", scaling=scaling), rhs="int8", rotate="auto")
  layer = nn.Dense(3, dot_general_cls=functools.partial(lnn.linen.QuantDotGeneral, config=cfg))
  variables = layer.init(jax.random.key(0), x)
  _, stats = layer.apply(variables, x, mutable=["quant_stats"])
  got = stats["quant_stats"]["QuantDotGeneral_0"]
  recorded = got["lhs_amax"] if scaling == "static" else got["lhs_amax_history"][0]
  assert float(recorded) == pytest.approx(np.abs(x @ hadamard_matrix(64)).max(), rel=1e-6)
  assert float(recorded) == pytest.approx(1.0, rel=1e-6)
  linear = nnx.Linear(64, 3, dot_general=lnn.nnx.QuantDotGeneral(cfg), rngs=nnx.Rngs(0))
  linear(jnp.asarray(x))
  stat = linear.dot_general.lhs_amax if scaling == "static" else linear.dot_general.lhs_amax_history
  assert float(jnp.max(stat[...])) == pytest.approx(1.0, rel=1e-6)


def test_rotation_with_packed_weights_is_an_error():
  x = jnp.ones((2, 64))
  dense = nn.Dense(8)
  params = dense.init(jax.random.key(0), x)["params"]
  packed = lnn.ptq({"": params}, [lnn.Rule(".*", lpnum.DotConfig.weight_only("int8"))])[""]
  rotated = lpnum.DotConfig(rhs=lpnum.OperandQuant("int8", lpnum.per_channel()), rotate="auto")
  with pytest.raises(ValueError, match="rotate.*packed"):
    lnn.quantize_model(dense, [lnn.Rule(".*", rotated)]).apply({"params": packed}, x)
