"""Training study: the zoo models trained with weights, activations and gradients in each format family.

What is trained: the zoo's MLP and residual CNN (:mod:`lpnum.zoo.models`) on scikit-learn's 8x8 digits
(:func:`lpnum.zoo.data.digits`: 1438 training and 359 test images, split by the seed), and its 2-layer Transformer on
the synthetic pointer look-up task (:func:`lpnum.zoo.data.sequence_task`: 8192 training and 1024 test sequences of 16
tokens over 16 symbols; chance accuracy 1/16).

How: every recipe of :data:`RECIPES` is one :class:`~lpnum.DotConfig` applied to every quantizable layer
(``quantize_model(model, [Rule(".*", config)])``: each ``Dense``, ``Conv`` and attention projection, the first
and last layers included, so that each recipe is tested at its harshest; token/position embeddings, LayerNorm,
BatchNorm, softmax and the attention products stay float32). Quantization is simulated (``engine="fake"``:
quantize-dequantize, float32 matmuls, which for int8 and FP8 operands give the products the integer/FP8 matmul
would, up to float32 accumulation) with the straight-through estimator unless the recipe says otherwise; the
master weights and Adam's state stay float32, as in every mixed-precision recipe. Each run is
:func:`lpnum.zoo.train.fit` (softmax cross-entropy, Adam, batches of :data:`BATCH_SIZE`), then test accuracy with
the same quantized forward pass.

Steps and seeds (:data:`MODELS`): full mode trains the MLP 600 steps, the CNN 400 and the Transformer 600, with
seeds ``seed`` and ``seed + 1`` (the seed draws the digits split, the synthetic data, the initialization and the
batch order; every recipe of one seed sees the same data, initialization and batches). ``--quick`` trains 120,
150 and 60 steps, one seed, the recipes of :data:`QUICK_RECIPES`, and a CNN with one residual block of 16 channels
and a one-block Transformer of width 32 (smaller programs to compile, which dominates a quick run's time): it
checks the machinery, and its Transformer cannot learn the task (a look-up takes two blocks).

Compilation: each (model, recipe) is one training step and one evaluation program, compiled once and reused by
every seed (:func:`lpnum.zoo.train.fit` caches them on the model, the quantized ``apply`` and the optimizer, which
:func:`run_one` builds once per model and recipe).

Recorded per (model, recipe, seed): the loss curve (the mean training loss over each window of ``curve_every``
steps), the final training loss (the mean of the last window), test accuracy, its gap to float32 (same model and
seed, in points), steps and seconds (compilation included, for the first seed). Printed: a table of the means
over seeds; written: ``training.json`` and ``training.png`` (loss curves, one panel per model, averaged over seeds,
with the seeds' spread as a band).

Reproduction notes (also :data:`NOTES`, stored in the JSON):

* Mixed Precision Training (Micikevicius et al.) and A Study of BFLOAT16 for Deep Learning Training (Kalamkar et
  al.): 16-bit operands with float32 master weights matched float32 on ImageNet CNNs, translation and language
  models (FP16 needed loss scaling; bfloat16, having float32's range, needs none and keeps the hyper-parameters).
  Here: the ``bfloat16`` recipe rounds both forward operands and the output gradients of every matmul to bfloat16
  (nearest even), float32 master weights, no loss scaling; the papers' claim is that its gap to float32 is noise.
* FP8 Formats for Deep Learning (Micikevicius et al.): E4M3 forward operands and E5M2 gradients with per-tensor
  scales reached 16-bit quality on CNNs, RNNs and transformers up to 175B parameters with unchanged
  hyper-parameters. Here: ``fp8`` (``DotConfig.fp8()``) with dynamic per-tensor scales (the paper's software
  recipe uses delayed scaling from an amax history; dynamic scaling is its ideal) and without keeping any layer
  in higher precision.
* Microscaling Data Formats for Deep Learning (Rouhani et al.): MXFP8 is a drop-in for float32, and MX formats
  trained generative language models with sub-8-bit weights, activations and gradients at minimal loss. Here:
  ``mxfp8`` (MXFP8 E4M3 weights and activations, MXFP8 E5M2 gradients, blocks of 32 along each matmul's K)
  and ``mxfp4`` (MXFP4 E2M1 weights with MXFP8 E4M3 activations, float32 gradients; a W4A8 configuration
  trained quantization-aware). NVFP4 (blocks of 16 with E4M3 scales, as in the FP4 pre-training papers'
  fine-grained scaling) is ``nvfp4``, weights only.
* BitNet b1.58 Reloaded: ternary absmean weights and 8-bit per-token activations are state of the art for small
  (100K-48M parameter) language and vision models, when trained long enough (and, for the smallest, wide enough).
  Here: ``ternary`` (``estimator=lpnum.estimators.BitNetTernary()``, int8 per-token activations), a few hundred steps; BitNet
  also keeps the embeddings and the head in higher precision, here only the embeddings are.
* Quantizing deep convolutional networks for efficient inference (Krishnamoorthi): 8-bit per-channel weights
  and per-layer activations lose under 2% post-training, under 1% with quantization-aware training; 4-bit
  weights with QAT lose 2-10%. Here: ``int8`` (per-channel weights, per-token activations, int8 gradients as in
  DoReFa-Net's quantized gradients) and ``int4_weights`` (per-channel int4 weights, STE), trained from scratch.

Why the numbers differ from the papers': the models have 10^4 to 10^5 parameters and train for hundreds of steps
on 8x8 images and a synthetic task, against ImageNet and large language models trained for days. What breaks
low-precision training at scale (outlier activations in large transformers, gradient underflow late in long
runs, accumulated rounding bias) has little room to appear here, and small over-parameterized models on easy
tasks hide most formats' noise, so most recipes should match float32 and only the harshest (ternary, 4-bit)
should show a gap. The digits test set has 359 images (one image is 0.28 points) and there are two seeds, so gaps
below about a point are noise; the synthetic task's difficulty is arbitrary, so its absolute accuracies say how
fast each recipe learns the look-up, not how it would do on language.

Full run (seeds 0 and 1, mean test accuracy): float32 reaches 98.05% (MLP) and 98.89% (CNN). Every 8-bit, 16-bit,
MX, NVFP4 and posit8 recipe lands within 0.6 points of it (bfloat16 -0.14 / -0.14, int8 +0.14 / -0.28, fp8
-0.42 / -0.28, mxfp8 -0.28 / 0.00, mxfp4 -0.28 / -0.56, nvfp4 -0.14 / -0.42, posit8 -0.14 / +0.28 for MLP / CNN),
int4 weights lose 0.70 on the CNN and nothing on the MLP, and ternary is the one clear gap: -1.81 (MLP) and
-2.92 (CNN), with a final training loss 5 to 20 times float32's. On the sequence task every recipe reaches 100%
(posit8 99.95%); there only the final loss separates ternary (0.0190 against 0.0039).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax

import lpnum
from lpnum import BackwardQuant, DotConfig, OperandQuant
from lpnum.nn.rules import Rule, quantize_model
from lpnum.results import progress, save_figure, write_json
from lpnum.studies._common import arg_parser, parse_args
from lpnum.zoo import data, train
from lpnum.zoo import models as zoo

__all__ = ["Recipe", "ModelSpec", "RECIPES", "QUICK_RECIPES", "MODELS", "NOTES", "BATCH_SIZE", "CURVE_POINTS",
           "run_one", "summarize", "table", "plot", "main"]


@dataclasses.dataclass(frozen=True)
class Recipe:
  """A format family: what it quantizes and the config applied to every layer (None: float32).

  Attributes:
    description: one line on what is quantized and how.
    config: the config of every ``Dense``/``Conv`` layer, or None for the float32 baseline.
  """
  description: str
  config: DotConfig | None


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A model of the study, its task and its training budget.

  Attributes:
    model: the full-mode module.
    quick_model: the module of ``--quick`` runs.
    task: ``"digits"`` or ``"sequence"``.
    steps: training steps in full mode.
    quick_steps: training steps with ``--quick``.
    learning_rate: Adam's learning rate.
  """
  model: nn.Module
  quick_model: nn.Module
  task: str
  steps: int
  quick_steps: int
  learning_rate: float


