"""Tests of mpq_jax.metrics: KL divergence, top-1, model sizes, compression, rank statistics."""

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from mpq_jax import metrics
from mpq_jax.spec import LayerSpec


def _numpy_kl(ref, logits):
  """mean over rows of sum p log(p / q), p = softmax(ref), q = softmax(logits)."""
  ref = np.asarray(ref, np.float64)
  logits = np.asarray(logits, np.float64)
  p = np.exp(ref - ref.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  q = np.exp(logits - logits.max(-1, keepdims=True))
  q /= q.sum(-1, keepdims=True)
  return float(np.mean(np.sum(p * np.log(p / q), axis=-1)))


# ------------------------------------------------------------ KL


def test_kl_zero_for_identical_logits():
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(16, 10)) * 5,
                       jnp.float32)
  assert float(metrics.kl_divergence(logits, logits)) == 0.0


def test_kl_zero_for_logits_shifted_per_row():
  logits = np.random.default_rng(1).normal(size=(8, 10)).astype(np.float32)
  shift = np.arange(8, dtype=np.float32)[:, None] * 3.0 - 10.0
  kl = float(metrics.kl_divergence(jnp.asarray(logits),
                                   jnp.asarray(logits + shift)))
  assert 0.0 <= kl < 1e-6


def test_kl_positive_for_different_logits_and_asymmetric():
  a = jnp.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
  b = jnp.array([[0.0, 1.0, 0.0], [3.0, 0.0, 0.0]])
  ab = float(metrics.kl_divergence(a, b))
  ba = float(metrics.kl_divergence(b, a))
  assert ab > 0.1 and ba > 0.1
  assert abs(ab - ba) > 1e-3


def test_kl_matches_hand_computation():
  ref = np.array([[1.0, 2.0, 3.0], [0.5, -0.5, 0.0]])
  logits = np.array([[3.0, 2.0, 1.0], [0.0, 0.0, 2.0]])
  # Row 0: p = softmax([1,2,3]) = [0.0900306, 0.2447285, 0.6652410] and q is
  # its reverse, so KL = sum p (log p - log q) = (0.6652410 - 0.0900306) * 2
  # = 1.1504208; row 1 from numpy.
  p0 = np.exp([1.0, 2.0, 3.0]) / np.exp([1.0, 2.0, 3.0]).sum()
  row0 = float(np.sum(p0 * (np.log(p0) - np.log(p0[::-1]))))
  assert row0 == pytest.approx(1.1504208, abs=1e-6)
  expected = _numpy_kl(ref, logits)
  assert expected == pytest.approx((row0 + _numpy_kl(ref[1:], logits[1:])) / 2)
  got = float(metrics.kl_divergence(jnp.asarray(ref, jnp.float32),
                                    jnp.asarray(logits, jnp.float32)))
  assert got == pytest.approx(expected, abs=1e-6)


def test_kl_finite_for_extreme_logits():
  ref = jnp.array([[0.0, 1e4, 0.0], [-1e4, 0.0, 1e4]], jnp.float32)
  logits = jnp.array([[1e4, 0.0, 0.0], [1e4, 0.0, -1e4]], jnp.float32)
  kl = float(metrics.kl_divergence(ref, logits))
  assert np.isfinite(kl)
  # Row 0: p is one-hot on class 1, log q_1 = -1e4 -> 1e4.
  # Row 1: p is one-hot on class 2, log q_2 = -2e4 -> 2e4. Mean 1.5e4.
  assert kl == pytest.approx(1.5e4, rel=1e-6)
  # One-hot p against itself stays exactly zero (0 * log 0 does not NaN).
  assert float(metrics.kl_divergence(ref, ref)) == 0.0


def test_kl_accepts_bfloat16():
  a = jnp.array([[1.0, 2.0, 3.0]], jnp.bfloat16)
  b = jnp.array([[3.0, 2.0, 1.0]], jnp.bfloat16)
  assert float(metrics.kl_divergence(a, b)) == pytest.approx(1.1504208,
                                                              abs=1e-5)


# ------------------------------------------------------------ top-1


def test_top1_correct_known_count():
  logits = jnp.array([
      [0.1, 0.9, 0.0],   # argmax 1, label 1: correct
      [2.0, 1.0, 3.0],   # argmax 2, label 0: wrong
      [5.0, 4.0, 4.5],   # argmax 0, label 0: correct
      [0.0, 0.0, 1.0],   # argmax 2, label 1: wrong
      [-1.0, -3.0, -2.0],  # argmax 0, label 0: correct
  ])
  labels = jnp.array([1, 0, 0, 1, 0])
  assert int(metrics.top1_correct(logits, labels)) == 3
  assert metrics.top1_percent(3, 5) == pytest.approx(60.0)
  assert metrics.top1_percent(0, 7) == 0.0


# ------------------------------------------------------------ sizes


@pytest.fixture
def spec():
  # conv kernel 3x3x1x5 = 45 weights (+5 bias), dense kernel 7x3 = 21 weights
  # (+3 bias): quantized 66, total 74, unquantized 8.
  return LayerSpec(
      names=("conv", "dense"),
      leaf_indices=(1, 3),
      shapes=((3, 3, 1, 5), (7, 3)),
      num_params=(45, 21),
      total_params=74,
  )


def test_spec_derived_properties(spec):
  assert spec.num_layers == 2
  assert spec.output_channels == (5, 3)
  np.testing.assert_array_equal(spec.num_params_array, [45, 21])


