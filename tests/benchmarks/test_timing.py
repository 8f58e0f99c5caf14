"""benchmarks._timing: what time_fns times and what it leaves out."""

import time

from lpnum.benchmarks import _timing


def test_time_fns_leads_each_timed_call_with_untimed_calls_of_the_same_candidate():
  calls = []
  durations = {"a": 0.0, "b": 0.15}

  def cand(name):
    calls.append(name)
    if len(calls) > 2 and calls[-2] != name:  # the first call of a run of this candidate is slow
      time.sleep(durations["b"])

  cands = {name: (lambda name=name: cand(name), ()) for name in ("a", "b")}
  out = _timing.time_fns(cands, repeats=2, warmup=0, lead_calls=2)
  # compile-time calls, then per round: each candidate twice untimed and once timed, rotating
  assert calls == ["a", "b"] + ["a"] * 3 + ["b"] * 3 + ["b"] * 3 + ["a"] * 3
  for name in ("a", "b"):
    assert len(out[name]["samples"]) == 2
    assert out[name]["median_s"] < 0.1  # the slow first call of each run is not timed


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
