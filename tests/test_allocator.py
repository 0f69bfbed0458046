"""Tests of mpq_jax.allocator: training the KL -> bits MLP, its size penalty, queries and input checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import mpq_jax
from mpq_jax import allocator as allocator_lib

LAYER_PARAMS = np.array([100, 1000, 10000])
SENSITIVITY = np.array([10.0, 1.0, 0.1])
BIT_RANGE = (2, 6)


def _synthetic(num_samples=300, seed=0):
  """Bits uniform in [2, 6]; KL = sum_i s_i 2**(-2 b_i) times 1% noise."""
  rng = np.random.default_rng(seed)
  bits = rng.integers(BIT_RANGE[0], BIT_RANGE[1] + 1, size=(num_samples, 3))
  kl = (SENSITIVITY * 2.0 ** (-2 * bits)).sum(axis=1)
  kl *= np.exp(0.01 * rng.normal(size=num_samples))
  return kl, bits


@pytest.fixture(scope="module")
def data():
  return _synthetic()


@pytest.fixture(scope="module")
def trained(data):
  kl, bits = data
  return {
      beta: allocator_lib.train_allocator(kl, bits, LAYER_PARAMS, BIT_RANGE,
                                          beta=beta, max_epochs=1500, seed=0)
      for beta in (0.0, 5.0)
  }


def _targets(kl, count=10):
  return np.quantile(kl, np.linspace(0.05, 0.95, count))


def test_size_penalty_hand_numbers():
  predicted = jnp.array([[2.0, 4.0, 8.0], [8.0, 8.0, 8.0], [2.0, 2.0, 2.0]])
  params = jnp.array([1.0, 2.0, 3.0])
  # (2*1 + 4*2 + 8*3) / (8 * 6) = 34 / 48; all 8 bits -> 1; all 2 -> 12/48.
  np.testing.assert_allclose(
      np.asarray(allocator_lib.size_penalty(predicted, params, 8)),
      [34 / 48, 1.0, 0.25], rtol=1e-6)


def test_allocator_loss_is_mse_plus_beta_times_size():
  model = allocator_lib.AllocatorMLP(2, (2, 8), hidden=8, rngs=nnx.Rngs(0))
  inputs = jnp.array([-1.0, 0.0, 1.5])
  labels = jnp.array([[2.0, 8.0], [4.0, 4.0], [6.0, 3.0]])
  params = jnp.array([10.0, 30.0])
  predicted = np.asarray(model(inputs), np.float64)
  mse = np.mean((predicted - np.asarray(labels)) ** 2)
  size = np.mean(predicted @ np.array([10.0, 30.0]) / (8 * 40))
  for beta in (0.0, 2.5):
    got = float(allocator_lib.allocator_loss(model, inputs, labels, params,
                                             beta, 8))
    assert got == pytest.approx(mse + beta * size, rel=1e-5)


def test_mlp_output_is_centred_on_the_bit_range():
  # Hidden biases start at zero, so a standardized input of 0 (the mean
  # log-KL) gives exactly the centre (2 + 8) / 2 = 5 for every layer; the
  # output scale is the half width 3.
  model = allocator_lib.AllocatorMLP(4, (2, 8), rngs=nnx.Rngs(1))
  out = np.asarray(model(jnp.array([0.0, 1.0])))
  assert out.shape == (2, 4)
  np.testing.assert_array_equal(out[0], np.full(4, 5.0))
  raw = np.asarray(model.output(jax.nn.relu(model.hidden(jnp.ones((1, 1))))))
  np.testing.assert_allclose(out[1], 5.0 + 3.0 * raw[0], rtol=1e-6)


def test_training_history(trained):
  _, history = trained[5.0]
  assert 1 <= len(history.train_loss) <= 1500
  assert len(history.holdout_loss) == len(history.train_loss)
  assert history.holdout_loss[history.best_epoch] == min(history.holdout_loss)
  assert np.all(np.isfinite(history.train_loss))
  # Training reduces the loss from its first step.
  assert min(history.train_loss) < 0.5 * history.train_loss[0]


def test_size_penalty_lowers_predicted_size(data, trained):
  kl, _ = data
  targets = _targets(kl)
  sizes = {beta: float(np.mean(allocator.predict(targets) @ LAYER_PARAMS))
           for beta, (allocator, _) in trained.items()}
  assert sizes[5.0] < sizes[0.0]
  # The biggest layer (10000 parameters) carries most of the reduction.
  low_beta = trained[0.0][0].predict(targets)[:, 2].mean()
  high_beta = trained[5.0][0].predict(targets)[:, 2].mean()
  assert high_beta < low_beta - 0.5
  assert trained[5.0][0].beta == 5.0 and trained[0.0][0].beta == 0.0


@pytest.mark.parametrize("beta", [0.0, 5.0])
def test_lower_kl_target_gives_more_bits(data, trained, beta):
  kl, _ = data
  allocator, _ = trained[beta]
  strict, loose = np.quantile(kl, [0.05, 0.95])
  bits_strict = allocator.predict(strict)[0]
  bits_loose = allocator.predict(loose)[0]
  assert bits_strict.sum() > bits_loose.sum() + 2.0
  # The most sensitive layer is the one that tracks the target most closely.
  assert bits_strict[0] > bits_loose[0] + 1.0


def test_predict_shapes(trained):
  allocator, _ = trained[5.0]
  assert allocator.predict(1e-3).shape == (1, 3)
  assert allocator.predict([1e-3, 1e-2]).shape == (2, 3)
  assert allocator.bit_range == BIT_RANGE


def test_allocate_bits_rounds_and_clips(data, trained):
  kl, _ = data
  allocator, _ = trained[5.0]
  # Far outside the training KL as well, where raw predictions leave [2, 6].
  targets = np.concatenate([[1e-30], _targets(kl), [1e6]])
  raw = allocator.predict(targets)
  bits = mpq_jax.allocate_bits(allocator, targets)
  assert bits.dtype == np.int32
  assert bits.shape == (len(targets), 3)
  assert bits.min() >= BIT_RANGE[0] and bits.max() <= BIT_RANGE[1]
  np.testing.assert_array_equal(bits, np.clip(np.rint(raw), 2, 6))
  inside = (raw > 2) & (raw < 6)
  assert np.all(np.abs(bits[inside] - raw[inside]) <= 0.5)
  assert raw.min() < 2 or raw.max() > 6  # the clip really did something


@pytest.mark.parametrize("target", [0.0, -1e-3, np.nan, np.inf])
def test_predict_rejects_non_positive_or_non_finite(trained, target):
  allocator, _ = trained[0.0]
  with pytest.raises(ValueError, match="positive and finite"):
    allocator.predict(target)
  with pytest.raises(ValueError, match="positive and finite"):
    mpq_jax.allocate_bits(allocator, [1e-3, target])


def test_train_rejects_too_few_samples():
  kl, bits = _synthetic(3)
  with pytest.raises(ValueError, match="only 3 samples.*at least 4"):
    allocator_lib.train_allocator(kl, bits, LAYER_PARAMS, BIT_RANGE)


def test_train_rejects_nan_kl():
  kl, bits = _synthetic(8)
  kl[2] = np.nan
  with pytest.raises(ValueError, match="not finite.*raise b_min"):
    allocator_lib.train_allocator(kl, bits, LAYER_PARAMS, BIT_RANGE)
  kl[2] = np.inf
  with pytest.raises(ValueError, match="not finite"):
    allocator_lib.train_allocator(kl, bits, LAYER_PARAMS, BIT_RANGE)


def test_train_rejects_mismatched_shapes():
  kl, bits = _synthetic(8)
  with pytest.raises(ValueError, match=r"need kl \[S\] and bits \[S, L\]"):
    allocator_lib.train_allocator(kl[:7], bits, LAYER_PARAMS, BIT_RANGE)
  with pytest.raises(ValueError, match=r"need kl \[S\] and bits \[S, L\]"):
    allocator_lib.train_allocator(kl, bits[:, 0], LAYER_PARAMS, BIT_RANGE)


def test_zero_kl_is_floored_and_training_is_deterministic():
  kl, bits = _synthetic(20, seed=5)
  kl[0] = 0.0
  runs = [allocator_lib.train_allocator(kl, bits, LAYER_PARAMS, BIT_RANGE,
                                        max_epochs=30, hidden=16, seed=1)
          for _ in range(2)]
  first, second = (allocator.predict([1e-4, 1e-2]) for allocator, _ in runs)
  assert np.all(np.isfinite(first))
  assert np.isfinite(runs[0][0].log_kl_mean)
  np.testing.assert_array_equal(first, second)
  assert runs[0][1].train_loss == runs[1][1].train_loss
