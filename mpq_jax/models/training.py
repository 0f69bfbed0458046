"""Trains a classifier (the demo CNN) with optax on batches from a grain pipeline."""

from __future__ import annotations

from typing import Iterable

import jax
import jax.numpy as jnp
import optax
from flax import nnx


def cross_entropy(model: nnx.Module, images: jax.Array,
                  labels: jax.Array) -> jax.Array:
  logits = model(images)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def train_classifier(model: nnx.Module,
                     batches: Iterable[tuple[jax.Array, jax.Array]], *,
                     num_steps: int,
                     learning_rate: float = 2e-3,
                     weight_decay: float = 1e-4) -> list[float]:
  """Trains `model` in place on `batches` with AdamW; returns the loss per step.

  The learning rate warms up over the first 5% of `num_steps`, then follows
  a cosine decay to zero: a short schedule that ends at a settled minimum.
  """
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, learning_rate, max(1, num_steps // 20), max(2, num_steps))
  optimizer = nnx.Optimizer(model, optax.adamw(schedule,
                                               weight_decay=weight_decay),
                            wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, images, labels):
    loss, grads = nnx.value_and_grad(cross_entropy)(model, images, labels)
    optimizer.update(model, grads)
    return loss

  model.train()
  losses = [float(step(model, optimizer, jnp.asarray(images),
                       jnp.asarray(labels)))
            for images, labels in batches]
  model.eval()
  return losses
