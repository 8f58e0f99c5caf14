"""Params bytes, inference and training-step time of the zoo models, quantized, against float32.

The zoo's three architectures (:mod:`lpnum.zoo.models`) at benchmark sizes (the zoo's defaults are sized for the digits
data set and too small to time):

* ``mlp``: ``MLP(features=(1024, 1024))`` on 32x32x1 inputs (1024 features), batch 256;
* ``cnn``: ``CNN(channels=(32, 64))`` on 32x32x1 images, batch 64;
* ``transformer``: ``Transformer(vocab=256, length=128, dim=256, heads=4, layers=2, mlp_dim=1024)``, batch 16.

Quantization configs, applied to every Dense/DenseGeneral/Conv layer by one :class:`lpnum.nn.Rule` (``".*"``):

* ``ptq/<fmt>``: :func:`lpnum.nn.ptq` (with :func:`lpnum.nn.kernel_views`) of the float params (weight-only: ``int8`` and ``int4`` per
  output channel, ``int4_g128`` (groups of 128 along K), ``mxfp4_e2m1``, ``nvfp4``, ``fp8_e4m3`` per channel);
  the packed params are timed in jitted inference (:class:`lpnum.nn.QuantizedModel.apply`, Dense layers through
  :func:`lpnum.kernels.matmul`);
* ``qat/<fmt>``: the float params trained through fake quantization (``lpnum.DotConfig.weight_only``,
  straight-through estimator) and the FP8 recipe (``DotConfig.fp8()``); the training step is
  ``jax.value_and_grad`` of softmax cross-entropy plus an ``optax.adam`` update, jitted.

Reported: params bytes (and the ratio to the ideal packed size: elements at their bit width plus float32 scales,
other leaves as stored); inference and training-step medians and their ratios to float32, timed side by side in one
run. Targets (CPU): params bytes within 1% of the ideal; weight-only int8/int4 inference at most 1.2x float32's
time; QAT training step with STE at most 1.5x.

``python -m benchmarks.models [--quick] [--repeats N] [--out DIR]`` (also ``lpnum bench models``) prints the tables
and writes ``lpnum-results/bench/models/models.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lpnum
from lpnum import nn as lnn
from lpnum.results import progress
from lpnum.zoo import models as zoo

from ._report import (QuickDefault, arg_parser, format_targets, median_s, ms, parse_args, ratio, table, target, times,
                      write_json)
from ._timing import time_fns

__all__ = ["MODELS", "PTQ_FORMATS", "QAT_CONFIGS", "ideal_nbytes", "main"]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A zoo architecture at benchmark size and its input batch."""

  build: Callable[[], Any]
  input_shape: tuple[int, ...]
  input_dtype: Any
  classes: int


MODELS = {
    "mlp": ModelSpec(lambda: zoo.MLP(features=(1024, 1024)), (256, 32, 32, 1), np.float32, 10),
    "cnn": ModelSpec(lambda: zoo.CNN(channels=(32, 64)), (64, 32, 32, 1), np.float32, 10),
    "transformer": ModelSpec(lambda: zoo.Transformer(vocab=256, length=128, dim=256, heads=4, layers=2, mlp_dim=1024),
                             (16, 128), np.int32, 256),
}
QUICK_MODELS = {
    "mlp": ModelSpec(lambda: zoo.MLP(features=(256, 256)), (64, 16, 16, 1), np.float32, 10),
    "cnn": ModelSpec(lambda: zoo.CNN(channels=(8, 16)), (16, 16, 16, 1), np.float32, 10),
    "transformer": ModelSpec(lambda: zoo.Transformer(vocab=64, length=32, dim=64, heads=4, layers=1, mlp_dim=128),
                             (8, 32), np.int32, 64),
}

#: name -> (weight OperandQuant, bits per element for the ideal size, scales per output channel per K rows or None)
PTQ_FORMATS = {
    "int8": (lpnum.OperandQuant("int8", granularity=lpnum.per_channel()), 8),
    "int4": (lpnum.OperandQuant("int4", granularity=lpnum.per_channel()), 4),
    "int4_g128": (lpnum.OperandQuant("int4", granularity=lpnum.per_block(128)), 4),
    "mxfp4_e2m1": (lpnum.OperandQuant("mxfp4_e2m1"), 4),
    "nvfp4": (lpnum.OperandQuant("nvfp4"), 4),
    "fp8_e4m3": (lpnum.OperandQuant("float8_e4m3fn", granularity=lpnum.per_channel()), 8),
}
QAT_CONFIGS = {
    "ste/int8": lpnum.DotConfig.weight_only("int8"),
    "ste/int4": lpnum.DotConfig.weight_only("int4"),
    "fp8_recipe": lpnum.DotConfig.fp8(),
}
TARGET_INFERENCE = ("int8", "int4")
TARGET_QAT = ("ste/int8", "ste/int4")


