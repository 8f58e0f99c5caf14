"""Speed of one jitted training step with lpnum's estimators and quantized backward passes, against float32.

A training step is ``jax.jit`` of forward + backward (``jax.value_and_grad``) + an ``optax.adam(1e-3)`` update,
over ``(params, opt_state, batch, key)``; params are a plain dict pytree. Two models:

* ``mlp``: a 2-layer MLP, input 1024 -> hidden 1024 (ReLU) -> 10 classes, softmax cross-entropy, batch 256. The
  synthetic labels are ``argmax(x @ T)`` for a fixed random ``T`` (a learnable task);
* ``transformer``: one pre-LayerNorm transformer block, d_model 256, 4 heads, MLP 1024 (ReLU), sequence 128,
  batch 16: ``x + O(attn(Q, K, V)(LN(x)))`` with causal softmax attention, then ``x + Down(ReLU(Up(LN(x))))``.
  Loss: the mean squared error against ``x @ M`` for a fixed random ``M`` (a learnable synthetic target).

The quantized matmuls are the Dense/projection kernels of shape ``(in, out)``: ``w1``, ``w2`` of the MLP; ``wq``,
``wk``, ``wv``, ``wo``, ``w_up``, ``w_down`` of the block. Biases, LayerNorm and the two attention matmuls
(``q . k`` and ``p . v``, which have batch dimensions) stay in float32 in every variant, as in FP8 recipes that
quantize the linear layers. Kernels start LeCun-normal (``N(0, 1 / fan_in)``). The variants:

* ``float32``: no quantization, the baseline of every ratio;
* ``ste/...``: every kernel through ``lpnum.estimators.ste``: ``int8_per_channel``/``int4_per_channel`` are
  ``lpnum.ScaledFormat("int8"|"int4", lpnum.per_channel(-1))`` (one scale per output channel);
  ``mxfp8_e4m3``/``mxfp4_e2m1`` are ``lpnum.mx.format(name, axis=0)`` (blocks of 32 along the input, i.e. the
  contracting, axis of the kernel);
* estimators on every kernel: ``clipped_ste/int4_per_channel`` (the same ScaledFormat); ``lsq/int4`` with a
  trainable per-output-channel step of shape ``(1, out)`` (initialised to the paper's ``2 mean|w| / sqrt(qp)``);
  ``dorefa_weight/4bit``; ``xnor`` (``axis=-1``: one ``mean|w|`` per output channel); ``sign_ste``, ``reste``,
  ``biper`` (``omega = pi``); ``bitnet_ternary`` (absmean); ``denseshift/4bit``. DoReFa and the three +-1
  estimators produce values of order 1 whatever the weights' scale, so their output is multiplied by the fixed
  constant ``1 / sqrt(fan_in)`` (the initial weights' scale) to keep activations in range;
* ``pact/4bit``: float32 kernels, and ``lpnum.estimators.pact(h, alpha, 4)`` in place of the ReLU on the MLP
  hidden activations (its clip at 0 is the ReLU), with a trainable scalar ``alpha`` per model (initialised to 4);
* ``qdot/...``: every kernel matmul is ``lpnum.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())), cfg)``:
  ``fp8`` rounds both operands to ``float8_e4m3fn`` and the output gradient of both backward matmuls to
  ``float8_e5m2``, with no scales (``OperandQuant(fmt, scaling="none")``; the FP8 training recipe);
  ``fp8_stochastic`` the same with the gradient rounded stochastically: the step splits its key argument once
  (``key, sub = jax.random.split(key)``, returning the new ``key``) and ``sub`` is split into one key per kernel;
  ``mxfp8`` has the operands in ``lpnum.mx.format("mxfp8_e4m3", axis=-1)`` and ``lpnum.mx.format("mxfp8_e4m3",
  axis=0)`` (blocks along the contracting axis of both) and the gradient in ``float8_e5m2``; the backward matmuls reuse
  the forward-quantized operands (``BackwardQuant``'s default ``operand=SAME``).

The variants of a model are compiled and then timed side by side (interleaved rounds, medians; compile excluded),
each call being one step from the same initial state. After timing, each variant trains from that state for as
many steps as were timed (``--repeats``), and the loss at the trained parameters is reported with the initial one
(sanity: both finite).

Target: the STE fake-quant steps (int8/int4 per-channel, MXFP8/MXFP4) at most 1.5x the float32 step of the same
model.

Run ``python -m benchmarks.training_step [--quick] [--repeats N] [--out DIR]``; results go to
``lpnum-results/bench/training_step/training_step.json`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lpnum
from lpnum.results import progress
from ._report import (QuickDefault, arg_parser, format_targets, lpnum_revision, median_s, ms, parse_args,
                                ratio, table, target, times, write_json)
from ._timing import Candidate, error_reason, failure, time_fns

E = lpnum.estimators

#: Adam's learning rate.
LEARNING_RATE = 1e-3
#: PACT's initial clipping level.
PACT_ALPHA_INIT = 4.0
#: LayerNorm epsilon.
LN_EPS = 1e-6

#: Target threshold: STE fake-quant step / float32 step.
STE_MAX = 1.5
#: The variants of ``--quick``.
QUICK_VARIANTS: tuple[str, ...] = ("float32", "ste/int8_per_channel", "qdot/fp8")


# ---- models -------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class MLPConfig:
  """Sizes of the 2-layer MLP."""

  inputs: int = 1024
  hidden: int = 1024
  classes: int = 10
  batch: int = 256


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Sizes of the transformer block."""

  d_model: int = 256
  heads: int = 4
  mlp: int = 1024
  seq: int = 128
  batch: int = 16


