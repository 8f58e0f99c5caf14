"""QArray as a pytree: jit, vmap, device_put, sharding, and bit-exact checkpointing (flax and orbax)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lpnum


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
  # A checkpoint of the wrong shape is refused with the QArray's own check.
  other = lpnum.quantize_scaled(jnp.zeros((8, 32)), fmt)
  with pytest.raises(ValueError, match="q.data has shape"):
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
      assert set(serialization.to_state_dict(q)) == {"data", "scales"}
      print("ok")
  """)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().endswith("ok")
