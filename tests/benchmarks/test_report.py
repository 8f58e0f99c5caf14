"""The benchmarks' shared reporting: target verdicts and the lines that print them."""

import jax
import pytest

from lpnum.benchmarks import _report


def test_speed_target_lines_say_what_they_measure_and_that_they_are_indicative():
  speed = _report.target("a", "lpnum <= 2x the floor", {"int4": 2.5, "int8": 1.5, "posit8": None}, 2.0,
                         at_least=False)
  size = _report.target("b", "params bytes within 1% of ideal", {"mlp/ptq/int4": 1.004}, 1.01, at_least=False,
                        kind="size")
  memory = _report.target("c", "peak <= 3x the array", {}, 3.0, at_least=False, kind="memory")
  assert (speed["status"], speed["kind"], speed["failures"]) == ("FAIL", "speed", {"int4": 2.5})
  assert (size["status"], memory["status"]) == ("PASS", "N/A")
  lines = _report.format_targets({"a": speed, "b": size, "c": memory}).splitlines()
  backend = jax.default_backend()
  assert lines[0] == (f"(a) speed target ({backend}; indicative, machine load moves it): lpnum <= 2x the floor: "
                      "missed -- 1/2 meet it; worst int4 2.500x")
  assert lines[1] == "      misses: int4 2.500x"
  assert lines[2] == "      not measured: posit8"
  assert lines[3] == "(b) size target: params bytes within 1% of ideal: met -- 1/1 meet it; worst mlp/ptq/int4 1.004x"
  assert lines[4] == f"(c) memory target ({backend}; indicative, machine load moves it): peak <= 3x the array: " \
                     "not measured"
  assert "FAIL" not in "\n".join(lines) and "PASS" not in "\n".join(lines)


def test_unknown_target_kind_is_an_error():
  with pytest.raises(ValueError, match="kind='time'; expected one of"):
    _report.target("a", "x", {"a": 1.0}, 2.0, at_least=False, kind="time")