QUICK_MLP = MLPConfig(inputs=64, hidden=64, classes=10, batch=16)
QUICK_TRANSFORMER = TransformerConfig(d_model=32, heads=4, mlp=128, seq=16, batch=2)


class Layers:
  """The quantized pieces of one variant inside one loss evaluation.

  Attributes:
    variant: the variant.
    params: the parameters being differentiated.
    keys: a key per kernel for stochastic gradient rounding (empty otherwise).
  """

  def __init__(self, variant: Variant, params: dict[str, Any], keys: dict[str, jax.Array]):
    self.variant, self.params, self.keys = variant, params, keys

  def dense(self, x: jax.Array, name: str) -> jax.Array:
    """``x @ params[name]`` contracting the last axis of ``x``, quantized as the variant says."""
    w = self.params[name]
    v = self.variant
    if v.dot is not None:
      return lpnum.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())), v.dot, key=self.keys.get(name))
    if v.weight is not None:
      w = v.weight(w, self.params["lsq_step"][name] if v.lsq else None)
    return x @ w

  def act(self, h: jax.Array) -> jax.Array:
    """The hidden activation of an MLP: ReLU, or PACT with the trainable ``pact_alpha``."""
    if self.variant.pact:
      return E.pact(h, self.params["pact_alpha"], 4)
    return jax.nn.relu(h)


@dataclasses.dataclass(frozen=True)
class Model:
  """One benchmarked model.

  Attributes:
    name: ``mlp`` or ``transformer``.
    kernels: the quantized Dense/projection kernels, each ``(in, out)``.
    config: the sizes.
    init: ``key -> (params, batch)``: float32 parameters and one synthetic batch.
    loss: ``(params, batch, layers) -> scalar loss``.
  """

  name: str
  kernels: tuple[str, ...]
  config: MLPConfig | TransformerConfig
  init: Callable[[jax.Array], tuple[dict[str, Any], dict[str, jax.Array]]]
  loss: Callable[[dict[str, Any], dict[str, jax.Array], Layers], jax.Array]


def _kernel(key: jax.Array, fan_in: int, fan_out: int) -> jax.Array:
  return jax.random.normal(key, (fan_in, fan_out), jnp.float32) / np.float32(math.sqrt(fan_in))


