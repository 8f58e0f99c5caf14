"""Accumulator study: accuracy of a trained model and overflow rates as the accumulator narrows.

Setup
  Data: scikit-learn's digits (:func:`lpnum.zoo.data.digits`, 8x8 images flattened to 64 pixels in [0, 1]; the
  split and every initialization and shuffle come from ``--seed``). Model: ``zoo.MLP(features=(64,))``, i.e.
  ``Dense(64) -> ReLU -> Dense(10)``, trained in float32 with Adam (:data:`LEARNING_RATE`) for
  :data:`TRAIN_STEPS` steps of :data:`BATCH_SIZE` examples (:data:`QUICK_TRAIN_STEPS` with ``--quick``). Both
  matmuls have K = 64 products per output.

  A2Q models: for each target width P in :data:`A2Q_BITS` (quick: :data:`QUICK_A2Q_BITS`) the float32 model is
  converted to ``A2QDense`` layers (8-bit signed integer weights, 8-bit signed inputs, ``accumulator_bits=P``;
  initialized from the float kernels as :func:`train_a2q` says) and fine-tuned for :data:`A2Q_STEPS` steps
  (:data:`QUICK_A2Q_STEPS`): one A2Q model per P, every one evaluated at every width of the sweep. P = 8 is not
  trained: with 8-bit signed inputs the A2Q bound ``(2^7 - 1) / 2^7 < 1`` admits no nonzero integer weight.

Integer sweep
  Each layer's input is quantized to signed 8-bit codes with one per-tensor scale ``s_x = max|x| / 127`` over the
  evaluated test set (round half to even, clip to [-127, 127]); the weights are int8 per output channel,
  ``s_w = max_k |w[k, j]| / 127`` and ``q = round(w / s_w)`` for the float32 model, and the A2Q model's own
  integer weights (``a2q_integer_weights``) and learned steps for the A2Q models. The integer matmul
  ``x_codes @ q`` runs through :func:`lpnum.kernels.accumulate.matmul` directly on the codes (not through
  ``quantize_model``, so that every matmul's ``AccumulatorStats`` are at hand) with ``IntAccumulator(P, "wrap")``
  or ``IntAccumulator(P, "saturate")``, adding the products in order k = 0..K-1; then ``y = acc * s_x * s_w + b``
  in float32 and ReLU. The overflow rate is the fraction of all outputs of the two matmuls (test examples x
  output features, 359 x 74 at the default split) whose accumulator overflowed at least once.

Float sweep
  The float32 model's weights and activations stay float32 (each product is ``fl32(a * b)``, rounded once); every
  addition of the matmuls' accumulators is rounded to an IEEE-style float with 8 exponent bits and m mantissa bits
  (``FloatAccumulator.ieee(8, m)``), nearest even or stochastic (keys from ``--seed``, the width and the layer;
  :data:`STOCHASTIC_REPEATS` keys per setting, accuracy averaged), either sequentially over all K products or in
  chunks of :data:`CHUNK` products whose results are summed in float32 (nearest even), as tensor cores promote
  partial sums. Biases are added in float32 afterwards. m = 23 is float32 itself (``FloatAccumulator.ieee(8, 23)``):
  nearest even is plain float32 addition (one rounding per addition, no fused multiply-add), stochastic steps each
  float32 sum one ulp toward its exact error with probability |error| / ulp.

Emulation shapes
  Both layers' matmuls are padded with zeros to one (M, 64) @ (64, 64) shape (the head's 10 columns get 54 zero
  columns, dropped afterwards and left out of the overflow rates), so each accumulator compiles once. Outputs are
  independent per column, so this changes no result, except which hash counters the stochastic rounding draws.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lpnum.kernels import accumulate
from lpnum.nn import a2q
from lpnum.zoo import data, models as zoo, train
from lpnum.nn.a2q_layers import A2QDense
from lpnum.results import progress, save_figure, write_json
from lpnum.studies._common import arg_parser, parse_args

__all__ = ["NOTES", "A2QMLP", "train_float", "train_a2q", "integer_layers", "integer_forward", "float_forward",
           "main"]

#: Hidden width of the MLP.
HIDDEN = 64
#: Mini-batch size of every training run.
BATCH_SIZE = 64
#: Adam learning rate of the float32 training and of the A2Q fine-tuning.
LEARNING_RATE = 3e-3
#: Float32 training steps (full, quick).
TRAIN_STEPS, QUICK_TRAIN_STEPS = 1500, 500
#: A2Q fine-tuning steps per target width (full, quick).
A2Q_STEPS, QUICK_A2Q_STEPS = 600, 150
#: Integer accumulator widths P of the sweep (full, quick).
INT_BITS, QUICK_INT_BITS = (32, 24, 20, 18, 16, 14, 12, 10, 8), (32, 16, 12)
#: Widths the A2Q models are trained for (full, quick); P = 8 admits no weight with 8-bit inputs.
A2Q_BITS, QUICK_A2Q_BITS = (32, 24, 20, 18, 16, 14, 12, 10), (16,)
#: Mantissa bits of the float accumulators (exponent 8); 23 is float32 (full, quick).
FLOAT_MANTISSAS, QUICK_FLOAT_MANTISSAS = (23, 16, 10, 7, 5, 4, 3), (23, 4)
#: Products per chunk of the chunked float accumulation.
CHUNK = 32
#: Exponent bits of the float accumulators.
EXPONENT_BITS = 8
#: Stochastic-rounding keys per setting, accuracies averaged (full, quick).
STOCHASTIC_REPEATS, QUICK_STOCHASTIC_REPEATS = 3, 1
#: Bits of the integer inputs and weights.
INT_INPUT_BITS = WEIGHT_BITS = 8

NOTES = """\
Reproduction notes (the papers lpnum reproduces that this study touches).