_INT8 = OperandQuant("int8", granularity=lpnum.per_channel())
_BF16 = OperandQuant("bfloat16", scaling="none")

#: Recipe name -> :class:`Recipe`; ``float32`` is the baseline every gap is measured against.
RECIPES: dict[str, Recipe] = {
    "float32": Recipe("float32 everywhere (baseline)", None),
    "bfloat16": Recipe("forward operands and output gradients rounded to bfloat16, no scales",
                       DotConfig(lhs=_BF16, rhs=_BF16, dlhs=BackwardQuant(grad=_BF16), drhs=BackwardQuant(grad=_BF16))),
    "int8": Recipe("int8 W8A8: per-channel weights, per-token activations, per-channel int8 output gradients",
                   DotConfig(lhs=_INT8, rhs=_INT8, dlhs=BackwardQuant(grad=_INT8), drhs=BackwardQuant(grad=_INT8))),
    "int4_weights": Recipe("int4 per-channel weights (QAT, STE); activations and gradients float32",
                           DotConfig.weight_only("int4", lpnum.per_channel())),
    "fp8": Recipe("FP8: E4M3 weights and activations, E5M2 output gradients, dynamic per-tensor scales",
                  DotConfig.fp8()),
    "mxfp8": Recipe("MXFP8: E4M3 weights and activations, E5M2 output gradients, blocks of 32 along K",
                    DotConfig(lhs=OperandQuant("mxfp8_e4m3"), rhs=OperandQuant("mxfp8_e4m3"),
                                dlhs=BackwardQuant(grad=OperandQuant("mxfp8_e5m2")),
                                drhs=BackwardQuant(grad=OperandQuant("mxfp8_e5m2")))),
    "mxfp4": Recipe("MXFP4 E2M1 weights, MXFP8 E4M3 activations (blocks of 32 along K), float32 gradients",
                    DotConfig(lhs=OperandQuant("mxfp8_e4m3"), rhs=OperandQuant("mxfp4_e2m1"))),
    "nvfp4": Recipe("NVFP4 weights (E2M1, blocks of 16 with E4M3 scales); activations and gradients float32",
                    DotConfig.weight_only("nvfp4")),
    "ternary": Recipe("BitNet b1.58: absmean ternary weights, int8 per-token activations",
                      DotConfig(lhs=_INT8, rhs=OperandQuant(None, estimator=lpnum.estimators.BitNetTernary()))),
    "posit8": Recipe("posit(8, 2) weights and activations, no scales; gradients float32",
                     DotConfig(lhs=OperandQuant("posit8", scaling="none"), rhs=OperandQuant("posit8", scaling="none"))),
}

