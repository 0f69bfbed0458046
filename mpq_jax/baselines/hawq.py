"""HAWQ-style: Hutchinson Hessian traces times quantization perturbation, then an ILP.

Omega(w + d) ~ 1/2 d^T H d at the full-precision weights, where H is the
Hessian of Omega (the Fisher information of the model's own outputs). Per
layer, 1/2 * Tr(H_i) / p_i * ||Q_b(W_i) - W_i||^2 estimates layer i's share;
scipy's HiGHS mixed-integer solver picks one bit-width per layer minimizing
the sum under the budget.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from mpq_jax import metrics
from mpq_jax import quant
from mpq_jax import spec as spec_lib
from mpq_jax.baselines import common

DEFAULT_HUTCHINSON_SAMPLES = 16


def hessian_traces(apply_fn: Callable[[Any, jax.Array], jax.Array],
                   params: Any, spec: spec_lib.LayerSpec, images: jax.Array, *,
                   num_samples: int = DEFAULT_HUTCHINSON_SAMPLES,
                   seed: int = 0) -> tuple[np.ndarray, common.SearchCost]:
  """Tr(H_ii) for every quantized kernel by Hutchinson's estimator: [L].

  Each sample probes one layer at a time (a Rademacher vector on that kernel
  alone, one Hessian-vector product by jax.jvp of jax.grad): v^T H_ii v of a
  positive semi-definite block is never negative, where one probe over all
  layers at once would add cross-layer terms that swamp small layers.
  """
  reference = jax.lax.stop_gradient(apply_fn(params, images))
  def omega(p):
    # Unclamped: at the reference the clamped KL is flat (exactly 0).
    return jnp.mean(metrics.kl_per_image(reference, apply_fn(p, images)))
  grad = jax.grad(omega)

  @jax.jit
  def block_traces(params, key):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, spec.num_layers)
    traces = []
    for layer, index in enumerate(spec.leaf_indices):
      probe = [jnp.zeros_like(leaf) for leaf in leaves]
      probe[index] = jax.random.rademacher(keys[layer], leaves[index].shape,
                                           leaves[index].dtype)
      _, hvp = jax.jvp(grad, (params,), (jax.tree.unflatten(treedef, probe),))
      traces.append(jnp.vdot(probe[index], jax.tree.leaves(hvp)[index]))
    return jnp.stack(traces)

  cost = common.SearchCost()
  with common.Stopwatch(cost):
    keys = jax.random.split(jax.random.key(seed), num_samples)
    estimates = np.stack([np.asarray(block_traces(params, key))
                          for key in keys])
  # A Hessian-vector product (forward-over-reverse) costs about two forward
  # and two backward passes per image; there is one per layer and sample.
  products = num_samples * spec.num_layers
  cost.forward_passes = 2 * products * int(images.shape[0])
  cost.backward_passes = 2 * products * int(images.shape[0])
  return estimates.mean(axis=0), cost


def perturbation_objective(params: Any, spec: spec_lib.LayerSpec,
                           traces: np.ndarray, choices, *,
                           per_channel: bool = False) -> np.ndarray:
  """[L, K]: 1/2 * Tr(H_i) / p_i * ||Q_b(W_i) - W_i||^2 for each choice b."""
  leaves = jax.tree.leaves(params)
  channel_axis = -1 if per_channel else None
  objective = np.zeros((spec.num_layers, len(choices)))
  for layer, index in enumerate(spec.leaf_indices):
    weights = jnp.asarray(leaves[index])
    for k, bits in enumerate(choices):
      error = quant.quantize_symmetric(weights, bits, channel_axis) - weights
      objective[layer, k] = float(jnp.sum(error * error))
    objective[layer] *= 0.5 * max(float(traces[layer]), 0.0) / spec.num_params[
        layer]
  return objective


def integer_program(objective: np.ndarray, layer_bytes: np.ndarray,
                    capacity: int) -> np.ndarray:
  """Exact argmin of sum objective[i, k_i] s.t. sum bytes <= capacity (HiGHS)."""
  num_layers, num_choices = objective.shape
  one_per_layer = np.kron(np.eye(num_layers), np.ones(num_choices))
  constraints = [
      scipy.optimize.LinearConstraint(one_per_layer, 1, 1),
      scipy.optimize.LinearConstraint(layer_bytes.reshape(1, -1), 0,
                                      capacity),
  ]
  result = scipy.optimize.milp(
      objective.ravel(), constraints=constraints,
      integrality=np.ones(objective.size), bounds=scipy.optimize.Bounds(0, 1))
  if not result.success:
    raise ValueError(f"the integer program found no allocation within"
                     f" {capacity:,} bytes: {result.message}")
  return np.argmax(result.x.reshape(num_layers, num_choices), axis=1)


def allocate_hawq(space: common.SearchSpace, budget: int,
                  objective: np.ndarray,
                  traces_cost: common.SearchCost) -> common.MethodResult:
  """Minimizes the Hessian-weighted perturbation under the budget."""
  return common.minimize_under_budget("hawq", space, budget, objective,
                                      traces_cost, integer_program)