def test_weight_bits_and_compression(spec):
  # 3 * 45 + 5 * 21 = 135 + 105 = 240 bits.
  assert metrics.weight_bits([3, 5], spec) == 240
  assert metrics.weight_bits(np.array([3, 5], np.int32), spec) == 240
  # 32 * 66 / 240 = 8.8
  assert metrics.weight_compression([3, 5], spec) == pytest.approx(8.8)
  # All layers at 8 bits: 32 / 8 = 4.
  assert metrics.weight_compression([8, 8], spec) == pytest.approx(4.0)


def test_model_bytes_per_tensor_with_activations(spec):
  # ceil(135 / 8) = 17 and ceil(105 / 8) = 14 bytes of codes, one float32
  # scale per tensor (4 + 4), 8 unquantized floats (32), and a scale plus a
  # zero point per activation (2 * 4 * 2 = 16): 17 + 14 + 8 + 32 + 16 = 87.
  assert metrics.model_bytes([3, 5], spec) == 87


def test_model_bytes_per_tensor_without_activations(spec):
  # 87 - 16 = 71.
  assert metrics.model_bytes([3, 5], spec, quantize_activations=False) == 71


def test_model_bytes_per_channel(spec):
  # Scales per output channel: 5 * 4 + 3 * 4 = 32 instead of 8:
  # 17 + 14 + 32 + 32 + 16 = 111.
  assert metrics.model_bytes([3, 5], spec, per_channel=True) == 111
  # Without activations: 111 - 16 = 95.
  assert metrics.model_bytes([3, 5], spec, per_channel=True,
                             quantize_activations=False) == 95


def test_model_bytes_rounds_each_layer_up_separately():
  # Two layers of 3 weights at 3 bits: 9 bits each -> 2 bytes each (4 bytes,
  # not ceil(18 / 8) = 3), + 2 scales (8) + no unquantized params + 2 * 4 * 2.
  spec = LayerSpec(names=("a", "b"), leaf_indices=(0, 1),
                   shapes=((1, 3), (3, 1)), num_params=(3, 3), total_params=6)
  assert metrics.model_bytes([3, 3], spec) == 4 + 8 + 16
  assert metrics.model_bytes([3, 3], spec, quantize_activations=False) == 12
  # At 8 bits no rounding: 3 + 3 bytes.
  assert metrics.model_bytes([8, 8], spec, quantize_activations=False) == 14


def test_full_precision_bytes_and_compression(spec):
  assert metrics.full_precision_bytes(spec) == 296  # 74 * 4
  assert metrics.compression([3, 5], spec) == pytest.approx(296 / 87)
  assert metrics.compression([3, 5], spec, per_channel=True,
                             quantize_activations=False) == pytest.approx(
                                 296 / 95)
  # [8, 8]: 45 + 21 + 8 + 32 + 16 = 122 bytes.
  assert metrics.compression([8, 8], spec) == pytest.approx(296 / 122)


def test_more_bits_never_shrink_the_model(spec):
  sizes = [metrics.model_bytes([b, b], spec) for b in range(2, 17)]
  assert all(a < b for a, b in zip(sizes, sizes[1:]))


# ------------------------------------------------------------ Spearman


def test_spearman_monotone_increasing_and_decreasing():
  x = np.array([0.3, 1.0, 2.5, 7.0, 7.5, 100.0])
  assert metrics.spearman_correlation(x, x**3) == pytest.approx(1.0)
  assert metrics.spearman_correlation(x, np.log(x)) == pytest.approx(1.0)
  assert metrics.spearman_correlation(x, -np.exp(x / 50)) == pytest.approx(-1.0)
  assert metrics.spearman_correlation(x, x[::-1]) == pytest.approx(-1.0)


def test_spearman_known_small_value():
  # Ranks x = [0,1,2,3], y ranks = [1,0,2,3]: d = [1,1,0,0],
  # rho = 1 - 6 * 2 / (4 * 15) = 0.8.
  assert metrics.spearman_correlation([1, 2, 3, 4], [20, 10, 30, 40]) == (
      pytest.approx(0.8))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spearman_matches_scipy_with_ties(seed):
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 6, size=50).astype(float)  # many ties
  y = x + rng.integers(-3, 4, size=50)  # ties too, correlated
  expected = scipy.stats.spearmanr(x, y).statistic
  assert metrics.spearman_correlation(x, y) == pytest.approx(expected,
                                                             abs=1e-12)
  z = rng.normal(size=50)
  assert metrics.spearman_correlation(x, z) == pytest.approx(
      scipy.stats.spearmanr(x, z).statistic, abs=1e-12)


def test_spearman_constant_input_is_zero():
  assert metrics.spearman_correlation([1, 1, 1], [1, 2, 3]) == 0.0


# ------------------------------------------------------------ dominance


def test_dominated_fraction_small_example():
  sizes = [1.0, 2.0, 6.0, 4.0, 5.0]
  kls = [0.1, 0.9, 0.2, 0.4, 0.3]
  # Against (size 5, kl 0.5): (1, 0.1) and (4, 0.4) are strictly smaller and
  # lower; (2, 0.9) has higher KL, (6, 0.2) is bigger, (5, 0.3) ties on size.
  assert metrics.dominated_fraction(5.0, 0.5, sizes, kls) == pytest.approx(0.4)
  # Nothing is below the smallest, best point.
  assert metrics.dominated_fraction(1.0, 0.1, sizes, kls) == 0.0
  # Everything is below a huge, bad point.
  assert metrics.dominated_fraction(100.0, 10.0, sizes, kls) == 1.0
