"""Quantization-aware training through lpnum.nn with every weight estimator."""

from __future__ import annotations


import flax.linen as nn
import jax
import numpy as np
import pytest

import lpnum
from lpnum import nn as lnn

from testing import F32
from tiers import default_share


# ---- QAT with every estimator ----------------------------------------------------------------------------------
QAT_WEIGHTS = {
    "ste": lpnum.OperandQuant("int4", granularity=lpnum.per_channel()),
    "clipped_ste": lpnum.OperandQuant(lpnum.ScaledFormat("int4", calibration=lpnum.percentile(99.0)),
                                   estimator=lpnum.estimators.ClippedSTE()),
    "hadamard_ste": lpnum.OperandQuant("int4", estimator=lpnum.estimators.HadamardSTE()),
    "lsq": lpnum.OperandQuant("int4", estimator=lpnum.estimators.LSQ()),
    "dorefa_weight": lpnum.OperandQuant(None, estimator=lpnum.estimators.DoReFaWeight(bits=4)),
    "xnor": lpnum.OperandQuant(None, estimator=lpnum.estimators.XNOR()),
    "sign_ste": lpnum.OperandQuant("binary", estimator=lpnum.estimators.SignSTE()),
    "reste": lpnum.OperandQuant(None, estimator=lpnum.estimators.ReSTE()),
    "biper": lpnum.OperandQuant(None, estimator=lpnum.estimators.BiPer()),
    "bitnet_ternary": lpnum.OperandQuant("ternary", estimator=lpnum.estimators.BitNetTernary()),
    "denseshift": lpnum.OperandQuant(None, estimator=lpnum.estimators.DenseShift(bits=4)),
}


def _qat_losses(rules, steps=60):
  import optax

  rng = np.random.default_rng(0)
  x = rng.standard_normal((128, 16)).astype(F32)
  y = (x @ rng.standard_normal((16, 4)) > 0).argmax(-1)
  model = lnn.quantize_model(nn.Sequential([nn.Dense(32), nn.relu, nn.Dense(4)]), rules)
  params = model.init(jax.random.key(0), x)["params"]
  opt = optax.adam(1e-2)

  @jax.jit
  def step(p, s):
    loss, g = jax.value_and_grad(
        lambda q: optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": q}, x), y).mean())(p)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s, loss

  state, losses = opt.init(params), []
  for _ in range(steps):
    params, state, loss = step(params, state)
    losses.append(float(loss))
  return params, losses


QAT_QUICK = ("ste", "lsq", "xnor", "bitnet_ternary", "denseshift")


@pytest.mark.parametrize("name", default_share(QAT_WEIGHTS, QAT_QUICK))
def test_qat_with_every_weight_estimator_learns(name):
  """Every estimator of lpnum.estimators trains a small classifier with optax (loss falls by a third)."""
  params, losses = _qat_losses(lpnum.DotConfig(rhs=QAT_WEIGHTS[name]))
  assert np.isfinite(losses).all() and losses[-1] < 0.67 * losses[0], losses[::10]
  if name == "lsq":
    assert "rhs_step" in params["layers_0"]["QuantDotGeneral_0"]


def test_qat_with_pact_activations_learns_the_clip():
  hidden = lpnum.DotConfig(lhs=lpnum.OperandQuant(None, estimator=lpnum.estimators.PACT(bits=4, alpha=2.0)))
  params, losses = _qat_losses([lnn.Rule("layers_0", None), lnn.Rule("layers_2", hidden)])
  assert losses[-1] < 0.67 * losses[0]
  assert float(params["layers_2"]["QuantDotGeneral_0"]["lhs_alpha"]) != 2.0
