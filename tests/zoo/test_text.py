"""lpnum.zoo.text: the standard library's documentation sentences, checked against the documented filter."""

from __future__ import annotations

import hashlib
import re

import pytest
from pydoc_data.topics import topics

from lpnum.zoo import text


def documented_filter(s: str) -> bool:
  """The module docstring's rule, written apart: 6-60 words, a capital first, ``.?!`` last, no ``::`` or ``>>>``,
  at least 85% letters and spaces."""
  letters = sum(1 for c in s if c.isalpha() or c == " ")
  return (6 <= len(s.split()) <= 60 and s[:1].isupper() and s[-1:] in (".", "?", "!") and "::" not in s
          and ">>>" not in s and letters >= 0.85 * len(s))


def test_at_least_1000_sentences_each_passing_the_documented_filter():
  corpus = text.sentences()
  assert len(corpus) >= 1000
  assert len(set(corpus)) == len(corpus)
  assert (text.MIN_WORDS, text.MAX_WORDS) == (6, 60)
  assert [s for s in corpus if not documented_filter(s)] == []
  assert all(s == " ".join(s.split()) for s in corpus)  # whitespace collapsed


def test_every_sentence_is_prose_of_pydoc_data_topics():
  prose = " ".join(" ".join(topics[key].split()) for key in sorted(topics))
  assert [s for s in text.sentences() if s not in prose] == []


def test_order_is_by_sha256_of_the_text():
  corpus = text.sentences()
  digests = [hashlib.sha256(s.encode()).hexdigest() for s in corpus]
  assert digests == sorted(digests)


def test_deterministic_and_every_n_a_prefix():
  first = text.sentences()
  text._all.cache_clear()  # build it again from the topics
  assert text.sentences() == first
  for n in (1, 7, 1000, len(first)):
    assert text.sentences(n) == first[:n]
  assert text.sentences(None) == first


def test_sentences_are_a_copy():
  text.sentences(3).append("changed")
  assert len(text.sentences(3)) == 3


@pytest.mark.parametrize("n", [0, -1, True, False, 2.0, "3", len(text.sentences()) + 1])
def test_bad_n_is_a_value_error_naming_it(n):
  with pytest.raises(ValueError, match=re.escape(f"n={n!r}")):
    text.sentences(n)


def test_corpus_digest():
  corpus = text.sentences(100)
  digest = text.corpus_digest(corpus)
  assert re.fullmatch(r"[0-9a-f]{16}", digest)
  assert digest == hashlib.sha256("\n".join(corpus).encode()).hexdigest()[:16]
  assert text.corpus_digest(list(corpus)) == digest
  assert text.corpus_digest(corpus[:99]) != digest
  assert text.corpus_digest(corpus[::-1]) != digest
