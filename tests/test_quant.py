"""Tests of mpq_jax.quant: symmetric weight and asymmetric activation quantizers, bit checks."""

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpq_jax import quant


def _levels(bits: int) -> int:
  """Codes on each side of zero of the restricted signed grid."""
  return 2 ** (bits - 1) - 1


def _dense_random(seed: int = 0, shape=(64, 64)) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape),
                     jnp.float32)


# ------------------------------------------------------------ symmetric


@pytest.mark.parametrize("bits", range(2, 9))
def test_symmetric_distinct_values_bounded_on_random_tensor(bits):
  w = _dense_random(bits)
  q = np.asarray(quant.quantize_symmetric(w, bits))
  # 2**(b-1)-1 codes each side plus zero: 3, 7, 15, ..., 255.
  assert len(np.unique(q)) <= 2 * _levels(bits) + 1
  assert len(np.unique(q)) <= 2**bits - 1


@pytest.mark.parametrize("bits", range(2, 9))
def test_symmetric_uses_every_level_on_a_spanning_tensor(bits):
  w = jnp.linspace(-1.0, 1.0, 1001)
  q = np.asarray(quant.quantize_symmetric(w, bits))
  assert len(np.unique(q)) == 2**bits - 1
  # The codes are the integers -k..k exactly.
  codes, scale = quant.symmetric_codes(w, bits)
  np.testing.assert_array_equal(
      np.unique(np.asarray(codes)), np.arange(-_levels(bits), _levels(bits) + 1))
  np.testing.assert_allclose(float(scale.ravel()[0]), 1.0 / _levels(bits),
                             rtol=1e-6)


@pytest.mark.parametrize("bits", range(2, 9))
def test_symmetric_error_at_most_half_a_step(bits):
  w = _dense_random(100 + bits)
  q = quant.quantize_symmetric(w, bits)
  scale = float(jnp.max(jnp.abs(w))) / _levels(bits)
  assert float(jnp.max(jnp.abs(q - w))) <= scale / 2 + 1e-6


@pytest.mark.parametrize("bits", range(2, 17))
def test_symmetric_is_idempotent(bits):
  w = _dense_random(200 + bits)
  q = quant.quantize_symmetric(w, bits)
  np.testing.assert_array_equal(np.asarray(quant.quantize_symmetric(q, bits)),
                                np.asarray(q))


def test_symmetric_16_bits_is_nearly_lossless():
  w = _dense_random(7) * 3.0
  q = quant.quantize_symmetric(w, 16)
  relative = float(jnp.max(jnp.abs(q - w)) / jnp.max(jnp.abs(w)))
  # Half a step of 1/32767 is 1.5e-5.
  assert relative < 1e-4
  assert relative <= 0.5 / 32767 + 1e-7


def test_symmetric_preserves_max_abs():
  # The largest |w| maps to the top code k and back to k * (max/k): exact for
  # these values, and never more than one float32 ulp off in general (the
  # division and the multiplication each round once).
  w = jnp.array([-0.75, 0.1, 0.2, 0.3], jnp.float32)
  for bits in range(2, 17):
    q = quant.quantize_symmetric(w, bits)
    assert float(q[0]) == -0.75
  rng = np.random.default_rng(3)
  for trial in range(20):
    w = jnp.asarray(rng.normal(size=(40,)) * rng.uniform(0.01, 10),
                    jnp.float32)
    max_abs = np.float32(jnp.max(jnp.abs(w)))
    for bits in range(2, 17):
      got = np.float32(jnp.max(jnp.abs(quant.quantize_symmetric(w, bits))))
      assert abs(got - max_abs) <= np.spacing(max_abs), (trial, bits)
      # The element holding the max keeps its sign.
      index = int(jnp.argmax(jnp.abs(w)))
      q = quant.quantize_symmetric(w, bits)
      assert np.sign(float(q[index])) == np.sign(float(w[index]))


