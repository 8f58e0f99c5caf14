"""The real-model study: its pieces against independent references (NumPy int64 matmuls, brute-force neighbour
search, the A2Q bound), and a quick run end to end (slow)."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lpnum.kernels import accumulate
from lpnum.studies import real_model as rm
from lpnum.zoo import minilm


def _round_half_even_codes(x, step):
  return np.clip(np.round(np.asarray(x, np.float64) / step), -127, 127).astype(np.int64)


def test_setting_lists_cover_every_format_family_the_issue_names():
  families = {s.family for s in rm.weight_only_settings()}
  assert families >= {"int8", "int4", "fp8_e4m3", "fp8_e5m2", "mxfp8", "mxfp6", "mxfp4", "mxint8", "nvfp4", "posit8",
                      "posit16", "bfloat16", "float16", "ternary"}
  wo = {s.granularity for s in rm.weight_only_settings() if s.family in ("int8", "int4")}
  assert {"per channel", "per group of 128", "per group of 32"} <= wo
  wa = rm.weight_activation_settings()
  assert {s.weight_bits for s in wa} >= {8, 4}
  assert {s.granularity for s in wa} >= {"per tensor (static)", "per token / channel", "blocks of 32", "MX block 32"}
  assert all(s.attention is not None for s in wa)  # attention products quantized too
  names = [s.name for s in rm.weight_only_settings() + wa] + [s.name for s, _ in rm.rotated_settings()]
  assert len(names) == len(set(names))
  assert all(s.dense.rotate == "auto" for s, _ in rm.rotated_settings())
  assert {t for _, t in rm.rotated_settings()} <= {s.name for s in wa}
  for quick, full in ((rm.weight_only_settings(True), rm.weight_only_settings()),
                      (rm.weight_activation_settings(True), wa)):
    assert 0 < len(quick) < len(full) and set(quick) <= set(full)


def test_batches_hold_every_sentence_once_in_the_smallest_bucket():
  rng = np.random.default_rng(0)
  ids = [rng.integers(1, 100, size=n).astype(np.int32) for n in rng.integers(2, 140, size=50)]
  out = rm.batches(ids, buckets=(32, 128), tokens_per_batch=256)
  seen = np.concatenate([b.index for b in out])
  assert sorted(seen.tolist()) == list(range(50))
  for b in out:
    for r, j in enumerate(b.index):
      n = len(ids[j])
      want = 32 if n <= 32 else (128 if n <= 128 else n)
      assert b.ids.shape[1] == want
      np.testing.assert_array_equal(b.ids[r, :n], ids[j])
      assert b.mask[r].sum() == n
    assert not b.mask[len(b.index):].any()


def test_integer_weights_absmax_and_a2q_against_numpy():
  rng = np.random.default_rng(1)
  w = rng.standard_normal((96, 8)).astype(np.float32)
  codes, step = rm._integer_weights(jnp.asarray(w), None)
  want_step = np.abs(w).max(0) / np.float32(127)
  np.testing.assert_allclose(step, want_step, rtol=1e-7)
  np.testing.assert_array_equal(codes, _round_half_even_codes(w, np.asarray(step, np.float64)))
  for bits in (12, 14, 16):
    codes, step = rm._integer_weights(jnp.asarray(w), bits)
    codes = np.asarray(codes, np.int64)
    assert (np.abs(codes).sum(0) <= accumulate.a2q_bound(8, bits)).all()
    assert (np.abs(codes) <= 127).all()
    np.testing.assert_array_equal(codes, np.trunc(w / np.asarray(step)).astype(np.int64))


@pytest.mark.parametrize("bits,mode", [(32, "wrap"), (12, "wrap"), (12, "saturate")])
def test_emulated_dense_against_int64(bits, mode):
  """A DenseGeneral contracting two axes, computed by the study's interceptor, against NumPy int64 sums."""
  rng = np.random.default_rng(2)
  x = rng.standard_normal((2, 3, 4, 8)).astype(np.float32)
  layer = nn.DenseGeneral(5, axis=(-2, -1))
  params = layer.init(jax.random.key(0), x)["params"]
  kernel = np.asarray(params["kernel"]).reshape(32, 5)
  codes, s_w = rm._integer_weights(jnp.asarray(kernel), None)
  s_x = np.float32(np.abs(x).max() / 127)
  keys = jnp.ones((2, 1, 1, 3), bool)
  acc = accumulate.IntAccumulator(bits, mode)

  def run(x):
    icpt = rm._EmulatedDense(acc, {"": (codes, s_w, jnp.float32(s_x))}, keys)
    with nn.intercept_methods(icpt):
      return layer.apply({"params": params}, x), icpt.overflow[""]

  y, overflowed = jax.jit(run)(x)
  xc = _round_half_even_codes(x.reshape(6, 32), np.float64(s_x))
  partial = np.cumsum(xc[:, :, None] * np.asarray(codes, np.int64)[None], axis=1)
  lo, hi = -2 ** (bits - 1), 2 ** (bits - 1) - 1
  if mode == "wrap":
    total = (partial[:, -1] - lo) % 2 ** bits + lo
  else:
    total = np.zeros((6, 5), np.int64)
    for k in range(32):
      total = np.clip(total + xc[:, k, None] * np.asarray(codes, np.int64)[k], lo, hi)
  want = total.astype(np.float32) * s_x * np.asarray(s_w) + np.asarray(params["bias"])
  np.testing.assert_allclose(np.asarray(y).reshape(6, 5), want, rtol=1e-6, atol=1e-6)
  assert int(overflowed) == int(((partial < lo) | (partial > hi)).any(axis=1).sum())


