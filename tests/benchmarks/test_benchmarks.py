"""Smoke test of benchmarks/formats.py: a tiny quick run and the schema of the JSON it writes."""

from __future__ import annotations

from typing import Any

import pytest

import benchmark_checks
pytest.importorskip("gfloat")
from lpnum.benchmarks import formats

# Each runs a benchmark end to end (tiny sizes): the slow set, which .ci/run runs after the default tests.
pytestmark = pytest.mark.slow

REPEATS = 1


def check_measurement(m: dict[str, Any]) -> None:
  benchmark_checks.check_measurement(m, REPEATS)


def test_formats_quick(tmp_path, capsys):
  path = formats.main(["--quick", "--size-log2", "12", "--repeats", str(REPEATS), "--out", str(tmp_path)])
  assert path == tmp_path / "formats.json"
  results = benchmark_checks.load_document(path, "formats")
  assert results["config"]["values"] == 1 << 12 and results["config"]["quick"]

  records = results["formats"]
  assert [r["format"] for r in records] == list(formats.REPRESENTATIVE)
  for r in records:
    c = r["candidates"]
    assert {"floor", *(f"lpnum/{mode}" for mode in formats.QUICK_ROUNDINGS)} <= set(c)
    for m in c.values():
      check_measurement(m)
    assert c["floor"]["status"] == c["lpnum/nearest_even"]["status"] == "ok"
    for mode, ratio in r["figures"]["ratio_to_floor"].items():
      assert ratio > 0, (r["format"], mode)
    assert r["figures"]["stochastic_over_nearest_even"] > 0
  by_name = {r["format"]: r["candidates"] for r in records}
  assert by_name["float8_e4m3fn"]["xla_astype"]["status"] == "ok"
  assert by_name["float8_e4m3fn"]["gfloat"]["status"] == "ok"
  assert by_name["float8_e4m3fn"]["ml_dtypes"]["scale"] == 1.0

  targets = results["targets"]
  assert set(targets) == {"float_vs_floor", "float_vs_xla_e4m3fn", "posit_shift_vs_floor",
                          "stochastic_vs_nearest_even", "vs_gfloat"}
  for t in targets.values():
    assert t["status"] in ("PASS", "FAIL")
    assert t["values"] and all(v > 0 for v in t["values"].values())
    assert set(t["failures"]) <= set(t["values"])

  out = capsys.readouterr().out
  assert "speedup vs gfloat" in out and "(e) speed target (" in out and ": every format" in out
