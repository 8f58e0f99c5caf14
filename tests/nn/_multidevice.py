"""Multi-device runs of lpnum.nn.comm on 8 host CPU devices, for tests/nn/test_comm.py.

XLA_FLAGS must be set before jax initializes its backend, so the tests run this script once, in a subprocess:
``XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/nn/_multidevice.py OUT_DIR``. It saves inputs and
outputs to ``OUT_DIR/arrays.npz`` and scalars and facts about the programs to ``OUT_DIR/results.json``; the tests
assert on them (the NumPy reference is in test_comm.py). Checks are batched into a few jitted functions, since
each compilation for 8 devices costs about a second.
"""

import json
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec as P

from lpnum.nn.comm import compressed_mean_grads, compressed_psum, data_parallel_step

DEVICES = 8

#: name: (fmt, per-device shape, block, mean, dtype). Shapes: 407 elements (not divisible by 8 or the block), 5 (fewer
#: than the devices), 512 (8 * 64: no padding), a block of 7.
CASES = {
    "int8": ("int8", (37, 11), 32, False, "float32"),
    "e4m3": ("float8_e4m3fn", (37, 11), 32, False, "float32"),
    "e5m2": ("float8_e5m2", (37, 11), 32, False, "float32"),
    "tiny": ("int8", (5,), 32, False, "float32"),
    "exact_fit": ("int8", (512,), 64, False, "float32"),
    "odd_block": ("float8_e4m3fn", (100,), 7, True, "float32"),
    "bf16": ("int8", (37, 11), 32, False, "bfloat16"),
    "crafted_int8": ("int8", (4096,), 32, False, "float32"),
    "crafted_e4m3": ("float8_e4m3fn", (4096,), 32, False, "float32"),
}
TREE = {"a": (3, 5), "b": (7,), "c": (40,)}
TREE_BLOCK = 16


def crafted(anchor: float) -> np.ndarray:
  """Every block of 32 holds ``anchor`` (so the scale is 1) and 31 values of 10.25 (a quarter step above 10)."""
  x = np.full((DEVICES, 4096), 10.25, np.float32)
  x[:, ::32] = anchor
  return x


def inputs() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  xs = {}
  for name, (_, shape, _, _, dtype) in CASES.items():
    scale = 10.0 ** rng.uniform(-2, 2, (DEVICES,) + (1,) * len(shape))  # each device its own magnitude
    x = rng.standard_normal((DEVICES,) + shape) * scale
    x = np.where(rng.random(x.shape) < 0.02, x * 50, x)  # heavy tails
    xs[name] = x.astype(dtype if dtype == "float32" else jnp.bfloat16)
  xs["crafted_int8"], xs["crafted_e4m3"] = crafted(127.0), crafted(448.0)
  outliers = rng.standard_normal((DEVICES, 1024))
  outliers[:, ::64] *= 1000.0
  xs["outliers"] = outliers.astype(np.float32)
  for name, shape in TREE.items():
    xs["tree_" + name] = rng.standard_normal((DEVICES,) + shape).astype(np.float32)
  return xs


def lowered_collectives(text: str) -> list[list]:
  """``[op, element type, element count]`` of the operand of every collective in StableHLO text."""
  ops = r"all_to_all|all_gather|all_reduce|reduce_scatter|collective_permute|collective_broadcast"
  found = []
  for m in re.finditer(rf'"stablehlo\.({ops})".*?(?:\}}>|\}}\)) : \(tensor<([^>]*)>', text, re.S):
    *dims, dtype = m.group(2).split("x")
    found.append([m.group(1), dtype, int(np.prod([int(d) for d in dims]))])
  return found


def compiled_collectives(text: str) -> list[list]:
  """``[op, element types]`` of every collective in compiled HLO text."""
  ops = r"all-to-all|all-gather|all-reduce|reduce-scatter|collective-permute|collective-broadcast"
  found = []
  for line in text.splitlines():
    m = re.match(rf"\s*(?:ROOT )?%\S+ = (.*?) ({ops})(?:-start)?\(", line)
    if m:
      found.append([m.group(2), sorted(set(re.findall(r"(\w+)\[", m.group(1))))])
  return found


