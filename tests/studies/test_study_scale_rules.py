"""The scale-rules study in quick mode: JSON schema, an independent SQNR check, PTQ through lpnum.nn.ptq, plots."""

import json
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest

import lpnum
from lpnum import mx
from lpnum import nn as lnn
from lpnum.zoo.data import digits
from lpnum.nn.ptq import fake_quantized_params
from lpnum.zoo.train import accuracy
from lpnum.scaled import ScaleRule
from lpnum.studies import scale_rules as study

import mx_reference

#: A quick study run takes half a minute to a minute: under -m slow, which .ci/run runs after the suite.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
  out = tmp_path_factory.mktemp("scale_rules")
  results = study.main(["--quick", "--out", str(out)])
  return out, results


def test_json_schema(quick):
  out, results = quick
  doc = json.loads((out / "scale_rules.json").read_text())
  assert doc["study"] == "scale_rules" and doc["results"]["notes"] == study.NOTES
  res = doc["results"]
  setup = study.SETUPS["quick"]
  assert res["config"]["formats"] == list(setup.formats) and res["config"]["rules"] == list(study.RULES)
  assert {(r["format"], r["rule"], r["tensor"]) for r in res["sqnr"]} == {
      (f, r, t) for f in setup.formats for r in study.RULES for t in study.TENSORS}
  assert all(math.isfinite(r["sqnr_db"]) and r["sqnr_db"] > 10 for r in res["sqnr"])
  assert {(r["format"], r["rule"]) for r in res["ptq_accuracy"]} == {
      (f, r) for f in setup.formats for r in study.RULES}
  assert all(0.8 < r["accuracy"] <= 1 for r in res["ptq_accuracy"])
  recipes = [r["recipe"] for r in res["training"]]
  assert recipes == ["float32", "fp8_current"] + [f"fp8_delayed_h{h}" for h in setup.histories]
  for run in res["training"]:
    assert len(run["losses"]) == setup.steps and run["final_loss"] < run["losses"][0] / 2
    assert run["accuracy"] > 0.85
  assert "Reproduction notes" not in study.NOTES and "Microscaling" in study.NOTES and "FP8 Formats" in study.NOTES
  assert results["float_accuracy"] == res["float_accuracy"]


def test_sqnr_matches_numpy_reference(quick):
  _, results = quick
  x = study.synthetic("gaussian", study.SETUPS["quick"].n, 0)
  _, _, values = mx_reference.mx_quantize(x, "mxfp8_e4m3", -1, "floor", 32)
  x64, q64 = x.astype(np.float64), values.astype(np.float64)
  expected = 10 * np.log10(np.sum(x64**2) / np.sum((x64 - q64) ** 2))
  got = {(r["format"], r["rule"], r["tensor"]): r["sqnr_db"] for r in results["sqnr"]}
  assert abs(got[("mxfp8_e4m3", "floor", "gaussian")] - expected) < 0.1
  # The rules differ where they should: ceil never saturates, so on E4M3 (max 1.75 * 2^8) it beats floor.
  assert got[("mxfp8_e4m3", "ceil", "gaussian")] > got[("mxfp8_e4m3", "floor", "gaussian")]


def test_ptq_accuracy_is_lpnum_nn_ptq(quick):
  """The study's PTQ'd weights are those lpnum.nn.ptq makes for an OperandQuant holding an MX template."""
  _, results = quick
  setup = study.SETUPS["quick"]
  model, variables, _ = study.trained_mlp(setup.features, setup.steps, 0)
  x_test, y_test = digits("test", flat=True)
  tq = lpnum.OperandQuant(mx.format("mxfp4_e2m1", scale_rule="even"), granularity=lpnum.per_block(32))
  assert tq.rhs_format.scale_rule is ScaleRule.EVEN
  params = fake_quantized_params(variables["params"], [lnn.Rule(".*", lpnum.DotConfig(rhs=tq))])
  got = {(r["format"], r["rule"]): r["accuracy"] for r in results["ptq_accuracy"]}
  assert got[("mxfp4_e2m1", "even")] == accuracy(model, {"params": params}, x_test, y_test)


@pytest.mark.parametrize("name, size", [("scale_rules_sqnr.png", (400, 400 * len(study.TENSORS))),
                                        ("scale_rules_loss.png", (450, 700))])
def test_plots_open(quick, name, size):
  out, _ = quick
  image = plt.imread(out / name)
  assert image.shape[:2] == size and np.ptp(image) > 0  # the figure size in inches at 100 dpi


@pytest.mark.parametrize("argv", [["--bogus"], ["--seed", "x"], ["--quick", "extra"]])
def test_bad_options_exit(argv, capsys):
  with pytest.raises(SystemExit):
    study.main(argv)
  assert "usage" in capsys.readouterr().err


def test_fp8_config_rejects_unknown_scaling():
  with pytest.raises(ValueError, match="scaling="):
    study.fp8_config("static")
