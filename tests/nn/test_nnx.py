"""lpnum.nn.nnx: the quantizer modules for nnx layers, with their state."""

from __future__ import annotations


import numpy as np
import pytest
from flax import nnx

import lpnum
from lpnum import nn as lnn

from testing import F32, NnxNet, data, mlp_reference


# ---- nnx -----------------------------------------------------------------------------------------------------------
def test_nnx_rules_match_linen_reference():
  net = NnxNet(nnx.Rngs(0))
  params = {"Dense_0": {"kernel": net.l1.kernel[...], "bias": net.l1.bias[...]},
            "Dense_1": {"kernel": net.l2.kernel[...], "bias": net.l2.bias[...]},
            "head": {"kernel": net.head.kernel[...], "bias": net.head.bias[...]}}
  lnn.quantize_model(net, [lnn.Rule("head", None), lnn.Rule("l[12]", lpnum.DotConfig.weight_only("int4"))])
  x = data((4, 10), 33)
  y = nnx.jit(lambda m, v: m(v))(net, x)
  np.testing.assert_allclose(np.asarray(y), mlp_reference(params, x, 4), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="'nothing'"):
    lnn.quantize_model(NnxNet(nnx.Rngs(0)), [lnn.Rule("nothing", None)])


def test_nnx_delayed_scaling_and_grad():
  cfg = lpnum.DotConfig(lhs=lpnum.OperandQuant("float8_e4m3fn", scaling="delayed", history=2), rhs="float8_e4m3fn",
                        dlhs=lpnum.BackwardQuant(grad="float8_e5m2"))
  layer = nnx.Linear(4, 2, dot_general=lnn.nnx.QuantDotGeneral(cfg), rngs=nnx.Rngs(0))
  layer(np.full((1, 4), 3.0, F32))
  layer(np.full((1, 4), 5.0, F32))
  assert layer.dot_general.lhs_amax_history[...].tolist() == [5.0, 3.0]
  lnn.nnx.set_update_stats(layer, False)
  layer(np.full((1, 4), 7.0, F32))
  assert layer.dot_general.lhs_amax_history[...].tolist() == [5.0, 3.0]
  grads = nnx.grad(lambda m: m(np.ones((1, 4), F32)).sum())(layer)
  assert grads["kernel"][...].shape == (4, 2)
  with pytest.raises(ValueError, match="rngs="):
    lnn.nnx.QuantDotGeneral(lpnum.DotConfig(lhs=lpnum.OperandQuant("int8", rounding="stochastic")))
  with pytest.raises(TypeError, match="value="):
    lnn.nnx.set_update_stats(layer, 1)