def test_symmetric_per_channel_scales_each_output_channel():
  rng = np.random.default_rng(4)
  # Output channels with very different magnitudes: 1, 2, 4, ..., 128.
  magnitudes = 2.0 ** np.arange(8)
  w = jnp.asarray(rng.uniform(-1, 1, size=(3, 3, 4, 8)) * magnitudes,
                  jnp.float32)
  bits = 4
  q = quant.quantize_symmetric(w, bits, channel_axis=-1)
  _, scale = quant.symmetric_codes(w, bits, channel_axis=-1)
  assert scale.shape == (1, 1, 1, 8)
  channel_max = np.max(np.abs(np.asarray(w)), axis=(0, 1, 2))
  np.testing.assert_allclose(np.asarray(scale).ravel(), channel_max / 7,
                             rtol=1e-6)
  # Each channel's max maps onto itself (within an ulp) ...
  np.testing.assert_allclose(np.max(np.abs(np.asarray(q)), axis=(0, 1, 2)),
                             channel_max, rtol=1e-6)
  # ... and each channel's error is bounded by its own half step.
  error = np.max(np.abs(np.asarray(q - w)), axis=(0, 1, 2))
  assert np.all(error <= channel_max / 7 / 2 + 1e-6)
  # Per-tensor quantization instead wipes out the small channels: channel 0
  # (max 1 < 128/7/2 = 9.1) rounds to zero entirely.
  per_tensor = np.asarray(quant.quantize_symmetric(w, bits))
  assert np.all(per_tensor[..., 0] == 0)
  assert np.any(np.asarray(q)[..., 0] != 0)


def test_symmetric_per_channel_on_axis_zero():
  w = jnp.array([[0.5, -0.25], [4.0, 1.0]], jnp.float32)
  q = quant.quantize_symmetric(w, 2, channel_axis=0)
  # Row 0: scale 0.5, codes [1, round(-0.5)=-0]; row 1: scale 4, codes [1, 0].
  np.testing.assert_array_equal(np.asarray(q), [[0.5, 0.0], [4.0, 0.0]])


@pytest.mark.parametrize("channel_axis", [None, -1])
def test_symmetric_all_zero_stays_zero(channel_axis):
  w = jnp.zeros((3, 3, 2, 4), jnp.float32)
  for bits in (2, 8, 16):
    q = quant.quantize_symmetric(w, bits, channel_axis)
    assert not np.any(np.isnan(np.asarray(q)))
    np.testing.assert_array_equal(np.asarray(q), 0.0)


def test_symmetric_zero_channel_next_to_nonzero_channels():
  w = jnp.array([[0.0, 1.0], [0.0, -3.0]], jnp.float32)
  q = quant.quantize_symmetric(w, 3, channel_axis=-1)
  np.testing.assert_array_equal(np.asarray(q), [[0.0, 1.0], [0.0, -3.0]])


def test_symmetric_keeps_dtype():
  w = jnp.array([0.3, -1.0], jnp.bfloat16)
  assert quant.quantize_symmetric(w, 4).dtype == jnp.bfloat16


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(
    w=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3,
                                               max_side=6),
                 elements=st.floats(-100, 100, width=32)),
    bits=st.integers(2, 8),
)
def test_symmetric_properties_hypothesis(w, bits):
  w = jnp.asarray(w)
  q = np.asarray(quant.quantize_symmetric(w, bits))
  max_abs = float(np.max(np.abs(np.asarray(w))))
  scale = max_abs / _levels(bits)
  assert not np.any(np.isnan(q))
  assert np.max(np.abs(q - np.asarray(w))) <= scale / 2 + 1e-6 * max(1, max_abs)
  assert len(np.unique(q)) <= 2**bits - 1
  # Values are integer multiples of the scale.
  codes, got_scale = quant.symmetric_codes(w, bits)
  assert np.all(np.abs(np.asarray(codes)) <= _levels(bits))
  if max_abs > 0:
    np.testing.assert_allclose(
        q, np.asarray(codes) * float(got_scale.ravel()[0]), rtol=1e-6)
  else:
    assert np.all(q == 0)


# ------------------------------------------------------------ traced bits


def test_symmetric_jit_with_traced_bits_equals_eager():
  w = _dense_random(11, (5, 7))
  jitted = jax.jit(quant.quantize_symmetric)
  for bits in (2, 4, 8, 16):
    np.testing.assert_array_equal(
        np.asarray(jitted(w, jnp.int32(bits))),
        np.asarray(quant.quantize_symmetric(w, bits)))
  # One compilation serves every bit-width.
  assert jitted._cache_size() == 1


