"""Quantized layers under Mesh + NamedSharding on 8 host CPU devices equal the single-device run.

The 8-device run happens in a subprocess (tests/_sharded_layers.py), since XLA_FLAGS must be set before jax starts.
Sharding splits the batch and the output features, never a contracting axis, and per-tensor amaxes reduce with max,
so the quantized values are the same; outputs and gradients agree to float32 rounding (XLA may tile the smaller
per-device dots differently).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # a subprocess that compiles every config twice: CI runs it in its slow step

HERE = os.path.dirname(__file__)
CONFIGS = ("w8a8", "fp8_delayed", "mxfp4_weights")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  out = tmp_path_factory.mktemp("sharded")
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  proc = subprocess.run([sys.executable, os.path.join(HERE, "_sharded_layers.py"), str(out)], env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  with open(out / "results.json") as f:
    results = json.load(f)
  return results, dict(np.load(out / "arrays.npz"))


@pytest.mark.parametrize("name", CONFIGS)
def test_sharded_equals_single_device(run, name):
  results, arrays = run
  assert results[name]["devices"] == 8
  assert "P(None, 'model')" in results[name]["param_specs"]
  keys = sorted(k.split("/", 2)[2] for k in arrays if k.startswith(f"{name}/single/"))
  assert len(keys) >= 7  # the output, six gradients, and the quantizer state where the config has one
  for key in keys:
    single, sharded = arrays[f"{name}/single/{key}"], arrays[f"{name}/sharded/{key}"]
    scale = max(float(np.max(np.abs(single))), 1e-30)
    np.testing.assert_allclose(sharded, single, rtol=0, atol=2e-6 * scale, err_msg=f"{name} {key}")
