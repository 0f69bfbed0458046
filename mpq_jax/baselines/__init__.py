"""Classic bit allocators under one quantizer and one budget, for side-by-side tables.

Each `allocate_*` takes a `SearchSpace` and a budget in bytes and returns a
`MethodResult` with its allocation and what the search cost.
"""

from mpq_jax.baselines import common
from mpq_jax.baselines import greedy
from mpq_jax.baselines import hawq
from mpq_jax.baselines import sampled
from mpq_jax.baselines import uniform
from mpq_jax.baselines import zeroq
from mpq_jax.baselines.common import MethodResult
from mpq_jax.baselines.common import SearchCost
from mpq_jax.baselines.common import SearchSpace
from mpq_jax.baselines.greedy import allocate_greedy
from mpq_jax.baselines.hawq import allocate_hawq
from mpq_jax.baselines.hawq import hessian_traces
from mpq_jax.baselines.hawq import perturbation_objective
from mpq_jax.baselines.sampled import allocate_best_sampled
from mpq_jax.baselines.uniform import allocate_uniform
from mpq_jax.baselines.zeroq import allocate_zeroq
from mpq_jax.baselines.zeroq import sensitivity_table

__all__ = [
    "common",
    "greedy",
    "hawq",
    "sampled",
    "uniform",
    "zeroq",
    "MethodResult",
    "SearchCost",
    "SearchSpace",
    "allocate_greedy",
    "allocate_hawq",
    "hessian_traces",
    "perturbation_objective",
    "allocate_best_sampled",
    "allocate_uniform",
    "allocate_zeroq",
    "sensitivity_table",
]