A2Q: Accumulator-Aware Quantization (Colbert, Pappalardo, Petri-Koenig, ICCV 2023). Reported: constraining the L1
norm of each output channel's integer weights to (2^(P-1) - 1) 2^(1 - N) guarantees that a P-bit accumulator never
overflows for N-bit inputs; the constraint promotes sparsity and, on FPGA accelerators, gives up to 2.3x fewer
resources at 99.2% of the float model's accuracy, where naive narrow accumulators lose accuracy to overflow. Here:
one A2Q model per target P (8-bit weights and inputs, fine-tuned from the float32 model), run with a P-bit
accumulator. The guarantee reproduces exactly: zero overflows at the trained P and above, with wrap-around and
saturation alike. In the full run at seed 0 the A2Q models keep the float32 accuracy (96.9%) down to P = 16, lose
1.6 points at P = 14, fall to 61% at P = 12 and to chance at P = 10, while the float32 model's int8 version needs
P = 18 (P = 16: about half of the outputs overflow; wrap-around gives 4.5%, saturation 92.2%; P = 14: chance). What
differs from the paper is scale: a 64-input MLP on 8x8 digits, K = 64 products per dot product (thousands in the
paper's CNNs), short fine-tuning, one seed. The bound is tight for short dot products (with N = 8 it allows an L1
norm of 255 at P = 16, 63 at P = 14, 15 at P = 12 and 3 at P = 10 per output channel whatever K is): a 10-bit
accumulator leaves 3 units of integer weight per output channel, too few for this model to learn anything, and P = 8
admits no weights at all. The paper's models are larger and trained longer with A2Q, so they hold accuracy to
smaller P relative to their float accuracy.

Towards Cheaper Inference in Deep Networks with Lower Bit-Width Accumulators. Reported: 12-bit accumulators with no
significant accuracy loss after fine-tuning; below that, fine-grained gradient approximations help. Here: no
fine-tuning with the narrow accumulator (post-training only), the float32-trained model with each addition rounded
to a float with 8 exponent bits and m mantissa bits; m = 3 is a 12-bit accumulator (sign, 8 exponent, 3 mantissa
bits), so the smallest width here is the paper's headline width, spent mostly on exponent. With K = 64 a few
mantissa bits lose little (full run at seed 0: every setting down to m = 3 within about 1 point of float32; 1 test
example is 0.28 points, so differences of that size are noise); long dot products (the paper's ImageNet-scale
models) swamp small addends sooner, one reason why the paper fine-tunes at 12 bits and this study needs no
fine-tuning. Integer accumulators behave very differently: below the width that holds the largest partial sum,
wrap-around is catastrophic and saturation degrades faster than reduced float precision, which is why A2Q bounds the
sums instead.