def mlp_model(cfg: MLPConfig) -> Model:
  """The 2-layer MLP with softmax cross-entropy on labels from a fixed random linear teacher."""
  def init(key: jax.Array) -> tuple[dict[str, Any], dict[str, jax.Array]]:
    k1, k2, kx, kt = jax.random.split(key, 4)
    params = {"w1": _kernel(k1, cfg.inputs, cfg.hidden), "b1": jnp.zeros(cfg.hidden, jnp.float32),
              "w2": _kernel(k2, cfg.hidden, cfg.classes), "b2": jnp.zeros(cfg.classes, jnp.float32)}
    x = jax.random.normal(kx, (cfg.batch, cfg.inputs), jnp.float32)
    teacher = jax.random.normal(kt, (cfg.inputs, cfg.classes), jnp.float32)
    return params, {"x": x, "y": jnp.argmax(x @ teacher, axis=-1)}

  def loss(params: dict[str, Any], batch: dict[str, jax.Array], layers: Layers) -> jax.Array:
    h = layers.act(layers.dense(batch["x"], "w1") + params["b1"])
    logits = layers.dense(h, "w2") + params["b2"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()

  return Model("mlp", ("w1", "w2"), cfg, init, loss)


def _layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array) -> jax.Array:
  mean = x.mean(axis=-1, keepdims=True)
  var = jnp.square(x - mean).mean(axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + LN_EPS) * scale + bias


def transformer_model(cfg: TransformerConfig) -> Model:
  """One pre-LayerNorm transformer block (causal attention, ReLU MLP), MSE against ``x @ M``."""
  head_dim = cfg.d_model // cfg.heads
  d, f = cfg.d_model, cfg.mlp

  def init(key: jax.Array) -> tuple[dict[str, Any], dict[str, jax.Array]]:
    kq, kk, kv, ko, ku, kd, kx, km = jax.random.split(key, 8)
    zeros, ones = (lambda n: jnp.zeros(n, jnp.float32)), (lambda n: jnp.ones(n, jnp.float32))
    params = {"ln1_scale": ones(d), "ln1_bias": zeros(d),
              "wq": _kernel(kq, d, d), "wk": _kernel(kk, d, d), "wv": _kernel(kv, d, d), "wo": _kernel(ko, d, d),
              "bo": zeros(d), "ln2_scale": ones(d), "ln2_bias": zeros(d),
              "w_up": _kernel(ku, d, f), "b_up": zeros(f), "w_down": _kernel(kd, f, d), "b_down": zeros(d)}
    x = jax.random.normal(kx, (cfg.batch, cfg.seq, d), jnp.float32)
    return params, {"x": x, "y": x @ _kernel(km, d, d)}

  def loss(params: dict[str, Any], batch: dict[str, jax.Array], layers: Layers) -> jax.Array:
    x = batch["x"]
    b, t, _ = x.shape
    h = _layer_norm(x, params["ln1_scale"], params["ln1_bias"])
    split = lambda v: v.reshape(b, t, cfg.heads, head_dim)
    q, k, v = (split(layers.dense(h, name)) for name in ("wq", "wk", "wv"))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.float32(math.sqrt(head_dim))
    causal = jnp.tril(jnp.ones((t, t), bool))
    probs = jax.nn.softmax(jnp.where(causal, scores, jnp.finfo(jnp.float32).min), axis=-1)
    attn = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, d)
    x = x + layers.dense(attn, "wo") + params["bo"]
    h = _layer_norm(x, params["ln2_scale"], params["ln2_bias"])
    h = layers.act(layers.dense(h, "w_up") + params["b_up"])
    out = x + layers.dense(h, "w_down") + params["b_down"]
    return jnp.mean(jnp.square(out - batch["y"]))

  return Model("transformer", ("wq", "wk", "wv", "wo", "w_up", "w_down"), cfg, init, loss)


