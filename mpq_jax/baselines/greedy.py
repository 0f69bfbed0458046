"""Greedy: from b_max everywhere, drop one bit where measured KL rises least per byte."""

from __future__ import annotations

import numpy as np

from mpq_jax import budget as budget_lib
from mpq_jax.baselines import common


def allocate_greedy(space: common.SearchSpace,
                    budget: int) -> common.MethodResult:
  """Each step measures every one-bit drop and keeps the cheapest per byte saved."""
  table = space.table
  budget_lib.check_budget(table, budget)
  cost = common.SearchCost()
  bits = np.full(space.num_layers, table.choices[-1], np.int32)
  with common.Stopwatch(cost):
    current_kl = float(space.kl_of(bits[None])[0])
    cost.add_configurations(1, space.num_images)
    while table.bytes_of(bits) > budget:
      layers = np.flatnonzero(bits > table.choices[0])
      candidates = np.repeat(bits[None], len(layers), axis=0)
      candidates[np.arange(len(layers)), layers] -= 1
      kls = space.kl_of(candidates)
      cost.add_configurations(len(candidates), space.num_images)
      saved = np.array([table.bytes_of(bits) - table.bytes_of(c)
                        for c in candidates], np.float64)
      ratio = np.maximum(kls - current_kl, 0.0) / np.maximum(saved, 1.0)
      best = int(np.lexsort((-saved, ratio))[0])  # ties: save more bytes
      bits, current_kl = candidates[best], float(kls[best])
  return common.MethodResult("greedy", bits.astype(np.int32), cost)
