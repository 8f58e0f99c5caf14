"""The training study (``lpnum study training``): a quick run, its JSON and PNG, and its command line.

To stay within a test's time budget the quick run is cut further through the module's constants: the float32 and
int8 recipes only (compiling each quantized training step dominates the time), and fewer CNN and Transformer steps.
The MLP keeps its quick step count, so its float32 test accuracy on digits is the study's own quick-mode number.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from lpnum.studies import training

#: A quick study run takes half a minute to a minute: under -m slow, which .ci/run runs after the suite.
pytestmark = pytest.mark.slow

RECIPES = ("float32", "int8")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("training")
  models = {"mlp": training.MODELS["mlp"],
            "cnn": dataclasses.replace(training.MODELS["cnn"], quick_steps=30),
            "transformer": dataclasses.replace(training.MODELS["transformer"], quick_steps=20)}
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(training, "QUICK_RECIPES", RECIPES)
    patch.setattr(training, "MODELS", models)
    result = training.main(["--quick", "--out", str(out), "--seed", "0"])
  return result, out


def test_quick_run_writes_json_with_one_record_per_model_and_recipe(quick_run):
  result, out = quick_run
  doc = json.loads((out / "training.json").read_text())
  assert doc["study"] == "training"
  results = doc["results"]
  assert {"quick", "seeds", "batch_size", "recipes", "models", "runs", "summary", "notes"} <= set(results)
  assert results["quick"] is True and results["seeds"] == [0]
  assert list(results["recipes"]) == list(RECIPES)
  assert set(results["models"]) == {"mlp", "cnn", "transformer"}
  assert "BitNet" in results["notes"] and "Microscaling" in results["notes"]
  runs = results["runs"]
  assert sorted((r["model"], r["recipe"]) for r in runs) == sorted(
      (m, r) for m in ("mlp", "cnn", "transformer") for r in RECIPES)
  for r in runs:
    steps = results["models"][r["model"]]["steps"]
    assert r["steps"] == steps and r["seed"] == 0
    assert len(r["loss_curve"]) == len(r["curve_steps"]) == math.ceil(steps / training.curve_every(steps))
    assert r["curve_steps"][-1] == steps
    assert all(isinstance(v, float) and math.isfinite(v) for v in r["loss_curve"] + [r["final_loss"]])
    assert 0.0 <= r["test_accuracy"] <= 1.0 and r["seconds"] > 0
    assert r["loss_curve"][-1] < r["loss_curve"][0]
  assert len(results["summary"]) == len(runs)
  assert result["runs"] == runs


def test_quick_mlp_float32_learns_digits_and_int8_stays_close(quick_run):
  runs = {(r["model"], r["recipe"]): r for r in quick_run[0]["runs"]}
  float32, int8 = runs["mlp", "float32"], runs["mlp", "int8"]
  assert float32["test_accuracy"] > 0.95  # the bar for the float32 baseline on digits
  assert float32["float32_gap"] == 0.0
  assert int8["float32_gap"] == pytest.approx(int8["test_accuracy"] - float32["test_accuracy"])
  assert abs(int8["float32_gap"]) < 0.03


def test_quick_run_saves_the_loss_curves_png(quick_run):
  import matplotlib.pyplot as plt

  image = plt.imread(quick_run[1] / "training.png")
  assert image.shape[:2] == (400, 1500)  # 5 x 4 inches per model panel at 100 dpi, three panels
  assert image.std() > 0


def test_every_recipe_is_described_and_quick_ones_exist():
  assert next(iter(training.RECIPES)) == "float32" and training.RECIPES["float32"].config is None
  assert all(r.description and (r.config is not None) == (name != "float32") for name, r in training.RECIPES.items())
  assert set(training.QUICK_RECIPES) <= set(training.RECIPES)
  assert {"int8", "int4_weights", "fp8", "mxfp8", "mxfp4", "nvfp4", "ternary", "bfloat16"} <= set(training.RECIPES)


@pytest.mark.parametrize("argv", [["--bogus"], ["--seed", "x"], ["--out"]])
def test_bad_options_are_argparse_errors(argv, capsys):
  with pytest.raises(SystemExit):
    training.main(argv)
  assert "usage: lpnum study training" in capsys.readouterr().err


def test_unknown_recipe_names_the_argument():
  with pytest.raises(ValueError, match="recipe='int3'"):
    training.run_one(training.MODELS["mlp"].quick_model, "digits", "int3", steps=1, learning_rate=1e-3, seed=0)