# ---- variants -----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Variant:
  """One way of training a model.

  Attributes:
    name: the record name.
    group: ``baseline``, ``ste`` (the target's variants), ``estimator``, ``activation`` or ``qdot``.
    doc: what the variant calls, written to the JSON.
    weight: ``(kernel, lsq step or None) -> quantized kernel``, applied to every kernel (None: float32).
    lsq: every kernel has a trainable per-output-channel step ``params["lsq_step"][name]``.
    pact: PACT on the MLP hidden activations, with a trainable ``params["pact_alpha"]``.
    dot: the DotConfig of every kernel matmul (None: ``x @ w``).
  """

  name: str
  group: str
  doc: str
  weight: Callable[[jax.Array, jax.Array | None], jax.Array] | None = None
  lsq: bool = False
  pact: bool = False
  dot: lpnum.DotConfig | None = None

  @property
  def stochastic(self) -> bool:
    """Whether the variant needs a key (stochastic gradient rounding)."""
    return self.dot is not None and self.dot.needs_key


def _unit(w: jax.Array) -> float:
  """The fixed scale ``1 / sqrt(fan_in)`` of estimators whose levels ignore the weights' scale."""
  return 1.0 / math.sqrt(w.shape[0])


def _lsq_init(w: jax.Array, qp: int = 7) -> jax.Array:
  """LSQ's initial step, ``2 mean|w| / sqrt(qp)``, per output channel: shape ``(1, out)``."""
  return 2 * jnp.mean(jnp.abs(w), axis=0, keepdims=True) / np.float32(math.sqrt(qp))


INT8_PC = lpnum.ScaledFormat("int8", lpnum.per_channel(-1))
INT4_PC = lpnum.ScaledFormat("int4", lpnum.per_channel(-1))
MXFP8_W = lpnum.mx.format("mxfp8_e4m3", axis=0)
MXFP4_W = lpnum.mx.format("mxfp4_e2m1", axis=0)


def _raw(fmt, rounding: str = "nearest_even") -> lpnum.OperandQuant:
  """Round to ``fmt`` as it is: a plain format without a scale, or a ScaledFormat with its own blocks."""
  if isinstance(fmt, lpnum.ScaledFormat):
    return lpnum.OperandQuant(fmt, rounding=rounding)
  return lpnum.OperandQuant(fmt, scaling="none", rounding=rounding)


def _qdot(lhs, rhs, grad, rounding: str = "nearest_even") -> lpnum.DotConfig:
  """Forward operands rounded to ``lhs``/``rhs``, the output gradient to ``grad`` for both backward matmuls
  (which reuse the forward-quantized operands)."""
  g = lpnum.BackwardQuant(grad=_raw(grad, rounding))
  return lpnum.DotConfig(lhs=_raw(lhs), rhs=_raw(rhs), dlhs=g, drhs=g)


FP8 = _qdot("float8_e4m3fn", "float8_e4m3fn", "float8_e5m2")