#: The recipes of ``--quick`` runs.
QUICK_RECIPES: tuple[str, ...] = ("float32", "int8", "mxfp4")

#: Model name -> :class:`ModelSpec`.
MODELS: dict[str, ModelSpec] = {
    "mlp": ModelSpec(zoo.MLP(), zoo.MLP(), "digits", steps=600, quick_steps=120, learning_rate=3e-3),
    "cnn": ModelSpec(zoo.CNN(), zoo.CNN(channels=(16,)), "digits", steps=400, quick_steps=150, learning_rate=3e-3),
    "transformer": ModelSpec(zoo.Transformer(vocab=16, length=16),
                             zoo.Transformer(vocab=16, length=16, dim=32, heads=2, layers=1, mlp_dim=64), "sequence",
                             steps=600, quick_steps=60, learning_rate=1e-3),
}

#: Examples per training step.
BATCH_SIZE = 64
#: Points of each loss curve (each the mean loss of ``steps // CURVE_POINTS`` steps).
CURVE_POINTS = 30
#: Seeds in full mode (``seed, seed + 1, ...``); quick mode runs one.
SEEDS = 2
#: Sizes of the synthetic sequence task's training and test sets.
SEQUENCE_TRAIN, SEQUENCE_TEST = 8192, 1024

NOTES = __doc__[__doc__.index("Reproduction notes"):].split("\n", 1)[1].strip()


def _task_data(task: str, seed: int):
  if task == "digits":
    return data.digits("train", seed=seed), data.digits("test", seed=seed)
  if task == "sequence":
    return (data.sequence_task(SEQUENCE_TRAIN, seed=seed),
            data.sequence_task(SEQUENCE_TEST, seed=seed + 1_000_003))
  raise ValueError(f"task={task!r} must be 'digits' or 'sequence'")


