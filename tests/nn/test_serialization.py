"""lpnum.nn.serialization: state dicts carry descriptions; restoring into another format is an error naming both;
restoring without a target rebuilds every value; checkpoints without descriptions load with a warning."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization

import lpnum
from lpnum import description
from lpnum import nn as lnn
from lpnum.kernels import grouped_matmul as gm
from lpnum.kernels import pack_weights
from lpnum.nn.serialization import restore_state
from lpnum.scaled import presets

X = jnp.asarray(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32))

#: Every preset (and NVFP4 without its tensor scale), integer formats per group, asymmetric and per-channel ones.
FORMATS = {name: presets.preset(name) for name in presets.PRESETS} | {
    "nvfp4_no_tensor_scale": presets.preset("nvfp4", tensor_scale=False),
    "int4_g32": lpnum.ScaledFormat("int4", lpnum.per_block(32), name="int4_g32"),
    "uint4_g32": lpnum.ScaledFormat("uint4", lpnum.per_block(32), name="uint4_g32"),
    "int4_g16": lpnum.ScaledFormat("int4", lpnum.per_block(16), name="int4_g16"),
    "uint4_asym": lpnum.ScaledFormat("uint4", lpnum.per_block(32), asymmetric=True, name="uint4_asym"),
    "int8_channel": lpnum.ScaledFormat("int8", lpnum.per_channel(0), name="int8_channel"),
}
QUANTIZED = {name: lpnum.quantize_scaled(X, fmt) for name, fmt in FORMATS.items()}

#: Kernel-layout weights: blocks along K (axis 0).
KERNEL_FORMATS = {"mxfp4_e2m1": lpnum.mx.format("mxfp4_e2m1", axis=0),
                  "mxfp8_e4m3": lpnum.mx.format("mxfp8_e4m3", axis=0), "nvfp4": lpnum.nvfp4.format(axis=0),
                  "nvfp4_no_tensor_scale": lpnum.nvfp4.format(axis=0, tensor_scale=False),
                  "int4_g32": lpnum.ScaledFormat("int4", lpnum.per_block(32, 0), name="int4_g32"),
                  "uint4_asym": lpnum.ScaledFormat("uint4", lpnum.per_block(32, 0), asymmetric=True, name="uint4_asym")}
PACKED = {name: pack_weights(lpnum.quantize_scaled(jnp.asarray(np.random.default_rng(1).standard_normal(
    (128, 64)).astype(np.float32)), fmt)) for name, fmt in KERNEL_FORMATS.items()}


def _same_leaves(a, b) -> None:
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    assert np.dtype(u.dtype) == np.dtype(v.dtype) and u.shape == v.shape
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def _mismatch(stored: str, target: str) -> str:
  return rf"the checkpoint holds \w+ {re.escape(stored)} .* but the target is \w+ {re.escape(target)} .*they differ in"


#: In the default run: each preset with itself and with the next two presets, and each other format against its nearest
#: neighbours, both ways; every other pair (every pair of presets among them) runs with -m slow, which .ci/run takes.
_PRESET_NAMES = list(presets.PRESETS)
_NEIGHBOURS = [("nvfp4", "nvfp4_no_tensor_scale"), ("int4_g32", "uint4_g32"), ("int4_g32", "int4_g16"),
               ("uint4_g32", "uint4_asym"), ("int8_channel", "mxint8"), ("int4_g32", "mxfp4_e2m1"),
               ("nvfp4_no_tensor_scale", "mxfp4_e2m1")]
_SAMPLE = {(a, _PRESET_NAMES[(i + d) % len(_PRESET_NAMES)]) for i, a in enumerate(_PRESET_NAMES) for d in (0, 1, 2)} | {
    p for a, b in _NEIGHBOURS for p in ((a, b), (b, a), (a, a), (b, b))}
PAIRS = [pytest.param(a, b, marks=() if (a, b) in _SAMPLE else pytest.mark.slow) for a in QUANTIZED for b in QUANTIZED]


@pytest.mark.parametrize("stored,target", PAIRS)
def test_every_pair_of_formats_through_flax_bytes(stored, target):
  blob = serialization.to_bytes({"w": QUANTIZED[stored]})
  template = {"w": jax.eval_shape(lambda: QUANTIZED[target])}
  if stored == target:
    _same_leaves(serialization.from_bytes(template, blob), {"w": QUANTIZED[stored]})
  else:
    with pytest.raises(ValueError, match=_mismatch(stored, target)):
      serialization.from_bytes(template, blob)


@pytest.mark.parametrize("name", list(QUANTIZED))
def test_restore_without_a_target_rebuilds_the_format(name):
  q = QUANTIZED[name]
  back = restore_state(serialization.msgpack_restore(serialization.to_bytes({"w": q})))["w"]
  assert back.fmt == q.fmt and back.fmt.name == q.fmt.name and (back.shape, back.dtype, back.block) == (
      q.shape, q.dtype, q.block)
  _same_leaves(back, q)
  np.testing.assert_array_equal(np.asarray(lpnum.dequantize(back)), np.asarray(lpnum.dequantize(q)))


def test_names_and_calibration_are_recorded_but_not_compared():
  fmt = lpnum.ScaledFormat("int8", lpnum.per_channel(0), calibration=lpnum.percentile(99.0), name="mine")
  q = lpnum.quantize_scaled(X, fmt)
  blob = serialization.to_bytes(q)
  assert restore_state(serialization.msgpack_restore(blob)).fmt == fmt
  absmax = lpnum.ScaledFormat("int8", lpnum.per_channel(0))
  back = serialization.from_bytes(lpnum.quantize_scaled(X, absmax), blob)
  assert back.fmt == absmax
  _same_leaves(back.data, q.data)
  _same_leaves(back.scales, q.scales)


@pytest.mark.parametrize("target", list(PACKED))
@pytest.mark.parametrize("stored", list(PACKED))
def test_kernel_layout_pairs(stored, target):
  blob = serialization.to_bytes(PACKED[stored])
  if stored == target:
    _same_leaves(serialization.from_bytes(PACKED[target], blob), PACKED[stored])
    back = restore_state(serialization.msgpack_restore(blob))
    assert back.fmt == PACKED[stored].fmt and (back.tile_k, back.group) == (PACKED[stored].tile_k, PACKED[stored].group)
    _same_leaves(back, PACKED[stored])
  else:
    with pytest.raises(ValueError, match=_mismatch(stored, target)):
      serialization.from_bytes(PACKED[target], blob)


def test_kernel_layout_of_another_tile_is_refused():
  q = lpnum.quantize_scaled(X, KERNEL_FORMATS["int4_g32"])
  with pytest.raises(ValueError, match="they differ in tile_k"):
    serialization.from_bytes(pack_weights(q, tile_k=1024), serialization.to_bytes(pack_weights(q)))


def test_ptq_params_round_trip_without_a_target_and_refuse_other_rules():
  model = nn.Sequential([nn.Dense(32), nn.relu, nn.Dense(8)])
  params = model.init(jax.random.key(0), jnp.ones((1, 64)))["params"]
  q4 = lnn.ptq(params, [lnn.Rule(".*", lpnum.DotConfig.weight_only("int4", lpnum.per_block(32)))])
  blob = serialization.to_bytes(q4)
  back = restore_state(serialization.msgpack_restore(blob))
  assert isinstance(back["layers_0"]["kernel"], lnn.QuantizedKernel)
  assert type(back["layers_0"]["kernel"].value) is type(q4["layers_0"]["kernel"].value)
  _same_leaves(back, q4)
  q8 = lnn.ptq(params, [lnn.Rule(".*", lpnum.DotConfig.weight_only("int8", lpnum.per_block(32)))])
  with pytest.raises(ValueError, match=r"int4/per_block.* but the target is \w+ int8/per_block"):
    serialization.from_bytes(q8, blob)


def _without_description(state):
  if isinstance(state, dict):
    return {k: _without_description(v) for k, v in state.items() if k != description.DESCRIPTION_KEY}
  return state


@pytest.mark.parametrize("name", ["mxfp8_e4m3", "nvfp4", "uint4_asym"])
def test_old_checkpoints_without_a_description_load_with_a_warning(name):
  q = QUANTIZED[name]
  old = _without_description(serialization.to_state_dict({"w": q}))
  with pytest.warns(UserWarning, match="no format description"):
    _same_leaves(serialization.from_state_dict({"w": q}, old), {"w": q})
  w = PACKED["nvfp4"]
  with pytest.warns(UserWarning, match="no format description"):
    _same_leaves(serialization.from_state_dict(w, _without_description(serialization.to_state_dict(w))), w)


def test_old_checkpoints_of_another_layout_fail_clearly():
  old_nvfp4 = _without_description(serialization.to_state_dict(QUANTIZED["nvfp4"]))
  with pytest.warns(UserWarning), pytest.raises(ValueError, match="has a tensor_scale leaf, but the target's format "
                                                                  "nvfp4_no_tensor_scale needs none"):
    serialization.from_state_dict(QUANTIZED["nvfp4_no_tensor_scale"], old_nvfp4)
  old_mx = _without_description(serialization.to_state_dict(QUANTIZED["mxfp4_e2m1"]))
  with pytest.warns(UserWarning), pytest.raises(ValueError, match="has no tensor_scale leaf"):
    serialization.from_state_dict(QUANTIZED["nvfp4"], old_mx)
  old_int4 = _without_description(serialization.to_state_dict(QUANTIZED["int4_g32"]))
  with pytest.warns(UserWarning), pytest.raises(ValueError, match="q.scales has dtype uint32; .* needs uint8"):
    serialization.from_state_dict(QUANTIZED["mxfp4_e2m1"], old_int4)


def test_bad_descriptions_are_refused():
  state = serialization.to_state_dict(QUANTIZED["mxfp4_e2m1"])
  desc = description.decode(state["description"])
  with pytest.raises(ValueError, match="layout version 2; this lpnum reads version 1"):
    restore_state({**state, "description": description.encode({**desc, "layout_version": 2})})
  with pytest.raises(ValueError, match="they differ in layout_version"):
    serialization.from_state_dict(QUANTIZED["mxfp4_e2m1"],
                                  {**state, "description": description.encode({**desc, "layout_version": 2})})
  with pytest.raises(ValueError, match="not UTF-8 JSON"):
    restore_state({**state, "description": np.frombuffer(b"\xff{", np.uint8)})
  with pytest.raises(ValueError, match="1-D uint8"):
    restore_state({**state, "description": np.zeros(3, np.int32)})


#: Expert banks in the grouped-matmul layout (three experts of (128, 64), each quantized on its own along K).
GROUPED = {name: gm.pack_experts(gm.quantize_experts(jnp.asarray(np.random.default_rng(2).standard_normal(
    (3, 128, 64)).astype(np.float32)), KERNEL_FORMATS[name])) for name in ("mxfp4_e2m1", "nvfp4", "int4_g32")}


@pytest.mark.parametrize("target", list(GROUPED))
@pytest.mark.parametrize("stored", list(GROUPED))
def test_grouped_layout_pairs(stored, target):
  blob = serialization.to_bytes({"experts": GROUPED[stored]})
  if stored == target:
    _same_leaves(serialization.from_bytes({"experts": GROUPED[target]}, blob), {"experts": GROUPED[stored]})
    back = restore_state(serialization.msgpack_restore(blob))["experts"]
    assert isinstance(back, gm.GroupedWeights) and back.describe() == GROUPED[stored].describe()
    _same_leaves(back, GROUPED[stored])
  else:
    with pytest.raises(ValueError, match=_mismatch(stored, target)):
      serialization.from_bytes({"experts": GROUPED[target]}, blob)


def test_grouped_layout_of_another_tile_or_expert_count_is_refused():
  q = gm.quantize_experts(jnp.ones((3, 128, 64)), KERNEL_FORMATS["int4_g32"])
  blob = serialization.to_bytes(gm.pack_experts(q))
  with pytest.raises(ValueError, match="they differ in tile_k"):
    serialization.from_bytes(gm.pack_experts(q, tile_k=1024), blob)
  with pytest.raises(ValueError, match="they differ in shape"):
    serialization.from_bytes(gm.pack_experts(gm.quantize_experts(jnp.ones((2, 128, 64)), KERNEL_FORMATS["int4_g32"])),
                             blob)
  desc = description.decode(serialization.to_state_dict(GROUPED["nvfp4"])["description"])
  assert desc["type"] == "GroupedWeights" and desc["layout_version"] == gm.layout.LAYOUT_VERSION
  assert desc["shape"] == [3, 128, 64] and (desc["tile_k"], desc["group"]) == (512, 16)
  old = _without_description(serialization.to_state_dict(GROUPED["nvfp4"]))
  with pytest.warns(UserWarning, match="no format description"):
    _same_leaves(serialization.from_state_dict(GROUPED["nvfp4"], old), GROUPED["nvfp4"])


def test_ptq_expert_banks_round_trip_in_both_layouts():
  """Expert-bank kernels after ptq: GroupedWeights (layout="kernel") or stacked QArrays (layout="qarray")."""
  w = jnp.asarray(np.random.default_rng(3).standard_normal((3, 128, 64)).astype(np.float32))
  rule = lnn.Rule(".*", lpnum.DotConfig.weight_only("mxfp4_e2m1"))
  for layout, kind in (("kernel", gm.GroupedWeights), ("qarray", lpnum.QArray)):
    packed = lnn.ptq({"up": {"kernel": w}}, [rule], views={"up": "experts"}, layout=layout)
    blob = serialization.to_bytes(packed)
    back = restore_state(serialization.msgpack_restore(blob))
    assert type(back["up"]["kernel"].value) is kind
    _same_leaves(back, packed)
    _same_leaves(serialization.from_bytes(packed, blob), packed)
  other = lnn.ptq({"up": {"kernel": w}}, [lnn.Rule(".*", lpnum.DotConfig.weight_only("int4"))],
                  views={"up": "experts"}, layout="qarray")
  with pytest.raises(ValueError, match=r"holds QArray mxfp4_e2m1 .* target is QArray int4"):
    serialization.from_bytes(other, blob)