VARIANTS: tuple[Variant, ...] = (
    Variant("float32", "baseline", "x @ w, no quantization"),
    Variant("ste/int8_per_channel", "ste", "ste(w, ScaledFormat('int8', per_channel(-1)))",
            lambda w, _: E.ste(w, INT8_PC)),
    Variant("ste/int4_per_channel", "ste", "ste(w, ScaledFormat('int4', per_channel(-1)))",
            lambda w, _: E.ste(w, INT4_PC)),
    Variant("ste/mxfp8_e4m3", "ste", "ste(w, mx.format('mxfp8_e4m3', axis=0))", lambda w, _: E.ste(w, MXFP8_W)),
    Variant("ste/mxfp4_e2m1", "ste", "ste(w, mx.format('mxfp4_e2m1', axis=0))", lambda w, _: E.ste(w, MXFP4_W)),
    Variant("clipped_ste/int4_per_channel", "estimator", "clipped_ste(w, ScaledFormat('int4', per_channel(-1)))",
            lambda w, _: E.clipped_ste(w, INT4_PC)),
    Variant("lsq/int4", "estimator", "lsq(w, step, 'int4'), step (1, out) trainable, init 2 mean|w| / sqrt(7)",
            lambda w, step: E.lsq(w, step, "int4"), lsq=True),
    Variant("pact/4bit", "activation", f"pact(h, alpha, 4) in place of the hidden ReLU, alpha trainable "
            f"(init {PACT_ALPHA_INIT}); float32 kernels", pact=True),
    Variant("dorefa_weight/4bit", "estimator", "dorefa_weight(w, 4) / sqrt(fan_in)",
            lambda w, _: E.dorefa_weight(w, 4) * _unit(w)),
    Variant("xnor", "estimator", "xnor(w, axis=-1)", lambda w, _: E.xnor(w, axis=-1)),
    Variant("sign_ste", "estimator", "sign_ste(w) / sqrt(fan_in)", lambda w, _: E.sign_ste(w) * _unit(w)),
    Variant("reste", "estimator", "reste(w) / sqrt(fan_in)", lambda w, _: E.reste(w) * _unit(w)),
    Variant("biper", "estimator", "biper(w, pi) / sqrt(fan_in)", lambda w, _: E.biper(w, math.pi) * _unit(w)),
    Variant("bitnet_ternary", "estimator", "bitnet_ternary(w) (absmean)", lambda w, _: E.bitnet_ternary(w)),
    Variant("denseshift/4bit", "estimator", "denseshift(w, 4)", lambda w, _: E.denseshift(w, 4)),
    Variant("qdot/fp8", "qdot", "dot_general(x, w, ..., cfg): operands in float8_e4m3fn and gradients in float8_e5m2, "
            "no scales", dot=FP8),
    Variant("qdot/fp8_stochastic", "qdot", "the same with the gradient rounded stochastically, one key per kernel split "
            "from the step's key", dot=_qdot("float8_e4m3fn", "float8_e4m3fn", "float8_e5m2", "stochastic")),
    Variant("qdot/mxfp8", "qdot", "dot_general with operands in mx.format('mxfp8_e4m3', axis=-1) and "
            "mx.format('mxfp8_e4m3', axis=0), gradients in float8_e5m2",
            dot=_qdot(lpnum.mx.format("mxfp8_e4m3", axis=-1), MXFP8_W, "float8_e5m2")),
)


# ---- steps --------------------------------------------------------------------------------------------------------
def variant_params(model: Model, variant: Variant, params: dict[str, Any]) -> dict[str, Any]:
  """``params`` plus the variant's own trainable parameters (LSQ steps, PACT's alpha)."""
  out = dict(params)
  if variant.lsq:
    out["lsq_step"] = {name: _lsq_init(params[name]) for name in model.kernels}
  if variant.pact:
    out["pact_alpha"] = jnp.float32(PACT_ALPHA_INIT)
  return out


def make_step(model: Model, variant: Variant, optimizer: optax.GradientTransformation) -> Callable[..., Any]:
  """The jitted step ``(params, opt_state, batch, key) -> (params, opt_state, loss, key)``.

  ``loss`` is the loss at the incoming params. Only stochastic variants use the key: they split it once and
  return the new one; the others return it unchanged.
  """
  def loss_fn(params: dict[str, Any], batch: dict[str, jax.Array], sub: jax.Array | None) -> jax.Array:
    keys = {} if sub is None else dict(zip(model.kernels, jax.random.split(sub, len(model.kernels))))
    return model.loss(params, batch, Layers(variant, params, keys))

  def step(params, opt_state, batch, key):
    sub = None
    if variant.stochastic:
      key, sub = jax.random.split(key)
    loss, grads = jax.value_and_grad(loss_fn)(params, batch, sub)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, key

  return jax.jit(step)


def _loss_value(loss: jax.Array) -> float | None:
  value = float(loss)
  return value if math.isfinite(value) else None