def _fake_results(nv_better: bool, fp8_better: bool):
  def rec(name, cos):
    return {"setting": name, "mean_cosine": cos}

  wa = [rec("W+A int8 per tensor", 0.98), rec("W+A FP8 E4M3 per tensor", 0.995 if fp8_better else 0.97),
        rec("W+A int8 per token", 0.999), rec("W+A MXINT8", 0.999), rec("W+A MXFP8 E4M3", 0.998),
        rec("W+A MXFP6 E3M2", 0.99), rec("W+A MXFP4", 0.9), rec("W+A NVFP4", 0.95 if nv_better else 0.85)]
  wo = [rec("NVFP4", 0.97 if nv_better else 0.9), rec("MXFP4", 0.96)]
  outliers = [{"layer": 0, "input": "x", "max_over_median": 30.0, "top_dims": [1]}]
  oq = [{"layer": 0, "input": "x", "scheme": s, "sqnr_db": v, "sqnr_non_outlier_dims_db": v}
        for s, v in (("int8 per tensor", 15.0), ("int8 per token", 27.0))]
  acc = [{"kind": "integer", "bits": 12, "overflow": "wrap", "weights": "absmax", "overflow_rate": 0.3,
          "mean_cosine": 0.2},
         {"kind": "integer", "bits": 12, "overflow": "saturate", "weights": "absmax", "overflow_rate": 0.3,
          "mean_cosine": 0.7},
         {"kind": "integer", "bits": 12, "overflow": "A2Q", "weights": "A2Q-bounded", "overflow_rate": 0.0,
          "mean_cosine": 0.1}]
  return {"weight_activation": wa, "weight_only": wo, "outliers": outliers, "outlier_quantization": oq,
          "accumulators": acc}


@pytest.mark.parametrize("nv_better,fp8_better", [(True, True), (False, False)])
def test_reproduction_verdicts_follow_the_numbers(nv_better, fp8_better):
  notes = {n["source"].split(" ")[0]: n for n in rm.reproduction(_fake_results(nv_better, fp8_better))}
  assert notes["ZeroQuant-FP"]["verdict"] == ("agrees" if fp8_better else "does not agree")
  assert notes["NVIDIA"]["verdict"] == ("agrees" if nv_better else "does not agree")
  assert notes["Microscaling"]["verdict"] == "agrees"
  assert notes["LLM.int8()"]["verdict"] == "agrees"
  assert notes["A2Q"]["verdict"] == "agrees"
  assert all(n["minilm"] for n in notes.values())


def test_bad_options_exit():
  with pytest.raises(SystemExit):
    rm.main(["--no-such-option"])


@pytest.mark.slow
def test_quick_study_end_to_end(tmp_path):
  results = rm.main(["--quick", "--out", str(tmp_path)])
  doc = json.loads((tmp_path / "real_model.json").read_text())["results"]
  assert doc["setup"]["quick"] and doc["setup"]["sentences"] == rm.QUICK_EVAL_SENTENCES
  for name in ("weight_only", "weight_activation", "rotations", "accumulators", "outliers", "layer_sqnr"):
    assert (tmp_path / f"real_model_{name}.csv").exists()
  for name in ("weight_only", "weight_activation", "outliers", "accumulators"):
    assert (tmp_path / f"real_model_{name}.png").exists()
  wo = {r["setting"]: r for r in results["weight_only"]}
  # Independent expectations: int8 per channel is nearly lossless, ternary PTQ of a pretrained model is not.
  assert wo["int8 per channel"]["mean_cosine"] > 0.999 and wo["int8 per channel"]["top1_agreement"] > 0.9
  assert wo["ternary per channel"]["mean_cosine"] < 0.5
  assert 4.0 < wo["MXFP4"]["bits_per_weight"] < 4.5 and 4.0 < wo["NVFP4"]["bits_per_weight"] < 4.6
  assert len(doc["reproduction"]) >= 4 and all(n["verdict"] in ("agrees", "does not agree")
                                               for n in doc["reproduction"])
  a2q = [r for r in results["accumulators"] if r["weights"] == "A2Q-bounded"]
  assert a2q and all(r["overflow_rate"] == 0 for r in a2q)


@pytest.mark.slow
def test_layer_by_layer_run_is_the_whole_model():
  enc = minilm.load()
  study = rm.Study(enc, quick=True)
  whole = enc.embed(study.sentences)
  assert minilm.cosines(whole, study.reference).min() > 1 - 1e-6
