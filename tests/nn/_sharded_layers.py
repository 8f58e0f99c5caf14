"""Quantized layers with sharded params and inputs on 8 host CPU devices, for tests/nn/test_nn_sharded.py.

Run as ``XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/nn/_sharded_layers.py OUT_DIR`` (XLA_FLAGS must
be set before jax starts): for each config, the jitted forward pass and gradients of a quantized MLP run once on a
(data=4, model=2) mesh (batch sharded over ``data``, kernels over their output axis on ``model``, NamedSharding)
and once on one device; both results go to ``OUT_DIR/arrays.npz`` and the output shardings to ``results.json``.
"""

import json
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import lpnum
from lpnum import nn as lnn

CONFIGS = {
    "w8a8": lpnum.DotConfig.w8a8(),
    "fp8_delayed": lpnum.DotConfig.fp8(scaling="delayed"),
    "mxfp4_weights": lpnum.DotConfig.weight_only("mxfp4_e2m1"),
}


def model() -> nn.Module:
  return nn.Sequential([nn.Dense(128), nn.relu, nn.Dense(64), nn.relu, nn.Dense(16)])


def kernel_spec(path, leaf) -> P:
  name = str(getattr(path[-1], "key", path[-1]))
  return P(None, "model") if name == "kernel" else P("model") if name == "bias" else P()


def main(out_dir: str) -> None:
  devices = np.array(jax.devices()[:8]).reshape(4, 2)
  mesh = Mesh(devices, ("data", "model"))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((32, 96)).astype(np.float32))
  arrays, results = {}, {}
  for name, cfg in CONFIGS.items():
    qmodel = lnn.quantize_model(model(), cfg)
    variables = qmodel.init(jax.random.key(0), x)

    def loss(params, state, batch):
      y, new_state = qmodel.apply({"params": params, **state}, batch, mutable=["quant_stats"])
      return jnp.sum(y ** 2), (y, new_state)

    step = jax.jit(jax.value_and_grad(loss, has_aux=True))
    params = variables["params"]
    state = {k: v for k, v in variables.items() if k != "params"}
    (l1, (y1, s1)), g1 = step(params, state, x)
    sharded_params = jax.tree_util.tree_map_with_path(
        lambda p, a: jax.device_put(a, NamedSharding(mesh, kernel_spec(p, a))), params)
    sharded_x = jax.device_put(x, NamedSharding(mesh, P("data", None)))
    (l2, (y2, s2)), g2 = step(sharded_params, state, sharded_x)
    results[name] = {"param_specs": [str(a.sharding.spec) for a in jax.tree_util.tree_leaves(sharded_params)],
                     "grad_specs": [str(a.sharding.spec) for a in jax.tree_util.tree_leaves(g2)],
                     "devices": len(y2.sharding.device_set)}
    for tag, (y, g, s) in {"single": (y1, g1, s1), "sharded": (y2, g2, s2)}.items():
      arrays[f"{name}/{tag}/y"] = np.asarray(y)
      for i, leaf in enumerate(jax.tree_util.tree_leaves((g, s))):
        arrays[f"{name}/{tag}/leaf{i}"] = np.asarray(leaf)
  np.savez(os.path.join(out_dir, "arrays.npz"), **arrays)
  with open(os.path.join(out_dir, "results.json"), "w") as f:
    json.dump(results, f)


if __name__ == "__main__":
  main(sys.argv[1])