Tensor-core accumulation (chunked vs sequential). FP8 GEMMs on tensor cores keep partial sums in a narrow
accumulator and promote them to float32 every so many products (DeepSeek-V3 promotes every 128 products because H800
tensor cores keep about 14 bits; see lpnum.kernels.accumulate.AlignedAccumulator). The chunked order models that
promotion: the narrow accumulator only ever sums CHUNK = 32 products, so its error grows with the chunk, not with K.
With K = 64 there are only two chunks per dot product, so the gap between sequential and chunked is small here and
grows with K in larger models.

Stochastic vs nearest rounding. Stochastic rounding makes each rounded addition unbiased, so long sums of small
addends do not stagnate; at K = 64 and m >= 5 swamping is rare and both modes match the float32 accuracy; stochastic
rounding adds variance at the smallest m. Each stochastic setting is averaged over a few keys only. At m = 23 both
modes are float32 accumulators: stochastic rounding moves each sum by at most one float32 ulp (about 10^-7 of it),
so it gives the float32 accuracy, like nearest even; the sweep starts from the same accumulator in both modes.

Mixed Precision Training of CNNs using Integer Operations / Mixed Precision Training with Integer Operations.
Reported: INT16 x INT16 products accumulated in INT32 with overflow handling, at FP32 accuracy. Here: 8-bit products
and P = 32 never overflow (the largest partial sum of K = 64 products of 8-bit codes is below 2^20), and P = 32
reproduces the exact integer accuracy; the sweep shows how much headroom that is: the float32 model's int8 version
stops overflowing at P = 18 on this data (full run, seed 0).

Quantization whitepaper (Krishnamoorthi). Reported: per-channel int8 weights and per-layer int8 activations
post-training are within 2% of float. Here the P = 32 integer accuracy is that recipe on the float32 model
(per-tensor activation scales taken over the evaluated test set); at seed 0 it matches the float32 accuracy.
"""


class A2QMLP(nn.Module):
  """``zoo.MLP`` with :class:`~lpnum.nn.a2q_layers.A2QDense` layers: ``A2QDense(hidden) -> ReLU -> A2QDense(10)``.

  Attributes:
    features: widths of the hidden layers.
    accumulator_bits: P, the accumulator width every layer's integer weights are bounded for.
    num_classes: width of the output (logits).
  """

  features: Sequence[int] = (HIDDEN,)
  accumulator_bits: int = 16
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    kwargs = dict(weight_bits=WEIGHT_BITS, input_bits=INT_INPUT_BITS, accumulator_bits=self.accumulator_bits)
    for width in self.features:
      x = nn.relu(A2QDense(width, **kwargs)(x))
    return A2QDense(self.num_classes, **kwargs)(x)


def _split(seed: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
  return data.digits("train", seed=seed, flat=True), data.digits("test", seed=seed, flat=True)


def _layer_params(variables: dict[str, Any]) -> list[dict[str, Any]]:
  """The layers' parameter dicts in order (``Dense_0``, ``Dense_1``... or ``A2QDense_0``...)."""
  return [p for _, p in sorted(variables["params"].items(), key=lambda item: int(item[0].rsplit("_", 1)[1]))]


@functools.lru_cache(maxsize=8)
def train_float(seed: int, steps: int) -> dict[str, Any]:
  """The float32 ``zoo.MLP(features=(HIDDEN,))`` trained on digits for ``steps`` steps (cached per arguments)."""
  (x, y), _ = _split(seed)
  variables, _ = train.fit(zoo.MLP(features=(HIDDEN,)), (x, y), steps=steps, batch_size=BATCH_SIZE,
                           optimizer=optax.adam(LEARNING_RATE), seed=seed)
  return variables


