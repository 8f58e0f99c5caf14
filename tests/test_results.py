"""How studies and benchmarks write their files: the one default folder, file names, one value per CSV column."""

import csv
import json

import pytest

from lpnum import results
from lpnum.benchmarks import _report
from lpnum.studies import _common


def _read_csv(path):
  with path.open(newline="") as f:
    return list(csv.reader(f))


def test_file_names_name_each_list_once(tmp_path):
  payload = {"config": {"quick": True}, "formats": [{"format": "int8"}], "ranking": [{"format": "int4"}],
             "notes": ["a note"], "empty": []}
  path = results.write_json("formats", payload, tmp_path)
  assert path == tmp_path / "formats.json"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["formats.csv", "formats.json", "formats_ranking.csv"]
  assert json.loads(path.read_text())["results"]["formats"] == [{"format": "int8"}]


def test_csv_has_one_value_per_column(tmp_path):
  records = [{"format": "int8", "sqnr_db": {"gaussian": 40.5, "mlp_activations": 38.25}, "shape": [2, 3],
              "rel_error": float("nan")},
             {"format": "int4", "sqnr_db": {"gaussian": 20.0}, "extra": True}]
  (path,) = results.write_csv("formats", {"ranking": records}, tmp_path)
  assert _read_csv(path) == [
      ["format", "sqnr_db.gaussian", "sqnr_db.mlp_activations", "shape.0", "shape.1", "rel_error", "extra"],
      ["int8", "40.5", "38.25", "2", "3", "", ""],
      ["int4", "20.0", "", "", "", "", "True"],
  ]


def test_a_record_holding_one_list_of_records_gives_a_row_per_inner_record(tmp_path):
  records = [{"model": "mlp", "input_shape": [4, 64], "rows": [{"config": "float32", "bytes": 10},
                                                              {"config": "ptq/int8", "bytes": 3}]}]
  (path,) = results.write_csv("models", {"models": records}, tmp_path)
  assert path.name == "models.csv"
  assert _read_csv(path) == [["model", "input_shape.0", "input_shape.1", "config", "bytes"],
                             ["mlp", "4", "64", "float32", "10"], ["mlp", "4", "64", "ptq/int8", "3"]]


def test_studies_and_benchmarks_default_to_one_folder_without_collisions():
  study = _common.parse_args(_common.arg_parser("formats", "The formats study.", quick="q"), [])
  bench = _report.parse_args(_report.arg_parser("formats", "The formats benchmark.", quick="q"), [])
  assert study.out.as_posix() == "lpnum-results/study/formats"
  assert bench.out.as_posix() == "lpnum-results/bench/formats"
  assert study.out.parents[-2] == bench.out.parents[-2] == results.RESULTS_ROOT
  with pytest.raises(ValueError, match="kind='benchmark'; expected 'study' or 'bench'"):
    results.default_out("benchmark", "formats")


def test_benchmark_json_goes_under_the_working_directory_by_default(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  path = _report.write_json("eager", {"records": [{"format": "int8", "figures": {"eager_over_jit": 1.5}}]})
  assert path.resolve() == tmp_path / "lpnum-results" / "bench" / "eager" / "eager.json"
  assert (path.parent / "eager_records.csv").exists()
  assert f"wrote {path}" in capsys.readouterr().out
