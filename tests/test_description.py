"""lpnum.description and the describe() of formats: every format round-trips through its description; essentials
leave out names and calibration only."""

from __future__ import annotations

import pytest

import lpnum
from lpnum import description
from lpnum.formats import ALL_FORMATS, FLOAT32, FloatFormat, Specials, format_from_description
from lpnum.scaled import presets


@pytest.mark.parametrize("fmt", [*ALL_FORMATS, FLOAT32], ids=lambda f: f.name)
def test_every_format_round_trips_through_its_description(fmt):
  back = format_from_description(fmt.describe())
  assert back == fmt and back.name == fmt.name and type(back) is type(fmt)


def test_a_format_description_states_its_fields():
  """float6_e2m3fn (OCP MX v1.0): 2 exponent bits, 3 mantissa bits, bias 1, no inf or NaN."""
  assert lpnum.formats.get_format("float6_e2m3fn").describe() == {
      "family": "FloatFormat", "exponent_bits": 2, "mantissa_bits": 3, "bias": 1, "specials": "finite",
      "signed": True, "has_subnormals": True, "name": "float6_e2m3fn"}


def test_an_unnamed_format_keeps_its_fields():
  odd = FloatFormat(exponent_bits=4, mantissa_bits=3, bias=8, specials=Specials.FN, name="mine")
  back = format_from_description(odd.describe())
  assert back == odd and back.name == "mine"


@pytest.mark.parametrize("name", list(presets.PRESETS))
def test_every_preset_round_trips(name):
  fmt = presets.preset(name, axis=0)
  assert lpnum.ScaledFormat.from_description(fmt.describe()) == fmt


def test_scaled_format_keeps_calibration_and_name():
  fmt = lpnum.ScaledFormat("int4", lpnum.per_block(64), calibration=lpnum.mse(8), asymmetric=False, name="x")
  assert lpnum.ScaledFormat.from_description(fmt.describe()) == fmt


def test_essential_drops_names_and_calibration_only():
  a = lpnum.ScaledFormat("int8", lpnum.per_channel(0), calibration=lpnum.percentile(99.0), name="a").describe()
  b = lpnum.ScaledFormat("int8", lpnum.per_channel(0)).describe()
  assert a != b and description.essential(a) == description.essential(b)
  assert description.fingerprint(a) == description.fingerprint(b)
  c = lpnum.ScaledFormat("int8", lpnum.per_channel(1)).describe()
  assert description.fingerprint(c) != description.fingerprint(b)
  assert description.differences(description.essential(c), description.essential(b)) == ["granularity.axes"]


def test_encode_decode_and_bad_input():
  d = {"type": "QArray", "shape": [2, 3]}
  assert description.decode(description.encode(d)) == d
  with pytest.raises(ValueError, match="'type'"):
    description.decode(description.encode({"shape": [1]}))
  with pytest.raises(ValueError, match="family"):
    format_from_description({"family": "Nope"})
  with pytest.raises(ValueError, match="does not describe a IntFormat"):
    format_from_description({"family": "IntFormat", "bitz": 4})
  with pytest.raises(ValueError, match="does not describe a ScaledFormat"):
    lpnum.ScaledFormat.from_description({"element": {}})
