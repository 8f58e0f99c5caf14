"""benchmarks._timing: what time_fns times and what it leaves out."""

import time

from lpnum.benchmarks import _timing


def test_time_fns_settles_before_each_call_without_timing_the_pause():
  calls = []
  cands = {name: (lambda name=name: calls.append((name, time.perf_counter())), ()) for name in ("a", "b")}
  start = time.perf_counter()
  out = _timing.time_fns(cands, repeats=3, warmup=0, settle_s=0.2)
  elapsed = time.perf_counter() - start
  assert [n for n, _ in calls] == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm calls, then rotating rounds
  assert elapsed >= 6 * 0.2  # every timed call waited first
  for name in ("a", "b"):
    assert out[name]["status"] == "ok" and len(out[name]["samples"]) == 3
    assert out[name]["median_s"] < 0.1  # the pause is not part of the sample