def train_losses(step: Callable[..., Any], args: tuple[Any, ...], steps: int) -> dict[str, Any]:
  """Trains ``steps`` steps from ``args``; the initial loss and the loss at the trained params (None if not
  finite)."""
  params, opt_state, batch, key = args
  losses = []
  for _ in range(steps + 1):  # the last call's loss is the loss after `steps` updates
    params, opt_state, loss, key = step(params, opt_state, batch, key)
    losses.append(loss)
  initial, final = _loss_value(losses[0]), _loss_value(losses[-1])
  return {"status": "ok", "steps": steps, "initial": initial, "final": final,
          "finite": initial is not None and final is not None}


def bench_model(model: Model, variants: Sequence[Variant], *, repeats: int) -> dict[str, Any]:
  """Times every variant's step on ``model``, then trains each; returns the model's JSON record."""
  params, batch = model.init(jax.random.key(0))
  jax.block_until_ready((params, batch))
  optimizer = optax.adam(LEARNING_RATE)
  key = jax.random.key(1)
  steps: dict[str, Callable[..., Any]] = {}
  runs: dict[str, Candidate] = {}
  for v in variants:
    p = variant_params(model, v, params)
    steps[v.name] = make_step(model, v, optimizer)
    runs[v.name] = (steps[v.name], (p, optimizer.init(p), batch, key))
  measured = time_fns(runs, repeats=repeats)
  losses: dict[str, dict[str, Any]] = {}
  for name, (_, args) in progress(runs.items(), "training variants"):
    if measured[name]["status"] != "ok":
      losses[name] = failure("skipped", "the step did not compile")
      continue
    try:
      losses[name] = train_losses(steps[name], args, repeats)
    except Exception as e:  # noqa: BLE001 -- a variant that cannot train is a result, not an error
      losses[name] = failure("fails", error_reason(e))
  n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
  return {"model": model.name, "config": dataclasses.asdict(model.config), "params": n_params,
          "kernels": list(model.kernels), "candidates": measured, "losses": losses, "figures": figures(measured)}


# ---- figures and targets ------------------------------------------------------------------------------------------
def figures(measured: dict[str, dict[str, Any]]) -> dict[str, Any]:
  """Every variant's median over the float32 median of the same run (None where a side was not measured)."""
  base = median_s(measured.get("float32"))
  return {"ratio_to_float32": {name: ratio(median_s(m), base) for name, m in measured.items()}}


def evaluate_targets(records: list[dict[str, Any]], variants: Sequence[Variant]) -> dict[str, dict[str, Any]]:
  """The speed target, judged on ratios of medians from the same interleaved run (keys ``model/variant``)."""
  ste = [v.name for v in variants if v.group == "ste"]
  values = {f"{r['model']}/{name}": r["figures"]["ratio_to_float32"].get(name) for r in records for name in ste}
  return {
      "ste_vs_float32": target(
          "a", f"STE fake-quant training steps (int8/int4 per-channel, MXFP8/MXFP4) <= {STE_MAX}x the float32 "
          "step of the same model (variant / float32)", values, STE_MAX, at_least=False),
  }


def sanity(records: list[dict[str, Any]]) -> dict[str, Any]:
  """PASS if every variant that trained has finite initial and final losses."""
  trained = {f"{r['model']}/{name}": l for r in records for name, l in r["losses"].items() if l["status"] == "ok"}
  bad = sorted(name for name, l in trained.items() if not l["finite"])
  return {"description": "every variant's loss before and after training is finite",
          "status": "N/A" if not trained else ("FAIL" if bad else "PASS"), "checked": len(trained),
          "non_finite": bad}


# ---- printing -----------------------------------------------------------------------------------------------------
def _loss(losses: dict[str, Any], key: str) -> str:
  if losses["status"] != "ok":
    return losses["status"]
  value = losses[key]
  return "non-finite" if value is None else f"{value:.4f}"


