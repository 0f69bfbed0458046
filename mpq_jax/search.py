"""Choices on measured results: the paper's bit-range rule, sweep targets, the final pick."""

from __future__ import annotations

from typing import Sequence

import numpy as np

UNIFORM_CANDIDATES = tuple(range(2, 9))
DEFAULT_TOLERANCE_PP = 0.1
COLLAPSE_FRACTION = 0.5


def choose_bit_range(uniform_top1: dict[int, float], fp_top1: float,
                     tolerance_pp: float = DEFAULT_TOLERANCE_PP
                     ) -> tuple[int, int]:
  """The paper's rule from a uniform sweep {bits: top-1}.

  b_max: the smallest uniform bit-width whose top-1 is within `tolerance_pp`
  of full precision (the largest tried if none is). b_min: the largest
  uniform bit-width whose top-1 has dropped by half or more, relative to full
  precision (2 if none has). b_min < b_max always.
  """
  candidates = sorted(uniform_top1)
  keeping = [b for b in candidates
             if uniform_top1[b] >= fp_top1 - tolerance_pp]
  b_max = keeping[0] if keeping else candidates[-1]
  collapsed = [b for b in candidates
               if b < b_max
               and uniform_top1[b] <= COLLAPSE_FRACTION * fp_top1]
  b_min = collapsed[-1] if collapsed else candidates[0]
  if b_min >= b_max:
    # Even the smallest width keeps accuracy: widen upwards so that there
    # is still a choice to make per layer.
    b_max = b_min + 1
  return b_min, b_max


def sweep_targets(sample_kl: np.ndarray, count: int,
                  lowest: float | None = None) -> np.ndarray:
  """`count` KL targets spread evenly in log space over the sampled range.

  The range runs from the 1st to the 99th percentile of the samples; `lowest`
  (the KL of uniform b_max bits, the most precise point of the range) extends
  it downwards, since random vectors rarely have every layer at b_max and the
  low-KL end is where the accuracy tolerance is met.
  """
  positive = np.asarray(sample_kl)[np.asarray(sample_kl) > 0]
  if positive.size == 0:
    raise ValueError("no sampled KL is positive: the quantized model equals"
                     " full precision at every sample; lower the bit range.")
  low, high = np.quantile(positive, [0.01, 0.99])
  if lowest is not None and 0 < lowest < low:
    low = lowest
  return np.geomspace(low, high, count)


def pick_smallest_within_tolerance(allocations: Sequence[dict], fp_top1: float,
                                   tolerance_pp: float) -> dict | None:
  """The allocation with the fewest bytes whose top-1 drop is within tolerance."""
  within = [a for a in allocations if fp_top1 - a["top1"] <= tolerance_pp]
  if not within:
    return None
  return min(within, key=lambda a: (a["bytes"], -a["top1"]))
