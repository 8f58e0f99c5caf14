"""The accumulator study's quick mode: JSON schema, an independent int64 oracle, A2Q's guarantee, the plot."""

import json

import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

from lpnum.kernels.accumulate import a2q_bound
from lpnum.nn import a2q
from lpnum.studies import accumulators as study

#: A quick study run takes half a minute to a minute: under -m slow, which .ci/run runs after the suite.
pytestmark = pytest.mark.slow

SEED = 0


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  out = tmp_path_factory.mktemp("accumulators")
  return study.main(["--quick", "--out", str(out), "--seed", str(SEED)]), out


def _layers(variables):
  return [variables["params"][name] for name in sorted(variables["params"], key=lambda n: int(n.rsplit("_")[-1]))]


def _int64_logits(layers, x):
  """The integer model's logits with exact int64 sums, in numpy: 8-bit per-tensor input codes, the given int8
  weights and per-channel steps, float32 rescaling, bias and ReLU."""
  h = np.asarray(x, np.float32)
  for i, (q, s_w, bias) in enumerate(layers):
    s_x = np.float32(np.abs(h).max()) / np.float32(127)
    codes = np.clip(np.round(h / s_x), -127, 127).astype(np.int64)
    acc = codes @ np.asarray(q, np.int64)
    h = acc.astype(np.float32) * s_x * np.asarray(s_w, np.float32) + np.asarray(bias, np.float32)
    if i < len(layers) - 1:
      h = np.maximum(h, np.float32(0))
  return h


def _plain_layers(variables):
  out = []
  for p in _layers(variables):
    w = np.asarray(p["kernel"], np.float32)
    s = np.abs(w).max(axis=0) / np.float32(127)
    out.append((np.clip(np.round(w / s), -127, 127).astype(np.int8), s, p["bias"]))
  return out


def _a2q_layers(variables, bits):
  out = []
  for p in _layers(variables):
    s = jnp.exp2(p["log2_scale"])
    q = a2q.a2q_integer_weights(p["v"], p["g"], s, weight_bits=8, input_bits=8, accumulator_bits=bits)
    out.append((np.asarray(q), np.asarray(s), p["bias"]))
  return out


def _record(results, **fields):
  rows = [r for r in results["records"] if all(r.get(k) == v for k, v in fields.items())]
  assert len(rows) == 1, fields
  return rows[0]


def test_json_schema(run):
  results, out = run
  doc = json.loads((out / "accumulators.json").read_text())
  assert doc["study"] == "accumulators" and doc["results"]["notes"] == study.NOTES
  assert "A2Q" in study.NOTES and "Lower Bit-Width Accumulators" in study.NOTES
  setup = doc["results"]["setup"]
  assert setup["quick"] is True and setup["int_bits"] == list(study.QUICK_INT_BITS)
  records = doc["results"]["records"]
  assert len(records) == len(results["records"])
  ints = [r for r in records if r["kind"] == "int"]
  floats = [r for r in records if r["kind"] == "float"]
  assert len(ints) == (1 + len(study.QUICK_A2Q_BITS)) * len(study.QUICK_INT_BITS) * 2
  assert len(floats) == 4 * len(study.QUICK_FLOAT_MANTISSAS)  # m = 23 (float32) stochastic included
  assert {(r["rounding"], r["order"]) for r in floats if r["bits"] == 23} == {
      (rnd, order) for rnd in ("nearest_even", "stochastic") for order in ("sequential", "chunked")}
  for r in ints:
    assert r["model"] in ("float32", "a2q") and r["overflow"] in ("wrap", "saturate")
    assert r["bits"] in study.QUICK_INT_BITS and (r["trained_bits"] is None) == (r["model"] == "float32")
  for r in floats:
    assert r["rounding"] in ("nearest_even", "stochastic") and r["order"] in ("sequential", "chunked")
    assert r["exponent_bits"] == 8 and r["chunk"] == (study.CHUNK if r["order"] == "chunked" else None)
  for r in records:
    assert 0 <= r["accuracy"] <= 1 and 0 <= r["overflow_rate"] <= 1


def test_p32_matches_exact_int64_oracle(run):
  results, _ = run
  _, (x, y) = study._split(SEED)
  variables = study.train_float(SEED, study.QUICK_TRAIN_STEPS)
  expected = float(np.mean(_int64_logits(_plain_layers(variables), x).argmax(-1) == y))
  for mode in ("wrap", "saturate"):
    r = _record(results, kind="int", model="float32", bits=32, overflow=mode)
    assert r["accuracy"] == expected and r["overflow_rate"] == 0
  for bits in study.QUICK_A2Q_BITS:
    variables = study.train_a2q(SEED, study.QUICK_TRAIN_STEPS, study.QUICK_A2Q_STEPS, bits)
    expected = float(np.mean(_int64_logits(_a2q_layers(variables, bits), x).argmax(-1) == y))
    r = _record(results, kind="int", model="a2q", trained_bits=bits, bits=32, overflow="wrap")
    assert r["accuracy"] == expected and r["overflow_rate"] == 0


def test_a2q_never_overflows_at_its_width(run):
  results, _ = run
  for bits in study.QUICK_A2Q_BITS:
    variables = study.train_a2q(SEED, study.QUICK_TRAIN_STEPS, study.QUICK_A2Q_STEPS, bits)
    for q, _, _ in _a2q_layers(variables, bits):
      assert np.abs(q.astype(np.int64)).sum(axis=0).max() <= a2q_bound(8, bits)
    for mode in ("wrap", "saturate"):
      at = _record(results, kind="int", model="a2q", trained_bits=bits, bits=bits, overflow=mode)
      assert at["overflow_rate"] == 0 and at["accuracy"] > 0.5


def test_plain_model_overflows_below_16_bits(run):
  results, _ = run
  rates = [r["overflow_rate"] for r in results["records"] if r["kind"] == "int" and r["model"] == "float32"
           and r["bits"] < 16]
  assert rates and max(rates) > 0


def test_float32_accumulator_matches_float32_accuracy(run):
  results, _ = run
  for rounding in ("nearest_even", "stochastic"):
    for order in ("sequential", "chunked"):
      r = _record(results, kind="float", bits=23, rounding=rounding, order=order)
      assert abs(r["accuracy"] - results["reference"]["float32"]) <= 0.01
  assert results["reference"]["float32"] > 0.85


def test_png_opens(run):
  _, out = run
  image = matplotlib.image.imread(out / "accumulators.png")
  assert image.shape[:2] == (450, 1200) and image.std() > 0  # 12 x 4.5 inches at 100 dpi


@pytest.mark.parametrize("argv", [["--bogus"], ["--seed", "x"], ["--quick", "extra"]])
def test_bad_options_exit(argv, capsys):
  with pytest.raises(SystemExit):
    study.main(argv)
  assert "usage: lpnum study accumulators" in capsys.readouterr().err