@functools.lru_cache(maxsize=32)
def train_a2q(seed: int, float_steps: int, steps: int, accumulator_bits: int) -> dict[str, Any]:
  """An :class:`A2QMLP` for ``accumulator_bits``, initialized from :func:`train_float`'s model and fine-tuned for
  ``steps`` steps (cached per arguments).

  The initialization is :func:`lpnum.nn.a2q.a2q_init`'s (``v = w``, per-channel absmax steps) except where the
  A2Q bound binds: there the step is raised to ``||w||_1 / L`` and ``g = ||w||_1``, so that the channel keeps its
  float weights' magnitude on a coarser grid instead of being scaled down to fit ``L`` (which, at small P,
  truncates every weight to zero and leaves no gradient to recover from).
  """
  (x, y), _ = _split(seed)
  params = {}
  for i, layer in enumerate(_layer_params(train_float(seed, float_steps))):
    w = jnp.asarray(layer["kernel"], jnp.float32)
    v, _, s = a2q.a2q_init(w, weight_bits=WEIGHT_BITS, input_bits=INT_INPUT_BITS, accumulator_bits=accumulator_bits)
    limit = a2q.a2q_limit(w.shape[0], input_bits=INT_INPUT_BITS, accumulator_bits=accumulator_bits)
    norm = jnp.sum(jnp.abs(w), axis=0)
    s = jnp.maximum(s, norm / limit)  # the step at which the channel's L1 budget covers its float weights
    params[f"A2QDense_{i}"] = {"v": v, "g": jnp.minimum(norm, limit * s), "log2_scale": jnp.log2(s),
                               "bias": layer["bias"]}
  model = A2QMLP(accumulator_bits=accumulator_bits)
  variables, _ = train.fit(model, (x, y), steps=steps, batch_size=BATCH_SIZE, optimizer=optax.adam(LEARNING_RATE),
                           seed=seed, variables={"params": params})
  return variables


def integer_layers(variables: dict[str, Any], accumulator_bits: int | None = None
                   ) -> list[tuple[jax.Array, jax.Array, jax.Array]]:
  """Each layer's ``(q, s_w, bias)``: int8 weights (K, N), per-channel float32 steps (N,) and the float32 bias.

  Args:
    variables: a float32 ``zoo.MLP``'s variables (``accumulator_bits=None``: per-channel absmax int8 weights,
      ``q = round(w / s_w)`` with ``s_w = max_k |w| / 127``) or an :class:`A2QMLP`'s (its own integer weights
      and learned steps).
    accumulator_bits: the A2Q model's target width P, None for a float32 model.
  """
  layers = []
  for p in _layer_params(variables):
    if accumulator_bits is None:
      w = jnp.asarray(p["kernel"], jnp.float32)
      s = jnp.max(jnp.abs(w), axis=0) / jnp.float32(127)
      s = jnp.where(s > 0, s, jnp.float32(1))
      q = jnp.clip(jnp.round(w / s), -127, 127).astype(jnp.int8)
    else:
      s = jnp.exp2(p["log2_scale"])
      q = a2q.a2q_integer_weights(p["v"], p["g"], s, weight_bits=WEIGHT_BITS, input_bits=INT_INPUT_BITS,
                                  accumulator_bits=accumulator_bits)
    layers.append((q, s, jnp.asarray(p["bias"], jnp.float32)))
  return layers