def _scale_bytes(tq: lpnum.OperandQuant, k: int, n: int) -> float:
  """Bytes of the scales of a (K, N) kernel quantized with ``tq``."""
  fmt = tq.rhs_format
  per_scale = fmt.scale_format.bits / 8
  count = math.prod(math.ceil(d / b) for d, b in zip((k, n), fmt.granularity.block_shape((k, n))))
  return count * per_scale + (4 if fmt.tensor_scale else 0)


def ideal_nbytes(params, fmt: str, views: dict[str, int] | None = None) -> float:
  """The ideal size of ``params`` with every kernel at the format's bit width plus its scales (other leaves as
  they are); a kernel's scales follow its 2-D view (``views``: leading axes contracted, default all but the
  last)."""
  tq, bits = PTQ_FORMATS[fmt]
  total = 0.0
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    names = [str(getattr(p, "key", p)) for p in path]
    if names[-1] == "kernel" and np.ndim(leaf) >= 2:
      c = (views or {}).get("/".join(names[:-1]), np.ndim(leaf) - 1)
      k, n = math.prod(np.shape(leaf)[:c]), math.prod(np.shape(leaf)[c:])
      total += k * n * bits / 8 + _scale_bytes(tq, k, n)
    else:
      total += np.size(leaf) * np.dtype(leaf.dtype).itemsize
  return total


def _inputs(spec: ModelSpec, seed: int = 0):
  rng = np.random.default_rng(seed)
  if spec.input_dtype == np.int32:
    x = rng.integers(0, spec.classes, spec.input_shape).astype(np.int32)
  else:
    x = rng.standard_normal(spec.input_shape).astype(np.float32)
  y = rng.integers(0, spec.classes, spec.input_shape[0]).astype(np.int32)
  return jnp.asarray(x), jnp.asarray(y)


def _train_kwargs(model, train: bool) -> dict[str, bool]:
  import inspect

  return {"train": train} if "train" in inspect.signature(type(model).__call__).parameters else {}


def _apply_fns(model, rules):
  if rules is None:
    return model.apply
  return lnn.quantize_model(model, rules).apply


def _infer_fn(apply, model):
  kwargs = _train_kwargs(model, False)
  return jax.jit(lambda variables, x: apply(variables, x, **kwargs))


def _train_step_fn(apply, model, optimizer):
  kwargs = _train_kwargs(model, True)

  def step(params, state, opt_state, x, y):
    def loss_fn(p):
      out, new_state = apply({"params": p, **state}, x, mutable=list(state), **kwargs)
      return optax.softmax_cross_entropy_with_integer_labels(out, y).mean(), new_state

    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), dict(new_state), opt_state, loss

  return jax.jit(step)


