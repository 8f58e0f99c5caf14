"""The typed quantized matmul config: DotConfig, OperandQuant, BackwardQuant (validation, resolution)."""

from __future__ import annotations


import pytest

import lpnum
from lpnum.kernels import accumulate



# ---- configs ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    (dict(fmt=3), "fmt="), (dict(fmt="int8", granularity="row"), "granularity="),
    (dict(fmt="int8", granularity=0), "granularity="), (dict(fmt="int8", scaling="later"), "scaling="),
    (dict(fmt="int8", scaling="delayed", granularity=lpnum.per_channel()), "granularity="),
    (dict(fmt="int8", history=0), "history="), (dict(fmt="int8", estimator="ste"), "estimator="),
    (dict(fmt="int8", estimator=lpnum.estimators.SignSTE()), "quantizes to binary"), (dict(fmt=None), "fmt=None"),
    (dict(fmt=None, estimator=lpnum.estimators.PACT(), granularity=lpnum.per_channel()), "granularity="),
    (dict(fmt="int8", granularity="channel"), "lpnum.per_channel()"),
    (dict(fmt="float8_e4m3fn", estimator=lpnum.estimators.LSQ()), "integer format"),
    (dict(fmt="int8", estimator=lpnum.estimators.LSQ(), scaling="static"), "LSQ"),
    (dict(fmt="int8", rounding="up"), "rounding="),
    (dict(fmt="nvfp4", granularity=lpnum.per_block(32)), "nvfp4"), (dict(fmt="mxfp4_e2m1", granularity=lpnum.per_channel()), "block"),
    (dict(fmt="int8", scaling="none", granularity=lpnum.per_channel()), "granularity="),
    (dict(fmt="nofmt"), "nofmt"),
])
def test_tensor_quant_rejects(kwargs, match):
  with pytest.raises((ValueError, TypeError), match=match):
    lpnum.OperandQuant(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(lhs="int8", rhs="int8", engine="gpu"), "engine="),
    (dict(lhs="int8", rhs="int8", rotate="yes"), "rotate="),
    (dict(lhs=None, rhs="int8", engine="int"), "lhs must be quantized"),
    (dict(lhs="int8", rhs=lpnum.OperandQuant("int8", granularity=lpnum.per_block(32)), engine="int"), "granularity"),
    (dict(lhs="int8", rhs="float8_e4m3fn", engine="int"), "like with like"),
    (dict(lhs="int16", rhs="int16", engine="int"), "int16"),
    (dict(lhs="float8_e4m3fn", rhs="float8_e4m3fn", accumulator=accumulate.IntAccumulator(16)), "IntAccumulator"),
    (dict(rhs="int8", accumulator=accumulate.FloatAccumulator.ieee(5, 6)), "both lhs and rhs"),
    (dict(lhs="int8", accumulator="int16"), "accumulator="),
    (dict(lhs="int8", dlhs="float8_e5m2"), "dlhs="),
    (dict(lhs=3), "lhs="),
])
def test_quant_config_rejects(kwargs, match):
  with pytest.raises((ValueError, TypeError), match=match):
    lpnum.DotConfig(**kwargs)


def test_backward_rejects_stateful_quantizers():
  with pytest.raises(ValueError, match="grad.scaling"):
    lpnum.BackwardQuant(grad=lpnum.OperandQuant("int8", scaling="delayed"))
  with pytest.raises(ValueError, match="operand.estimator"):
    lpnum.BackwardQuant(grad="int8", operand=lpnum.OperandQuant("int8", estimator=lpnum.estimators.ClippedSTE()))


def test_configs_are_hashable_static_values():
  a, b = lpnum.DotConfig.fp8(), lpnum.DotConfig.fp8()
  assert a == b and hash(a) == hash(b)
  assert lpnum.OperandQuant("mxfp4_e2m1").rhs_format == lpnum.mx.format("mxfp4_e2m1", axis=0)
  assert lpnum.OperandQuant("nvfp4").lhs_format == lpnum.nvfp4.format(axis=1)
  assert lpnum.OperandQuant("int8", lpnum.per_block(16)).lhs_format.granularity == lpnum.per_block(16, axis=1)
  assert lpnum.OperandQuant("int8", lpnum.per_channel()).lhs_format.granularity == lpnum.per_channel(0)
