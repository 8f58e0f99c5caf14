"""PAM study: the zoo Transformer trained with piecewise-affine multiplication in every matmul, against float32.

Kosson and Jaggi, "Multiplication-Free Transformer Training via Piecewise Affine Operations", NeurIPS 2023:
replacing every product of a transformer's matmuls by PAM (:mod:`lpnum.pam`: the operands' bit patterns added as
integers, relative error in [-1/9, 0]), in the forward pass and both backward matmuls, trains vision and language
transformers (DeiT-Tiny on CIFAR-10 and ImageNet, a transformer on IWSLT14 De-En) "with little to no performance
impact, and without changes to the training hyperparameters".

Setup: the zoo's 2-block Transformer (:class:`lpnum.zoo.models.Transformer`, width 64, 4 heads, MLP 128; ``--quick``:
width 32, 2 heads, MLP 64) on the synthetic pointer look-up task (:func:`lpnum.zoo.data.sequence_task`: 8192
training and 1024 test sequences of 16 tokens over 16 symbols, chance 1/16; ``--quick``: 8 tokens over 8 symbols,
which that model learns in 200 steps), softmax cross-entropy, Adam
(:data:`LEARNING_RATE`), batches of :data:`BATCH_SIZE`, :data:`STEPS` steps (``--quick``: :data:`QUICK_STEPS`),
seeds ``seed`` and ``seed + 1`` (``--quick``: one). Two recipes with the same data, initialization and batches:

* ``float32``: the stock model.
* ``pam``: :func:`lpnum.nn.pam.pam_model` runs every ``Dense``/``DenseGeneral`` (the attention projections, the
  MLPs, the head) and both attention products (``q k^T``, ``probabilities v``) with :func:`lpnum.pam.dot_general`:
  PAM products accumulated in float32, and PAM backward matmuls (the paper's training rule). Embeddings,
  LayerNorm, softmax, GELU, the loss and Adam stay float32: the paper's first setting, not its fully
  multiplication-free one.

Recorded per (recipe, seed): the loss curve (mean loss over windows of ``steps / 30`` steps), final training loss,
test accuracy with the recipe's own forward pass, and, for ``pam``, the test accuracy of the PAM-trained weights run
in float32 (how much the weights depend on PAM's arithmetic). Printed: a table of means over seeds; written:
``pam.json`` (with ``pam_runs.csv`` and ``pam_summary.csv``) and ``pam.png`` (loss curves, the seeds' spread as a
band).

Reproduction notes (also :data:`NOTES`, stored in the JSON):

* The paper's claim: PAM matmuls (forward and backward) train transformers with little to no loss and unchanged
  hyper-parameters (DeiT-Tiny on CIFAR-10 and ImageNet, a transformer on IWSLT14 De-En). Here: the same
  hyper-parameters as float32 (Adam 1e-3, batch 64), on a task that needs attention.
* Full run (seeds 0 and 1, 600 steps, 70,160 parameters; means): both recipes reach 100.00% test accuracy on the
  1024 test sequences (chance 6.25%); final training loss 0.0043 with PAM against 0.0039 in float32; the
  PAM-trained weights run with float32 matmuls also score 100.00%. The loss curves coincide except for a delay of
  one or two curve points (20 to 40 steps) at the phase transition where the model finds the look-up (mean loss
  over steps 181-200: 1.25 against 1.14 for seed 0, 2.09 against 1.81 for seed 1), then track each other within
  about 10%. Reproduced at this scale: no accuracy lost, unchanged hyper-parameters. The task saturates, so a gap
  below one test sequence (0.1 points) cannot show.
* Quick run (seed 0, 200 steps, width 32, sequences of 8 tokens over 8 symbols): 100.00% for both, final loss
  0.032 (PAM) against 0.026 (float32).
* Why it can work: PAM's error is systematic (every product is underestimated by 0 to 11.1%, 3.85% on average
  over uniform mantissas) but piecewise smooth and bounded, so a matmul is a slightly shrunk, consistent linear
  map that training adapts to; the backward matmuls being PAM too makes
  the gradient the paper's approximation, not the forward's derivative, and training still converges.
* Limits: 7 x 10^4 parameters and a synthetic task trained for hundreds of steps, against the paper's ImageNet and
  translation runs; the PAM matmul is emulated with integer operations on the CPU (a 1024x64 @ 64x128 matmul with
  its two backward matmuls takes about 30x XLA's float32 dot; a full PAM run 147 s against 31 s on a loaded 2-core
  machine), where the paper argues for hardware in which PAM is far cheaper than a float multiplier.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax

from lpnum.nn.pam import pam_model
from lpnum.results import progress, save_figure, write_json
from lpnum.studies._common import arg_parser, parse_args
from lpnum.zoo import data, train
from lpnum.zoo import models as zoo

__all__ = ["RECIPES", "MODEL", "QUICK_MODEL", "TASK", "QUICK_TASK", "STEPS", "QUICK_STEPS", "SEEDS", "BATCH_SIZE",
           "LEARNING_RATE", "TRAIN_SIZE", "TEST_SIZE", "CURVE_POINTS", "NOTES", "run_one", "summarize", "table",
           "plot", "main"]

#: Recipe name -> what it runs with PAM.
RECIPES = {"float32": "float32 everywhere (baseline)",
           "pam": "every Dense/DenseGeneral and both attention products PAM, forward and backward"}
#: The full-mode model (the zoo's default Transformer for the sequence task).
MODEL = zoo.Transformer(vocab=16, length=16)
#: The ``--quick`` model.
QUICK_MODEL = zoo.Transformer(vocab=8, length=8, dim=32, heads=2, layers=2, mlp_dim=64)
#: The sequence task's (length, vocab) in full and ``--quick`` mode.
TASK, QUICK_TASK = (16, 16), (8, 8)
STEPS, QUICK_STEPS = 600, 200
SEEDS = 2
BATCH_SIZE = 64
LEARNING_RATE = 1e-3
#: Sizes of the synthetic task's training and test sets.
TRAIN_SIZE, TEST_SIZE = 8192, 1024
#: Points of each loss curve.
CURVE_POINTS = 30

NOTES = __doc__[__doc__.index("Reproduction notes"):].split("\n", 1)[1].strip()


@functools.lru_cache(maxsize=None)
def _adam() -> optax.GradientTransformation:
  return optax.adam(LEARNING_RATE)


@functools.lru_cache(maxsize=8)
def _apply_fn(model: nn.Module, recipe: str):
  """The ``apply`` of ``model`` under ``recipe``, one per (model, recipe): fit reuses its compiled step."""
  return None if recipe == "float32" else pam_model(model).apply


def run_one(model: nn.Module, recipe: str, *, steps: int, seed: int,
            task: tuple[int, int] = TASK) -> dict[str, Any]:
  """Trains ``model`` on the sequence task of ``task = (length, vocab)`` with ``recipe`` and evaluates it.

  Returns:
    ``{"recipe", "seed", "steps", "curve_steps", "loss_curve", "final_loss", "test_accuracy",
    "test_accuracy_float32_forward", "seconds"}`` (the float32-forward accuracy is None for ``float32``).
  """
  if recipe not in RECIPES:
    raise ValueError(f"recipe={recipe!r}; expected one of {list(RECIPES)}")
  length, vocab = task
  x, y = data.sequence_task(TRAIN_SIZE, length=length, vocab=vocab, seed=seed)
  x_test, y_test = data.sequence_task(TEST_SIZE, length=length, vocab=vocab, seed=seed + 1_000_003)
  apply_fn = _apply_fn(model, recipe)
  start = time.perf_counter()
  variables, losses = train.fit(model, (x, y), steps=steps, batch_size=BATCH_SIZE, optimizer=_adam(), seed=seed,
                                apply_fn=apply_fn)
  acc = train.accuracy(model, variables, x_test, y_test, apply_fn=apply_fn)
  float_acc = None if apply_fn is None else train.accuracy(model, variables, x_test, y_test)
  every = max(1, steps // CURVE_POINTS)
  starts = range(0, steps, every)
  return {"recipe": recipe, "seed": seed, "steps": steps, "curve_steps": [min(i + every, steps) for i in starts],
          "loss_curve": [float(np.mean(losses[i:i + every])) for i in starts],
          "final_loss": float(np.mean(losses[-every:])), "test_accuracy": acc,
          "test_accuracy_float32_forward": float_acc, "seconds": time.perf_counter() - start}


def summarize(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """One row per recipe: means over seeds, and the accuracy gap to float32 in points."""
  base = {r["seed"]: r["test_accuracy"] for r in runs if r["recipe"] == "float32"}
  rows = []
  for recipe in dict.fromkeys(r["recipe"] for r in runs):
    group = [r for r in runs if r["recipe"] == recipe]
    accs = [r["test_accuracy"] for r in group]
    floats = [r["test_accuracy_float32_forward"] for r in group if r["test_accuracy_float32_forward"] is not None]
    rows.append({"recipe": recipe, "seeds": [r["seed"] for r in group], "steps": group[0]["steps"],
                 "final_loss": float(np.mean([r["final_loss"] for r in group])),
                 "test_accuracy": float(np.mean(accs)), "test_accuracy_min": min(accs),
                 "test_accuracy_max": max(accs),
                 "float32_gap": float(np.mean([r["test_accuracy"] - base[r["seed"]] for r in group])),
                 "test_accuracy_float32_forward": float(np.mean(floats)) if floats else None,
                 "seconds": float(np.mean([r["seconds"] for r in group]))})
  return rows


def table(rows: Sequence[dict[str, Any]]) -> str:
  """A text table of :func:`summarize` rows (accuracies in percent, the gap in points)."""
  head = (f"{'recipe':<10}{'steps':>6}{'seeds':>6}{'final loss':>12}{'test acc %':>12}{'min-max':>13}"
          f"{'vs f32 pts':>12}{'f32 fwd %':>11}{'s/run':>8}")
  lines = [head, "-" * len(head)]
  for r in rows:
    spread = f"{100 * r['test_accuracy_min']:.1f}-{100 * r['test_accuracy_max']:.1f}"
    f32 = "-" if r["test_accuracy_float32_forward"] is None else f"{100 * r['test_accuracy_float32_forward']:.2f}"
    lines.append(f"{r['recipe']:<10}{r['steps']:>6}{len(r['seeds']):>6}{r['final_loss']:>12.4f}"
                 f"{100 * r['test_accuracy']:>12.2f}{spread:>13}{100 * r['float32_gap']:>+12.2f}{f32:>11}"
                 f"{r['seconds']:>8.1f}")
  return "\n".join(lines)


def plot(runs: Sequence[dict[str, Any]]):
  """Training loss against step, one line per recipe (mean over seeds, the seeds' range as a band, log scale);
  returns the figure."""
  from matplotlib.figure import Figure

  fig = Figure(figsize=(6, 4))
  ax = fig.subplots()
  for recipe in dict.fromkeys(r["recipe"] for r in runs):
    group = [r for r in runs if r["recipe"] == recipe]
    curves = np.array([r["loss_curve"] for r in group])
    line, = ax.plot(group[0]["curve_steps"], curves.mean(axis=0), label=recipe,
                    linestyle="-" if recipe == "float32" else "--")
    if len(group) > 1:
      ax.fill_between(group[0]["curve_steps"], curves.min(axis=0), curves.max(axis=0), color=line.get_color(),
                      alpha=0.15, lw=0)
  seeds = len({r["seed"] for r in runs})
  ax.set(title=f"Transformer, pointer look-up ({seeds} seed{'s' if seeds > 1 else ''})", xlabel="step",
         ylabel="training loss", yscale="log")
  ax.legend()
  fig.tight_layout()
  return fig


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """``lpnum study pam [--quick] [--out DIR] [--seed N]``: runs the study, prints its table, writes ``pam.json``
  and ``pam.png`` to ``--out``; returns the JSON's ``results``."""
  args = parse_args(arg_parser("pam", __doc__, quick=f"one seed, {QUICK_STEPS} steps, a narrower Transformer, "
                               "sequences of 8 tokens over 8 symbols"), argv)
  model, steps, task = (QUICK_MODEL, QUICK_STEPS, QUICK_TASK) if args.quick else (MODEL, STEPS, TASK)
  seeds = [args.seed] if args.quick else [args.seed + i for i in range(SEEDS)]
  jobs = [(seed, recipe) for seed in seeds for recipe in RECIPES]
  start = time.perf_counter()
  runs = [run_one(model, recipe, steps=steps, seed=seed, task=task)
          for seed, recipe in progress(jobs, "training", len(jobs))]
  rows = summarize(runs)
  seconds = time.perf_counter() - start
  print(f"Transformer trained with PAM matmuls vs float32 ({'quick' if args.quick else 'full'} mode, seeds {seeds}, "
        f"batch {BATCH_SIZE}, Adam {LEARNING_RATE:g})")
  print(table(rows))
  print(f"({seconds:.1f} s)")
  payload = {"quick": args.quick, "seeds": seeds, "steps": steps, "task": {"length": task[0], "vocab": task[1]},
             "batch_size": BATCH_SIZE,
             "learning_rate": LEARNING_RATE, "model": repr(model),
             "parameters": sum(math.prod(p.shape) for p in jax.tree.leaves(
                 jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, task[0]), np.int32))["params"])),
             "recipes": RECIPES, "seconds": seconds, "runs": runs, "summary": rows, "notes": NOTES}
  write_json("pam", payload, args.out)
  save_figure(plot(runs), args.out / "pam.png")
  return payload


if __name__ == "__main__":
  main()
