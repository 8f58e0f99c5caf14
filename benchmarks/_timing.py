"""Timing and result-writing helpers shared by the benchmarks.

A measurement is a dict ``{"status": "ok", "compile_s", "median_s", "min_s", "samples"}`` (seconds); a candidate
that could not be compiled or run is ``{"status": "fails", "reason"}``. Compilation (or, for functions that are not
jitted, a first warm call) is always timed apart from the samples, and every sample waits for its result with
``jax.block_until_ready`` (which also accepts numpy arrays).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

__all__ = ["Candidate", "failure", "machine_info", "time_fn", "time_fns", "write_json"]

#: A function and the positional arguments to call it with.
Candidate = tuple[Callable[..., Any], tuple[Any, ...]]

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def failure(status: str, reason: str) -> dict[str, Any]:
  """A measurement that did not happen: ``status`` (e.g. ``"fails"``, ``"skipped"``) and why."""
  return {"status": status, "reason": reason}


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


def time_fns(candidates: Mapping[str, Candidate], *, repeats: int = 20, warmup: int = 1) -> dict[str, dict[str, Any]]:
  """Times several candidates side by side, so that machine noise hits them alike.

  Every candidate is compiled first; then each of ``repeats`` rounds calls every candidate once, starting each round
  one candidate later. A candidate whose compilation or warm-up raises is reported as ``fails`` with the error.

  Returns:
    A measurement per candidate name, in the order of ``candidates``.
  """
  results: dict[str, dict[str, Any]] = {}
  ready: dict[str, tuple[Callable[..., Any], tuple[Any, ...], float]] = {}
  for name, (fn, args) in candidates.items():
    try:
      call, compile_s = _compile(fn, args, warmup)
    except Exception as e:  # noqa: BLE001 -- a candidate that cannot run is a result, not an error
      message = str(e).strip().splitlines()
      results[name] = failure("fails", f"{type(e).__name__}: {message[0][:200] if message else ''}")
      continue
    ready[name] = (call, args, compile_s)
  names = list(ready)
  samples: dict[str, list[float]] = {name: [] for name in names}
  for r in range(repeats):
    shift = r % len(names) if names else 0
    for name in names[shift:] + names[:shift]:
      call, args, _ = ready[name]
      samples[name].append(_sample(call, args))
  for name, (_, _, compile_s) in ready.items():
    results[name] = _summary(compile_s, samples[name])
  return {name: results[name] for name in candidates}


def machine_info() -> dict[str, Any]:
  """The software and hardware a result was measured on."""
  device = jax.devices()[0]
  return {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "jax": jax.__version__,
      "numpy": np.__version__,
      "python": platform.python_version(),
      "platform": platform.platform(),
      "backend": jax.default_backend(),
      "device": str(device),
      "device_kind": device.device_kind,
      "device_count": jax.device_count(),
      "cpu_count": os.cpu_count(),
      "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
  }


def write_json(name: str, payload: Mapping[str, Any], out_dir: str | Path | None = None) -> Path:
  """Writes ``{"benchmark": name, "machine": ..., "results": payload}`` to ``<out_dir>/<name>.json``.

  ``out_dir`` defaults to ``benchmarks/results``; it is created if needed. Returns the path written.
  """
  directory = Path(out_dir) if out_dir is not None else RESULTS_DIR
  directory.mkdir(parents=True, exist_ok=True)
  path = directory / f"{name}.json"
  document = {"benchmark": name, "machine": machine_info(), "results": payload}
  path.write_text(json.dumps(document, indent=1, allow_nan=False) + "\n")
  return path
