"""Timing helpers shared by the benchmarks (``benchmarks._report`` prints and writes the results).

A measurement is a dict ``{"status": "ok", "compile_s", "median_s", "min_s", "samples"}`` (seconds); a candidate
that could not be compiled or run is ``{"status": "fails", "reason"}``. A candidate timed on part of the input may
add ``values`` (how many it was timed on) and ``scale`` (the factor to the full input). Compilation (or, for
functions that are not jitted, a first warm call) is always timed apart from the samples, and every sample waits for
its result with ``jax.block_until_ready`` (which also accepts numpy arrays). :func:`peak_growth` measures the
memory one call takes at its peak.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax

from lpnum.results import progress

__all__ = ["Candidate", "error_reason", "failure", "peak_growth", "time_fn", "time_fns"]

#: A function and the positional arguments to call it with.
Candidate = tuple[Callable[..., Any], tuple[Any, ...]]


def failure(status: str, reason: str) -> dict[str, Any]:
  """A measurement that did not happen: ``status`` (e.g. ``"fails"``, ``"skipped"``) and why."""
  return {"status": status, "reason": reason}


def error_reason(e: BaseException) -> str:
  """The reason of a failure raised as ``e``: its type and the first line of its message, cut at 200 characters."""
  lines = str(e).strip().splitlines()
  return f"{type(e).__name__}: {lines[0][:200] if lines else ''}"


def _compile(fn: Callable[..., Any], args: tuple[Any, ...], warmup: int) -> tuple[Callable[..., Any], float]:
  """Compiles ``fn`` for ``args`` (or, if it is not jitted, calls it once), then runs ``warmup`` untimed calls.

  Returns the callable to time and the compile (or first call) time in seconds.
  """
  start = time.perf_counter()
  if hasattr(fn, "lower"):
    call = fn.lower(*args).compile()
  else:
    call = fn
    jax.block_until_ready(fn(*args))
  compile_s = time.perf_counter() - start
  for _ in range(warmup):
    jax.block_until_ready(call(*args))
  return call, compile_s


def _sample(call: Callable[..., Any], args: tuple[Any, ...]) -> float:
  start = time.perf_counter()
  jax.block_until_ready(call(*args))
  return time.perf_counter() - start


def _summary(compile_s: float, samples: list[float]) -> dict[str, Any]:
  return {"status": "ok", "compile_s": compile_s, "median_s": statistics.median(samples), "min_s": min(samples),
          "samples": samples}


def time_fn(fn: Callable[..., Any], *args: Any, repeats: int = 20, warmup: int = 1) -> dict[str, Any]:
  """Times ``fn(*args)``: compiles it first (``fn.lower(*args).compile()`` for a jitted ``fn``, else a warm call).

  Raises whatever compiling or calling ``fn`` raises.
  """
  call, compile_s = _compile(fn, args, warmup)
  return _summary(compile_s, [_sample(call, args) for _ in range(repeats)])


def time_fns(candidates: Mapping[str, Candidate], *, repeats: int = 20, warmup: int = 1,
             settle_s: float = 0.0, lead_s: float = 0.0) -> dict[str, dict[str, Any]]:
  """Times several candidates side by side, so that machine noise hits them alike.

  Every candidate is compiled first; then each of ``repeats`` rounds calls every candidate once, starting each round
  one candidate later. Both loops report progress (:func:`lpnum.results.progress`). A candidate whose compilation
  or warm-up raises is reported as ``fails`` with the error. ``settle_s`` seconds pass (untimed) before each call,
  so that worker threads a previous candidate left spinning do not take the next one's cores: on a 2-core CPU,
  XLA's int8 dot slowed the call after it by up to 2x for tens of milliseconds. Then, for ``lead_s`` seconds, untimed
  calls of the same candidate run back to back (at least one where ``lead_s > 0``), so that the timed call is one
  step of a loop of itself (as in a decode loop), not the first call after the pause: on a 2-core VM whose idle
  virtual CPUs sleep, a multi-threaded 2-ms call ran about 2x slower for the first 10-20 ms after a 50 ms pause
  (measured: 4.5 ms after no lead call, 2.8 after three, 1.8 after ten; its second thread started 3-4 ms late).

  Returns:
    A measurement per candidate name, in the order of ``candidates``.
  """
  results: dict[str, dict[str, Any]] = {}
  ready: dict[str, tuple[Callable[..., Any], tuple[Any, ...], float]] = {}
  for name, (fn, args) in progress(candidates.items(), "compiling candidates"):
    try:
      call, compile_s = _compile(fn, args, warmup)
    except Exception as e:  # noqa: BLE001 -- a candidate that cannot run is a result, not an error
      results[name] = failure("fails", error_reason(e))
      continue
    ready[name] = (call, args, compile_s)
  names = list(ready)
  samples: dict[str, list[float]] = {name: [] for name in names}
  for r in progress(range(repeats), "timed rounds"):
    shift = r % len(names) if names else 0
    for name in names[shift:] + names[:shift]:
      call, args, _ = ready[name]
      if settle_s:
        time.sleep(settle_s)
      lead_until = time.perf_counter() + lead_s
      while lead_s > 0:
        jax.block_until_ready(call(*args))
        if time.perf_counter() >= lead_until:
          break
      samples[name].append(_sample(call, args))
  for name, (_, _, compile_s) in ready.items():
    results[name] = _summary(compile_s, samples[name])
  return {name: results[name] for name in candidates}


def _status_kib(field: str) -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1])
  raise OSError(f"/proc/self/status has no {field}")


def peak_growth(fn: Callable[..., Any], *args: Any, repeats: int = 3) -> int | None:
  """Bytes the process's resident set grows by at its peak during a call of ``fn(*args)`` (its result included);
  the median over ``repeats`` calls. Call ``fn`` once before (compiling is not what this measures).

  Linux only (None elsewhere): the kernel's high-water mark ``VmHWM`` is reset to the current resident set
  (``/proc/self/clear_refs``) before each call and read after it. XLA's CPU buffers and numpy arrays count; memory
  freed but kept by the allocator does not, so the figure is a lower bound where buffers are reused.
  """
  growths = []
  # Results are freed by reference counting; no gc.collect, which costs seconds a call in a process holding many
  # objects (a test session).
  for _ in range(repeats):
    try:
      before = _status_kib("VmRSS")
      with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    except OSError:
      return None
    out = fn(*args)
    jax.block_until_ready(out)
    growths.append(max(_status_kib("VmHWM") - before, 0) * 1024)
    del out
  return int(statistics.median(growths))
