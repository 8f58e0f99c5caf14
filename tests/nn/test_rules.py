"""lpnum.nn.quantize_model by path rules."""

from __future__ import annotations


import flax.linen as nn
import jax
import numpy as np
import pytest

import lpnum
from lpnum import nn as lnn

from testing import data, mlp_reference


# ---- rules ---------------------------------------------------------------------------------------------------------
class _Net(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(16)(x))
    x = nn.relu(nn.Dense(16)(x))
    return nn.Dense(3, name="head")(x)


def test_rules_quantize_all_but_last():
  rules = [lnn.Rule("head", None), lnn.Rule("Dense_.*", lpnum.DotConfig.weight_only("int4"))]
  model = lnn.quantize_model(_Net(), rules)
  x = data((4, 10), 32)
  v = model.init(jax.random.key(0), x)
  y = jax.jit(model.apply)(v, x)
  np.testing.assert_allclose(np.asarray(y), mlp_reference(v["params"], x, 4), rtol=1e-5, atol=1e-5)


def test_rule_matching_nothing_is_an_error():
  model = lnn.quantize_model(_Net(), [lnn.Rule("Dense_.*", lpnum.DotConfig.fp8()), lnn.Rule("Conv_0", None)])
  with pytest.raises(ValueError, match="'Conv_0' matches no quantizable layer"):
    model.init(jax.random.key(0), data((1, 4), 0))
  with pytest.raises(TypeError, match="model must be"):
    lnn.quantize_model(object(), lpnum.DotConfig.fp8())
  with pytest.raises(TypeError, match="rules="):
    lnn.quantize_model(_Net(), "Dense_0")
  with pytest.raises(ValueError, match="pattern="):
    lnn.Rule("(", None)
