"""Orbax checkpoints of trees holding QArrays and packed kernels, with their descriptions.

:func:`save` writes the tree's state dict (:mod:`lpnum.nn.serialization`: the array leaves of every QArray,
PackedWeights, GroupedWeights and QuantizedKernel plus its ``"description"`` leaf) with orbax's
``StandardCheckpointer``;
:func:`restore` reads the leaves back exactly as stored (no cast to a target's dtype) and then restores them into
``target``, refusing a stored description that differs from the target's (the error names both), or, without a
target, rebuilds every value from its description.

A plain ``StandardCheckpointer`` restore is guarded too, by the ``lpnum_format_<fingerprint>`` key of each value's
pytree (:mod:`lpnum.description`): orbax refuses to restore a plain save into a template whose format, shape or
dtype differ (a tree-structure error listing both keys), and refuses a checkpoint written by :func:`save`
(whose structure is the state dict's) whatever the template. What it cannot do is name the formats: use
:func:`restore` for that and for restoring without a template.

Example:
  >>> import tempfile, jax.numpy as jnp, lpnum
  >>> from lpnum.nn import checkpoint
  >>> q = lpnum.quantize_scaled(jnp.ones((2, 32)), lpnum.nvfp4.format())
  >>> path = tempfile.mkdtemp() + "/ckpt"
  >>> checkpoint.save(path, {"w": q})
  >>> checkpoint.restore(path)["w"].fmt == q.fmt
  True
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import serialization

from lpnum.nn.serialization import restore_state

__all__ = ["save", "restore"]


def save(path: str | os.PathLike, tree: Any) -> None:
  """Saves ``tree`` (with its descriptions) as an orbax checkpoint at ``path`` (a new directory)."""
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(os.fspath(path), serialization.to_state_dict(tree))


def restore(path: str | os.PathLike, target: Any = None) -> Any:
  """Restores the checkpoint at ``path`` (written by :func:`save`, or a plain orbax save of the tree).

  Args:
    path: the checkpoint directory.
    target: a tree of the expected structure and formats (concrete or ``jax.eval_shape``'d), or None to rebuild
      every value from its stored description.

  Returns:
    The tree. Each array is read whole onto the default device, then placed on the sharding of the target's
    array at the same place where that has one (a ``jax.Array``'s, or the ``sharding`` of a
    ``jax.ShapeDtypeStruct``), so a sharded model restores sharded; arrays without a target sharding stay on the
    default device.

  Raises:
    ValueError: a stored description differs from the target's (the message names both), or a value has no
      description and no target was given.
  """
  with ocp.StandardCheckpointer() as checkpointer:
    state = checkpointer.restore(os.fspath(path))
  tree = restore_state(state, target)
  if target is None:
    return tree
  return jax.tree.map(_place, tree, target)


def _place(value, like):
  """``value`` on ``like``'s sharding, if ``like`` (a target leaf) has one."""
  sharding = getattr(like, "sharding", None)
  return value if sharding is None else jax.device_put(value, sharding)
