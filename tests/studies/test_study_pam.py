"""The PAM study's quick mode: the JSON and CSV it writes, both recipes learning the quick task, the plot."""

import json

import matplotlib.image
import pytest

from lpnum.studies import pam as study

#: A quick run trains two small transformers (half a minute): under -m slow, which .ci/run runs after the suite.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  out = tmp_path_factory.mktemp("pam")
  return study.main(["--quick", "--out", str(out), "--seed", "0"]), out


def test_outputs(run):
  results, out = run
  doc = json.loads((out / "pam.json").read_text())
  assert doc["study"] == "pam" and doc["results"]["notes"] == study.NOTES
  assert (out / "pam_runs.csv").exists() and (out / "pam_summary.csv").exists()
  assert matplotlib.image.imread(out / "pam.png").shape[2] in (3, 4)
  assert [r["recipe"] for r in results["runs"]] == ["float32", "pam"]
  for r in results["runs"]:
    assert r["steps"] == study.QUICK_STEPS and len(r["loss_curve"]) == len(r["curve_steps"])
  assert results["task"] == {"length": 8, "vocab": 8}


def test_both_recipes_learn_the_quick_task(run):
  """Chance is 1/8; the quick model learns the look-up in 200 steps in float32 and with PAM matmuls."""
  results, _ = run
  rows = {r["recipe"]: r for r in results["summary"]}
  assert rows["float32"]["test_accuracy"] > 0.9 and rows["pam"]["test_accuracy"] > 0.9
  assert rows["pam"]["test_accuracy_float32_forward"] is not None
  assert rows["float32"]["test_accuracy_float32_forward"] is None
  for r in results["runs"]:
    assert r["final_loss"] < r["loss_curve"][0] / 10
