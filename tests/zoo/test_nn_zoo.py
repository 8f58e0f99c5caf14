"""Weight-only quantization of the zoo models (MLP, CNN, Transformer) against independent jax.numpy models.

Compared: for every zoo model at its default size (random init, seed 0, with the biases, norm scales and
BatchNorm statistics perturbed by a seeded generator so that every parameter matters) on a batch of 4 inputs (the
first digits test images; ``sequence_task`` tokens) and every weight format of ``FORMATS``,

* ``quantize_model(model, [Rule(".*", DotConfig.weight_only(...))]).apply`` (fake quantization inside each
  matmul) against the reference model with every kernel quantized in its matmul's 2-D view ``(K, N)``
  (:func:`matmul_view`, as :func:`lpnum.dot_general` flattens the rhs): K the contracted axes (a Dense's input, a Conv's
  window and input features, the heads and head features of attention's ``out``), N the free ones;
* ``quantize_model(...).apply`` on ``ptq(params, rules, views=kernel_views(model, x))`` (packed kernels, each
  quantized in the 2-D view its layer multiplies by) against the same reference: PTQ and fake quantization agree.
  Without ``views``, ptq quantizes every kernel as ``(prod(shape[:-1]), shape[-1])``, which is not the view of
  attention's query/key/value kernels (they contract ``dim`` alone); applying such params is an error.

The reference models are written here in jax.numpy from the params tree (im2col convolutions, explicit
attention, LayerNorm, BatchNorm with running statistics, tanh GELU): no flax module runs in them. Their kernels
come from lpnum's public quantizers on the 2-D view: ``lpnum.fake_quantize`` with ``per_tensor()``,
``per_channel(1)`` or ``per_block(g, 0)`` (ragged last blocks zero-padded), ``lpnum.mx.quantize(axis=0)`` and
``lpnum.nvfp4.quantize(axis=0)`` followed by ``lpnum.dequantize``.

Tolerance: both sides multiply the same quantized kernels (bit-identical) with float32 activations, so they
differ only by the order of float32 additions (and by flax's one-pass LayerNorm variance): outputs must agree to
``rtol = 1e-5`` plus ``atol = 1e-5 * max|reference|`` (measured: at most 5e-7 * max|reference|).

Finding pinned by the two references: for the attention projections ``query``/``key``/``value`` (kernels
``(dim, heads, head_dim)``, contracted over ``dim`` only) the matmul view is ``(dim, heads * head_dim)`` but
``ptq``'s view is ``(dim * heads, head_dim)``, so fake quantization and PTQ of the same transformer quantize
these kernels differently (per-channel scales per head feature shared across heads; blocks running across heads).
For ``out`` (``(heads, head_dim, dim)``, contracted over its first two axes), Dense and Conv kernels the two
views coincide.

Last, the zoo MLP trained on ``lpnum.zoo.data.digits`` keeps its float32 test accuracy within one point after int8
per-channel PTQ; the accuracies of other PTQ formats are printed (and only required to beat 80%).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiers import default_share

import lpnum
from lpnum.zoo import data
from lpnum import nn as lnn
from lpnum.zoo import models as zoo, train

TOL = 1e-5
BATCH = 4

#: name -> (element format or MX/NVFP4 preset, granularity) of DotConfig.weight_only.
FORMATS = {
    "int8_channel": ("int8", "channel"),
    "int4_channel": ("int4", "channel"),
    "int4_g32": ("int4", 32),
    "int2_channel": ("int2", "channel"),
    "ternary_channel": ("int2_narrow", "channel"),
    "e4m3_channel": ("float8_e4m3fn", "channel"),
    "e5m2_tensor": ("float8_e5m2", "tensor"),
    "mxfp8_e4m3": ("mxfp8_e4m3", None),
    "mxfp6_e2m3": ("mxfp6_e2m3", None),
    "mxfp4_e2m1": ("mxfp4_e2m1", None),
    "mxint8": ("mxint8", None),
    "nvfp4": ("nvfp4", None),
}


# ---- reference quantizers ------------------------------------------------------------------------------------------
def quantize_2d(w: jax.Array, fmt: str, granularity) -> jax.Array:
  """The quantized values of a ``(K, N)`` weight matrix: scales per column (``channel``), blocks along K."""
  if fmt in lpnum.mx.NAMES:
    return lpnum.dequantize(lpnum.mx.quantize(w, fmt, axis=0, pad=True))
  if fmt == "nvfp4":
    return lpnum.dequantize(lpnum.nvfp4.quantize(w, axis=0, pad=True))
  gran = {"tensor": lpnum.per_tensor(), "channel": lpnum.per_channel(1)}.get(granularity)
  gran = lpnum.per_block(granularity, 0) if gran is None else gran
  return lpnum.fake_quantize(w, lpnum.ScaledFormat(fmt, gran), pad=True)


def matmul_view(fmt: str, granularity):
  """Quantizes a kernel in its matmul's view: its first ``k_axes`` axes contracted (K), the rest free (N)."""
  def quantize(kernel, k_axes):
    k = math.prod(kernel.shape[:k_axes])
    return quantize_2d(kernel.reshape(k, -1), fmt, granularity).reshape(kernel.shape)
  return quantize


