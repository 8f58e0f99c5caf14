"""flax.serialization for lpnum's array types: QArray, PackedWeights and QuantizedKernel.

The core (:mod:`lpnum`) does not import flax; importing :mod:`lpnum.nn` registers these types, so that
``flax.serialization.to_bytes`` / ``from_bytes`` (and orbax, which reads the same state dicts) save and restore
them as their array leaves, the static part coming from the restore target.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import serialization

from lpnum.kernels.packed_matmul.layout import PackedWeights
from lpnum.nn.ptq import QuantizedKernel
from lpnum.qarray import QArray

__all__: list[str] = []


def _qarray_to_state(q: QArray) -> dict:
  state = {"data": q.data, "scales": q.scales}
  if q.zero_point is not None:
    state["zero_point"] = q.zero_point
  if q.tensor_scale is not None:
    state["tensor_scale"] = q.tensor_scale
  return state


def _qarray_from_state(q: QArray, state: dict) -> QArray:
  restored = dataclasses.replace(
      q, data=jnp.asarray(state["data"]), scales=jnp.asarray(state["scales"]),
      zero_point=None if q.zero_point is None else jnp.asarray(state["zero_point"]),
      tensor_scale=None if q.tensor_scale is None else jnp.asarray(state["tensor_scale"]))
  restored.check()
  return restored


def _packed_to_state(w: PackedWeights) -> dict:
  """The array leaves by position (the static layout comes from the target)."""
  return {str(i): leaf for i, leaf in enumerate(jax.tree_util.tree_leaves(w))}


def _packed_from_state(w: PackedWeights, state: dict) -> PackedWeights:
  leaves, treedef = jax.tree_util.tree_flatten(w)
  if set(state) != {str(i) for i in range(len(leaves))}:
    raise ValueError(f"PackedWeights state has leaves {sorted(state)}, the target {len(leaves)}")
  restored = [jnp.asarray(state[str(i)]) for i in range(len(leaves))]
  for new, old in zip(restored, leaves):
    if new.shape != old.shape or new.dtype != old.dtype:
      raise ValueError(f"PackedWeights leaf {new.shape} {new.dtype} does not fit the target's {old.shape} "
                       f"{old.dtype}")
  return jax.tree_util.tree_unflatten(treedef, restored)


def _kernel_to_state(k: QuantizedKernel) -> dict:
  return {"value": serialization.to_state_dict(k.value)}


def _kernel_from_state(k: QuantizedKernel, state: dict) -> QuantizedKernel:
  return QuantizedKernel(serialization.from_state_dict(k.value, state["value"]), k.shape, k.dtype, k.contract)


serialization.register_serialization_state(QArray, _qarray_to_state, _qarray_from_state)
serialization.register_serialization_state(PackedWeights, _packed_to_state, _packed_from_state)
serialization.register_serialization_state(QuantizedKernel, _kernel_to_state, _kernel_from_state)