def test_symmetric_vmap_over_bits_equals_loop():
  w = _dense_random(12, (4, 6))
  bits = jnp.array([2, 3, 5, 8, 16], jnp.int32)
  batched = jax.vmap(quant.quantize_symmetric, in_axes=(None, 0))(w, bits)
  assert batched.shape == (5, 4, 6)
  for i, b in enumerate(bits.tolist()):
    np.testing.assert_array_equal(np.asarray(batched[i]),
                                  np.asarray(quant.quantize_symmetric(w, b)))
  # Different bit-widths really give different tensors.
  assert not np.array_equal(np.asarray(batched[0]), np.asarray(batched[-1]))


def test_asymmetric_vmap_over_bits_equals_loop():
  x = jnp.linspace(-1.0, 3.0, 37)
  bits = jnp.array([2, 4, 8], jnp.int32)
  batched = jax.vmap(quant.quantize_asymmetric,
                     in_axes=(None, 0, None, None))(x, bits, -0.5, 2.5)
  for i, b in enumerate(bits.tolist()):
    np.testing.assert_array_equal(
        np.asarray(batched[i]),
        np.asarray(quant.quantize_asymmetric(x, b, -0.5, 2.5)))


# ------------------------------------------------------------ asymmetric


@pytest.mark.parametrize("low,high", [(0.0, 6.0), (-0.3, 1.0), (-2.0, -0.5),
                                      (0.5, 4.0), (-1.0, 3.0)])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_asymmetric_zero_is_exact(bits, low, high):
  x = jnp.array([0.0, -0.0], jnp.float32)
  q = quant.quantize_asymmetric(x, bits, low, high)
  np.testing.assert_array_equal(np.asarray(q), [0.0, 0.0])


@pytest.mark.parametrize("low,high", [(0.0, 6.0), (-0.3, 1.0), (-2.0, -0.5),
                                      (0.5, 4.0), (-1.0, 3.0), (-5.0, 0.2)])
@pytest.mark.parametrize("bits", [2, 3, 8])
def test_asymmetric_range_and_error(bits, low, high):
  lo, hi = min(low, 0.0), max(high, 0.0)
  step = (hi - lo) / (2**bits - 1)
  x = jnp.linspace(lo - 2.0, hi + 2.0, 2001)
  q = np.asarray(quant.quantize_asymmetric(x, bits, low, high))
  # The zero point is rounded to an integer code, which moves the grid's ends
  # by at most half a step (the usual "nudged" range, as in TF FakeQuant).
  assert q.min() >= lo - step / 2 - 1e-6
  assert q.max() <= hi + step / 2 + 1e-6
  assert len(np.unique(q)) <= 2**bits
  inside = (np.asarray(x) >= lo) & (np.asarray(x) <= hi)
  error = np.abs(q - np.asarray(x))[inside]
  assert error.max() <= step / 2 + 1e-5


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_asymmetric_output_inside_range_when_zero_point_is_exact(bits):
  # [0, 6] and [-1, 2**b - 2] have integral zero points: no nudging at all.
  x = jnp.linspace(-10.0, 300.0, 5001)
  q = np.asarray(quant.quantize_asymmetric(x, bits, 0.0, 6.0))
  assert q.min() == 0.0 and q.max() == pytest.approx(6.0, abs=1e-6)
  high = float(2**bits - 2)
  q = np.asarray(quant.quantize_asymmetric(x, bits, -1.0, high))
  assert q.min() == -1.0 and q.max() == high


def test_asymmetric_nudged_range_known_values():
  # low=-0.3, high=1, 2 bits: scale 1.3/3, zero point round(0.6923) = 1, so
  # the grid is {-1, 0, 1, 2} * 0.43333: -0.3 goes to -0.4333 (below low),
  # 1.0 to 0.8667 (error 0.133 < half a step 0.2167).
  q = quant.quantize_asymmetric(jnp.array([-0.3, 0.0, 0.3, 1.0, 5.0]), 2,
                                -0.3, 1.0)
  s = 1.3 / 3
  np.testing.assert_allclose(np.asarray(q), [-s, 0.0, s, 2 * s, 2 * s],
                             rtol=1e-6)