def format_tables(records: list[dict[str, Any]], variants: Sequence[Variant]) -> str:
  """One table per model: median and min step time, ratio to float32, compile time, losses; then failures."""
  groups = {v.name: v.group for v in variants}
  out, notes = [], []
  for r in records:
    steps = next((l["steps"] for l in r["losses"].values() if l["status"] == "ok"), None)
    cols = ("variant", "group", "median ms", "min ms", "/ float32", "compile s", "loss at start",
            f"loss after {steps} steps")
    rows = []
    for name, m in r["candidates"].items():
      ok = m["status"] == "ok"
      rows.append((name, groups.get(name, "?"), ms(m), f"{1e3 * m['min_s']:.2f}" if ok else "-",
                   times(r["figures"]["ratio_to_float32"][name]), f"{m['compile_s']:.1f}" if ok else "-",
                   _loss(r["losses"][name], "initial"), _loss(r["losses"][name], "final")))
      if not ok:
        notes.append(f"  {r['model']}/{name}: {m['status']}: {m['reason']}")
      elif r["losses"][name]["status"] != "ok":
        notes.append(f"  {r['model']}/{name} training: {r['losses'][name]['status']}: {r['losses'][name]['reason']}")
    out += [f"\n{r['model']} ({', '.join(f'{k} {v}' for k, v in r['config'].items())}; {r['params']} float32 "
            f"params; quantized kernels {', '.join(r['kernels'])}):", table(cols, rows, left=2)]
  if notes:
    out += ["\nNot timed or not trained:", *notes]
  return "\n".join(out)


# ---- entry point --------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> Path:
  """Runs the benchmark, prints the tables and the target verdicts, and returns the JSON file written."""
  quick = (f"tiny models (MLP {QUICK_MLP.inputs}-{QUICK_MLP.hidden}-{QUICK_MLP.classes}, batch {QUICK_MLP.batch}; "
           f"transformer d_model {QUICK_TRANSFORMER.d_model}, sequence {QUICK_TRANSFORMER.seq}, batch "
           f"{QUICK_TRANSFORMER.batch}), 2 repeats, only {', '.join(QUICK_VARIANTS)}")
  args = parse_args(arg_parser("training_step", __doc__, quick=quick, repeats=QuickDefault(15, 2),
                               repeats_help="timed steps per variant, and training steps for the loss"), argv)
  variants = [v for v in VARIANTS if v.name in QUICK_VARIANTS] if args.quick else list(VARIANTS)
  models = ([mlp_model(QUICK_MLP), transformer_model(QUICK_TRANSFORMER)] if args.quick
            else [mlp_model(MLPConfig()), transformer_model(TransformerConfig())])
  records = [bench_model(model, variants, repeats=args.repeats) for model in progress(models, "models")]
  targets = evaluate_targets(records, variants)
  check = sanity(records)

  print(f"One jitted training step (forward + backward + optax.adam({LEARNING_RATE}) update) on "
        f"{jax.devices()[0]}; median of {args.repeats} interleaved steps per variant from the same state, compile "
        f"excluded; '/ float32' is the ratio to the float32 step of the same run. Losses: at the initial params and "
        f"after {args.repeats} training steps.")
  print(format_tables(records, variants))
  print("\nTargets (ratios of medians from the same run):")
  print(format_targets(targets))
  print(f"\nSanity: {check['description']}: {check['status']}"
        + (f" -- non-finite: {', '.join(check['non_finite'])}" if check["non_finite"] else ""))

  payload = {
      "config": {"lpnum_revision": lpnum_revision(), "repeats": args.repeats, "quick": args.quick,
                 "optimizer": f"optax.adam({LEARNING_RATE})", "loss_steps": args.repeats,
                 "step": "jax.jit((params, opt_state, batch, key) -> (params, opt_state, loss, key))",
                 "data": {"mlp": "x ~ N(0, 1), y = argmax(x @ T), T ~ N(0, 1) fixed; softmax cross-entropy",
                          "transformer": "x ~ N(0, 1), y = x @ M, M ~ N(0, 1 / d_model) fixed; mean squared error"}},
      "variants": {v.name: {"group": v.group, "doc": v.doc} for v in variants},
      "models": records,
      "targets": targets,
      "sanity": check,
  }
  return write_json("training_step", payload, args.out)


if __name__ == "__main__":
  main()