def run_psums(mesh, xs, out, results):
  def body(v):
    v = {k: a[0] for k, a in v.items()}
    y = {name: compressed_psum(v[name], "d", fmt, block=block, mean=mean)
         for name, (fmt, _, block, mean, _) in CASES.items()}
    y["rotate"] = compressed_psum(v["outliers"], "d", block=64, rotate=True)
    y["no_rotate"] = compressed_psum(v["outliers"], "d", block=64)
    tree = {k: v["tree_" + k] for k in TREE}
    y["tree"] = compressed_mean_grads(tree, "d", block=TREE_BLOCK)
    return y

  f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P("d"), out_specs=P()))
  lowered = f.lower(xs)
  compiled = lowered.compile()
  y = compiled(xs)
  for name, value in y.items():
    if isinstance(value, dict):
      for k, a in value.items():
        out[f"{name}__{k}"] = np.asarray(a)
    else:
      out[name] = np.asarray(value.astype(jnp.float32))
      results.setdefault("dtypes", {})[name] = str(value.dtype)
  results["psum_lowered"] = lowered_collectives(lowered.as_text())
  results["psum_compiled"] = compiled_collectives(compiled.as_text())


def run_stochastic(mesh, xs, out):
  names = ["crafted_int8", "crafted_e4m3", "int8"]

  def body(v, key):
    return {name: compressed_psum(v[name][0], "d", CASES[name][0], block=32, rounding="stochastic", key=key)
            for name in names}

  f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P("d"), P()), out_specs=P()))
  sub = {name: xs[name] for name in names}
  for tag, seed in (("a", 1), ("a_again", 1), ("b", 2)):
    for name, value in f(sub, jax.random.key(seed)).items():
      out[f"sr_{tag}__{name}"] = np.asarray(value)


def mlp_loss(params, batch):
  h = jnp.tanh(batch["x"] @ params["w1"] + params["b1"])
  return jnp.mean((h @ params["w2"] + params["b2"] - batch["y"]) ** 2)


def run_training(mesh, out, results):
  rng = np.random.default_rng(1)
  x = rng.standard_normal((64, 4)).astype(np.float32)
  batch = {"x": jnp.asarray(x), "y": jnp.asarray(np.sin(x @ np.array([[0.5], [-1.0], [0.25], [0.75]])),
                                                  jnp.float32)}
  params = {"w1": jnp.asarray(rng.standard_normal((4, 16)) * 0.5, jnp.float32), "b1": jnp.zeros(16),
            "w2": jnp.asarray(rng.standard_normal((16, 1)) * 0.25, jnp.float32), "b2": jnp.zeros(1)}
  opt = optax.sgd(0.2, momentum=0.5)
  steps = 20

  @jax.jit
  def single(p, s, b):
    loss, g = jax.value_and_grad(mlp_loss)(p, b)
    updates, s = opt.update(g, s, p)
    return optax.apply_updates(p, updates), s, loss

  explicit = jax.make_mesh((DEVICES,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
  runs = {"single": (single, steps), "none": (data_parallel_step(mlp_loss, opt, mesh, "data", None), steps),
          "int8": (data_parallel_step(mlp_loss, opt, mesh, "data", "int8", block=16), steps),
          "int8_explicit": (data_parallel_step(mlp_loss, opt, explicit, "data", "int8", block=16), 3)}
  for name, (step, n) in runs.items():
    p, s, losses = params, opt.init(params), []
    for _ in range(n):
      p, s, loss = step(p, s, batch)
      losses.append(float(loss))
      if name == "int8" and len(losses) == 3:
        out["int8_params3"] = np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(p)])
    results[f"losses_{name}"] = losses
    out[f"params_{name}"] = np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(p)])
    if name == "int8":
      results["step_shardings"] = [str(a.sharding.spec) for a in jax.tree_util.tree_leaves(p)]
  results["bad_batch_error"] = "no error"
  try:
    runs["int8"][0](params, opt.init(params), {k: v[:12] for k, v in batch.items()})
  except ValueError as e:
    results["bad_batch_error"] = str(e)
  text = runs["int8"][0].lower(params, opt.init(params), batch).as_text()
  results["step_lowered"] = lowered_collectives(text)


def main(out_dir: str) -> None:
  assert len(jax.devices()) == DEVICES, jax.devices()
  mesh = Mesh(np.array(jax.devices()), ("d",))
  xs = inputs()
  out = {f"x__{k}": np.asarray(v.astype(np.float32)) for k, v in xs.items()}
  results = {}
  run_psums(mesh, xs, out, results)
  run_stochastic(mesh, xs, out)
  run_training(Mesh(np.array(jax.devices()), ("data",)), out, results)
  np.savez(os.path.join(out_dir, "arrays.npz"), **out)
  with open(os.path.join(out_dir, "results.json"), "w") as f:
    json.dump(results, f)


if __name__ == "__main__":
  main(sys.argv[1])
