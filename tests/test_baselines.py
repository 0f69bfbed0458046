"""Tests for mpq_jax/budget.py and mpq_jax/baselines: exact optima, budgets always met."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpq_jax import allocator as allocator_lib
from mpq_jax import baselines
from mpq_jax import budget as budget_lib
from mpq_jax import metrics
from mpq_jax import sampling
from mpq_jax import spec as spec_lib
from mpq_jax.baselines import hawq as hawq_lib

BIT_RANGE = (2, 4)  # 3 choices; 4 layers: 81 configurations in all


def tiny_apply(params, x):
  for name in ("l0", "l1", "l2"):
    x = jax.nn.relu(x @ params[name]["kernel"] + params[name]["bias"])
  return x @ params["l3"]["kernel"] + params["l3"]["bias"]


@pytest.fixture(scope="module")
def tiny():
  keys = jax.random.split(jax.random.key(0), 5)
  shapes = {"l0": (8, 16), "l1": (16, 16), "l2": (16, 16), "l3": (16, 4)}
  params = {name: {"kernel": jax.random.normal(k, shape) / np.sqrt(shape[0]),
                   "bias": jnp.zeros(shape[1])}
            for k, (name, shape) in zip(keys, shapes.items())}
  images = jax.random.normal(keys[4], (32, 8))
  spec = spec_lib.build_layer_spec(tiny_apply, params, images[:1])
  kl_of = sampling.make_kl_evaluator(tiny_apply, params, spec, images,
                                     chunk_size=27)
  table = budget_lib.size_table(spec, BIT_RANGE, quantize_activations=False)
  space = baselines.SearchSpace(table, kl_of, num_images=32)
  every = np.array(list(itertools.product(range(2, 5), repeat=4)), np.int32)
  return params, images, spec, space, every


def test_size_table_matches_model_bytes(tiny):
  _, _, spec, space, every = tiny
  for bits in every:
    assert space.table.bytes_of(bits) == metrics.model_bytes(
        bits, spec, quantize_activations=False)
  assert space.table.smallest == space.table.bytes_of([2, 2, 2, 2])
  assert space.table.largest == space.table.bytes_of([4, 4, 4, 4])


def budgets_to_try(space):
  return np.linspace(space.table.smallest, space.table.largest, 7).astype(int)


def enumerated_optimum(objective, space, every, budget):
  rows = np.arange(objective.shape[0])
  best = min((objective[rows, bits - 2].sum(), tuple(bits)) for bits in every
             if space.table.bytes_of(bits) <= budget)
  return best[0]


def assert_exact_optimum(space, every, objective, allocate, rtol):
  """allocate(budget) meets every budget and equals the enumerated optimum."""
  rows = np.arange(objective.shape[0])
  for budget in budgets_to_try(space):
    result = allocate(int(budget))
    assert space.table.bytes_of(result.bits) <= budget
    np.testing.assert_allclose(
        objective[rows, result.bits - 2].sum(),
        enumerated_optimum(objective, space, every, budget), rtol=rtol)


def test_dynamic_program_finds_the_exact_optimum(tiny):
  _, _, _, space, every = tiny
  sensitivity, cost = baselines.sensitivity_table(space)
  assert sensitivity.shape == (4, 3) and cost.configurations == 12
  # 4 bits diverge less than 2 bits in every layer (3 bits can be noisy).
  assert np.all(sensitivity[:, -1] < sensitivity[:, 0])
  assert_exact_optimum(space, every, sensitivity, lambda budget: (
      baselines.allocate_zeroq(space, budget, sensitivity, cost)), rtol=1e-12)


def test_integer_program_finds_the_exact_optimum(tiny):
  params, images, spec, space, every = tiny
  traces, cost = baselines.hessian_traces(tiny_apply, params, spec, images,
                                          num_samples=4)
  assert np.all(traces > 0) and cost.backward_passes > 0
  objective = hawq_lib.perturbation_objective(params, spec, traces,
                                              space.table.choices)
  assert_exact_optimum(space, every, objective, lambda budget: (
      baselines.allocate_hawq(space, budget, objective, cost)), rtol=1e-9)


def test_hutchinson_matches_the_exact_hessian_trace(tiny):
  params, images, spec, _, _ = tiny
  traces, _ = baselines.hessian_traces(tiny_apply, params, spec, images,
                                       num_samples=200, seed=1)
  reference = tiny_apply(params, images)
  def omega_of_last(kernel):
    changed = {**params, "l3": {**params["l3"], "kernel": kernel}}
    return jnp.mean(metrics.kl_per_image(reference, tiny_apply(changed,
                                                               images)))
  kernel = params["l3"]["kernel"]
  hessian = jax.hessian(omega_of_last)(kernel).reshape(kernel.size, -1)
  np.testing.assert_allclose(traces[3], np.trace(hessian), rtol=0.15)


def test_no_method_ever_exceeds_its_budget(tiny):
  params, images, spec, space, _ = tiny
  sensitivity, sensitivity_cost = baselines.sensitivity_table(space)
  traces, traces_cost = baselines.hessian_traces(tiny_apply, params, spec,
                                                 images, num_samples=2)
  objective = hawq_lib.perturbation_objective(params, spec, traces,
                                              space.table.choices)
  sample_bits = sampling.sample_bit_configs(0, 0, 60, 4, BIT_RANGE, "graded")
  sample_kl = space.kl_of(sample_bits)
  trained, _ = allocator_lib.train_allocator(
      sample_kl, sample_bits, spec.num_params_array, BIT_RANGE,
      max_epochs=300)
  smallest_sample = min(space.table.bytes_of(b) for b in sample_bits)
  for budget in budgets_to_try(space):
    budget = int(budget)
    if budget < smallest_sample:
      with pytest.raises(ValueError, match="none of the 60 samples fits"):
        baselines.allocate_best_sampled(space, budget, sample_bits, sample_kl)
    else:
      bits = baselines.allocate_best_sampled(space, budget, sample_bits,
                                             sample_kl).bits
      assert space.table.bytes_of(bits) <= budget
    answers = [
        baselines.allocate_uniform(space, budget).bits,
        baselines.allocate_greedy(space, budget).bits,
        baselines.allocate_zeroq(space, budget, sensitivity, sensitivity_cost).bits,
        baselines.allocate_hawq(space, budget, objective, traces_cost).bits,
        allocator_lib.allocate_for_budget(trained, space.table, budget,
                                          sensitivity),
    ]
    for bits in answers:
      assert space.table.bytes_of(bits) <= budget
      assert np.all((bits >= 2) & (bits <= 4))


def test_greedy_measures_and_stops_at_the_budget(tiny):
  _, _, _, space, _ = tiny
  budget = int(budgets_to_try(space)[3])
  result = baselines.allocate_greedy(space, budget)
  assert space.table.bytes_of(result.bits) <= budget
  # It stops at the first step that fits: one more bit anywhere is over.
  assert result.cost.configurations > 1
  assert result.cost.forward_passes == 32 * result.cost.configurations
  assert result.cost.seconds > 0


def test_repair_fits_and_uses_the_room_left(tiny):
  _, _, _, space, _ = tiny
  table = space.table
  cost = np.tile([3.0, 2.0, 1.0], (4, 1))
  budget = table.bytes_of([3, 3, 3, 3])
  too_big = budget_lib.repair_to_budget([4, 4, 4, 4], table, budget, cost)
  assert table.bytes_of(too_big) <= budget
  too_small = budget_lib.repair_to_budget([2, 2, 2, 2], table, budget, cost)
  assert table.bytes_of(too_small) <= budget
  # No single layer can gain a bit without breaking the budget.
  for layer in range(4):
    if too_small[layer] < 4:
      raised = too_small.copy()
      raised[layer] += 1
      assert table.bytes_of(raised) > budget


def test_budgets_from_megabytes_or_compression(tiny):
  _, _, spec, space, _ = tiny
  full = metrics.full_precision_bytes(spec)
  table = space.table
  assert budget_lib.budget_bytes(table, full_precision_bytes=full,
                                 budget_mb=0.001) == 1000
  assert budget_lib.budget_bytes(table, full_precision_bytes=full,
                                 compression=4) == full // 4
  with pytest.raises(ValueError, match="exactly one of"):
    budget_lib.budget_bytes(table, full_precision_bytes=full)
  with pytest.raises(ValueError, match="exactly one of"):
    budget_lib.budget_bytes(table, full_precision_bytes=full, budget_mb=1,
                            compression=2)


def test_an_impossible_budget_names_the_smallest_reachable_size(tiny):
  _, _, spec, space, _ = tiny
  smallest = space.table.smallest
  message = f"smallest model in the bit range .* is {smallest:,} bytes"
  with pytest.raises(ValueError, match=message):
    baselines.allocate_greedy(space, smallest - 1)
  with pytest.raises(ValueError, match=message):
    budget_lib.budget_bytes(space.table,
                            full_precision_bytes=metrics.full_precision_bytes(
                                spec), compression=1000)
  for method in (baselines.allocate_uniform,):
    with pytest.raises(ValueError, match="cannot be met"):
      method(space, smallest - 1)
