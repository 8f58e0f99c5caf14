"""lpnum.nn.checkpoint (orbax with descriptions), and what a plain orbax StandardCheckpointer does with lpnum values."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import lpnum
from lpnum.kernels import grouped_matmul as gm
from lpnum.kernels import pack_weights
from lpnum.nn import checkpoint

X = jnp.asarray(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32))
INT4_G32 = lpnum.quantize_scaled(X, lpnum.ScaledFormat("int4", lpnum.per_block(32, 0), name="int4_g32"))
MXFP4 = lpnum.quantize_scaled(X, lpnum.mx.format("mxfp4_e2m1", axis=0))
NVFP4 = lpnum.quantize_scaled(X, lpnum.nvfp4.format(axis=0))
NVFP4_NO_TS = lpnum.quantize_scaled(X, lpnum.nvfp4.format(axis=0, tensor_scale=False))


def _same_leaves(a, b) -> None:
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    assert np.dtype(u.dtype) == np.dtype(v.dtype) and u.shape == v.shape
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_save_and_restore_with_and_without_a_target(tmp_path):
  tree = {"q": NVFP4, "w": pack_weights(INT4_G32), "b": jnp.arange(3.0)}
  checkpoint.save(tmp_path / "ckpt", tree)
  _same_leaves(checkpoint.restore(tmp_path / "ckpt", tree), tree)
  _same_leaves(checkpoint.restore(tmp_path / "ckpt"), tree)
  _same_leaves(checkpoint.restore(tmp_path / "ckpt", jax.eval_shape(lambda: tree)), tree)
  with pytest.raises(ValueError, match=r"holds QArray nvfp4 .* target is QArray nvfp4_no_tensor_scale .*tensor_scale"):
    checkpoint.restore(tmp_path / "ckpt", {**tree, "q": NVFP4_NO_TS})
  with pytest.raises(ValueError, match=r"holds PackedWeights int4_g32 .* target is PackedWeights mxfp4_e2m1"):
    checkpoint.restore(tmp_path / "ckpt", {**tree, "w": pack_weights(MXFP4)})


def test_plain_orbax_restore_into_another_format_fails(tmp_path):
  """The issue's case: orbax casts int4's uint32 scales to mxfp4's uint8 without a word; the fingerprint key of the
  pytree makes it refuse the template instead."""
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(tmp_path / "plain", {"w": INT4_G32})
  with ocp.StandardCheckpointer() as ckpt:
    _same_leaves(ckpt.restore(tmp_path / "plain", {"w": INT4_G32}), {"w": INT4_G32})
    for other in (MXFP4, NVFP4_NO_TS):
      with pytest.raises(ValueError, match="lpnum_format_"):
        ckpt.restore(tmp_path / "plain", {"w": other})
  # lpnum's restore reads the plain save too, checks the fingerprint, and names the target's format.
  _same_leaves(checkpoint.restore(tmp_path / "plain", {"w": INT4_G32}), {"w": INT4_G32})
  with pytest.raises(ValueError, match=r"fingerprint lpnum_format_\w+, but the target is QArray mxfp4_e2m1"):
    checkpoint.restore(tmp_path / "plain", {"w": MXFP4})
  with pytest.raises(ValueError, match="plain orbax save"):
    checkpoint.restore(tmp_path / "plain")


def test_plain_orbax_restore_of_an_lpnum_checkpoint_fails(tmp_path):
  checkpoint.save(tmp_path / "ckpt", {"w": MXFP4})
  with ocp.StandardCheckpointer() as ckpt, pytest.raises(ValueError, match="description"):
    ckpt.restore(tmp_path / "ckpt", {"w": MXFP4})


def test_expert_banks_through_orbax_with_and_without_lpnum(tmp_path):
  """GroupedWeights as PackedWeights: lpnum's checkpoint names both formats; a plain orbax restore into another
  format fails on the fingerprint key."""
  experts = jnp.stack([X, -X, 2 * X])
  tree = {"up": gm.pack_experts(gm.quantize_experts(experts, INT4_G32.fmt)), "b": jnp.arange(3.0)}
  mx = {**tree, "up": gm.pack_experts(gm.quantize_experts(experts, MXFP4.fmt))}
  checkpoint.save(tmp_path / "ckpt", tree)
  _same_leaves(checkpoint.restore(tmp_path / "ckpt", tree), tree)
  _same_leaves(checkpoint.restore(tmp_path / "ckpt"), tree)
  with pytest.raises(ValueError, match=r"holds GroupedWeights int4_g32 .* target is GroupedWeights mxfp4_e2m1"):
    checkpoint.restore(tmp_path / "ckpt", mx)
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(tmp_path / "plain", tree)
  with ocp.StandardCheckpointer() as ckpt:
    _same_leaves(ckpt.restore(tmp_path / "plain", tree), tree)
    with pytest.raises(ValueError, match="lpnum_format_"):
      ckpt.restore(tmp_path / "plain", mx)
  with pytest.raises(ValueError, match=r"fingerprint lpnum_format_\w+, but the target is GroupedWeights mxfp4_e2m1"):
    checkpoint.restore(tmp_path / "plain", mx)


_SHARDED = r'''
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import lpnum
from lpnum.kernels import pack_weights
from lpnum.nn import checkpoint

mesh = Mesh(np.array(jax.devices()), ("x",))
spec = lambda a: NamedSharding(mesh, P("x") if a.ndim and a.shape[0] % 8 == 0 else P())
x = np.random.default_rng(1).standard_normal((64, 32)).astype(np.float32)
tree = {"q": lpnum.quantize_scaled(x, lpnum.mx.format("mxfp8_e4m3", axis=0)),
        "w": pack_weights(lpnum.quantize_scaled(x, lpnum.ScaledFormat("int4", lpnum.per_block(32, 0)))),
        "b": jnp.arange(16.0)}
checkpoint.save(sys.argv[1], tree)  # on one device
sharded = jax.tree.map(lambda a: jax.device_put(a, spec(a)), tree)
abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=spec(a)), tree)
out = {}
for name, target in (("arrays", sharded), ("abstract", abstract)):
  back = checkpoint.restore(sys.argv[1], target)
  pairs = list(zip(jax.tree.leaves(back), jax.tree.leaves(tree), jax.tree.leaves(target), strict=True))
  out[name] = {"same_values": all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v, _ in pairs),
               "placed": all(u.sharding.is_equivalent_to(t.sharding, u.ndim) for u, _, t in pairs),
               "sharded_leaves": sum(len(u.sharding.device_set) == 8 and not u.sharding.is_fully_replicated
                                     for u, _, _ in pairs)}
out["devices"] = len(jax.devices())
print(json.dumps(out))
'''


def test_restore_places_arrays_on_the_targets_shardings(tmp_path):
  """On 8 host devices (a subprocess: XLA_FLAGS must be set before jax starts): a QArray, packed weights and a plain
  array saved on one device come back with the target's shardings, from concrete and from abstract targets (orbax
  alone would restore the saved placement)."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  proc = subprocess.run([sys.executable, "-c", _SHARDED, str(tmp_path / "ckpt")], env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["devices"] == 8
  for name in ("arrays", "abstract"):
    assert out[name]["same_values"] and out[name]["placed"], out
    assert out[name]["sharded_leaves"] >= 4, out  # data, the packed plane and scales rows, the plain array