def curve_every(steps: int) -> int:
  """The window (in steps) of one loss-curve point."""
  return max(1, steps // CURVE_POINTS)


@functools.lru_cache(maxsize=None)
def _adam(learning_rate: float) -> optax.GradientTransformation:
  """One Adam per learning rate: :func:`lpnum.zoo.train.fit` reuses a compiled step for the same optimizer."""
  return optax.adam(learning_rate)


@functools.lru_cache(maxsize=64)
def _apply_fn(model: nn.Module, recipe: str):
  """The quantized ``apply`` of ``model`` under ``recipe`` (None for float32), one per (model, recipe)."""
  config = RECIPES[recipe].config
  return None if config is None else quantize_model(model, [Rule(".*", config)]).apply


def run_one(model: nn.Module, task: str, recipe: str, *, steps: int, learning_rate: float,
            seed: int) -> dict[str, Any]:
  """Trains ``model`` on ``task`` with the recipe named ``recipe`` and evaluates it.

  Args:
    model: a zoo module.
    task: ``"digits"`` or ``"sequence"``.
    recipe: a key of :data:`RECIPES`.
    steps: training steps.
    learning_rate: Adam's learning rate.
    seed: seed of the data, the initialization and the batch order.

  Returns:
    ``{"recipe", "seed", "steps", "curve_steps", "loss_curve", "final_loss", "test_accuracy", "seconds"}``.
  """
  if recipe not in RECIPES:
    raise ValueError(f"recipe={recipe!r}; expected one of {list(RECIPES)}")
  (x, y), (x_test, y_test) = _task_data(task, seed)
  apply_fn = _apply_fn(model, recipe)
  start = time.perf_counter()
  variables, losses = train.fit(model, (x, y), steps=steps, batch_size=BATCH_SIZE,
                                optimizer=_adam(learning_rate), seed=seed, apply_fn=apply_fn)
  acc = train.accuracy(model, variables, x_test, y_test, apply_fn=apply_fn)
  every = curve_every(steps)
  starts = range(0, steps, every)
  return {"recipe": recipe, "seed": seed, "steps": steps,
          "curve_steps": [min(i + every, steps) for i in starts],
          "loss_curve": [float(np.mean(losses[i:i + every])) for i in starts],
          "final_loss": float(np.mean(losses[-every:])), "test_accuracy": acc,
          "parameters": sum(int(np.size(p)) for p in jax.tree.leaves(variables["params"])),
          "seconds": time.perf_counter() - start}


def _mean(values: Sequence[float]) -> float:
  return float(np.mean(values)) if values else math.nan


def summarize(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """One row per (model, recipe): means over seeds of final loss, test accuracy, float32 gap and seconds."""
  groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
  for r in runs:
    groups.setdefault((r["model"], r["recipe"]), []).append(r)
  rows = []
  for (model, recipe), group in groups.items():
    accs = [r["test_accuracy"] for r in group]
    gaps = [r["float32_gap"] for r in group if r["float32_gap"] is not None]
    rows.append({"model": model, "recipe": recipe, "seeds": [r["seed"] for r in group], "steps": group[0]["steps"],
                 "final_loss": _mean([r["final_loss"] for r in group]), "test_accuracy": _mean(accs),
                 "test_accuracy_min": min(accs), "test_accuracy_max": max(accs), "float32_gap": _mean(gaps),
                 "seconds": _mean([r["seconds"] for r in group])})
  return rows


def table(rows: Sequence[dict[str, Any]]) -> str:
  """A text table of :func:`summarize` rows: accuracy and gap in points (percent)."""
  head = (f"{'model':<12}{'recipe':<14}{'steps':>6}{'seeds':>6}{'final loss':>12}{'test acc %':>12}"
          f"{'min-max':>14}{'vs f32 pts':>12}{'s/run':>8}")
  lines = [head, "-" * len(head)]
  for r in rows:
    spread = f"{100 * r['test_accuracy_min']:.1f}-{100 * r['test_accuracy_max']:.1f}"
    lines.append(f"{r['model']:<12}{r['recipe']:<14}{r['steps']:>6}{len(r['seeds']):>6}{r['final_loss']:>12.4f}"
                 f"{100 * r['test_accuracy']:>12.2f}{spread:>14}{100 * r['float32_gap']:>+12.2f}"
                 f"{r['seconds']:>8.1f}")
  return "\n".join(lines)


def plot(runs: Sequence[dict[str, Any]]):
  """Loss curves (mean over seeds; with several seeds a band from the lowest to the highest seed's loss), one
  panel per model (log scale where its losses span more than a factor 3), one line per recipe; returns the
  figure."""
  from matplotlib.figure import Figure
  from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

  models = list(dict.fromkeys(r["model"] for r in runs))
  fig = Figure(figsize=(5 * len(models), 4))
  axes = fig.subplots(1, len(models), squeeze=False)
  for ax, model in zip(axes[0], models, strict=True):
    losses = [v for r in runs if r["model"] == model for v in r["loss_curve"]]
    recipes = list(dict.fromkeys(r["recipe"] for r in runs if r["model"] == model))
    for recipe in recipes:
      group = [r for r in runs if r["model"] == model and r["recipe"] == recipe]
      curves = np.array([r["loss_curve"] for r in group])
      line, = ax.plot(group[0]["curve_steps"], curves.mean(axis=0), label=recipe,
                      linestyle="-" if recipe == "float32" else "--")
      if len(group) > 1:
        ax.fill_between(group[0]["curve_steps"], curves.min(axis=0), curves.max(axis=0), color=line.get_color(),
                        alpha=0.15, lw=0)
    seeds = f"mean of {len(group)} seeds, bands: min to max" if len(group) > 1 else "1 seed"
    ax.set(title=f"{model} ({seeds})", xlabel="step", ylabel="training loss")
    if max(losses) > 3 * min(losses) > 0:
      ax.set_yscale("log")
      ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
      ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
      ax.yaxis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """``lpnum study training [--quick] [--out DIR] [--seed N]``: runs the study, prints its table, writes
  ``training.json`` and ``training.png`` to ``--out``; returns the JSON's ``results``."""
  args = parse_args(arg_parser("training", __doc__, quick=f"recipes {', '.join(QUICK_RECIPES)}, one seed, "
                               "a few dozen steps and smaller CNN/Transformer"), argv)
  recipes = QUICK_RECIPES if args.quick else tuple(RECIPES)
  if recipes[0] != "float32":
    raise ValueError(f"recipes {recipes} must start with the float32 baseline")
  seeds = [args.seed] if args.quick else [args.seed + i for i in range(SEEDS)]
  jobs = [(name, spec, recipe, seed) for name, spec in MODELS.items() for seed in seeds for recipe in recipes]
  start = time.perf_counter()
  runs = []
  for name, spec, recipe, seed in progress(jobs, "training", total=len(jobs)):
    model, steps = (spec.quick_model, spec.quick_steps) if args.quick else (spec.model, spec.steps)
    run = run_one(model, spec.task, recipe, steps=steps, learning_rate=spec.learning_rate, seed=seed)
    runs.append({"model": name, **run})
  baseline = {(r["model"], r["seed"]): r["test_accuracy"] for r in runs if r["recipe"] == "float32"}
  for r in runs:
    r["float32_gap"] = r["test_accuracy"] - baseline[r["model"], r["seed"]]
  rows = summarize(runs)
  seconds = time.perf_counter() - start
  print(f"Training with low-precision formats ({'quick' if args.quick else 'full'} mode, seeds {seeds}, "
        f"batch {BATCH_SIZE}, Adam)")
  print(table(rows))
  print(f"({seconds:.1f} s)")
  payload = {
      "quick": args.quick, "seeds": seeds, "batch_size": BATCH_SIZE, "optimizer": "adam", "seconds": seconds,
      "recipes": {r: RECIPES[r].description for r in recipes},
      "models": {name: {"task": spec.task, "module": repr(spec.quick_model if args.quick else spec.model),
                        "steps": spec.quick_steps if args.quick else spec.steps,
                        "learning_rate": spec.learning_rate,
                        "curve_every": curve_every(spec.quick_steps if args.quick else spec.steps),
                        "parameters": next(r["parameters"] for r in runs if r["model"] == name)}
                 for name, spec in MODELS.items()},
      "runs": runs, "summary": rows, "notes": NOTES}
  write_json("training", payload, args.out)
  save_figure(plot(runs), args.out / "training.png")
  return payload