def run_model(name: str, spec: ModelSpec, repeats: int) -> dict[str, Any]:
  """Bytes, inference and training-step timings of one model under every config."""
  model = spec.build()
  x, y = _inputs(spec)
  kwargs = _train_kwargs(model, False)
  variables = jax.jit(functools.partial(model.init, **kwargs))(jax.random.key(0), x)
  params = variables["params"]
  state = {k: v for k, v in variables.items() if k != "params"}
  float_bytes = lnn.params_nbytes(params)

  views = lnn.kernel_views(model, x, **kwargs)
  infer = {"float32": (_infer_fn(model.apply, model), (variables, x))}
  sizes = {"float32": {"bytes": float_bytes, "ideal": float(float_bytes)}}
  for fmt, (tq, _) in PTQ_FORMATS.items():
    rules = [lnn.Rule(".*", lpnum.DotConfig(rhs=tq))]
    qparams = lnn.ptq(params, rules, views=views)
    sizes[f"ptq/{fmt}"] = {"bytes": lnn.params_nbytes(qparams), "ideal": ideal_nbytes(params, fmt, views)}
    infer[f"ptq/{fmt}"] = (_infer_fn(_apply_fns(model, rules), model), ({"params": qparams, **state}, x))
  infer_t = time_fns(infer, repeats=repeats)

  optimizer = optax.adam(1e-3)
  opt_state = optimizer.init(params)
  train = {"float32": (_train_step_fn(model.apply, model, optimizer), (params, state, opt_state, x, y))}
  for cfg_name, cfg in QAT_CONFIGS.items():
    rules = [lnn.Rule(".*", cfg)]
    apply = _apply_fns(model, rules)
    qstate = {k: v for k, v in jax.jit(functools.partial(lnn.quantize_model(model, rules).init, **kwargs))(
        jax.random.key(0), x).items() if k != "params"}
    train[f"qat/{cfg_name}"] = (_train_step_fn(apply, model, optimizer), (params, qstate, opt_state, x, y))
  train_t = time_fns(train, repeats=repeats)

  rows = []
  base_i, base_t = median_s(infer_t["float32"]), median_s(train_t["float32"])
  for cfg_name in infer:
    size = sizes[cfg_name]
    rows.append({"model": name, "config": cfg_name, "bytes": size["bytes"], "bytes_vs_ideal": size["bytes"] / size["ideal"],
                 "bytes_vs_float32": size["bytes"] / float_bytes, "infer": infer_t[cfg_name],
                 "infer_vs_float32": ratio(median_s(infer_t[cfg_name]), base_i)})
  for cfg_name in train:
    if cfg_name == "float32":
      rows[0].update(train=train_t["float32"], train_vs_float32=1.0)
      continue
    rows.append({"model": name, "config": cfg_name, "train": train_t[cfg_name],
                 "train_vs_float32": ratio(median_s(train_t[cfg_name]), base_t)})
  return {"model": name, "input_shape": spec.input_shape, "float_bytes": float_bytes, "rows": rows}


def evaluate_targets(results: list[dict[str, Any]]) -> dict[str, Any]:
  rows = [r for res in results for r in res["rows"]]
  key = lambda r: f"{r['model']}/{r['config']}"
  bytes_ok = {key(r): r["bytes_vs_ideal"] for r in rows if r["config"].startswith("ptq/")}
  infer = {key(r): r["infer_vs_float32"] for r in rows
           if r["config"] in tuple(f"ptq/{f}" for f in TARGET_INFERENCE)}
  qat = {key(r): r["train_vs_float32"] for r in rows if r["config"] in tuple(f"qat/{c}" for c in TARGET_QAT)}
  return {
      "a": target("a", "PTQ params bytes within 1% of the ideal packed size", bytes_ok, 1.01, at_least=False,
                  kind="size"),
      "b": target("b", "weight-only int8/int4 inference <= 1.2x float32", infer, 1.2, at_least=False),
      "c": target("c", "QAT training step with STE <= 1.5x float32", qat, 1.5, at_least=False),
  }


def format_tables(results: list[dict[str, Any]]) -> str:
  out = []
  for res in results:
    cells = []
    for r in res["rows"]:
      cells.append({"config": r["config"],
                    "MB": f"{r['bytes'] / 1e6:.3f}" if "bytes" in r else "",
                    "vs ideal": f"{r['bytes_vs_ideal']:.4f}" if "bytes_vs_ideal" in r else "",
                    "vs f32": f"{r['bytes_vs_float32']:.3f}" if "bytes_vs_float32" in r else "",
                    "infer ms": ms(r.get("infer")) if "infer" in r else "",
                    "infer/f32": times(r.get("infer_vs_float32")) if "infer" in r else "",
                    "step ms": ms(r.get("train")) if "train" in r else "",
                    "step/f32": times(r.get("train_vs_float32")) if "train" in r else ""})
    cols = ("config", "MB", "vs ideal", "vs f32", "infer ms", "infer/f32", "step ms", "step/f32")
    out.append(f"{res['model']} (input {res['input_shape']})\n" + table(cols, [[c[k] for k in cols] for c in cells]))
  return "\n\n".join(out)


def main(argv=None):
  parser = arg_parser("models", __doc__, quick="small models, 3 repeats", repeats=QuickDefault(20, 3))
  args = parse_args(parser, argv)
  specs = QUICK_MODELS if args.quick else MODELS
  results = [run_model(name, spec, args.repeats) for name, spec in progress(specs.items(), "models")]
  targets = evaluate_targets(results)
  print(format_tables(results))
  print()
  print(format_targets(targets))
  return write_json("models", {"config": {"repeats": args.repeats, "quick": args.quick}, "models": results,
                               "targets": targets}, args.out)


if __name__ == "__main__":
  main()