def test_asymmetric_8_bits_over_0_6_known_values():
  # scale = 6/255 = 0.0235294..., zero point 0.
  #   -1.0  -> code clip(-42.5) = 0        -> 0
  #   0.01  -> round(0.425)  = 0           -> 0
  #   0.02  -> round(0.85)   = 1           -> 6/255   = 0.02352941
  #   0.5   -> round(21.25)  = 21          -> 126/255 = 0.49411765
  #   1.1   -> round(46.75)  = 47          -> 282/255 = 1.10588235
  #   5.99  -> round(254.575)= 255         -> 6.0
  #   7.0   -> clip(297.5)   = 255         -> 6.0
  x = jnp.array([-1.0, 0.01, 0.02, 0.5, 1.1, 5.99, 7.0], jnp.float32)
  q = quant.quantize_asymmetric(x, 8, 0.0, 6.0)
  np.testing.assert_allclose(
      np.asarray(q),
      [0.0, 0.0, 0.02352941, 0.49411765, 1.10588235, 6.0, 6.0], atol=1e-6)


def test_asymmetric_widens_a_positive_range_to_zero():
  # [2, 4] is widened to [0, 4]: 2 bits gives the grid {0, 4/3, 8/3, 4}.
  # 0.5 -> round(0.375) = 0; 0.7 -> round(0.525) = 1; 1.9 -> round(1.425) = 1;
  # 2.1 -> round(1.575) = 2; 3.9 -> round(2.925) = 3.
  x = jnp.array([0.5, 0.7, 1.9, 2.1, 3.9], jnp.float32)
  q = quant.quantize_asymmetric(x, 2, 2.0, 4.0)
  np.testing.assert_allclose(np.asarray(q), [0.0, 4 / 3, 4 / 3, 8 / 3, 4.0],
                             rtol=1e-6)


def test_asymmetric_degenerate_range_has_no_nan():
  q = quant.quantize_asymmetric(jnp.array([0.0, 0.25, -1.0]), 8, 0.0, 0.0)
  assert not np.any(np.isnan(np.asarray(q)))
  np.testing.assert_array_equal(np.asarray(q)[[0, 2]], [0.0, 0.0])


def test_asymmetric_degenerate_range_clips_to_zero():
  q = quant.quantize_asymmetric(jnp.array([0.0, 1.0, -1.0]), 8, 0.0, 0.0)
  assert not np.any(np.isnan(np.asarray(q)))
  np.testing.assert_array_equal(np.asarray(q), [0.0, 0.0, 0.0])


# ------------------------------------------------------------ check_weight_bits


def test_check_weight_bits_accepts_and_converts():
  out = quant.check_weight_bits([2.0, 8.0, 16.0], 3)
  assert out.dtype == np.int32
  np.testing.assert_array_equal(out, [2, 8, 16])
  out = quant.check_weight_bits(np.array([[3, 4], [5, 6]]), 2,
                                bit_range=(3, 6))
  np.testing.assert_array_equal(out, [[3, 4], [5, 6]])


def test_check_weight_bits_wrong_length():
  with pytest.raises(ValueError, match=r"shape \(2,\).* 3 quantized layers"):
    quant.check_weight_bits([4, 4], 3)
  with pytest.raises(ValueError, match="one bit-width per layer"):
    quant.check_weight_bits(4, 1)


def test_check_weight_bits_one_bit():
  with pytest.raises(ValueError, match="bit-width 1 is below 2.*at least 2 bits"):
    quant.check_weight_bits([4, 1, 8], 3)
  with pytest.raises(ValueError, match="at least 2 bits"):
    quant.check_weight_bits([0, 4], 2)


def test_check_weight_bits_above_16():
  with pytest.raises(ValueError, match="bit-width 17 is above 16"):
    quant.check_weight_bits([4, 17], 2)


def test_check_weight_bits_outside_bit_range():
  with pytest.raises(ValueError, match=r"outside the bit range \[3, 6\]"):
    quant.check_weight_bits([3, 7], 2, bit_range=(3, 6))
  with pytest.raises(ValueError, match=r"outside the bit range \[3, 6\]"):
    quant.check_weight_bits([2, 6], 2, bit_range=(3, 6))


def test_check_weight_bits_non_integer_floats():
  with pytest.raises(ValueError, match="whole numbers"):
    quant.check_weight_bits([4.0, 4.5], 2)
  with pytest.raises(ValueError, match="allocate_bits"):
    quant.check_weight_bits(np.array([3.2, 4.0], np.float32), 2)


def test_symmetric_max_code_values():
  np.testing.assert_array_equal(
      np.asarray(quant.symmetric_max_code(jnp.arange(2, 9))),
      [1, 3, 7, 15, 31, 63, 127])
  assert float(quant.symmetric_max_code(16)) == 32767.0