# ---- reference models ---------------------------------------------------------------------------------------------
def _dense(p, x, quantize, k_axes=1):
  """``x`` contracted over its last ``k_axes`` axes with the kernel's first ``k_axes``, plus the bias."""
  w = quantize(p["kernel"], k_axes)
  k = math.prod(w.shape[:k_axes])
  y = x.reshape(-1, k) @ w.reshape(k, -1)
  return y.reshape(*x.shape[:x.ndim - k_axes], *w.shape[k_axes:]) + p["bias"]


def _conv(p, x, quantize, strides=1):
  """A SAME-padded, bias-free convolution as im2col times the ``(kh * kw * cin, cout)`` kernel matrix."""
  w = quantize(p["kernel"], 3)
  kh, kw, cin, cout = w.shape
  b, h, wd, _ = x.shape
  oh, ow = -(-h // strides), -(-wd // strides)
  ph, pw = max((oh - 1) * strides + kh - h, 0), max((ow - 1) * strides + kw - wd, 0)
  xp = jnp.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
  patches = [xp[:, i:i + strides * (oh - 1) + 1:strides, j:j + strides * (ow - 1) + 1:strides, :]
             for i in range(kh) for j in range(kw)]
  cols = jnp.stack(patches, axis=3).reshape(b * oh * ow, kh * kw * cin)
  return (cols @ w.reshape(kh * kw * cin, cout)).reshape(b, oh, ow, cout)


def _batch_norm(p, stats, x):
  return (x - stats["mean"]) / jnp.sqrt(stats["var"] + 1e-5) * p["scale"] + p["bias"]


def _layer_norm(p, x):
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) / jnp.sqrt(var + 1e-6) * p["scale"] + p["bias"]


def _gelu(x):
  return 0.5 * x * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _softmax(x):
  e = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))
  return e / jnp.sum(e, axis=-1, keepdims=True)


def _relu(x):
  return jnp.maximum(x, 0.0)


def _count(params, prefix: str) -> int:
  """How many submodules ``prefix_0``, ``prefix_1``... the params tree holds."""
  return sum(1 for name in params if name.startswith(prefix + "_"))


def reference_mlp(variables, x, quantize):
  p = variables["params"]
  x = x.reshape(x.shape[0], -1)
  n = _count(p, "Dense")
  for i in range(n - 1):
    x = _relu(_dense(p[f"Dense_{i}"], x, quantize))
  return _dense(p[f"Dense_{n - 1}"], x, quantize)


def _residual_block(p, s, x, quantize, strides):
  y = _relu(_batch_norm(p["BatchNorm_0"], s["BatchNorm_0"], _conv(p["Conv_0"], x, quantize, strides)))
  y = _batch_norm(p["BatchNorm_1"], s["BatchNorm_1"], _conv(p["Conv_1"], y, quantize))
  if "Conv_2" in p:
    x = _batch_norm(p["BatchNorm_2"], s["BatchNorm_2"], _conv(p["Conv_2"], x, quantize, strides))
  return _relu(x + y)


