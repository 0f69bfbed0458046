"""Size budgets: bytes per layer at each bit-width, budget parsing, and budget repair.

The whole-model size of `metrics.model_bytes` is a constant plus one term per
layer, so a budget is a knapsack over per-layer choices. Every method that
answers a budget (the MLP and the baselines) uses this table, so none can
disagree with the report about what fits.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from mpq_jax import metrics
from mpq_jax import spec as spec_lib

MEGABYTE = 1e6


@dataclasses.dataclass(frozen=True)
class SizeTable:
  """Model bytes = constant + sum_i layer_bytes[i, bits_i - b_min].

  Attributes:
    choices: the bit-widths allowed for every layer, ascending.
    layer_bytes: int64 [L, K], bytes of layer i at choices[k] (codes + scales).
    constant: bytes that do not depend on the bits (float tensors, activation
      scales).
  """

  choices: tuple[int, ...]
  layer_bytes: np.ndarray
  constant: int

  def bytes_of(self, bits) -> int:
    index = np.asarray(bits) - self.choices[0]
    return int(self.constant + self.layer_bytes[
        np.arange(len(index)), index].sum())

  @property
  def smallest(self) -> int:
    return int(self.constant + self.layer_bytes[:, 0].sum())

  @property
  def largest(self) -> int:
    return int(self.constant + self.layer_bytes[:, -1].sum())


def size_table(spec: spec_lib.LayerSpec, bit_range: tuple[int, int], *,
               per_channel: bool = False,
               quantize_activations: bool = True) -> SizeTable:
  """The per-layer size table behind `metrics.model_bytes` for a bit range."""
  choices = tuple(range(bit_range[0], bit_range[1] + 1))
  scale_bytes = [metrics.FLOAT_BYTES * (channels if per_channel else 1)
                 for channels in spec.output_channels]
  layer_bytes = np.array(
      [[math.ceil(b * count / 8) + scale for b in choices]
       for count, scale in zip(spec.num_params, scale_bytes)], np.int64)
  lowest = np.full(spec.num_layers, choices[0])
  constant = metrics.model_bytes(lowest, spec, per_channel=per_channel,
                                 quantize_activations=quantize_activations
                                 ) - int(layer_bytes[:, 0].sum())
  return SizeTable(choices, layer_bytes, constant)


def budget_bytes(table: SizeTable, *, full_precision_bytes: int,
                 budget_mb: float | None = None,
                 compression: float | None = None) -> int:
  """A budget in bytes from megabytes or a compression ratio (exactly one)."""
  if (budget_mb is None) == (compression is None):
    raise ValueError("give exactly one of a size budget in MB (--budget_mb)"
                     " or a compression ratio (--compression).")
  if budget_mb is not None:
    if not budget_mb > 0:
      raise ValueError(f"--budget_mb={budget_mb} must be positive.")
    budget = int(budget_mb * MEGABYTE)
  else:
    if not compression > 0:
      raise ValueError(f"--compression={compression} must be positive.")
    budget = int(full_precision_bytes / compression)
  check_budget(table, budget)
  return budget


def check_budget(table: SizeTable, budget: int) -> None:
  """Raises when nothing in the bit range fits `budget` bytes."""
  if budget < table.smallest:
    raise ValueError(
        f"a budget of {budget:,} bytes ({budget / MEGABYTE:.4f} MB) cannot be"
        f" met: the smallest model in the bit range {list(table.choices)} is"
        f" {table.smallest:,} bytes ({table.smallest / MEGABYTE:.4f} MB, every"
        f" layer at {table.choices[0]} bits). Raise the budget to at least"
        " that, or lower b_min with --bit_range.")


def repair_to_budget(bits, table: SizeTable, budget: int,
                     layer_cost: np.ndarray) -> np.ndarray:
  """Moves an allocation onto the budget: within it, and using it well.

  While the allocation is too large, the layer whose one-bit drop costs the
  least estimated KL per byte saved loses a bit. Then, while room is left,
  the layer whose one-bit rise buys the most estimated KL per byte gains one.

  Args:
    bits: the starting allocation [L], inside the table's choices.
    table: the size table.
    budget: bytes.
    layer_cost: [L, K] estimated KL contribution of layer i at choices[k]
      (a per-layer sensitivity table), smaller is better.

  Returns:
    int32 [L] with table.bytes_of(result) <= budget.
  """
  check_budget(table, budget)
  index = np.asarray(bits, np.int64) - table.choices[0]
  last = len(table.choices) - 1
  rows = np.arange(len(index))
  def size() -> int:
    return int(table.constant + table.layer_bytes[rows, index].sum())
  while size() > budget:
    can = index > 0
    saved = table.layer_bytes[rows, index] - table.layer_bytes[
        rows, np.maximum(index - 1, 0)]
    added = layer_cost[rows, np.maximum(index - 1, 0)] - layer_cost[rows, index]
    ratio = np.where(can & (saved > 0), np.maximum(added, 0) / np.maximum(
        saved, 1), np.inf)
    index[int(np.argmin(ratio))] -= 1
  while True:
    room = budget - size()
    extra = table.layer_bytes[rows, np.minimum(index + 1, last)] - (
        table.layer_bytes[rows, index])
    gain = layer_cost[rows, index] - layer_cost[rows, np.minimum(index + 1,
                                                                 last)]
    fits = (index < last) & (extra <= room)
    if not np.any(fits):
      break
    value = np.where(fits, gain / np.maximum(extra, 1), -np.inf)
    index[int(np.argmax(value))] += 1
  return (index + table.choices[0]).astype(np.int32)
