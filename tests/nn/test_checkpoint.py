"""lpnum.nn.checkpoint (orbax with descriptions), and what a plain orbax StandardCheckpointer does with lpnum values."""

from __future__ import annotations

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
