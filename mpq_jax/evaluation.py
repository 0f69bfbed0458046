"""Top-1 of a quantized model over an evaluation split, one compilation for all bits."""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import numpy as np

from mpq_jax import metrics
from mpq_jax import quant
from mpq_jax import sampling


def make_top1_evaluator(
    quantized_apply: Callable[[Any, jax.Array, jax.Array], jax.Array],
    params: Any,
    images: np.ndarray,
    labels: np.ndarray,
    num_layers: int,
    *,
    batch_size: int = 500,
) -> Callable[[np.ndarray], float]:
  """Returns `top1_of(bits) -> percent` over (images, labels) in fixed batches.

  The last batch is padded and its padding masked, so every batch has one
  shape and the program compiles once.
  """
  if len(images) == 0:
    raise ValueError("the evaluation split is empty: top-1 needs images.")
  # Batches are split over every device of every process (the data axis),
  # parameters and bits replicated, like the sampling's configurations.
  mesh = sampling.config_mesh()
  batch_size = -(-batch_size // mesh.devices.size) * mesh.devices.size
  by_image = jax.sharding.PartitionSpec(sampling.CONFIG_AXIS)
  replicated = jax.sharding.PartitionSpec()
  count = len(images)
  padded = -(-count // batch_size) * batch_size
  pad = padded - count
  images = np.concatenate([images, np.repeat(images[:1], pad, axis=0)])
  labels = np.concatenate([labels, np.full(pad, -1, labels.dtype)])
  params = jax.tree.map(
      lambda leaf: sampling.global_array(leaf, mesh, replicated), params)

  @functools.partial(jax.jit, out_shardings=jax.sharding.NamedSharding(
      mesh, replicated))
  def correct_in_batch(params, bits, batch_images, batch_labels):
    # Padding carries label -1, which no arg-max equals.
    return metrics.top1_correct(quantized_apply(params, bits, batch_images),
                                batch_labels)

  def top1_of(bits) -> float:
    bits = sampling.global_array(quant.check_weight_bits(bits, num_layers),
                                 mesh, replicated)
    correct = sum(
        int(correct_in_batch(
            params, bits,
            sampling.global_array(images[s:s + batch_size], mesh, by_image),
            sampling.global_array(labels[s:s + batch_size], mesh, by_image)))
        for s in range(0, padded, batch_size))
    return metrics.top1_percent(correct, count)

  return top1_of


def full_precision_top1(apply_fn, params, images, labels,
                        batch_size: int = 500) -> float:
  """Top-1 of the unquantized model."""
  predict = jax.jit(apply_fn)
  correct = sum(
      int(metrics.top1_correct(predict(params, images[s:s + batch_size]),
                               labels[s:s + batch_size]))
      for s in range(0, len(images), batch_size))
  return metrics.top1_percent(correct, len(images))
