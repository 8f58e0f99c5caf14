"""Scale rules and scaling recipes: MX shared-exponent rules, and delayed vs current scaling for FP8 training.

Part 1 (MX scale rules). Every MX element format (``mxfp8_e4m3``, ``mxfp8_e5m2``, ``mxfp6_e3m2``, ``mxfp6_e2m3``,
``mxfp4_e2m1``, ``mxint8``; blocks of 32, E8M0 scales) quantizes the same tensors under each power-of-two scale
rule of :mod:`lpnum.scaled`: ``floor`` (OCP MX v1.0), ``rceil`` (cuBLAS, TransformerEngine), ``ceil`` and ``even``
(torchao). Tensors: Gaussian, Laplace and Student-t (3 degrees of freedom) samples, blocked along their last axis,
and the real weights (blocks along K, the input features) and activations (the inputs of each Dense layer, blocks
along K) of an MLP trained on digits. The study reports the SQNR of each (format, rule, tensor), and the test
accuracy of that MLP with its weights post-training quantized in each (format, rule): the weights are quantized
exactly as ``lpnum.nn.ptq`` quantizes a kernel for ``OperandQuant(lpnum.mx.format(name, scale_rule=rule),
granularity=lpnum.per_block(32))`` (its tests check the two agree), from the one quantization pass that also gives the SQNR.

Part 2 (FP8 training recipes). The same MLP trained from scratch with the FP8 recipe of
:meth:`lpnum.DotConfig.fp8` (E4M3 forward operands, E5M2 gradients, per-tensor scales): current
(``dynamic``) scaling, which takes each call's amax, against ``delayed`` scaling, which scales with the largest amax
of the last 1, 4 or 16 steps (``--quick``: 1 and 16; the amax history lives in the ``quant_stats``
collection, mutable while training).
Float32 training with the same seed, steps and optimizer is the baseline. It reports the final loss (mean of the
last tenth of the steps), the test accuracy and the loss curves.

Outputs: printed tables, ``scale_rules.json`` (the results and :data:`NOTES`), ``scale_rules_sqnr.png`` (SQNR per
rule per format, one panel per tensor) and ``scale_rules_loss.png`` (the training loss curves).

Reproduction notes
------------------
*OCP Microscaling Formats (MX) v1.0 / Microscaling Data Formats for Deep Learning* (Rouhani et al.). What they
reported: MX formats with the spec's ``floor`` rule (shared exponent ``floor(log2 amax) - emax``) are a drop-in
replacement for FP32 inference (MXFP8, MXINT8), MXFP6 stays close, and sub-8-bit formats train generative language
models with a small loss. What this measures: the quantization error of each rule on small tensors and on a digits
MLP, which the papers do not tabulate per rule. Why the numbers differ: ``floor`` maps a block's amax into
``[2^emax, 2^(emax+1))``, above the element max whenever the element's max is not ``2^(emax+1) - ulp`` (E2M1: max
6 = 1.5 * 2^2; E4M3: 448 = 1.75 * 2^8), so the largest elements of some blocks saturate; ``ceil``/``rceil`` never
saturate but can leave a binade unused (``ceil`` rounds the amax's own exponent up, so it uses at most
``2^(emax+1)`` of the element range), and ``even`` rounds the amax to the element precision first. Which trade-off
wins depends on the element grid. A floating-point grid with several exponent bits has the same relative precision
in every binade, so a scale one binade too large costs it almost nothing and saturation is the only loss; a nearly
uniform grid (E2M1, E2M3, INT8) coarsens every element of a block when the scale doubles, which costs more than
saturating the block's largest values. Full run (seed 0): ``rceil`` beats ``floor`` by 0.9 to 2.0 dB on MXFP8
E4M3 and by 0.2 to 0.5 dB on E5M2 and E3M2, while ``floor`` beats ``rceil`` on MXFP4 by up to 0.56 dB (on every
tensor but the MLP activations, where ``rceil`` leads by 0.25) and ties it on MXFP6 E2M3 and MXINT8; ``even`` is
the best or within 0.06 dB of it on E2M1, E2M3, E5M2, E3M2 and INT8, and 0.3 to 1.0 dB below ``rceil`` on E4M3;
``ceil`` loses 0.9 to 3.7 dB on E2M1 and E2M3 and 6 dB (one bit) on MXINT8. PTQ accuracy of the digits MLP stays
within one test image (0.28 points) of float32 under every rule for the 6- and 8-bit formats, and MXFP4 loses 0.28
to 0.56 points under every rule. The ranking is specific to these tensors; the papers' accuracy claims come from
large models and full training runs this study does not attempt.

*FP8 Formats for Deep Learning* (Micikevicius et al.). What they reported: E4M3 for weights and activations and
E5M2 for gradients, with per-tensor scaling factors, match 16-bit training quality on CNNs, RNNs and transformers up
to 175B parameters with unchanged hyper-parameters. Delayed scaling (a scale from the amax history of earlier steps)
is the recipe TransformerEngine implements for it. What this measures: final loss and accuracy of a small MLP on
digits under current and delayed scaling. Full run (seed 0): float32 98.05%, current scaling 98.33%, delayed
scaling with histories 1, 4 and 16: 97.77%, 97.77% and 97.21% (all within 3 test images of float32), final losses all
within 1e-5 of each other. Why it differs: digits and a two-layer MLP have benign, slowly changing ranges, so all
recipes land within run-to-run noise of float32; delayed scaling's risk (an amax that jumps above
its history saturates until the history catches up) and its benefit (no extra pass over the tensor before the
matmul) show on large models and on hardware, not in this fake-quantized CPU emulation.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import lpnum
import lpnum.zoo.data
import lpnum.nn
import lpnum.zoo.train
import lpnum.zoo.models
from lpnum import mx
from lpnum.results import progress, save_figure, write_json
from lpnum.studies._common import arg_parser, parse_args
from lpnum.studies.formats import mlp_tensors, sample, sqnr_db, trained_mlp

__all__ = ["FORMATS", "RULES", "SYNTHETIC", "TENSORS", "HISTORIES", "BLOCK", "NOTES", "Setup", "SETUPS",
           "synthetic", "trained_mlp", "real_tensors", "fp8_config", "main"]

#: Every MX element format.
FORMATS: tuple[str, ...] = mx.NAMES
#: The power-of-two scale rules compared.
RULES = ("floor", "rceil", "ceil", "even")
#: Synthetic tensors (the distributions of :mod:`lpnum.studies.formats`).
SYNTHETIC = ("gaussian", "laplace", "student_t3")
#: Every tensor measured: the synthetic ones and the trained MLP's weights and activations.
TENSORS = SYNTHETIC + ("mlp_weights", "mlp_activations")
#: Amax history lengths of delayed scaling.
HISTORIES = (1, 4, 16)
#: The MX block size.
BLOCK = 32
#: Columns of the synthetic tensors (blocks run along them).
COLUMNS = 1024

NOTES = __doc__[__doc__.index("Reproduction notes"):].split("\n", 2)[2].strip()


@dataclasses.dataclass(frozen=True)
class Setup:
  """The sizes of one mode.

  Attributes:
    n: values per synthetic tensor (a multiple of :data:`COLUMNS`).
    features: the MLP's hidden widths (multiples of :data:`BLOCK`).
    steps: training steps of every MLP (float32 and FP8).
    formats: the MX formats measured.
    histories: the amax history lengths of delayed scaling.
  """

  n: int
  features: tuple[int, ...]
  steps: int
  formats: tuple[str, ...]
  histories: tuple[int, ...]


#: The full and quick setups.
SETUPS = {"full": Setup(1 << 20, (256, 256), 1500, FORMATS, HISTORIES),
          "quick": Setup(1 << 14, (128,), 120, ("mxfp8_e4m3", "mxfp4_e2m1", "mxint8"), (1, 16))}

_LR = 3e-3
_BATCH = 128


def synthetic(name: str, n: int, seed: int = 0) -> np.ndarray:
  """The synthetic tensor ``name`` of ``n`` values as a ``(n // 1024, 1024)`` float32 matrix (blocks along rows)."""
  if n % COLUMNS:
    raise ValueError(f"n={n} must be a multiple of {COLUMNS}")
  return sample(name, n, seed).reshape(-1, COLUMNS)


def _kernels(params: dict[str, Any]) -> dict[str, np.ndarray]:
  return {name: np.asarray(layer["kernel"]) for name, layer in sorted(params.items())}


def real_tensors(model: nn.Module, variables: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
  """The MLP's weights and test-set activations, each as rows of one MX block (blocks along K).

  A kernel ``(K, N)`` becomes ``kernel.T.reshape(-1, 32)`` (K runs along the rows, as ``lpnum.nn.ptq`` blocks it);
  an activation ``(M, K)`` becomes ``reshape(-1, 32)``.
  """
  return {name: np.concatenate([m.reshape(-1, BLOCK) for m in mats])
          for name, mats in mlp_tensors(model, variables, seed).items()}


def _weights_from_rows(params: dict[str, Any], rows: np.ndarray) -> dict[str, Any]:
  """Inverse of the weight part of :func:`real_tensors`: a params tree with the kernels read back from ``rows``."""
  out, start = {}, 0
  for name, w in _kernels(params).items():
    k, n = w.shape
    out[name] = {**params[name], "kernel": jnp.asarray(rows[start:start + k * n // BLOCK].reshape(n, k).T)}
    start += k * n // BLOCK
  return out


def fp8_config(scaling: str, history: int = 16) -> lpnum.DotConfig:
  """The FP8 training recipe (E4M3 forward, E5M2 gradients, per-tensor) with ``dynamic`` or ``delayed`` scaling."""
  if scaling not in ("dynamic", "delayed"):
    raise ValueError(f"scaling={scaling!r}; expected 'dynamic' or 'delayed'")
  e4m3 = lpnum.OperandQuant("float8_e4m3fn", scaling=scaling, history=history)
  e5m2 = lpnum.BackwardQuant(grad=lpnum.OperandQuant("float8_e5m2"))
  return lpnum.DotConfig(lhs=e4m3, rhs=e4m3, dlhs=e5m2, drhs=e5m2)


def _final(losses: Sequence[float]) -> float:
  return float(np.mean(losses[-max(len(losses) // 10, 1):]))


def run_sqnr(tensors: dict[str, np.ndarray], formats: Sequence[str], model: nn.Module,
             variables: dict[str, Any], seed: int) -> tuple[list[dict], list[dict]]:
  """SQNR of every (format, rule, tensor) and the PTQ test accuracy of every (format, rule).

  All tensors (rows of one block) are stacked and quantized in one pass per (format, rule): blocks are
  independent, so this equals quantizing each tensor on its own.
  """
  names = list(tensors)
  stacked = jnp.asarray(np.concatenate([tensors[t] for t in names]))
  bounds = np.cumsum([0] + [len(tensors[t]) for t in names])
  x_test, y_test = lpnum.zoo.data.digits("test", seed=seed, flat=True)
  predict = jax.jit(model.apply)
  w_at = names.index("mlp_weights")
  sqnr, acc = [], []
  combos = [(f, r) for f in formats for r in RULES]
  for fmt, rule in progress(combos, "MX scale rules", total=len(combos)):
    q = np.asarray(lpnum.fake_quantize(stacked, mx.format(fmt, scale_rule=rule)))
    x = np.asarray(stacked)
    for i, t in enumerate(names):
      lo, hi = bounds[i], bounds[i + 1]
      sqnr.append({"format": fmt, "rule": rule, "tensor": t, "sqnr_db": sqnr_db(x[lo:hi], q[lo:hi])})
    params = _weights_from_rows(variables["params"], q[bounds[w_at]:bounds[w_at + 1]])
    pred = np.asarray(predict({**variables, "params": params}, jnp.asarray(x_test))).argmax(-1)
    acc.append({"format": fmt, "rule": rule, "accuracy": float(np.mean(pred == y_test))})
  return sqnr, acc


def run_training(setup: Setup, seed: int, float_losses: list[float], float_acc: float) -> list[dict]:
  """Float32, FP8 current scaling and FP8 delayed scaling (each history length) on the same MLP and data."""
  x, y = lpnum.zoo.data.digits("train", seed=seed, flat=True)
  x_test, y_test = lpnum.zoo.data.digits("test", seed=seed, flat=True)
  model = lpnum.zoo.models.MLP(features=setup.features)
  runs = [{"recipe": "float32", "scaling": None, "history": None, "final_loss": _final(float_losses),
           "accuracy": float_acc, "losses": float_losses}]
  recipes = [("fp8_current", "dynamic", None)] + [(f"fp8_delayed_h{h}", "delayed", h) for h in setup.histories]
  for name, scaling, history in progress(recipes, "FP8 training", total=len(recipes)):
    qmodel = lpnum.nn.quantize_model(model, fp8_config(scaling, history or 1))
    init = jax.jit(qmodel.init)(jax.random.key(seed), jnp.asarray(x[:_BATCH]))
    variables, losses = lpnum.zoo.train.fit(model, (x, y), steps=setup.steps, batch_size=_BATCH, seed=seed,
                                           optimizer=optax.adam(_LR), apply_fn=qmodel.apply, variables=init)
    acc = lpnum.zoo.train.accuracy(model, variables, x_test, y_test, apply_fn=qmodel.apply)
    runs.append({"recipe": name, "scaling": scaling, "history": history, "final_loss": _final(losses),
                 "accuracy": acc, "losses": losses})
  return runs


def _grid(rows: list[dict], value: str, formats: Sequence[str], fmt: str, tensor: str | None = None) -> str:
  head = f"{'format':<12}" + "".join(f"{r:>9}" for r in RULES)
  lines = [head, "-" * len(head)]
  for f in formats:
    vals = {r["rule"]: r[value] for r in rows if r["format"] == f and r.get("tensor") == tensor}
    lines.append(f"{f:<12}" + "".join(f"{vals[r]:>9{fmt}}" for r in RULES))
  return "\n".join(lines)


def tables(results: dict[str, Any]) -> str:
  """Readable tables of a :func:`main` result: SQNR per tensor, PTQ accuracy, FP8 training."""
  formats = results["config"]["formats"]
  out = []
  for t in TENSORS:
    out += [f"SQNR (dB), {t}", _grid(results["sqnr"], "sqnr_db", formats, ".2f", t), ""]
  out += [f"MLP test accuracy with PTQ'd weights (float32: {results['float_accuracy']:.4f})",
          _grid(results["ptq_accuracy"], "accuracy", formats, ".4f"), ""]
  head = f"{'recipe':<18}{'final loss':>12}{'accuracy':>10}"
  out += ["FP8 training (MLP on digits)", head, "-" * len(head)]
  out += [f"{r['recipe']:<18}{r['final_loss']:>12.5f}{r['accuracy']:>10.4f}" for r in results["training"]]
  return "\n".join(out)


def plot_sqnr(results: dict[str, Any], path) -> Any:
  """Grouped bars: SQNR per format, one bar per rule, one panel per tensor."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  formats = results["config"]["formats"]
  fig, axes = plt.subplots(1, len(TENSORS), figsize=(4 * len(TENSORS), 4), sharey=True)
  width = 0.8 / len(RULES)
  for ax, t in zip(axes, TENSORS):
    for j, rule in enumerate(RULES):
      vals = {r["format"]: r["sqnr_db"] for r in results["sqnr"] if r["tensor"] == t and r["rule"] == rule}
      ax.bar(np.arange(len(formats)) + (j - 1.5) * width, [vals[f] for f in formats], width, label=rule)
    ax.set_xticks(np.arange(len(formats)), formats, rotation=45, ha="right", fontsize=8)
    ax.set_title(t)
    ax.grid(True, axis="y", alpha=0.3)
  axes[0].set_ylabel("SQNR (dB)")
  axes[-1].legend(title="scale rule", fontsize=8)
  fig.tight_layout()
  return save_figure(fig, path)


def plot_losses(results: dict[str, Any], path) -> Any:
  """Training loss (moving average over 10 steps, log scale) per recipe."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for run in results["training"]:
    losses = np.asarray(run["losses"])
    k = min(10, len(losses))
    smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
    ax.plot(np.arange(k, len(losses) + 1), smooth, label=run["recipe"], lw=1.2)
  ax.set(yscale="log", xlabel="step", ylabel="training loss (10-step mean)", title="FP8 training: MLP on digits")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  return save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """``lpnum study scale_rules [--quick] [--out DIR] [--seed N]``: runs the study, prints tables, writes the JSON
  and plots; returns the results (the JSON's ``results``)."""
  q = SETUPS["quick"]
  quick_help = (f"{q.n} values per synthetic tensor, formats {', '.join(q.formats)}, an MLP{q.features} trained "
                f"{q.steps} steps, amax histories {q.histories}")
  args = parse_args(arg_parser("scale_rules", __doc__, quick=quick_help), argv)
  setup = SETUPS["quick" if args.quick else "full"]
  start = time.perf_counter()
  model, variables, float_losses = trained_mlp(setup.features, setup.steps, args.seed)
  x_test, y_test = lpnum.zoo.data.digits("test", seed=args.seed, flat=True)
  float_acc = lpnum.zoo.train.accuracy(model, variables, x_test, y_test)
  tensors = {t: synthetic(t, setup.n, args.seed).reshape(-1, BLOCK) for t in SYNTHETIC}
  tensors.update(real_tensors(model, variables, args.seed))
  sqnr, ptq_acc = run_sqnr(tensors, setup.formats, model, variables, args.seed)
  training = run_training(setup, args.seed, float_losses, float_acc)
  results = {"config": {"quick": args.quick, "seed": args.seed, "formats": list(setup.formats), "rules": list(RULES),
                        "tensors": list(TENSORS), "synthetic_shape": [setup.n // COLUMNS, COLUMNS],
                        "block_size": BLOCK, "mlp_features": list(setup.features), "steps": setup.steps,
                        "batch_size": _BATCH, "learning_rate": _LR, "histories": list(setup.histories)},
             "sqnr": sqnr, "float_accuracy": float_acc, "ptq_accuracy": ptq_acc, "training": training,
             "notes": NOTES}
  print(tables(results))
  write_json("scale_rules", results, args.out)
  plot_sqnr(results, args.out / "scale_rules_sqnr.png")
  plot_losses(results, args.out / "scale_rules_loss.png")
  print(f"({time.perf_counter() - start:.1f} s)")
  return results
