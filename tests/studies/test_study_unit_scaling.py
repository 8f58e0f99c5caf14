"""The unit scaling study's quick mode: JSON and CSV outputs, the initialization scales it reports (checked here
against float32 gradients recomputed with jax.grad and cast with ml_dtypes), the runs and the plot."""

import json

import jax
import jax.numpy as jnp
import matplotlib.image
import ml_dtypes
import numpy as np
import optax
import pytest

from lpnum.studies import unit_scaling as study
from lpnum.zoo import data
from lpnum.zoo.models import Transformer

#: A quick study run takes most of a minute: under -m slow, which .ci/run runs after the suite.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  out = tmp_path_factory.mktemp("unit_scaling")
  return study.main(["--quick", "--out", str(out), "--seed", "0"]), out


def test_outputs_and_schema(run):
  payload, out = run
  doc = json.loads((out / "unit_scaling.json").read_text())
  assert doc["study"] == "unit_scaling" and doc["results"]["quick"] is True
  assert [(r["model"], r["recipe"]) for r in payload["runs"]] == list(study.RUNS)
  for r in payload["runs"]:
    assert r["steps"] == study.QUICK_STEPS and len(r["loss_curve"]) == len(r["curve_steps"])
    assert np.isfinite(r["final_loss"]) and 0 <= r["test_accuracy"] <= 1
  assert (out / "unit_scaling_runs.csv").exists() and (out / "unit_scaling_init_scales.csv").exists()
  assert matplotlib.image.imread(out / "unit_scaling.png").shape[0] > 100
  assert "Unit Scaling" in payload["notes"]


def test_unit_model_is_unit_scaled_and_the_standard_one_underflows_e5m2(run):
  scales = run[0]["init_scales"]
  unit = [r for r in scales if r["model"] == "unit"]
  standard = [r for r in scales if r["model"] == "standard"]
  assert all(0.5 <= r["gradient_std"] <= 2 for r in unit) and all(r["e5m2_flushed"] < 1e-3 for r in unit)
  assert all(r["gradient_std"] < 0.01 for r in standard) and max(r["e5m2_flushed"] for r in standard) > 0.05


def test_standard_head_gradient_matches_jax_grad_and_ml_dtypes(run):
  """The head's gradient is the mean cross-entropy's softmax - onehot over the batch: recomputed here."""
  row = next(r for r in run[0]["init_scales"] if r["model"] == "standard" and r["layer"] == "Dense_0")
  model = Transformer(vocab=16, length=16, dim=32, heads=2, layers=1, mlp_dim=64)
  x, y = (jnp.asarray(a) for a in data.sequence_task(study.PROBE_BATCH, seed=2))
  logits = model.apply(model.init(jax.random.key(0), x), x)
  g = np.asarray(jax.grad(lambda t: optax.softmax_cross_entropy_with_integer_labels(t, y).mean())(logits))
  assert row["gradient_std"] == pytest.approx(float(np.std(g)), rel=1e-5)
  flushed = np.asarray(g).astype(ml_dtypes.float8_e5m2).astype(np.float32) == 0
  assert row["e5m2_flushed"] == pytest.approx(float(np.mean(flushed[g != 0])))
