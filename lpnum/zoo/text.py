"""Real English text that ships with Python: sentences of the language reference bundled in the standard library.

CPython installs the prose of its language reference and library documentation as ``pydoc_data.topics`` (the
text ``help("topic")`` prints): about 80 topics, 450 kB of English. :func:`sentences` splits it into sentences,
keeps the prose ones and orders them deterministically, with no download:

- paragraphs (blank-line separated) that start indented are code or grammar and are skipped; the rest has its
  whitespace collapsed and is split after ``.``, ``!`` or ``?`` followed by a space and a capital or a quote;
- a sentence is kept when it has :data:`MIN_WORDS` to :data:`MAX_WORDS` words, starts with a capital, ends with
  ``.``, ``?`` or ``!``, has no ``::`` or ``>>>`` and at least 85% letters and spaces;
- duplicates are dropped and the rest is ordered by the SHA-256 of its UTF-8 text, so every prefix is a fixed,
  topic-mixed sample.

The corpus depends on the Python minor version (the documentation changes between releases): Python 3.11 gives
1185 sentences. :func:`corpus_digest` names the exact corpus in results.
"""

from __future__ import annotations

import functools
import hashlib
import re

__all__ = ["MIN_WORDS", "MAX_WORDS", "sentences", "corpus_digest"]

#: The shortest and longest kept sentences, in whitespace-separated words.
MIN_WORDS, MAX_WORDS = 6, 60

_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"])")


def _is_prose(s: str) -> bool:
  words = s.split()
  letters = sum(c.isalpha() or c == " " for c in s)
  return (MIN_WORDS <= len(words) <= MAX_WORDS and s[0].isupper() and s[-1] in ".?!" and "::" not in s
          and ">>>" not in s and letters >= 0.85 * len(s))


@functools.cache
def _all() -> tuple[str, ...]:
  from pydoc_data.topics import topics

  found = set()
  for key in sorted(topics):
    for paragraph in re.split(r"\n\s*\n", topics[key]):
      if paragraph.startswith((" ", "\t")):
        continue
      found.update(s for s in _SPLIT.split(" ".join(paragraph.split())) if s and _is_prose(s))
  return tuple(sorted(found, key=lambda s: hashlib.sha256(s.encode()).hexdigest()))


def sentences(n: int | None = None) -> list[str]:
  """The first ``n`` sentences of the corpus (all of them for None), in its fixed order.

  Raises:
    ValueError: ``n`` is not a positive int or exceeds the corpus.

  Example:
    >>> from lpnum.zoo import text
    >>> len(text.sentences(1000))
    1000
    >>> text.sentences(3) == text.sentences()[:3]
    True
  """
  corpus = _all()
  if n is None:
    return list(corpus)
  if isinstance(n, bool) or not isinstance(n, int) or n < 1:
    raise ValueError(f"n={n!r} must be a positive int or None")
  if n > len(corpus):
    raise ValueError(f"n={n} exceeds the {len(corpus)} sentences of this Python's pydoc_data.topics")
  return list(corpus[:n])


def corpus_digest(items: list[str]) -> str:
  """The SHA-256 (hex, first 16 digits) of the sentences joined by newlines: names a corpus in results."""
  return hashlib.sha256("\n".join(items).encode()).hexdigest()[:16]
