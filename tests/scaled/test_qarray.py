"""QArray as a pytree: jit, vmap, device_put, sharding, and bit-exact checkpointing (flax and orbax)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lpnum
import lpnum.description
import lpnum.qarray


def _x(shape=(8, 64), seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def _equal(a: lpnum.QArray, b: lpnum.QArray) -> None:
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    assert u.dtype == v.dtype and u.shape == v.shape
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


FORMATS = [lpnum.mx.format("mxfp6_e3m2"), lpnum.nvfp4.format(),
           lpnum.ScaledFormat("uint4", lpnum.per_channel(0), asymmetric=True)]


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_pytree_roundtrip_and_jit(fmt):
  q = lpnum.quantize_scaled(_x(), fmt)
  leaves, tree = jax.tree_util.tree_flatten(q)
  assert all(isinstance(leaf, jax.Array) for leaf in leaves)
  _equal(jax.tree_util.tree_unflatten(tree, leaves), q)
  # Through jit as an argument and as a result.
  same = jax.jit(lambda a: a)(q)
  _equal(same, q)
  np.testing.assert_array_equal(np.asarray(jax.jit(lpnum.dequantize)(q)), np.asarray(lpnum.dequantize(q)))
  _equal(jax.device_put(q, jax.devices()[0]), q)


def test_vmap_quantize_then_dequantize_inside():
  x = _x((3, 4, 32))
  fmt = lpnum.mx.format("mxfp4_e2m1")
  qs = jax.vmap(lambda r: lpnum.quantize_scaled(r, fmt))(x)
  assert qs.data.shape == (3, 4, 16) and qs.scales.shape == (3, 4, 1)
  out = jax.vmap(lpnum.dequantize)(qs)
  want = np.stack([np.asarray(lpnum.dequantize(lpnum.quantize_scaled(r, fmt))) for r in x])
  np.testing.assert_array_equal(np.asarray(out), want)


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_flax_serialization_is_bit_exact(fmt):
  from flax import serialization

  import lpnum.nn  # noqa: F401  (registers QArray with flax.serialization)

  q = lpnum.quantize_scaled(_x(seed=1), fmt)
  blob = serialization.to_bytes({"w": q})
  empty = lpnum.quantize_scaled(jnp.zeros_like(_x()), fmt)
  restored = serialization.from_bytes({"w": empty}, blob)["w"]
  _equal(restored, q)
  np.testing.assert_array_equal(np.asarray(lpnum.dequantize(restored)), np.asarray(lpnum.dequantize(q)))
  # A checkpoint of another shape is refused: the descriptions differ.
  other = lpnum.quantize_scaled(jnp.zeros((8, 32)), fmt)
  with pytest.raises(ValueError, match="they differ in (block, )?shape"):
    serialization.from_bytes({"w": other}, blob)


def test_orbax_checkpoint_is_bit_exact(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  q = lpnum.quantize_scaled(_x(seed=2), lpnum.nvfp4.format())
  path = tmp_path / "ckpt"
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, {"w": q})
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(path, {"w": q})["w"]
  _equal(restored, q)
  # Only the packed data and scales are stored: no float copy of the weights.
  assert q.nbytes < _x(seed=2).nbytes / 6


def test_sharding_on_eight_devices():
  code = textwrap.dedent("""
      import jax, jax.numpy as jnp, numpy as np, lpnum
      from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
      assert len(jax.devices()) == 8
      mesh = Mesh(np.array(jax.devices()).reshape(8), ("d",))
      x = jnp.asarray(np.random.default_rng(0).standard_normal((64, 128)).astype(np.float32))
      xs = jax.device_put(x, NamedSharding(mesh, P("d", None)))
      fmt = lpnum.mx.format("mxfp8_e4m3")
      q = jax.jit(lambda v: lpnum.quantize_scaled(v, fmt))(xs)
      qs = jax.device_put(q, NamedSharding(mesh, P("d", None)))
      assert qs.data.sharding.spec == P("d", None)
      y = jax.jit(lpnum.dequantize)(qs)
      want = lpnum.dequantize(lpnum.quantize_scaled(x, fmt))
      np.testing.assert_array_equal(np.asarray(y), np.asarray(want))
      np.testing.assert_array_equal(np.asarray(jax.jit(lambda v: lpnum.fake_quantize(v, fmt))(xs)), np.asarray(want))
      print("ok")
  """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().endswith("ok")


def test_import_lpnum_loads_no_flax_and_lpnum_nn_registers_serialization():
  code = textwrap.dedent("""
      import sys
      import jax.numpy as jnp, lpnum
      heavy = sorted({m.split(".")[0] for m in sys.modules} & {"flax", "optax", "orbax", "sklearn", "matplotlib"})
      assert not heavy, heavy
      import lpnum.nn
      from flax import serialization
      q = lpnum.quantize_scaled(jnp.arange(64.0).reshape(2, 32), lpnum.mx.format("mxfp4_e2m1"))
      assert set(serialization.to_state_dict(q)) == {"data", "scales", "description"}
      print("ok")
  """)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().endswith("ok")


# ---- check(): every leaf and every static field ---------------------------------------------------------------------
def _bad_cases():
  sym = lpnum.quantize_scaled(_x(), lpnum.mx.format("mxfp4_e2m1"))
  nv = lpnum.quantize_scaled(_x(), lpnum.nvfp4.format())
  asym = lpnum.quantize_scaled(_x(), lpnum.ScaledFormat("uint4", lpnum.per_block(32), asymmetric=True))
  rep = dataclasses.replace
  return {
      "data int32": (rep(sym, data=sym.data.astype(jnp.int32)), r"q.data has dtype int32; .* needs uint8"),
      "data float64": (rep(sym, data=np.asarray(sym.data, np.float64)), r"q.data has dtype float64"),
      "scales uint32": (rep(sym, scales=sym.scales.astype(jnp.uint32)), r"q.scales has dtype uint32; .* needs uint8"),
      "zero point broadcasting": (rep(asym, zero_point=asym.zero_point[:, :1]),
                                  r"q.zero_point has shape \(8, 1\); .* needs \(8, 2\)"),
      "zero point uint8": (rep(asym, zero_point=asym.zero_point.astype(jnp.uint8)),
                           r"q.zero_point has dtype uint8; .* needs int32"),
      "zero point missing": (rep(asym, zero_point=None), r"q.zero_point is None; fmt.asymmetric=True"),
      "tensor scale 0": (rep(nv, tensor_scale=jnp.float32(0)), r"q.tensor_scale=0.0; a per-tensor scale is positive"),
      "tensor scale negative": (rep(nv, tensor_scale=jnp.float32(-2)), r"q.tensor_scale=-2.0"),
      "tensor scale -2": (rep(nv, tensor_scale=jnp.float32(-2)), r"q.tensor_scale=-2.0"),
      "tensor scale int32": (rep(nv, tensor_scale=jnp.int32(1)), r"q.tensor_scale has dtype int32; .* needs float32"),
      "tensor scale vector": (rep(nv, tensor_scale=jnp.ones((1,), jnp.float32)),
                              r"q.tensor_scale has shape \(1,\); .* needs \(\)"),
      "tensor scale missing": (rep(nv, tensor_scale=None), r"q.tensor_scale is None; fmt.tensor_scale=True"),
      "block (1, 0)": (rep(sym, block=(1, 0)), r"q.block=\(1, 0\) must be 2 positive ints"),
      "block rank": (rep(sym, block=(32,)), r"q.block=\(32,\) must be 2 positive ints"),
      "block vs granularity": (rep(sym, block=(1, 16)), r"q.block=\(1, 16\) is not the block of .* \(1, 32\)"),
      "shape negative": (rep(sym, shape=(8, -64)), r"q.shape=\(8, -64\) must be a tuple of non-negative ints"),
      "dtype int8": (rep(sym, dtype=np.dtype(np.int8)), r"q.dtype=int8; the original dtype is float32"),
  }


@pytest.mark.parametrize("case", list(_bad_cases()))
def test_check_names_the_leaf_the_value_and_what_is_allowed(case):
  q, message = _bad_cases()[case]
  with pytest.raises(ValueError, match=message):
    q.check()


def test_check_under_jit_checks_shapes_and_dtypes_but_not_traced_values():
  nv = lpnum.quantize_scaled(_x(), lpnum.nvfp4.format())
  # A traced tensor scale is not read (its value is unknown at trace time): checking it is the caller's, eagerly.
  zero = dataclasses.replace(nv, tensor_scale=jnp.float32(0))
  jax.jit(lambda q: q.check())(zero)
  with pytest.raises(ValueError, match="a per-tensor scale is positive"):
    zero.check()
  wide = dataclasses.replace(nv, data=nv.data.astype(jnp.int32))
  with pytest.raises(ValueError, match="q.data has dtype int32"):
    jax.jit(lambda q: q.check())(wide)


def test_describe_states_the_format_facts():
  """The description of an MXFP8 E4M3 array: the OCP MX v1.0 facts (E4M3 elements with bias 7 and no infinities,
  E8M0 scales with bias 127, blocks of 32)."""
  q = lpnum.quantize_scaled(_x((4, 64)), lpnum.mx.format("mxfp8_e4m3"))
  d = q.describe()
  assert d["type"] == "QArray" and d["layout_version"] == lpnum.qarray.LAYOUT_VERSION == 1
  assert (d["shape"], d["dtype"], d["block"]) == ([4, 64], "float32", [1, 32])
  f = d["format"]
  assert {k: f["element"][k] for k in ("exponent_bits", "mantissa_bits", "bias", "specials")} == {
      "exponent_bits": 4, "mantissa_bits": 3, "bias": 7, "specials": "fn"}
  assert {k: f["scale_format"][k] for k in ("exponent_bits", "mantissa_bits", "bias", "signed")} == {
      "exponent_bits": 8, "mantissa_bits": 0, "bias": 127, "signed": False}
  assert f["granularity"] == {"kind": "block", "axes": [-1], "sizes": [32]} and f["scale_rule"] == "floor"
  assert not f["tensor_scale"] and not f["asymmetric"]
  assert json.loads(json.dumps(d)) == d


def test_pytree_keys_name_the_leaves_and_carry_the_fingerprint():
  q = lpnum.quantize_scaled(_x(), lpnum.nvfp4.format())
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(q)[0]]
  assert paths == [".data", ".scales", ".tensor_scale"]
  keys = [k for k, _ in q.tree_flatten_with_keys()[0]]
  assert keys[-1].name == "lpnum_format_" + lpnum.description.fingerprint(q.describe())
  other = lpnum.quantize_scaled(_x(), lpnum.nvfp4.format(tensor_scale=False))
  assert other.tree_flatten_with_keys()[0][-1][0] != keys[-1]
