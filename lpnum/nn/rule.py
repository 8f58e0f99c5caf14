"""A rule: a regular expression over module paths and the quantized matmul config of the layers it matches."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence

from lpnum.qdot import DotConfig

__all__ = ["Rule", "as_rules", "match"]


@dataclasses.dataclass(frozen=True)
class Rule:
  """Quantize the layers whose path fully matches ``pattern`` with ``config`` (None: keep them float).

  Example:
    >>> import lpnum
    >>> from lpnum import nn as lnn
    >>> rule = lnn.Rule(r"Dense_[0-2]", lpnum.DotConfig.weight_only("int8"))
    >>> rule.matches("Dense_1"), rule.matches("Dense_3")
    (True, False)
  """

  pattern: str
  config: DotConfig | None

  def __post_init__(self) -> None:
    if not isinstance(self.pattern, str):
      raise TypeError(f"pattern={self.pattern!r} must be a str (a regular expression over module paths)")
    try:
      re.compile(self.pattern)
    except re.error as e:
      raise ValueError(f"pattern={self.pattern!r} is not a regular expression: {e}") from None
    if self.config is not None and not isinstance(self.config, DotConfig):
      raise TypeError(f"config={self.config!r} must be a DotConfig or None")

  def matches(self, path: str) -> bool:
    """Whether the rule applies to the module at ``path`` (``/``-separated)."""
    return re.fullmatch(self.pattern, path) is not None


def as_rules(rules) -> tuple[Rule, ...]:
  """Rules from Rule values, ``(pattern, config)`` pairs or a single DotConfig (every layer)."""
  if isinstance(rules, DotConfig):
    return (Rule(".*", rules),)
  if isinstance(rules, Rule):
    return (rules,)
  if isinstance(rules, str) or not isinstance(rules, Iterable):
    raise TypeError(f"rules={rules!r} must be a sequence of Rule (or (pattern, config) pairs) or a DotConfig")
  out = tuple(r if isinstance(r, Rule) else Rule(*r) for r in rules)
  if not out:
    raise ValueError("rules is empty")
  return out


def match(rules: Sequence[Rule], path: str) -> Rule | None:
  """The first rule matching ``path``, or None."""
  return next((r for r in rules if r.matches(path)), None)
