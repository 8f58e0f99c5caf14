"""Smoke test of benchmarks/models.py: a tiny run and the schema of the JSON it writes."""

from __future__ import annotations

import numpy as np
import pytest

import benchmark_checks
from lpnum.benchmarks import models
from lpnum.zoo import models as zoo

# Each runs a benchmark end to end (tiny sizes): the slow set, which .ci/run runs after the default tests.
pytestmark = pytest.mark.slow


def test_models_benchmark_tiny(tmp_path, monkeypatch, capsys):
  tiny = {"mlp": models.ModelSpec(lambda: zoo.MLP(features=(32,)), (4, 8, 8, 1), np.float32, 10)}
  monkeypatch.setattr(models, "QUICK_MODELS", tiny)
  monkeypatch.setattr(models, "PTQ_FORMATS", {k: models.PTQ_FORMATS[k] for k in ("int8", "int4", "mxfp4_e2m1")})
  monkeypatch.setattr(models, "QAT_CONFIGS", {k: models.QAT_CONFIGS[k] for k in ("ste/int8",)})
  path = models.main(["--quick", "--repeats", "1", "--out", str(tmp_path)])
  results = benchmark_checks.load_document(path, "models")
  rows = results["models"][0]["rows"]
  assert [r["config"] for r in rows] == ["float32", "ptq/int8", "ptq/int4", "ptq/mxfp4_e2m1", "qat/ste/int8"]
  for r in rows:
    for key in ("infer", "train"):
      if key in r:
        benchmark_checks.check_measurement(r[key], 1, statuses=("ok",))
  ptq = {r["config"]: r for r in rows if r["config"].startswith("ptq/")}
  # int4 per channel on a 64x32 and a 32x10 kernel: 4 bits per weight plus a float32 scale per output channel
  ideal = (64 * 32 + 32 * 10) / 2 + 4 * (32 + 10) + 4 * (32 + 10)
  assert ptq["ptq/int4"]["bytes"] == ideal and ptq["ptq/int4"]["bytes_vs_ideal"] == 1.0
  assert set(results["targets"]) == {"a", "b", "c"}
  assert "vs ideal" in capsys.readouterr().out
