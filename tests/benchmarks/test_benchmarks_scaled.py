"""Smoke test of benchmarks/scaled.py: a quick run and the schema of the JSON it writes."""

from __future__ import annotations

from typing import Any

import pytest

import benchmark_checks
from lpnum.benchmarks import scaled

# Each runs a benchmark end to end (tiny sizes): the slow set, which .ci/run runs after the default tests.
pytestmark = pytest.mark.slow

REPEATS = 1


def check_measurement(m: dict[str, Any]) -> None:
  benchmark_checks.check_measurement(m, REPEATS, ("ok", "fails", "skipped", "unsupported"))


def test_scaled_quick(tmp_path, capsys):
  path = scaled.main(["--quick", "--repeats", str(REPEATS), "--out", str(tmp_path)])
  assert path == tmp_path / "scaled.json"
  results = benchmark_checks.load_document(path, "scaled")
  config = results["config"]
  assert config["quick"] and config["repeats"] == REPEATS
  assert config["shape"] == list(scaled.QUICK_SHAPE) and config["values"] == scaled.QUICK_SHAPE[0] ** 2
  assert set(results["libraries"]["missing"]) == {"qwix", "aqt", "gfloat", "torchao"}  # --quick imports none
  assert {"floor", "lpnum", "lpnum_packed", "jnp", "qwix", "aqt"} <= set(results["candidates"])

  records = results["formats"]
  assert [r["format"] for r in records] == list(scaled.QUICK_CASES)
  for r in records:
    c = r["candidates"]
    for m in c.values():
      check_measurement(m)
    for name in ("floor", "lpnum", "lpnum_packed", "jnp"):
      assert c[name]["status"] == "ok", (r["format"], name)
    assert c["qwix"]["status"] == "skipped" and "--quick" in c["qwix"]["reason"]
    f = r["figures"]
    for key in ("ratio_to_floor", "packed_ratio_to_floor", "packed_over_fused"):
      assert f[key] > 0, (r["format"], key)
    assert f["speedup_vs"]["jnp"] > 0 and f["packed_speedup_vs"]["jnp"] > 0
    assert f["speedup_vs"]["qwix"] is None
    agree = r["agreement"]
    assert agree["values"] == scaled.PROBE_SHAPE[0] * scaled.PROBE_SHAPE[1]
    assert agree["fraction_equal"]["lpnum_packed"] == 1.0  # the packed round trip is the fused one, bit for bit
    assert 0 <= agree["fraction_equal"]["jnp"] <= agree["fraction_within_2ulp"]["jnp"] <= 1
  kinds = {r["format"]: r["kind"] for r in records}
  assert kinds == {"mxfp8_e4m3": "mx", "mxfp4_e2m1": "mx", "nvfp4": "nvfp4", "int8_per_channel": "per_channel",
                   "int8_per_column": "per_channel"}
  by_name = {r["format"]: r for r in records}
  # The hand-written per-column version reduces over axis 0, as lpnum.per_channel(-1) does: values agree to 2 ulp.
  assert by_name["int8_per_column"]["agreement"]["fraction_within_2ulp"]["jnp"] > 0.99
  for name in ("mxfp8_e4m3", "mxfp4_e2m1"):  # FLOOR MX: the hand-written version matches lpnum almost everywhere
    assert by_name[name]["agreement"]["fraction_within_2ulp"]["jnp"] > 0.99

  targets = results["targets"]
  assert set(targets) == {"vs_jnp", "vs_qwix", "vs_floor", "vs_gfloat", "channel_vs_qwix", "channel_vs_aqt",
                          "dequantize_vs_floor", "mse_compile"}
  calibration = results["calibration_compile"]
  assert list(calibration) == list(scaled.QUICK_CALIBRATIONS)
  for m in calibration.values():
    check_measurement(m)
    assert m["status"] == "ok"
  mse_compile = targets["mse_compile"]
  assert mse_compile["status"] in ("PASS", "FAIL")
  assert mse_compile["values"] == {"mse_64": calibration["mse_64"]["compile_s"] / scaled.MSE_COMPILE_MAX_S}
  dequantize = results["dequantize"]
  assert set(dequantize["candidates"]) == {"floor", "u8_to_f32", *scaled.DEQUANTIZE_CASES,
                                          *(f"{name}_traced" for name in scaled.DEQUANTIZE_CASES)}
  for m in dequantize["candidates"].values():
    check_measurement(m)
    assert m["status"] == "ok"
  assert set(targets["dequantize_vs_floor"]["values"]) == set(scaled.DEQUANTIZE_CASES)
  assert targets["dequantize_vs_floor"]["status"] in ("PASS", "FAIL")
  for key in ("vs_jnp", "vs_floor"):
    t = targets[key]
    assert t["status"] in ("PASS", "FAIL")
    assert set(t["values"]) == {"mxfp8_e4m3", "mxfp4_e2m1", "nvfp4"} and all(v > 0 for v in t["values"].values())
    assert set(t["failures"]) <= set(t["values"])
  for key in ("vs_qwix", "vs_gfloat", "channel_vs_qwix", "channel_vs_aqt"):
    assert targets[key]["status"] == "N/A" and targets[key]["not_measured"]

  out = capsys.readouterr().out
  assert "lpnum/floor" in out and "(a) speed target (" in out and ": MX/NVFP4" in out and "(e2) speed target" in out
  assert ": per-channel" in out and "(f) speed target" in out and ": dequantize" in out
