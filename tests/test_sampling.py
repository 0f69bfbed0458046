"""Tests for mpq_jax/sampling.py: deterministic bit vectors and batched KL evaluation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mpq_jax import activations
from mpq_jax import metrics
from mpq_jax import nnx_adapter
from mpq_jax import sampling
from mpq_jax import spec as spec_lib
from mpq_jax.models import demo_cnn


@pytest.mark.parametrize("sampler", sampling.SAMPLERS)
def test_vector_j_depends_only_on_seed_and_j(sampler):
  whole = sampling.sample_bit_configs(3, 0, 25, 7, (2, 6), sampler)
  pieces = np.concatenate([
      sampling.sample_bit_configs(3, 0, 10, 7, (2, 6), sampler),
      sampling.sample_bit_configs(3, 10, 1, 7, (2, 6), sampler),
      sampling.sample_bit_configs(3, 11, 14, 7, (2, 6), sampler)])
  np.testing.assert_array_equal(whole, pieces)
  assert whole.dtype == np.int32 and whole.shape == (25, 7)
  assert not np.array_equal(
      whole, sampling.sample_bit_configs(4, 0, 25, 7, (2, 6), sampler))


@pytest.mark.parametrize("sampler", sampling.SAMPLERS)
def test_every_bit_width_in_range_is_drawn(sampler):
  bits = sampling.sample_bit_configs(0, 0, 2000, 9, (3, 6), sampler)
  assert sorted(np.unique(bits).tolist()) == [3, 4, 5, 6]


def test_uniform_sampler_is_uniform_per_layer():
  bits = sampling.sample_bit_configs(0, 0, 4000, 5, (2, 5), "uniform")
  shares = np.stack([np.mean(bits == b, axis=0) for b in range(2, 6)])
  np.testing.assert_allclose(shares, 0.25, atol=0.03)


def test_graded_sampler_reaches_the_precise_end():
  # With 9 layers in [2, 5], independent draws put every layer at 4 or 5
  # with probability 0.5**9 (0.2%); the graded floor makes it common, and a
  # floor at b_max (1 in 4) gives the all-b_max anchor vector.
  uniform = sampling.sample_bit_configs(0, 0, 3000, 9, (2, 5), "uniform")
  graded = sampling.sample_bit_configs(0, 0, 3000, 9, (2, 5), "graded")
  assert np.mean(np.all(uniform >= 4, axis=1)) < 0.01
  assert np.mean(np.all(graded >= 4, axis=1)) > 0.4
  np.testing.assert_allclose(np.mean(np.all(graded == 5, axis=1)), 0.25,
                             atol=0.03)
  assert np.mean(np.all(uniform == 5, axis=1)) < 0.001


def test_bad_ranges_and_samplers_name_the_fix():
  with pytest.raises(ValueError, match="at least 2 bits"):
    sampling.sample_bit_configs(0, 0, 4, 3, (1, 4))
  with pytest.raises(ValueError, match="b_min <= b_max"):
    sampling.sample_bit_configs(0, 0, 4, 3, (6, 4))
  with pytest.raises(ValueError, match="--bit_range=2,8"):
    sampling.check_bit_range("2-8")
  with pytest.raises(ValueError, match="unknown sampler 'sobol'"):
    sampling.sample_bit_configs(0, 0, 4, 3, (2, 4), "sobol")
  with pytest.raises(ValueError, match="chunk size must be >= 1"):
    list(sampling.chunk_starts(10, 0))


def test_chunk_starts_tile_the_samples():
  assert list(sampling.chunk_starts(10, 4)) == [(0, 4), (4, 4), (8, 2)]


@pytest.fixture(scope="module")
def demo_model():
  apply_fn, params = nnx_adapter.functional_model(
      demo_cnn.DemoCNN(rngs=nnx.Rngs(0)))
  images = jax.random.normal(jax.random.key(1), (6, 28, 28, 1))
  spec = spec_lib.build_layer_spec(apply_fn, params, images[:1])
  ranges = activations.calibrate_activation_ranges(apply_fn, params, spec,
                                                   images)
  return apply_fn, params, spec, images, ranges


def test_batched_evaluation_equals_a_loop_of_single_ones(demo_model):
  apply_fn, params, spec, images, ranges = demo_model
  bits = sampling.sample_bit_configs(0, 0, 7, spec.num_layers, (2, 8))
  batched = sampling.make_kl_evaluator(apply_fn, params, spec, images,
                                       activation_ranges=ranges, chunk_size=3,
                                       vmap_width=2)(bits)
  single = sampling.make_kl_evaluator(apply_fn, params, spec, images,
                                      activation_ranges=ranges, chunk_size=1)
  looped = np.concatenate([single(row[None]) for row in bits])
  np.testing.assert_allclose(batched, looped, rtol=1e-5, atol=1e-8)
  # And both equal the definition, computed eagerly.
  quantized_apply = activations.make_quantized_apply(
      apply_fn, spec, activation_ranges=ranges)
  reference = apply_fn(params, images)
  direct = [float(metrics.kl_divergence(
      reference, quantized_apply(params, jnp.asarray(row), images)))
            for row in bits]
  np.testing.assert_allclose(batched, direct, rtol=1e-4, atol=1e-7)
  assert np.all(batched > 0)


def test_more_bits_means_less_divergence(demo_model):
  apply_fn, params, spec, images, ranges = demo_model
  kl_of = sampling.make_kl_evaluator(apply_fn, params, spec, images,
                                     activation_ranges=None, chunk_size=4)
  uniform = np.stack([np.full(spec.num_layers, b) for b in (2, 4, 8, 16)])
  kl = kl_of(uniform)
  assert np.all(np.diff(kl) < 0)
  assert kl[-1] < 1e-6
  assert kl_of(uniform[:0]).shape == (0,)


def test_evaluator_rejects_bad_bits_and_empty_calibration(demo_model):
  apply_fn, params, spec, images, _ = demo_model
  kl_of = sampling.make_kl_evaluator(apply_fn, params, spec, images)
  with pytest.raises(ValueError, match="9 quantized layers"):
    kl_of(np.full((2, 8), 4))
  with pytest.raises(ValueError, match="at least 2 bits"):
    kl_of(np.full((1, 9), 1))
  with pytest.raises(ValueError, match="calibration set is empty"):
    sampling.make_kl_evaluator(apply_fn, params, spec, images[:0])


def test_vmap_width_is_planned_from_the_memory_budget(demo_model):
  apply_fn, params, spec, images, ranges = demo_model
  cpu = jax.devices()[0]
  linear = lambda width: 1000 + 500 * width  # scratch bytes at a width
  assert sampling.plan_vmap_width(linear, cpu, 64) == 1  # CPU, no budget
  assert sampling.plan_vmap_width(linear, cpu, 64,
                                  memory_budget_bytes=1000 + 500 * 8) == 8
  assert sampling.plan_vmap_width(linear, cpu, 64,
                                  memory_budget_bytes=1000 + 500 * 11) == 8
  assert sampling.plan_vmap_width(linear, cpu, 64,
                                  memory_budget_bytes=10) == 1
  assert sampling.plan_vmap_width(linear, cpu, 6,
                                  memory_budget_bytes=10**9) == 4
  assert sampling.plan_vmap_width(linear, cpu, 64, memory_budget_bytes=10**9,
                                  max_width=16) == 16
  # The evaluator plans with the compiled program's own memory analysis,
  # and a planned width changes no number.
  planned = sampling.make_kl_evaluator(
      apply_fn, params, spec, images, activation_ranges=ranges, chunk_size=8,
      vmap_width=None, memory_budget_bytes=10**9)
  fixed = sampling.make_kl_evaluator(
      apply_fn, params, spec, images, activation_ranges=ranges, chunk_size=8)
  bits = sampling.sample_bit_configs(5, 0, 8, spec.num_layers, (2, 8))
  np.testing.assert_allclose(planned(bits), fixed(bits), rtol=1e-5)
