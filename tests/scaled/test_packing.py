"""Bit packing: exact bytes against a literal pure-Python reference, round trips, known answers, jit / vmap, errors.

The reference writes each row as a string of '0'/'1' characters in stream order (code i's bits, least
significant first, at positions bits*i .. bits*i + bits - 1), pads it with zeros to whole groups, and reads the
string back eight characters at a time, the first character of each byte being its bit 0. It shares no code or
structure with ``lpnum.packing``.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lpnum.packing import pack, packed_length, unpack

ALL_BITS = list(range(1, 17))


# ---- reference ------------------------------------------------------------------------------------------------
def ref_packed_length(n, bits):
  """Bytes for n codes: pad n with zero codes until the bit count is a whole number of bytes."""
  m = n
  while (m * bits) % 8:
    m += 1
  return m * bits // 8


def ref_pack_row(row, bits):
  stream = "".join(format(int(c) & ((1 << bits) - 1), f"0{bits}b")[::-1] for c in row)
  stream = stream.ljust(8 * ref_packed_length(len(row), bits), "0")
  return [int(stream[k:k + 8][::-1], 2) for k in range(0, len(stream), 8)]


def ref_unpack_row(row, bits, length):
  stream = "".join(format(int(b) & 0xFF, "08b")[::-1] for b in row)
  return [int(stream[bits * i:bits * i + bits][::-1], 2) for i in range(length)]


def _by_rows(x, axis, fn, out_len, dtype):
  """Applies ``fn`` to every 1-d row of ``x`` along ``axis``; each result has ``out_len`` entries."""
  moved = np.moveaxis(np.asarray(x), axis, -1)
  lead = moved.shape[:-1]
  rows = moved.reshape(math.prod(lead), moved.shape[-1])
  out = np.array([fn(r) for r in rows], dtype).reshape(*lead, out_len)
  return np.moveaxis(out, -1, axis)


def ref_pack(x, bits, axis=-1):
  n = np.shape(x)[axis]
  return _by_rows(x, axis, lambda r: ref_pack_row(r, bits), ref_packed_length(n, bits), np.uint8)


def ref_unpack(p, bits, length, axis=-1):
  return _by_rows(p, axis, lambda r: ref_unpack_row(r, bits, length), length, np.uint32)


def test_reference_on_hand_examples():
  # 4-bit: first code in the low nibble; 12-bit: 0xABC then 0x123 is the 24-bit stream 0x123ABC.
  assert ref_pack_row([1, 2, 3], 4) == [0x21, 0x03]
  assert ref_pack_row([0xABC, 0x123], 12) == [0xBC, 0x3A, 0x12]
  assert ref_unpack_row([0xBC, 0x3A, 0x12], 12, 2) == [0xABC, 0x123]
  assert [ref_packed_length(n, 6) for n in range(6)] == [0, 3, 3, 3, 3, 6]


# ---- jitted entry points (jax.jit caches one executable per shape, dtype and static arguments) -----------------
_pack = jax.jit(pack, static_argnames=("bits", "axis"))
_unpack = jax.jit(unpack, static_argnames=("bits", "length", "axis", "dtype"))


def _group(bits):
  return 8 // math.gcd(8, bits)


def _values(bits, full=False):
  """Every code for bits <= 8 (or with full=True); else a strided sample plus both ends and their neighbours."""
  top = 1 << bits
  if bits <= 8 or full:
    return np.arange(top, dtype=np.uint32)
  stride = top // 509 + 1  # about 500 values, hitting every bit position in varied combinations
  return np.unique(np.concatenate([np.arange(0, top, stride), [0, 1, 2, top - 3, top - 2, top - 1]]))


def _lengths(bits, full=False):
  """Row lengths: by default two that end part-way through a group (for groups of more than one code)."""
  g = _group(bits)
  if not full:
    return [g + 1, 2 * g + 3]
  return sorted({n for n in (1, g - 1, g, g + 1, 2 * g + 1, 3 * g - 1, 13) if n > 0})


def _rows(values, length, dtype):
  """``values`` laid out in rows of ``length`` codes (the last row completed from the start)."""
  count = -(-len(values) // length) * length
  return np.resize(values, count).reshape(-1, length).astype(dtype)


def _check_exhaustive(bits, full):
  dtype = np.uint8 if bits <= 8 else np.uint16
  values = _values(bits, full)
  for length in _lengths(bits, full):
    x = _rows(values, length, dtype)
    want = ref_pack(x, bits)
    got = np.asarray(_pack(x, bits=bits))
    assert got.dtype == np.uint8 and got.shape == (x.shape[0], packed_length(length, bits))
    np.testing.assert_array_equal(got, want, err_msg=f"bits={bits} length={length}")
    back = np.asarray(_unpack(got, bits=bits, length=length))
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, x)
    if not full:
      continue
    # The same codes packed along the first axis of the transpose.
    np.testing.assert_array_equal(np.asarray(_pack(x.T, bits=bits, axis=0)), want.T)
    np.testing.assert_array_equal(np.asarray(_unpack(got.T, bits=bits, length=length, axis=0)), x.T)


@pytest.mark.parametrize("bits", ALL_BITS)
def test_every_code_at_two_lengths_matches_reference_and_round_trips(bits):
  _check_exhaustive(bits, full=False)


@pytest.mark.slow
@pytest.mark.parametrize("bits", ALL_BITS)
def test_every_code_at_many_lengths_and_both_axes_matches_reference_and_round_trips(bits):
  # Every code of every width (65536 for 16 bits), seven lengths, packed along the last and the first axis.
  _check_exhaustive(bits, full=True)


# ---- properties on random shapes ------------------------------------------------------------------------------
CODE_DTYPES = [np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32]


@st.composite
def packing_cases(draw):
  bits = draw(st.integers(1, 16))
  shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=9))
  axis = draw(st.integers(-len(shape), len(shape) - 1))
  dtype = draw(st.sampled_from(CODE_DTYPES))
  x = draw(hnp.arrays(dtype, shape))  # the whole dtype range: bits above `bits` must be ignored
  return x, bits, axis


def _check_random_case(case):
  x, bits, axis = case
  n = x.shape[axis]
  p = _pack(x, bits=bits, axis=axis)
  want_shape = list(x.shape)
  want_shape[axis] = packed_length(n, bits)
  assert p.dtype == jnp.uint8 and p.shape == tuple(want_shape)
  np.testing.assert_array_equal(np.asarray(p), ref_pack(x, bits, axis))
  back = _unpack(p, bits=bits, length=n, axis=axis)
  np.testing.assert_array_equal(np.asarray(back), x.astype(np.int64) & ((1 << bits) - 1))


@settings(deadline=None, max_examples=40)
@given(packing_cases())
def test_random_shapes_round_trip_and_match_reference(case):
  _check_random_case(case)


@pytest.mark.slow
@settings(deadline=None, max_examples=300)
@given(packing_cases())
def test_random_shapes_round_trip_and_match_reference_many(case):
  _check_random_case(case)


@settings(deadline=None, max_examples=15)
@given(st.integers(1, 16), st.integers(0, 40), st.data())
def test_unpack_of_arbitrary_bytes_agrees_with_reference(bits, length, data):
  # Any bytes unpack as the reference reads them, including nonzero padding bits, which are dropped.
  size = packed_length(length, bits)
  p = data.draw(hnp.arrays(np.uint8, (2, size)))
  got = np.asarray(_unpack(p, bits=bits, length=length))
  np.testing.assert_array_equal(got, ref_unpack(p, bits, length))


# ---- known answers, derived by hand from the layout ------------------------------------------------------------
@pytest.mark.parametrize("bits, codes, packed", [
    # 4-bit: two per byte, the first code in the low nibble; an odd count pads the last high nibble with 0.
    (4, [1, 2, 3], [0x21, 0x03]),
    (4, [0xF, 0x0, 0x0, 0xF], [0x0F, 0xF0]),
    # 6-bit: stream bits 0-5 ones, 6-11 zeros, 12-17 ones, 18-23 zeros:
    # byte 0 = bits 0-5 set = 0x3F; byte 1 = stream bits 12-15 = its bits 4-7 = 0xF0; byte 2 = stream 16-17 = 0x03.
    (6, [0x3F, 0, 0x3F, 0], [0x3F, 0xF0, 0x03]),
    # 6-bit, one code: padded to a group of four, three bytes.
    (6, [0x2A], [0x2A, 0x00, 0x00]),
    # 1-bit: eight per byte, the first in bit 0: 1,0,1,1 -> bits 0, 2, 3 = 0x0D; the ninth starts a new byte.
    (1, [1, 0, 1, 1, 0, 0, 0, 0, 1], [0x0D, 0x01]),
    (1, [0, 0, 0, 0, 0, 0, 0, 1], [0x80]),
    # 2-bit: four per byte: 3 | 0 << 2 | 1 << 4 | 2 << 6 = 0x03 + 0x10 + 0x80.
    (2, [3, 0, 1, 2], [0x93]),
    (2, [1, 1], [0x05]),
    # 3-bit: codes 0..7 make the octal number 76543210 = 0xFAC688, low byte first.
    (3, [0, 1, 2, 3, 4, 5, 6, 7], [0x88, 0xC6, 0xFA]),
    # 8-bit: identity.
    (8, [0, 1, 0x7F, 0x80, 0xFF], [0, 1, 0x7F, 0x80, 0xFF]),
    # 12-bit: 0xABC, 0x123 is the stream 0x123ABC.
    (12, [0xABC, 0x123], [0xBC, 0x3A, 0x12]),
    # 16-bit: two bytes each, the low byte first.
    (16, [0x1234, 0xABCD], [0x34, 0x12, 0xCD, 0xAB]),
    (16, [0xFF00], [0x00, 0xFF]),
])
def test_known_answers(bits, codes, packed):
  dtype = np.uint8 if bits <= 8 else np.uint16
  got = pack(np.array(codes, dtype), bits)
  assert got.dtype == jnp.uint8
  assert got.tolist() == packed
  back = unpack(np.array(packed, np.uint8), bits, len(codes))
  assert back.dtype == dtype
  assert back.tolist() == codes


def test_bits_above_width_are_ignored_and_signed_codes_are_twos_complement():
  assert pack(np.array([0x31, 0xF2, 0x13], np.uint8), 4).tolist() == [0x21, 0x03]
  assert pack(np.array([-1, 1], np.int8), 4).tolist() == [0x1F]
  assert pack(np.array([-2], np.int32), 16).tolist() == [0xFE, 0xFF]
  assert pack([5, -1], 3).tolist() == [0x3D, 0x00, 0x00]  # 5 | 7 << 3, padded to a group; lists are accepted


def test_unpack_dtype():
  p = pack(np.array([0x80, 0x7F], np.uint8), 8)
  assert unpack(p, 8, 2).dtype == jnp.uint8
  assert unpack(p, 8, 2, dtype=jnp.int32).tolist() == [0x80, 0x7F]
  assert unpack(p, 8, 2, dtype=np.int8).tolist() == [-128, 127]  # exactly `bits` wide: two's complement
  assert unpack(pack(np.array([4095], np.uint16), 12), 12, 1).dtype == jnp.uint16
  assert unpack(pack(np.array([4095], np.uint16), 12), 12, 1, dtype="uint32").tolist() == [4095]


def test_other_axes_untouched_and_axis_choice():
  x = np.arange(2 * 5 * 3, dtype=np.uint8).reshape(2, 5, 3) % 32
  p = pack(x, 5, axis=1)
  assert p.shape == (2, 5, 3)  # 5 codes of 5 bits pad to a group of 8: 5 bytes
  for i in range(2):
    for k in range(3):
      np.testing.assert_array_equal(np.asarray(p[i, :, k]), np.asarray(pack(x[i, :, k], 5)))
  np.testing.assert_array_equal(np.asarray(pack(x, 5, axis=-2)), np.asarray(p))


def test_empty_arrays():
  for shape, axis in [((0,), -1), ((3, 0), 1), ((0, 7), 1), ((2, 0, 4), -1)]:
    x = np.zeros(shape, np.uint16)
    for bits in (5, 16):
      p = pack(x, bits, axis)
      want = list(shape)
      want[axis] = packed_length(shape[axis], bits)
      assert p.shape == tuple(want) and p.dtype == jnp.uint8
      back = unpack(p, bits, shape[axis], axis)
      assert back.shape == shape


# ---- transformations ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [3, 4, 12])
def test_vmap_over_leading_axis_equals_packing_each_row(bits):
  x = np.asarray(jax.random.randint(jax.random.key(bits), (5, 11), 0, 1 << bits, jnp.int32)).astype(np.uint16)
  rows = np.stack([np.asarray(pack(r, bits)) for r in x])
  got = jax.vmap(lambda r: pack(r, bits))(x)
  np.testing.assert_array_equal(np.asarray(got), rows)
  np.testing.assert_array_equal(np.asarray(jax.jit(jax.vmap(lambda r: pack(r, bits)))(x)), rows)
  back = jax.vmap(lambda r: unpack(r, bits, 11))(got)
  np.testing.assert_array_equal(np.asarray(back), x)
  # vmapped over a non-leading axis, the packed axis is still the per-example one.
  got_t = jax.vmap(lambda r: pack(r, bits), in_axes=1, out_axes=1)(x.T)
  np.testing.assert_array_equal(np.asarray(got_t), rows.T)


def test_jit_round_trip_inside_one_function():
  @functools.partial(jax.jit, static_argnums=1)
  def round_trip(x, bits):
    return unpack(pack(x, bits, axis=0), bits, x.shape[0], axis=0, dtype=x.dtype)

  x = jax.random.randint(jax.random.key(0), (13, 4), 0, 1 << 10, jnp.int32)
  np.testing.assert_array_equal(np.asarray(round_trip(x, 10)), np.asarray(x))


# ---- storage size ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", ALL_BITS)
def test_nbytes_is_the_ideal_bit_count_for_whole_groups(bits):
  g = _group(bits)
  p = pack(np.zeros((3 * g,), np.uint16), bits)
  assert p.nbytes == packed_length(3 * g, bits) == 3 * g * bits // 8
  for n in (g, 2 * g, 5 * g, 64 * g):  # shapes only: no need to compile each
    p = jax.eval_shape(functools.partial(pack, bits=bits), jax.ShapeDtypeStruct((7, n), jnp.uint16))
    assert p.shape == (7, n * bits // 8) and p.dtype == jnp.uint8
    assert packed_length(n, bits) == n * bits // 8 == math.ceil(n * bits / 8)
  # Any n: whole groups, at most one group's bytes more than the ideal.
  group_bytes = bits // math.gcd(8, bits)
  for n in range(40):
    assert packed_length(n, bits) == math.ceil(n / g) * group_bytes == ref_packed_length(n, bits)
    assert math.ceil(n * bits / 8) <= packed_length(n, bits) < math.ceil(n * bits / 8) + group_bytes


# ---- bad input ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [0, 17, -4, 4.0, True, "4", None])
def test_bad_bits(bits):
  x = np.zeros((8,), np.uint8)
  with pytest.raises(ValueError, match="bits="):
    pack(x, bits)
  with pytest.raises(ValueError, match="bits="):
    unpack(x, bits, 8)
  with pytest.raises(ValueError, match="bits="):
    packed_length(8, bits)


def test_bad_n_for_packed_length():
  for n in (-1, 2.0, None):
    with pytest.raises(ValueError, match="n="):
      packed_length(n, 4)


@pytest.mark.parametrize("axis", [2, -3, 10, 1.0, None])
def test_bad_axis(axis):
  x = np.zeros((4, 4), np.uint8)
  with pytest.raises(ValueError, match="axis="):
    pack(x, 4, axis=axis)
  with pytest.raises(ValueError, match="axis="):
    unpack(x, 4, 8, axis=axis)


@pytest.mark.parametrize("x", [np.zeros(4, np.float32), np.zeros(4, bool), jnp.zeros(4, jnp.bfloat16), [1.5, 2.0],
                               "abc"])
def test_non_integer_codes_and_packed(x):
  with pytest.raises(TypeError, match="codes"):
    pack(x, 4)
  with pytest.raises(TypeError, match="packed"):
    unpack(x, 4, 8)


def test_zero_dimensional_input():
  with pytest.raises(ValueError, match="codes is 0-d"):
    pack(np.uint8(3), 4)
  with pytest.raises(ValueError, match="packed is 0-d"):
    unpack(jnp.asarray(3, jnp.uint8), 4, 1)


def test_length_inconsistent_with_packed_size():
  p = pack(np.zeros((2, 5), np.uint8), 6)  # 5 six-bit codes: two groups of three bytes
  assert p.shape == (2, 6)
  assert unpack(p, 6, 8).shape == (2, 8)  # 8 codes also fit in 6 bytes: the padding is just returned
  with pytest.raises(ValueError, match=r"length=9 .*expected size is 9"):
    unpack(p, 6, 9)
  with pytest.raises(ValueError, match=r"length=4 .*expected size is 3"):
    unpack(p, 6, 4)
  with pytest.raises(ValueError, match=r"length=2 .*expected size is 1"):
    unpack(p, 4, 2, axis=-1)
  with pytest.raises(ValueError, match=r"length=5 .*expected size is 6"):
    unpack(p, 6, 5, axis=0)
  with pytest.raises(ValueError, match="length="):
    unpack(p, 6, -1)
  with pytest.raises(ValueError, match="length="):
    unpack(p, 6, 5.0)


def test_bad_dtype():
  p = pack(np.zeros((4,), np.uint16), 12)
  with pytest.raises(TypeError, match="dtype="):
    unpack(p, 12, 4, dtype=jnp.float32)
  with pytest.raises(ValueError, match="dtype=uint8"):
    unpack(p, 12, 4, dtype=jnp.uint8)
  with pytest.raises(ValueError, match="dtype=int8"):
    unpack(pack(np.zeros((8,), np.uint16), 9), 9, 8, dtype=jnp.int8)
