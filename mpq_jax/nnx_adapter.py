"""Turns a Flax NNX module into the core's `apply_fn(params, x)` and a params pytree."""

from __future__ import annotations

from typing import Any, Callable

import jax
from flax import nnx


def functional_model(module: nnx.Module) -> tuple[Callable[[Any, jax.Array],
                                                           jax.Array], dict]:
  """Splits `module` into a pure `apply_fn` and its parameters as a plain dict.

  The module is put in evaluation mode (dropout off, batch statistics frozen);
  non-parameter state (batch-norm statistics, say) is closed over unchanged.

  >>> from flax import nnx
  >>> import jax.numpy as jnp
  >>> apply_fn, params = functional_model(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
  >>> apply_fn(params, jnp.ones((1, 3))).shape
  (1, 2)
  """
  module.eval()
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)

  def apply_fn(params, inputs):
    return nnx.merge(graphdef, params, rest)(inputs)

  return apply_fn, nnx.to_pure_dict(params)