def reference_cnn(variables, x, quantize):
  """The CNN in inference mode: BatchNorm with the running statistics of ``batch_stats``."""
  p, s = variables["params"], variables["batch_stats"]
  x = _relu(_batch_norm(p["BatchNorm_0"], s["BatchNorm_0"], _conv(p["Conv_0"], x, quantize)))
  for i in range(_count(p, "ResidualBlock")):
    name = f"ResidualBlock_{i}"
    x = _residual_block(p[name], s[name], x, quantize, 1 if i == 0 else 2)
  return _dense(p["Dense_0"], jnp.mean(x, axis=(1, 2)), quantize)


def _attention(p, x, quantize):
  q, k, v = (_dense(p[name], x, quantize) for name in ("query", "key", "value"))  # (batch, length, heads, hd)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q / math.sqrt(q.shape[-1]), k)
  y = jnp.einsum("bhqk,bkhd->bqhd", _softmax(logits), v)
  return _dense(p["out"], y, quantize, k_axes=2)


def reference_transformer(variables, tokens, quantize):
  p = variables["params"]
  x = p["token_embed"]["embedding"][tokens] + p["position_embed"]["embedding"][jnp.arange(tokens.shape[1])]
  for i in range(_count(p, "TransformerBlock")):
    b = p[f"TransformerBlock_{i}"]
    x = x + _attention(b["MultiHeadDotProductAttention_0"], _layer_norm(b["LayerNorm_0"], x), quantize)
    y = _gelu(_dense(b["Dense_0"], _layer_norm(b["LayerNorm_1"], x), quantize))
    x = x + _dense(b["Dense_1"], y, quantize)
  return _dense(p["Dense_0"], jnp.mean(_layer_norm(p["LayerNorm_0"], x), axis=1), quantize)


REFERENCES = {"mlp": reference_mlp, "cnn": reference_cnn, "transformer": reference_transformer}


# ---- the models under test ---------------------------------------------------------------------------------------
def _perturb(path, leaf, rng):
  """Random biases, norm scales and BatchNorm statistics (init makes them 0 or 1); kernels stay as initialized."""
  name = path[-1].key
  shape = np.shape(leaf)
  if name in ("bias", "mean"):
    return jnp.asarray(0.1 * rng.standard_normal(shape), jnp.float32)
  if name == "scale":
    return jnp.asarray(1.0 + 0.1 * rng.standard_normal(shape), jnp.float32)
  if name == "var":
    return jnp.asarray(rng.uniform(0.5, 1.5, shape), jnp.float32)
  return leaf


@functools.cache
def setup(name: str):
  """(model, eval kwargs, variables, inputs): a ZOO model at its default size, seeded, on a batch of 4."""
  entry = zoo.ZOO[name]()
  kwargs = {"train": False} if isinstance(entry.model, zoo.CNN) else {}
  variables = jax.jit(lambda key, x: entry.model.init(key, x, **kwargs))(jax.random.key(0), entry.example_input)
  rng = np.random.default_rng(1)
  variables = jax.tree_util.tree_map_with_path(lambda path, leaf: _perturb(path, leaf, rng), variables)
  if entry.task == "digits":
    x = data.digits("test")[0][:BATCH]
  else:
    x = data.sequence_task(BATCH, seed=2)[0]
  return entry.model, kwargs, variables, x


def _granularity(granularity):
  """lpnum's granularity for this file's notation ("tensor", "channel", a block size along K, None: the preset's)."""
  if granularity is None:
    return None
  return {"tensor": lpnum.per_tensor(), "channel": lpnum.per_channel()}.get(granularity) or lpnum.per_block(granularity)


def _rules(fmt, granularity):
  return [lnn.Rule(".*", lpnum.DotConfig.weight_only(fmt, _granularity(granularity)))]


def _reference(name, view, fmt, granularity):
  _, _, variables, x = setup(name)
  return np.asarray(REFERENCES[name](variables, jnp.asarray(x), view(fmt, granularity)))


def assert_close(got, want):
  np.testing.assert_allclose(np.asarray(got), want, rtol=TOL, atol=TOL * float(np.max(np.abs(want))))


