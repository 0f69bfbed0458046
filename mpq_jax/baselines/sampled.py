"""The best Monte Carlo sample under the budget: what the MLP must beat."""

from __future__ import annotations

import numpy as np

from mpq_jax import budget as budget_lib
from mpq_jax.baselines import common


def allocate_best_sampled(space: common.SearchSpace, budget: int,
                          sample_bits: np.ndarray,
                          sample_kl: np.ndarray) -> common.MethodResult:
  """The lowest-KL sample that fits; costs nothing beyond the sampling itself."""
  budget_lib.check_budget(space.table, budget)
  sizes = np.array([space.table.bytes_of(bits) for bits in sample_bits])
  fitting = np.flatnonzero(sizes <= budget)
  if fitting.size == 0:
    raise ValueError(
        f"none of the {len(sample_bits)} samples fits {budget:,} bytes (the"
        f" smallest is {sizes.min():,}): raise the budget or --num_samples.")
  chosen = fitting[np.argmin(sample_kl[fitting])]
  return common.MethodResult("best_sampled",
                             np.asarray(sample_bits[chosen], np.int32),
                             common.SearchCost())