def _input_codes(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Signed 8-bit codes of ``x`` with one per-tensor scale ``max|x| / 127`` (1 for an all-zero ``x``)."""
  s = jnp.max(jnp.abs(x)) / jnp.float32(127)
  s = jnp.where(s > 0, s, jnp.float32(1))
  return jnp.clip(jnp.round(x / s), -127, 127).astype(jnp.int8), s


def _padded_matmul(a: jax.Array, b: jax.Array, acc, width: int, **kwargs) -> tuple[jax.Array, jax.Array]:
  """``accumulate.matmul(a, b, acc, return_stats=True)`` on inputs zero-padded to (M, width) @ (width, width), so
  every layer shares one compiled emulation; returns the (M, N) result and overflow flags."""
  k, n = b.shape
  a = jnp.pad(a, ((0, 0), (0, width - k)))
  b = jnp.pad(b, ((0, width - k), (0, width - n)))
  out, stats = accumulate.matmul(a, b, acc, return_stats=True, **kwargs)
  return out[:, :n], stats.overflowed[:, :n]


def integer_forward(layers: Sequence[tuple[jax.Array, jax.Array, jax.Array]], x: np.ndarray,
                    accumulator: accumulate.IntAccumulator) -> tuple[np.ndarray, np.ndarray]:
  """Logits of the integer model (:func:`integer_layers`) with every matmul's accumulator emulated.

  Returns:
    ``(logits, overflowed)``: float32 logits (M, classes) and one bool per output of every matmul, concatenated
    (M, sum of the layers' N).
  """
  width = max(max(q.shape) for q, _, _ in layers)
  h, flags = jnp.asarray(x, jnp.float32), []
  for i, (q, s_w, bias) in enumerate(layers):
    codes, s_x = _input_codes(h)
    acc, overflowed = _padded_matmul(codes, q, accumulator, width)
    flags.append(overflowed)
    h = acc.astype(jnp.float32) * s_x * s_w + bias
    if i < len(layers) - 1:
      h = jax.nn.relu(h)
  return np.asarray(h), np.asarray(jnp.concatenate(flags, axis=1))


def float_forward(variables: dict[str, Any], x: np.ndarray, mantissa_bits: int, rounding: str,
                  chunk: int | None, key: jax.Array | None) -> tuple[np.ndarray, np.ndarray]:
  """Logits of the float32 ``zoo.MLP`` with every matmul accumulated in an E8M``mantissa_bits`` float
  (``mantissa_bits=23``: float32), biases added in float32 afterwards.

  Returns:
    ``(logits, overflowed)`` as :func:`integer_forward`.
  """
  layers = [(jnp.asarray(p["kernel"], jnp.float32), jnp.asarray(p["bias"], jnp.float32))
            for p in _layer_params(variables)]
  width = max(max(w.shape) for w, _ in layers)
  h, flags = jnp.asarray(x, jnp.float32), []
  for i, (w, bias) in enumerate(layers):
    kwargs = {} if key is None else {"key": jax.random.fold_in(key, i)}
    acc, overflowed = _padded_matmul(h, w, accumulate.FloatAccumulator.ieee(EXPONENT_BITS, mantissa_bits, rounding),
                                     width, chunk=chunk, **kwargs)
    flags.append(overflowed)
    h = acc + bias
    if i < len(layers) - 1:
      h = jax.nn.relu(h)
  return np.asarray(h), np.asarray(jnp.concatenate(flags, axis=1))


def _accuracy(logits: np.ndarray, y: np.ndarray) -> float:
  return float(np.mean(np.argmax(logits, axis=-1) == y))


def _int_table(records: list[dict[str, Any]], bits: Sequence[int]) -> str:
  """Accuracy (%) and overflow rate (%) per width: float32 model, and each A2Q model at its own width."""
  by = {(r["model"], r["trained_bits"], r["bits"], r["overflow"]): r for r in records}
  head = f"{'P':>4} | {'int8 wrap':>16} | {'int8 saturate':>16} | {'A2Q@P wrap':>16} | {'A2Q@P saturate':>16}"
  lines = ["accuracy % (overflow rate %) per integer accumulator width P", head, "-" * len(head)]
  for p in bits:
    cells = []
    for model, trained in (("float32", None), ("a2q", p)):
      for mode in ("wrap", "saturate"):
        r = by.get((model, trained, p, mode))
        text = "-" if r is None else f"{100 * r['accuracy']:.1f} ({100 * r['overflow_rate']:.1f})"
        cells.append(f"{text:>16}")
    lines.append(f"{p:>4} | " + " | ".join(cells))
  return "\n".join(lines)


def _a2q_cross_table(records: list[dict[str, Any]], bits: Sequence[int], trained: Sequence[int]) -> str:
  """Wrap-around accuracy (%) of each A2Q model (rows: trained P) at each accumulator width (columns)."""
  by = {(r["trained_bits"], r["bits"]): r for r in records if r["model"] == "a2q" and r["overflow"] == "wrap"}
  head = f"{'A2Q for P':>10} |" + "".join(f"{p:>7}" for p in bits)
  lines = ["A2Q models at every width, wrap-around: accuracy % (* = some output overflowed)", head, "-" * len(head)]
  for t in trained:
    cells = []
    for p in bits:
      r = by[(t, p)]
      cells.append(f"{100 * r['accuracy']:>6.1f}{'*' if r['overflow_rate'] > 0 else ' '}")
    lines.append(f"{t:>10} |" + "".join(cells))
  return "\n".join(lines)


def _float_table(records: list[dict[str, Any]], mantissas: Sequence[int]) -> str:
  by = {(r["bits"], r["rounding"], r["order"]): r for r in records}
  cols = [(rnd, order) for rnd in ("nearest_even", "stochastic") for order in ("sequential", "chunked")]
  names = {"nearest_even": "nearest", "stochastic": "stochastic"}
  head = f"{'m':>4} |" + "".join(f"{names[rnd] + ' ' + order:>22}" for rnd, order in cols)
  lines = [f"accuracy % per float accumulator E{EXPONENT_BITS}Mm (chunked: {CHUNK} products per chunk)", head,
           "-" * len(head)]
  for m in mantissas:
    cells = []
    for rnd, order in cols:
      r = by.get((m, rnd, order))
      cells.append(f"{'-':>22}" if r is None else f"{100 * r['accuracy']:>22.1f}")
    lines.append(f"{m:>4} |" + "".join(cells))
  return "\n".join(lines)


def _plot(records: list[dict[str, Any]], reference: dict[str, float], examples: int):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
  ints = [r for r in records if r["kind"] == "int"]
  styles = {"wrap": ("-", "o"), "saturate": ("--", "s")}
  for model, label, color in (("float32", "int8 model", "tab:blue"), ("a2q", "A2Q model trained for P", "tab:red")):
    for mode in ("wrap", "saturate"):
      rows = sorted((r for r in ints if r["model"] == model and r["overflow"] == mode
                     and (model == "float32" or r["trained_bits"] == r["bits"])), key=lambda r: r["bits"])
      ls, marker = styles[mode]
      left.plot([r["bits"] for r in rows], [100 * r["accuracy"] for r in rows], ls, marker=marker,
                fillstyle="full" if mode == "wrap" else "none", color=color, label=f"{label}, {mode}")
  left.axhline(100 * reference["int8_exact"], color="gray", ls=":", label="int8 model, exact sums")
  left.set(xlabel="integer accumulator bits P", ylabel="test accuracy (%)", ylim=(0, 102),
           title="Integer accumulator (8-bit inputs and weights)")
  left.set_xticks(sorted({r["bits"] for r in ints}))
  left.legend(fontsize=8, loc="lower right")
  floats = [r for r in records if r["kind"] == "float"]
  for rnd, color in (("nearest_even", "tab:green"), ("stochastic", "tab:purple")):
    for order, ls, marker in (("sequential", "-", "o"), ("chunked", "--", "s")):
      rows = sorted((r for r in floats if r["rounding"] == rnd and r["order"] == order), key=lambda r: r["bits"])
      acc = np.array([100 * r["accuracy"] for r in rows])
      spread = np.array([[acc[i] - 100 * min(r["accuracies"]), 100 * max(r["accuracies"]) - acc[i]]
                         for i, r in enumerate(rows)]).T.reshape(2, -1)
      repeats = max((len(r["accuracies"]) for r in rows), default=1)
      label = f"{rnd}, {order}" + (f" (mean of {repeats} keys; bars: min to max)" if repeats > 1 else "")
      right.errorbar([r["bits"] for r in rows], acc, yerr=spread if repeats > 1 else None, fmt=ls, marker=marker,
                     fillstyle="full" if order == "sequential" else "none", color=color, capsize=3, label=label)
  ref = 100 * reference["float32"]
  se = 100 * math.sqrt(reference["float32"] * (1 - reference["float32"]) / examples)
  right.axhline(ref, color="gray", ls=":", label="float32 model (XLA dot)")
  right.axhspan(ref - se, ref + se, color="gray", alpha=0.15, lw=0,
                label=f"±1 binomial s.e. of a test accuracy ({se:.1f} points, {examples} examples)")
  low = min([100 * a for r in floats for a in r["accuracies"]] + [ref - se])
  right.set(xlabel=f"float accumulator mantissa bits m (E{EXPONENT_BITS}Mm)", ylabel="test accuracy (%)",
            ylim=(max(0.0, 5 * math.floor(low / 5) - 5), 100.5),
            title=f"Float accumulator (float32 inputs; chunk = {CHUNK})")
  right.set_xticks(sorted({r["bits"] for r in floats}))
  right.legend(fontsize=7, loc="lower right")
  fig.suptitle("Accuracy vs accumulator bits: digits MLP, K = 64 products per output")
  fig.tight_layout()
  return fig


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """``lpnum study accumulators [--quick] [--out DIR] [--seed N]``: runs the study, prints its tables, writes
  ``accumulators.json`` and ``accumulators.png`` to ``--out`` and returns the JSON's ``results``."""
  parser = arg_parser("accumulators", __doc__, quick=f"fewer training steps, widths {list(QUICK_INT_BITS)}, "
                      f"A2Q for {list(QUICK_A2Q_BITS)}, mantissas {list(QUICK_FLOAT_MANTISSAS)}")
  args = parse_args(parser, argv)
  quick, seed = args.quick, args.seed
  steps, a2q_steps = (QUICK_TRAIN_STEPS, QUICK_A2Q_STEPS) if quick else (TRAIN_STEPS, A2Q_STEPS)
  int_bits = QUICK_INT_BITS if quick else INT_BITS
  a2q_bits = QUICK_A2Q_BITS if quick else A2Q_BITS
  mantissas = QUICK_FLOAT_MANTISSAS if quick else FLOAT_MANTISSAS
  repeats = QUICK_STOCHASTIC_REPEATS if quick else STOCHASTIC_REPEATS
  start = time.perf_counter()
  _, (x, y) = _split(seed)

  float_vars = train_float(seed, steps)
  plain = integer_layers(float_vars)
  reference = {"float32": train.accuracy(zoo.MLP(features=(HIDDEN,)), float_vars, x, y)}
  a2q_models = {}
  for p in progress(a2q_bits, "training A2Q models"):
    variables = train_a2q(seed, steps, a2q_steps, p)
    a2q_models[p] = integer_layers(variables, p)
    reference[f"a2q_{p}_fake_quant"] = train.accuracy(A2QMLP(accumulator_bits=p), variables, x, y)

  records: list[dict[str, Any]] = []
  models = [("float32", None, plain)] + [("a2q", p, layers) for p, layers in a2q_models.items()]
  jobs = [(m, p, mode) for m in models for p in int_bits for mode in ("wrap", "saturate")]
  for (model, trained, layers), p, mode in progress(jobs, "integer accumulators"):
    logits, overflowed = integer_forward(layers, x, accumulate.IntAccumulator(p, mode))
    records.append({"kind": "int", "model": model, "trained_bits": trained, "bits": p, "overflow": mode,
                    "accuracy": _accuracy(logits, y), "overflow_rate": float(overflowed.mean())})
  reference["int8_exact"] = next(r["accuracy"] for r in records
                                 if r["model"] == "float32" and r["bits"] == 32 and r["overflow"] == "wrap")

  key = jax.random.key(seed)
  settings = [(m, rnd, order) for m in mantissas for rnd in ("nearest_even", "stochastic")
              for order in ("sequential", "chunked")]
  for m, rnd, order in progress(settings, "float accumulators"):
    keys = [None] if rnd == "nearest_even" else [jax.random.fold_in(jax.random.fold_in(key, m), r)
                                                 for r in range(repeats)]
    accs, rates = [], []
    for k in keys:
      logits, overflowed = float_forward(float_vars, x, m, rnd, CHUNK if order == "chunked" else None, k)
      accs.append(_accuracy(logits, y))
      rates.append(float(overflowed.mean()))
    records.append({"kind": "float", "model": "float32", "bits": m, "exponent_bits": EXPONENT_BITS,
                    "rounding": rnd, "order": order, "chunk": CHUNK if order == "chunked" else None,
                    "accuracy": float(np.mean(accs)), "accuracies": accs, "overflow_rate": float(np.mean(rates))})

  print(f"digits MLP (64 -> {HIDDEN} -> 10), {len(y)} test examples; float32 accuracy "
        f"{100 * reference['float32']:.1f}%, int8 (exact sums) {100 * reference['int8_exact']:.1f}%")
  print(_int_table([r for r in records if r["kind"] == "int"], int_bits))
  print(_a2q_cross_table(records, int_bits, a2q_bits))
  print(_float_table([r for r in records if r["kind"] == "float"], mantissas))
  seconds = time.perf_counter() - start
  print(f"({seconds:.1f} s)")
  results = {
      "setup": {"quick": quick, "seed": seed, "hidden": HIDDEN, "batch_size": BATCH_SIZE,
                "learning_rate": LEARNING_RATE, "train_steps": steps, "a2q_steps": a2q_steps,
                "a2q_trained_bits": list(a2q_bits), "int_bits": list(int_bits), "input_bits": INT_INPUT_BITS,
                "weight_bits": WEIGHT_BITS, "float_mantissas": list(mantissas), "exponent_bits": EXPONENT_BITS,
                "chunk": CHUNK, "stochastic_repeats": repeats, "test_examples": int(len(y)),
                "seconds": seconds},
      "reference": reference, "records": records, "notes": NOTES,
  }
  write_json("accumulators", results, args.out)
  save_figure(_plot(records, reference, len(y)), args.out / "accumulators.png")
  return results


if __name__ == "__main__":
  main()
