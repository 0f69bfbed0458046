"""The allocator MLP: desired KL -> bit vector, trained with optax and a size penalty.

Input is log(Omega), standardized (KL spans decades). Output is one real
bit-width per layer; queries round to the nearest integer and clip to the
bit range. The penalty acts on the PREDICTED bits (the paper's printed form
uses the label bits, a constant that cannot steer anything):

  loss = mean_j mean_i (pred_ij - b_ij)**2
         + beta * mean_j sum_i pred_ij p_i / (b_max * sum_i p_i)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

DEFAULT_HIDDEN = 200
DEFAULT_BETA = 1.0


class AllocatorMLP(nnx.Module):
  """1 -> hidden -> num_layers, ReLU; outputs centred on the bit range."""

  def __init__(self, num_layers: int, bit_range: tuple[int, int], *,
               hidden: int = DEFAULT_HIDDEN, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(1, hidden, rngs=rngs)
    self.output = nnx.Linear(hidden, num_layers, rngs=rngs)
    low, high = bit_range
    # Predicting offsets from the middle of the range, in half-range units,
    # starts the outputs near the centre and keeps the gradients well scaled.
    self.centre = nnx.Variable(jnp.float32((low + high) / 2))
    self.half_width = nnx.Variable(jnp.float32(max(high - low, 1) / 2))

  def __call__(self, standardized_log_kl: jax.Array) -> jax.Array:
    hidden = jax.nn.relu(self.hidden(standardized_log_kl[:, None]))
    return self.centre[...] + self.half_width[...] * self.output(hidden)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Allocator:
  """A trained allocator and everything needed to query it."""

  graphdef: Any
  state: Any
  log_kl_mean: float
  log_kl_std: float
  bit_range: tuple[int, int]
  beta: float

  def predict(self, target_kl) -> np.ndarray:
    """Real-valued bits [T, L] for KL targets [T] (or a scalar)."""
    target = np.atleast_1d(np.asarray(target_kl, np.float64))
    if np.any(~np.isfinite(target)) or np.any(target <= 0):
      raise ValueError(
          f"KL targets must be positive and finite, got {target.tolist()[:8]}:"
          " the allocator works on log(KL)."
      )
    model = nnx.merge(self.graphdef, self.state)
    return np.asarray(model(jnp.asarray(self.standardize(target))))

  def standardize(self, kl) -> np.ndarray:
    return ((np.log(kl) - self.log_kl_mean) / self.log_kl_std).astype(
        np.float32)


def allocate_bits(allocator: Allocator, target_kl) -> np.ndarray:
  """Integer bit vectors [T, L] for KL targets: rounded, clipped to the range."""
  low, high = allocator.bit_range
  return np.clip(np.rint(allocator.predict(target_kl)), low, high).astype(
      np.int32)


def size_penalty(predicted_bits: jax.Array, layer_params: jax.Array,
                 b_max: int) -> jax.Array:
  """Predicted weight size as a share of the all-b_max size, per sample: [S]."""
  return predicted_bits @ layer_params / (b_max * jnp.sum(layer_params))


def allocator_loss(model: AllocatorMLP, inputs: jax.Array, bits: jax.Array,
                   layer_params: jax.Array, beta: float,
                   b_max: int) -> jax.Array:
  """Mean squared bit error plus beta times the mean normalized predicted size."""
  predicted = model(inputs)
  mse = jnp.mean((predicted - bits) ** 2)
  return mse + beta * jnp.mean(size_penalty(predicted, layer_params, b_max))


@dataclasses.dataclass(frozen=True)
class TrainingHistory:
  train_loss: list[float]
  holdout_loss: list[float]
  best_epoch: int


def train_allocator(
    kl: np.ndarray,
    bits: np.ndarray,
    layer_params: np.ndarray,
    bit_range: tuple[int, int],
    *,
    beta: float = DEFAULT_BETA,
    hidden: int = DEFAULT_HIDDEN,
    learning_rate: float = 3e-3,
    max_epochs: int = 3000,
    patience: int = 300,
    holdout_fraction: float = 0.1,
    seed: int = 0,
) -> tuple[Allocator, TrainingHistory]:
  """Trains the MLP full-batch with Adam, early-stopping on held-out pairs.

  Args:
    kl: Omega of each sample [S].
    bits: the sampled bit vectors [S, L].
    layer_params: parameter count of each layer [L] (the penalty's p_i).
    bit_range: (b_min, b_max) of the samples.
    beta: weight of the size penalty.
    hidden: hidden units (the paper: 200).
    learning_rate: Adam's step size.
    max_epochs: full-batch steps at most.
    patience: stop after this many steps without a better held-out loss.
    holdout_fraction: share of pairs kept out of training for early stopping.
    seed: initialisation and split seed.

  Returns:
    The allocator at its best held-out loss, and the loss history.
  """
  kl = np.asarray(kl, np.float64)
  bits = np.asarray(bits, np.float32)
  if kl.ndim != 1 or bits.ndim != 2 or len(kl) != len(bits):
    raise ValueError(f"need kl [S] and bits [S, L], got {kl.shape} and"
                     f" {bits.shape}.")
  if len(kl) < 4:
    raise ValueError(f"only {len(kl)} samples: the allocator needs at least 4"
                     " (the paper uses 1200); raise --num_samples.")
  if np.any(~np.isfinite(kl)):
    raise ValueError("some sampled KL values are not finite: the model"
                     " diverged at some bit vectors; raise b_min.")
  # KL of exactly zero (identical outputs) has no logarithm; floor it.
  kl = np.maximum(kl, np.finfo(np.float32).tiny)
  log_kl = np.log(kl)
  mean, std = float(log_kl.mean()), float(log_kl.std() or 1.0)
  inputs = ((log_kl - mean) / std).astype(np.float32)

  rng = np.random.default_rng(seed)
  order = rng.permutation(len(kl))
  num_holdout = max(1, int(round(holdout_fraction * len(kl))))
  holdout, train = order[:num_holdout], order[num_holdout:]
  layer_params = jnp.asarray(layer_params, jnp.float32)
  b_max = int(bit_range[1])

  model = AllocatorMLP(bits.shape[1], bit_range, hidden=hidden,
                       rngs=nnx.Rngs(seed))
  optimizer = nnx.Optimizer(model, optax.adam(learning_rate), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, x, y, x_held, y_held):
    loss, grads = nnx.value_and_grad(allocator_loss)(model, x, y, layer_params,
                                                     beta, b_max)
    optimizer.update(model, grads)
    return loss, allocator_loss(model, x_held, y_held, layer_params, beta,
                                b_max)

  x_train, y_train = jnp.asarray(inputs[train]), jnp.asarray(bits[train])
  x_held, y_held = jnp.asarray(inputs[holdout]), jnp.asarray(bits[holdout])
  train_losses, holdout_losses = [], []
  best_loss, best_epoch = np.inf, 0
  best_state = nnx.state(model)
  for epoch in range(max_epochs):
    train_loss, holdout_loss = step(model, optimizer, x_train, y_train, x_held,
                                    y_held)
    train_losses.append(float(train_loss))
    holdout_losses.append(float(holdout_loss))
    if holdout_losses[-1] < best_loss:
      best_loss, best_epoch = holdout_losses[-1], epoch
      best_state = jax.tree.map(jnp.copy, nnx.state(model))
    elif epoch - best_epoch >= patience:
      break
  graphdef, _ = nnx.split(model)
  allocator = Allocator(graphdef=graphdef, state=best_state,
                        log_kl_mean=mean, log_kl_std=std,
                        bit_range=(int(bit_range[0]), b_max), beta=float(beta))
  return allocator, TrainingHistory(train_losses, holdout_losses, best_epoch)


def allocate_for_budget(allocator: Allocator, table, budget: int,
                        layer_cost: np.ndarray,
                        num_queries: int = 401) -> np.ndarray:
  """The MLP's answer to a size budget in bytes, repaired onto the budget.

  The MLP is queried over a dense range of KL targets (4 standard deviations
  either side of the training samples' mean log-KL). Each distinct answer is
  moved onto the budget by `budget.repair_to_budget` (bits dropped where
  `layer_cost` says they cost least, then raised where they buy most while
  room is left); the repaired answer with the lowest summed `layer_cost` wins.
  """
  from mpq_jax import budget as budget_lib  # pylint: disable=g-import-not-at-top
  budget_lib.check_budget(table, budget)
  log_kl = allocator.log_kl_mean + allocator.log_kl_std * np.linspace(
      -4.0, 4.0, num_queries)
  answers = np.unique(allocate_bits(allocator, np.exp(log_kl)), axis=0)
  rows = np.arange(answers.shape[1])
  repaired = [budget_lib.repair_to_budget(bits, table, budget, layer_cost)
              for bits in answers]
  estimated = [layer_cost[rows, bits - table.choices[0]].sum()
               for bits in repaired]
  return repaired[int(np.argmin(estimated))]
