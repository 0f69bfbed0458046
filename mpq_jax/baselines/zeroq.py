"""ZeroQ-style: per-layer KL sensitivity for every bit choice, then a Pareto-optimal DP.

Sensitivity S[i, k] is the measured Omega with layer i alone at choices[k]
and every other layer at 16 bits (L x K configurations). The allocation
minimizes sum_i S[i, b_i] under the budget, by dynamic programming over size
(a multiple-choice knapsack).
"""

from __future__ import annotations

import math

import numpy as np

from mpq_jax.baselines import common

REFERENCE_BITS = 16  # "unquantized" for the other layers
DEFAULT_RESOLUTION = 20_000


def sensitivity_table(space: common.SearchSpace) -> tuple[np.ndarray,
                                                          common.SearchCost]:
  """S [L, K]: Omega with one layer quantized at each choice, the rest at 16 bits."""
  cost = common.SearchCost()
  with common.Stopwatch(cost):
    rows = []
    for layer in range(space.num_layers):
      for choice in space.table.choices:
        bits = np.full(space.num_layers, REFERENCE_BITS, np.int32)
        bits[layer] = choice
        rows.append(bits)
    table = space.kl_of(np.stack(rows)).reshape(space.num_layers, -1)
    cost.add_configurations(len(rows), space.num_images)
  return np.asarray(table, np.float64), cost


def knapsack_minimum(objective: np.ndarray, layer_bytes: np.ndarray,
                     capacity: int,
                     resolution: int = DEFAULT_RESOLUTION) -> np.ndarray:
  """argmin over choices of sum_i objective[i, k_i] s.t. sum bytes <= capacity.

  Sizes are counted in units of ceil(capacity / resolution) bytes, each layer's
  size rounded UP, so the answer never exceeds the capacity; with capacity <=
  resolution the unit is one byte and the answer is the exact optimum.

  Returns:
    int64 [L] choice indices.
  """
  unit = max(1, math.ceil(capacity / resolution))
  weights = -(-layer_bytes // unit)  # ceil
  limit = capacity // unit
  num_layers, num_choices = objective.shape
  best = np.zeros(limit + 1)  # best[c]: optimum of the layers so far within c
  choice = np.zeros((num_layers, limit + 1), np.int64)
  for layer in range(num_layers):
    candidates = np.full((num_choices, limit + 1), np.inf)
    for k in range(num_choices):
      w = int(weights[layer, k])
      if w <= limit:
        candidates[k, w:] = best[:limit + 1 - w] + objective[layer, k]
    choice[layer] = np.argmin(candidates, axis=0)
    best = candidates[choice[layer], np.arange(limit + 1)]
  if not np.isfinite(best[limit]):
    raise ValueError("no allocation fits the budget at this resolution: raise"
                     " the budget.")
  picked = np.zeros(num_layers, np.int64)
  remaining = limit
  for layer in reversed(range(num_layers)):
    picked[layer] = choice[layer, remaining]
    remaining -= int(weights[layer, picked[layer]])
  return picked


def allocate_zeroq(space: common.SearchSpace, budget: int,
                   sensitivity: np.ndarray,
                   sensitivity_cost: common.SearchCost) -> common.MethodResult:
  """Minimizes the summed sensitivity under the budget."""
  return common.minimize_under_budget("zeroq", space, budget, sensitivity,
                                      sensitivity_cost, knapsack_minimum)
