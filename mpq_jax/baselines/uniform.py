"""Uniform bits: the largest single bit-width whose model fits the budget."""

from __future__ import annotations

import numpy as np

from mpq_jax import budget as budget_lib
from mpq_jax.baselines import common


def allocate_uniform(space: common.SearchSpace,
                     budget: int) -> common.MethodResult:
  budget_lib.check_budget(space.table, budget)
  fitting = [b for b in space.table.choices
             if space.table.bytes_of(np.full(space.num_layers, b)) <= budget]
  # The smallest choice always fits once check_budget passed.
  bits = np.full(space.num_layers, max(fitting), np.int32)
  return common.MethodResult("uniform", bits, common.SearchCost())
