"""Tests for mpq_jax/sampling.py: deterministic bit vectors and batched KL evaluation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpq_jax import activations
from mpq_jax import metrics
from mpq_jax import sampling
from mpq_jax import spec as spec_lib


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
def demo_model(make_demo_model):
  return make_demo_model(6)


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
  # A CPU without a budget gets half of the host's memory.
  host_half = sampling.host_memory_bytes() // 2 // len(jax.devices("cpu"))
  assert sampling.plan_vmap_width(
      lambda width: host_half // 3 * width, cpu, 64) == 2
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


def test_weight_tables_give_the_numbers_of_requantizing(demo_model):
  apply_fn, params, spec, images, ranges = demo_model
  bits = sampling.sample_bit_configs(3, 0, 6, spec.num_layers, (2, 8))
  build = lambda **options: sampling.make_kl_evaluator(
      apply_fn, params, spec, images, activation_ranges=ranges, chunk_size=6,
      **options)
  tables, requantized = build(), build(table_bits=())
  assert tables.uses_tables(bits) and not requantized.uses_tables(bits)
  np.testing.assert_array_equal(tables(bits), requantized(bits))
  # Each table row is the kernel quantize_params gives at that width.
  rows = sampling.quantized_weight_tables(params, spec, (3, 6))
  quantized = jax.tree.leaves(spec_lib.quantize_params(
      params, np.full(spec.num_layers, 6), spec))
  for layer, index in enumerate(spec.leaf_indices):
    assert rows[layer].shape == (2,) + spec.shapes[layer]
    np.testing.assert_array_equal(rows[layer][1], quantized[index])
  # A width outside the tables is quantized in the program instead.
  wide = bits.copy()
  wide[:, 0] = 12
  assert not tables.uses_tables(wide)
  np.testing.assert_array_equal(tables(wide), requantized(wide))
  # Tables too large for their budget are not built.
  assert build(max_table_bytes=1000).tables is None


def test_bfloat16_forward_is_close_to_float32(demo_model):
  apply_fn, params, spec, images, ranges = demo_model
  bits = np.stack([np.full(spec.num_layers, b) for b in (3, 4, 6)])
  build = lambda dtype: sampling.make_kl_evaluator(
      apply_fn, params, spec, images, activation_ranges=ranges, chunk_size=3,
      compute_dtype=dtype)(bits)
  single, half = build(jnp.float32), build(jnp.bfloat16)
  assert not np.array_equal(single, half)  # it really ran in bfloat16
  np.testing.assert_allclose(half, single, rtol=0.1)
  assert np.all(np.diff(half) < 0)


class _FakeTimings:
  """Stands for a KLEvaluator whose widths run at given speeds."""

  def __init__(self, speeds):
    self.speeds, self.tried = speeds, []

  def configs_per_second(self, width, bit_configs):
    self.tried.append(width)
    return {"width": width, "configs_per_second": self.speeds[width]}


def test_pick_vmap_width_keeps_the_fastest_and_stops_when_slower():
  # CPU-like: wider is slower at once, so only two widths are tried.
  cpu = _FakeTimings({1: 250.0, 2: 35.0, 4: 27.0, 8: 20.0})
  assert sampling.pick_vmap_width(cpu, None, [1, 2, 4, 8])[0] == 1
  assert cpu.tried == [1, 2]
  # Accelerator-like: faster up to 4, then slower.
  gpu = _FakeTimings({1: 10.0, 2: 18.0, 4: 30.0, 8: 29.0, 16: 50.0})
  width, timings = sampling.pick_vmap_width(gpu, None, [16, 8, 4, 2, 1])
  assert width == 4 and gpu.tried == [1, 2, 4, 8]
  assert [t["width"] for t in timings] == [1, 2, 4, 8]
  # With several processes every one follows process 0's timings.
  follower = _FakeTimings({1: 10.0, 2: 18.0, 4: 30.0, 8: 29.0})
  primary_speeds = iter([10.0, 5.0])
  width, timings = sampling.pick_vmap_width(
      follower, None, [1, 2, 4, 8], agree=lambda _: next(primary_speeds))
  assert width == 1 and follower.tried == [1, 2]
  assert [t["configs_per_second"] for t in timings] == [10.0, 5.0]
  assert sampling.width_candidates(13) == [1, 2, 4, 8]
  assert sampling.width_candidates(1) == [1]


def test_configs_per_second_times_a_real_width(demo_model):
  apply_fn, params, spec, images, ranges = demo_model
  evaluator = sampling.make_kl_evaluator(apply_fn, params, spec, images,
                                         activation_ranges=ranges)
  bits = sampling.sample_bit_configs(0, 0, 3, spec.num_layers, (2, 8))
  timing = evaluator.configs_per_second(2, bits)
  assert timing["width"] == 2 and timing["configs_per_second"] > 0
  assert timing["temp_bytes"] > 0 and timing["argument_bytes"] > 0
  assert evaluator.vmap_width == 1  # measuring does not change the setting
