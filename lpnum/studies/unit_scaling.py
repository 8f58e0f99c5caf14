"""Unit scaling study: FP8 training by plain casting, a standard Transformer against its unit-scaled twin.

Blake, Orr and Luschi, "Unit Scaling: Out-of-the-Box Low-Precision Training" (ICML 2023).

Setup
  Task: the zoo's pointer look-up (:func:`lpnum.zoo.data.sequence_task`: sequences of 16 tokens over 16 symbols,
  :data:`TRAIN_SIZE` training and :data:`TEST_SIZE` test sequences drawn from ``--seed``; chance accuracy 1/16).
  Models: :class:`lpnum.zoo.models.Transformer` (width 64, 4 heads, 2 blocks, MLP 128: the zoo's default) and its
  unit-scaled twin :class:`lpnum.zoo.unit_scaled.UnitTransformer` (same shapes and parameter count, ``tau = 0.1``,
  trained on :func:`lpnum.unit_scaling.cross_entropy`); ``--quick``: width 32, 2 heads, 1 block, MLP 64.
  Recipes: float32, and ``fp8``: every dense layer's operands cast to E4M3 and its output gradient to E5M2 in both
  backward matmuls by :data:`lpnum.unit_scaling.FP8_CAST` (round to nearest even, saturating; no loss scaling, no
  per-tensor amax scale, master weights and Adam in float32). The standard model gets the casts through
  ``quantize_model(model, [Rule(".*", FP8_CAST)])``, the twin through ``UnitTransformer(config=FP8_CAST)``: the same
  matmuls (query/key/value, output and MLP projections, the head) in both; embeddings, LayerNorm, softmax and the
  attention products stay float32.
  Training: Adam, batches of :data:`BATCH_SIZE`, :data:`STEPS` steps (quick: :data:`QUICK_STEPS`), one seed, at each
  model's learning rate (:data:`LEARNING_RATES`: the one of {1e-3, 4e-3, 1e-2} with which its float32 version
  learns the task in the full run's steps; unit-variance weights need larger Adam steps than ``1/sqrt(fan_in)``
  ones, as the paper notes).

Measured
  At initialization, on :data:`PROBE_BATCH` sequences: for every dense layer, the standard deviation of its output
  and of the gradient of the loss with respect to it (the tensor FP8 casts to E5M2), and the share of that
  gradient's nonzero entries that E5M2 flushes to zero or leaves subnormal (below 2^-14). During training: the loss
  curves; after it: the final loss (mean of the last :data:`CURVE_POINTS`-th of the steps) and the test accuracy.

Reproduction notes (also :data:`NOTES`, stored in the JSON)
Unit Scaling: Out-of-the-Box Low-Precision Training (Blake, Orr, Luschi, ICML 2023). Reported: scaling every op so
that activations and gradients have unit variance at initialization lets BERT train in FP8 (E4M3 forward, E5M2
backward) by plain casting, without loss scaling or per-tensor scales, matching the float32 model, where the
standard model needs loss scaling (its gradients fall below FP8's range).

Measured here (full run, seed 0, batch 128; the zoo's 2-block Transformer and its unit-scaled twin, 600 Adam
steps; FP8 = every dense layer's operands cast to E4M3 and output gradients to E5M2, nothing scaled).
At initialization the mechanism reproduces plainly: the standard model's dense-layer output gradients have standard
deviations from 5.3e-6 to 9.7e-4 (median 2.9e-5, below E5M2's smallest normal 6.1e-5): E5M2 flushes 34% of their
nonzero entries to zero (88% in the worst layer, the second block's query projection) and leaves another 47%
subnormal, with 2 or fewer significant bits. The twin's are 0.75 to 1.35 (activations 0.61 to 1.13), and E5M2
flushes 0.0025% of them (the entries within 2^-17 of zero).
Training: the unit-scaled model in FP8 follows its float32 twin step for step (final loss 0.00044 vs 0.00044, 100%
test accuracy both). The standard model in FP8 also learns the task (100% test accuracy) but lags its float32
version once the loss is small: final loss 0.0080 vs 0.0025, 3.1x, its curve above float32's from the first
descent on. So the paper's claim holds here in the direction it states (plain FP8 casts lose nothing with unit
scaling and lose something without it), but the standard model does not fail outright: this task is easy,
Adam divides out the gradients' overall scale (what matters is which entries survive the cast, and the largest
ones do), and the gradients of a small model at batch 128 are larger than those of the paper's BERT-scale models
with thousands of tokens per batch (the mean loss divides every gradient by the batch). A larger batch or a deeper
model would push more of the standard model's gradients below E5M2's range (not measured here). Learning rates
differ by model (1e-3 standard, 1e-2 unit-scaled): unit-variance weights need
larger Adam steps, and 4e-3 did not let the twin learn the look-up within 400 steps. One seed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import lpnum
from lpnum import unit_scaling as us
from lpnum.nn.rules import Rule, quantize_model
from lpnum.nn.unit_scaling import UnitDense
from lpnum.results import progress, save_figure, write_json
from lpnum.studies._common import arg_parser, parse_args
from lpnum.zoo import data, train
from lpnum.zoo.models import Transformer
from lpnum.zoo.unit_scaled import UnitTransformer

__all__ = ["NOTES", "BATCH_SIZE", "STEPS", "QUICK_STEPS", "LEARNING_RATES", "TRAIN_SIZE", "TEST_SIZE",
           "PROBE_BATCH", "CURVE_POINTS", "RUNS", "build", "init_scales", "run_one", "table", "plot", "main"]

#: Examples per training step.
BATCH_SIZE = 128
#: Training steps (full, quick).
STEPS, QUICK_STEPS = 600, 40
#: Adam's learning rate per model.
LEARNING_RATES = {"standard": 1e-3, "unit": 1e-2}
#: Training and test sequences.
TRAIN_SIZE, TEST_SIZE = 8192, 1024
#: Sequences of the initialization probe.
PROBE_BATCH = 256
#: Points of each loss curve.
CURVE_POINTS = 20
#: The (model, recipe) runs, in order.
RUNS = (("standard", "float32"), ("standard", "fp8"), ("unit", "float32"), ("unit", "fp8"))
#: E5M2's smallest normal number.
E5M2_MIN_NORMAL = 2.0 ** -14

NOTES = __doc__[__doc__.index("Reproduction notes"):].split("\n", 1)[1].strip()


def build(kind: str, recipe: str, *, quick: bool) -> tuple[nn.Module, Any, Any]:
  """The model of ``kind`` (``"standard"`` or ``"unit"``) for ``recipe`` (``"float32"`` or ``"fp8"``): returns
  ``(model, apply_fn, loss)`` for :func:`lpnum.zoo.train.fit` (None: its defaults)."""
  shape = dict(dim=32, heads=2, layers=1, mlp_dim=64) if quick else dict(dim=64, heads=4, layers=2, mlp_dim=128)
  if recipe not in ("float32", "fp8"):
    raise ValueError(f"recipe={recipe!r}; expected 'float32' or 'fp8'")
  if kind == "standard":
    model = Transformer(vocab=16, length=16, **shape)
    apply_fn = quantize_model(model, [Rule(".*", us.FP8_CAST)]).apply if recipe == "fp8" else None
    return model, apply_fn, None
  if kind == "unit":
    model = UnitTransformer(vocab=16, length=16, config=us.FP8_CAST if recipe == "fp8" else None, **shape)
    return model, None, us.cross_entropy
  raise ValueError(f"kind={kind!r}; expected 'standard' or 'unit'")


def _probe(next_fun, args, kwargs, context):
  out = next_fun(*args, **kwargs)
  if context.method_name == "__call__" and isinstance(context.module, nn.Dense | nn.DenseGeneral | UnitDense):
    context.module.sow("intermediates", "output_probe", out)
    return context.module.perturb("output_probe", out)
  return out


def init_scales(kind: str, *, quick: bool, seed: int) -> list[dict[str, Any]]:
  """Per dense layer of the float32 model of ``kind`` at initialization, on :data:`PROBE_BATCH` sequences: the
  output's and its gradient's standard deviations, and the shares of nonzero gradient entries that E5M2 flushes
  to zero or makes subnormal."""
  model, _, loss = build(kind, "float32", quick=quick)
  loss = optax.softmax_cross_entropy_with_integer_labels if loss is None else loss
  x, y = (jnp.asarray(a) for a in data.sequence_task(PROBE_BATCH, seed=seed + 2))
  with nn.intercept_methods(_probe):
    variables = jax.jit(model.init)(jax.random.key(seed), x)

  def objective(params, perturbations):
    with nn.intercept_methods(_probe):
      logits, state = model.apply({"params": params, "perturbations": perturbations}, x, mutable=["intermediates"])
    return jnp.mean(loss(logits, y)), state["intermediates"]

  grads, acts = jax.jit(jax.grad(objective, argnums=1, has_aux=True))(variables["params"], variables["perturbations"])
  outputs = {jax.tree_util.keystr(p[:-1]): a for p, a in jax.tree_util.tree_leaves_with_path(acts)}   # sow: tuples
  rows = []
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    cast = np.abs(np.asarray(lpnum.quantize(g, "float8_e5m2")))
    nonzero = np.asarray(g) != 0
    rows.append({"model": kind, "layer": jax.tree_util.keystr(path[:-1], simple=True, separator="/"),
                 "activation_std": float(jnp.std(outputs[jax.tree_util.keystr(path)])),
                 "gradient_std": float(jnp.std(g)), "e5m2_flushed": float(np.mean((cast == 0)[nonzero])),
                 "e5m2_subnormal": float(np.mean(((cast > 0) & (cast < E5M2_MIN_NORMAL))[nonzero]))})
  return rows


def run_one(kind: str, recipe: str, *, quick: bool, seed: int) -> dict[str, Any]:
  """Trains the model of ``kind`` with ``recipe`` and evaluates it: the loss curve, final loss, test accuracy."""
  model, apply_fn, loss = build(kind, recipe, quick=quick)
  steps = QUICK_STEPS if quick else STEPS
  train_data = data.sequence_task(TRAIN_SIZE, seed=seed)
  x_test, y_test = data.sequence_task(TEST_SIZE, seed=seed + 1)
  start = time.perf_counter()
  variables, losses = train.fit(model, train_data, steps=steps, batch_size=BATCH_SIZE, seed=seed,
                                optimizer=optax.adam(LEARNING_RATES[kind]), apply_fn=apply_fn, loss=loss)
  every = max(steps // CURVE_POINTS, 1)
  starts = range(0, steps, every)
  return {"model": kind, "recipe": recipe, "steps": steps, "learning_rate": LEARNING_RATES[kind],
          "curve_steps": [min(i + every, steps) for i in starts],
          "loss_curve": [float(np.mean(losses[i:i + every])) for i in starts],
          "final_loss": float(np.mean(losses[-every:])),
          "test_accuracy": train.accuracy(model, variables, x_test, y_test, apply_fn=apply_fn),
          "parameters": sum(int(np.size(p)) for p in jax.tree.leaves(variables["params"])),
          "seconds": time.perf_counter() - start}


def table(scales: Sequence[dict[str, Any]], runs: Sequence[dict[str, Any]]) -> str:
  """Two text tables: the initialization scales per model (median and range over layers), and the runs."""
  head = f"{'model':<10}{'output std':>22}{'gradient std':>26}{'E5M2 flushed':>14}{'subnormal':>11}"
  lines = ["At initialization (dense layers: median [min, max] over layers; shares of nonzero gradient entries)",
           head, "-" * len(head)]
  for kind in dict.fromkeys(r["model"] for r in scales):
    rows = [r for r in scales if r["model"] == kind]
    act, grad = (np.array([r[k] for r in rows]) for k in ("activation_std", "gradient_std"))
    flushed = np.mean([r["e5m2_flushed"] for r in rows])
    subnormal = np.mean([r["e5m2_subnormal"] for r in rows])
    lines.append(f"{kind:<10}{np.median(act):>8.3g} [{act.min():.2g}, {act.max():.2g}]".ljust(32)
                 + f"{np.median(grad):>9.3g} [{grad.min():.2g}, {grad.max():.2g}]".rjust(26)
                 + f"{100 * flushed:>13.1f}%{100 * subnormal:>10.1f}%")
  head = f"{'model':<10}{'recipe':<9}{'lr':>8}{'steps':>7}{'final loss':>12}{'test acc %':>12}{'s':>7}"
  lines += ["", "Training", head, "-" * len(head)]
  for r in runs:
    lines.append(f"{r['model']:<10}{r['recipe']:<9}{r['learning_rate']:>8.0e}{r['steps']:>7}{r['final_loss']:>12.4f}"
                 f"{100 * r['test_accuracy']:>12.2f}{r['seconds']:>7.1f}")
  return "\n".join(lines)


def plot(scales: Sequence[dict[str, Any]], runs: Sequence[dict[str, Any]]):
  """Left: the loss curves of the four runs (log scale). Right: each dense layer's output-gradient standard
  deviation at initialization, per model, against E5M2's normal and subnormal range."""
  from matplotlib.figure import Figure

  fig = Figure(figsize=(11, 4))
  left, right = fig.subplots(1, 2)
  for r in runs:
    left.plot(r["curve_steps"], r["loss_curve"], label=f"{r['model']} {r['recipe']}",
              linestyle="-" if r["recipe"] == "float32" else "--", color="C0" if r["model"] == "standard" else "C1")
  left.set(title="training loss", xlabel="step", ylabel="loss", yscale="log")
  left.legend(fontsize=8)
  for i, kind in enumerate(dict.fromkeys(r["model"] for r in scales)):
    grads = [r["gradient_std"] for r in scales if r["model"] == kind]
    right.scatter(range(len(grads)), grads, label=kind, color=f"C{i}", s=14)
  right.axhspan(2.0 ** -16, E5M2_MIN_NORMAL, color="0.85", label="E5M2 subnormal", zorder=0)
  right.axhline(E5M2_MIN_NORMAL, color="0.5", lw=0.8, zorder=0)
  right.set(title="output-gradient std at init, per dense layer", xlabel="dense layer", ylabel="std",
            yscale="log")
  right.legend(fontsize=8)
  fig.tight_layout()
  return fig


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """``lpnum study unit_scaling [--quick] [--out DIR] [--seed N]``: runs the study, prints its tables, writes
  ``unit_scaling.json`` (with CSVs) and ``unit_scaling.png`` to ``--out``; returns the JSON's ``results``."""
  args = parse_args(arg_parser("unit_scaling", __doc__, quick=f"{QUICK_STEPS} steps of a one-block Transformer "
                               "(checks the machinery; too few steps to learn the task)"), argv)
  start = time.perf_counter()
  scales = [row for kind in ("standard", "unit") for row in init_scales(kind, quick=args.quick, seed=args.seed)]
  runs = [run_one(kind, recipe, quick=args.quick, seed=args.seed)
          for kind, recipe in progress(RUNS, "unit_scaling", total=len(RUNS))]
  seconds = time.perf_counter() - start
  print(f"Unit scaling: FP8 by plain casting ({'quick' if args.quick else 'full'} mode, seed {args.seed}, "
        f"batch {BATCH_SIZE}, Adam)")
  print(table(scales, runs))
  print(f"({seconds:.1f} s)")
  payload = {"quick": args.quick, "seed": args.seed, "batch_size": BATCH_SIZE, "probe_batch": PROBE_BATCH,
             "optimizer": "adam", "fp8": repr(us.FP8_CAST), "seconds": seconds, "init_scales": scales,
             "runs": runs, "notes": NOTES}
  write_json("unit_scaling", payload, args.out)
  save_figure(plot(scales, runs), args.out / "unit_scaling.png")
  return payload


if __name__ == "__main__":
  main()
