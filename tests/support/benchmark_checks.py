"""Checks shared by the benchmark smoke tests: the JSON document and each timed measurement."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def load_document(path: Path, name: str) -> dict[str, Any]:
  """The ``results`` of a benchmark's JSON file, after checking its name and machine description."""
  doc = json.loads(Path(path).read_text())
  assert doc["benchmark"] == name
  for key in ("date", "jax", "device", "cpu_count"):
    assert doc["machine"][key]
  return doc["results"]


def check_measurement(m: dict[str, Any], repeats: int, statuses=("ok", "fails", "skipped")) -> None:
  """A timed candidate: positive times and ``repeats`` samples, or a status other than ok with a reason."""
  assert m["status"] in statuses, m
  if m["status"] != "ok":
    assert isinstance(m["reason"], str) and m["reason"]
    return
  for key in ("compile_s", "median_s", "min_s"):
    assert m[key] > 0, (key, m)
  assert m["min_s"] <= m["median_s"]
  assert len(m["samples"]) == repeats and all(s > 0 for s in m["samples"])
