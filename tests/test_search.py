"""Tests for mpq_jax/search.py: the paper's bit-range rule, sweep targets, the final pick."""

import numpy as np
import pytest

from mpq_jax import search


def test_bit_range_rule_on_a_typical_sweep():
  # Full precision 76.0: 2 and 3 bits collapse (<= 38.0), 4 bits drops 1.5 pp,
  # 5 bits is within 0.1 pp: b_min = 3 (largest collapsed), b_max = 5.
  top1 = {2: 0.1, 3: 30.0, 4: 74.5, 5: 75.95, 6: 76.1, 7: 76.0, 8: 76.0}
  assert search.choose_bit_range(top1, 76.0, 0.1) == (3, 5)
  # A looser tolerance accepts 4 bits.
  assert search.choose_bit_range(top1, 76.0, 2.0) == (3, 4)


def test_bit_range_rule_edge_cases():
  # Nothing collapses: b_min falls back to the smallest candidate.
  assert search.choose_bit_range({2: 60.0, 3: 70.0, 4: 76.0}, 76.0) == (2, 4)
  # Nothing keeps accuracy: b_max is the largest candidate.
  assert search.choose_bit_range({2: 1.0, 3: 10.0, 4: 50.0}, 76.0) == (3, 4)
  # Even 2 bits keeps accuracy: the range still has two widths.
  assert search.choose_bit_range({2: 76.0, 3: 76.0}, 76.0) == (2, 3)


def test_sweep_targets_span_the_samples_log_evenly():
  kl = np.geomspace(1e-4, 1.0, 1001)
  targets = search.sweep_targets(kl, 5)
  np.testing.assert_allclose(np.diff(np.log(targets)),
                             np.log(targets[1] / targets[0]))
  np.testing.assert_allclose(targets[[0, -1]], np.quantile(kl, [0.01, 0.99]))
  lower = search.sweep_targets(kl, 5, lowest=1e-6)
  assert lower[0] == pytest.approx(1e-6) and lower[-1] == targets[-1]
  with pytest.raises(ValueError, match="lower the bit range"):
    search.sweep_targets(np.zeros(10), 5)


def test_pick_smallest_within_tolerance():
  allocations = [{"bytes": 100, "top1": 75.0}, {"bytes": 80, "top1": 75.95},
                 {"bytes": 90, "top1": 76.0}, {"bytes": 50, "top1": 70.0}]
  assert search.pick_smallest_within_tolerance(allocations, 76.0, 0.1) == {
      "bytes": 80, "top1": 75.95}
  assert search.pick_smallest_within_tolerance(allocations, 80.0, 0.1) is None
