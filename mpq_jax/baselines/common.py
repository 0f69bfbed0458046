"""What every allocator shares: the search space, the result, the search cost."""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np

from mpq_jax import budget as budget_lib


@dataclasses.dataclass(frozen=True)
class SearchSpace:
  """The choices of one model under one quantizer.

  Attributes:
    table: bytes per layer at each allowed bit-width.
    kl_of: measured Omega of a batch of bit vectors [C, L] -> [C].
    num_images: calibration images, i.e. forward passes per configuration.
  """

  table: budget_lib.SizeTable
  kl_of: Callable[[np.ndarray], np.ndarray]
  num_images: int

  @property
  def num_layers(self) -> int:
    return self.table.layer_bytes.shape[0]


@dataclasses.dataclass
class SearchCost:
  """What a search spent: configurations measured, passes, wall time."""

  configurations: int = 0
  forward_passes: int = 0
  backward_passes: int = 0
  seconds: float = 0.0

  def add_configurations(self, count: int, num_images: int) -> None:
    self.configurations += count
    self.forward_passes += count * num_images

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class MethodResult:
  method: str
  bits: np.ndarray
  cost: SearchCost


class Stopwatch:
  """Adds the elapsed seconds of a `with` block to a SearchCost."""

  def __init__(self, cost: SearchCost):
    self.cost = cost

  def __enter__(self):
    self.started = time.perf_counter()
    return self.cost

  def __exit__(self, *exc):
    self.cost.seconds += time.perf_counter() - self.started
    return False


Solver = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


def minimize_under_budget(method: str, space: SearchSpace, budget: int,
                          objective: np.ndarray, prior_cost: SearchCost,
                          solver: Solver) -> MethodResult:
  """One bit-width per layer minimizing sum objective[i, k] within the budget.

  `solver(objective, layer_bytes, capacity)` returns choice indices; the
  search cost is what building the objective cost plus the solver's time.
  """
  budget_lib.check_budget(space.table, budget)
  cost = SearchCost(**prior_cost.as_dict())
  with Stopwatch(cost):
    picked = solver(objective, space.table.layer_bytes,
                    budget - space.table.constant)
  bits = (np.asarray(picked) + space.table.choices[0]).astype(np.int32)
  return MethodResult(method, bits, cost)
