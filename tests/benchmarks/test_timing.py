"""benchmarks._timing: what time_fns times and what it leaves out."""

import itertools
import time

from lpnum.benchmarks import _timing


def test_time_fns_leads_each_timed_call_with_untimed_calls_of_the_same_candidate():
  calls = []

  def cand(name):
    if len(calls) >= 2 and calls[-1] != name:  # the first call of a run of this candidate is slow
      time.sleep(0.1)
    calls.append(name)

  cands = {name: (lambda name=name: cand(name), ()) for name in ("a", "b")}
  out = _timing.time_fns(cands, repeats=3, warmup=0, lead_s=0.05)
  runs = [len(list(group)) for _, group in itertools.groupby(calls[2:])]  # after the two compile-time calls
  # rounds a b | b a | a b: runs a, bb, aa, b, each made of untimed calls and then the timed one
  assert len(runs) == 4 and min(runs) >= 2
  for name in ("a", "b"):
    assert len(out[name]["samples"]) == 3
    assert out[name]["median_s"] < 0.05  # the slow first call of each run is not timed


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