#: The (model, format) pairs run by default: every model, with integer, MX and NVFP4 formats (10-20 s each on a
#: slow 2-core machine, compiling the quantizers for every kernel shape); the rest of the matrix is marked slow.
FAST = {("mlp", "nvfp4"), ("cnn", "int4_channel"), ("transformer", "mxfp4_e2m1")}
MODEL_FORMATS = default_share([pytest.param(m, f, id=f"{m}-{f}") for m in REFERENCES for f in FORMATS], keep=FAST)


@pytest.mark.parametrize("name", default_share(REFERENCES, keep=["transformer"]))
def test_reference_model_matches_the_float_zoo_model(name):
  """The references themselves: with the identity as quantizer they are the float flax models."""
  model, kwargs, variables, x = setup(name)
  want = np.asarray(REFERENCES[name](variables, jnp.asarray(x), lambda kernel, k_axes: kernel))
  assert_close(model.apply(variables, x, **kwargs), want)


@pytest.mark.parametrize("name, fmt", MODEL_FORMATS)
def test_fake_quantized_zoo_model_matches_reference(name, fmt):
  model, kwargs, variables, x = setup(name)
  qmodel = lnn.quantize_model(model, _rules(*FORMATS[fmt]))
  got = qmodel.apply(variables, x, **kwargs)
  assert_close(got, _reference(name, matmul_view, *FORMATS[fmt]))


@pytest.mark.parametrize("name, fmt", MODEL_FORMATS)
def test_ptq_zoo_model_matches_reference(name, fmt):
  model, kwargs, variables, x = setup(name)
  rules = _rules(*FORMATS[fmt])
  packed = lnn.ptq(variables["params"], rules, views=lnn.kernel_views(model, x, **kwargs))
  leaves = jax.tree_util.tree_leaves_with_path(packed, is_leaf=lambda a: isinstance(a, lnn.QuantizedKernel))
  kernels = [leaf for path, leaf in leaves if path[-1].key == "kernel"]
  assert kernels and all(isinstance(k, lnn.QuantizedKernel) for k in kernels)
  qmodel = lnn.quantize_model(model, rules)
  got = qmodel.apply({**variables, "params": packed}, x, **kwargs)
  assert_close(got, _reference(name, matmul_view, *FORMATS[fmt]))


def test_ptq_without_views_of_attention_kernels_is_an_error():
  model, kwargs, variables, x = setup("transformer")
  rules = _rules(*FORMATS["int8_channel"])
  packed = lnn.ptq(variables["params"], rules)
  with pytest.raises(ValueError, match="kernel_views"):
    lnn.quantize_model(model, rules).apply({**variables, "params": packed}, x, **kwargs)


# ---- PTQ of a trained model ---------------------------------------------------------------------------------------
#: PTQ formats whose digits accuracy is printed (and checked to beat 80%).
PTQ_DIGITS = ("int4_channel", "e4m3_channel", "mxfp4_e2m1", "nvfp4")


@pytest.mark.slow  # trains a digits MLP first
def test_ptq_of_a_trained_mlp_keeps_its_digits_accuracy():
  x_train, y_train = data.digits("train")
  x_test, y_test = data.digits("test")
  model = zoo.MLP()
  variables, _ = train.fit(model, (x_train, y_train), steps=300, batch_size=128, seed=0)
  base = train.accuracy(model, variables, x_test, y_test)

  def ptq_accuracy(fmt, granularity):
    rules = _rules(fmt, granularity)
    packed = lnn.ptq(variables["params"], rules)
    return train.accuracy(model, {"params": packed}, x_test, y_test, apply_fn=lnn.quantize_model(model, rules).apply)

  int8 = ptq_accuracy(*FORMATS["int8_channel"])
  print(f"\ndigits MLP test accuracy: float32 {base:.4f}, int8_channel {int8:.4f}")
  assert base > 0.95
  assert abs(int8 - base) <= 0.01
  for name in PTQ_DIGITS:
    acc = ptq_accuracy(*FORMATS[name])
    print(f"digits MLP test accuracy: {name} {acc:.4f}")
    assert acc > 0.8, (name, acc)
