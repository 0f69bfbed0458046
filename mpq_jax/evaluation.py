"""Top-1 of a quantized model over an evaluation split, one compilation for all bits."""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Iterator

import jax
import numpy as np

from mpq_jax import metrics
from mpq_jax import quant
from mpq_jax import sampling


def array_batches(images: np.ndarray, labels: np.ndarray, batch_size: int):
  """A `batches` callable over in-memory arrays."""
  def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for start in range(0, len(images), batch_size):
      yield images[start:start + batch_size], labels[start:start + batch_size]
  return batches


def make_streaming_top1_evaluator(
    quantized_apply: Callable[[Any, jax.Array, jax.Array], jax.Array],
    params: Any,
    batches: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]],
    num_layers: int,
    *,
    batch_size: int = 500,
) -> Callable[[np.ndarray], float]:
  """Returns `top1_of(bits) -> percent` over the batches `batches()` yields.

  Each call walks the split again (from memory or from a grain pipeline),
  so any split size works. Every batch is padded to one shape, its padding
  masked, and split over every device of every process (the data axis) with
  parameters and bits replicated, like the sampling's configurations.
  """
  mesh = sampling.config_mesh()
  batch_size = -(-batch_size // mesh.devices.size) * mesh.devices.size
  by_image = jax.sharding.PartitionSpec(sampling.CONFIG_AXIS)
  replicated = jax.sharding.PartitionSpec()
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
    correct = count = 0
    for images, labels in batches():
      if len(images) > batch_size:
        raise ValueError(f"a batch of {len(images)} images exceeds the"
                         f" evaluation batch size {batch_size}.")
      pad = batch_size - len(images)
      count += len(images)
      images = np.concatenate([images, np.repeat(images[:1], pad, axis=0)])
      labels = np.concatenate([np.asarray(labels, np.int32),
                               np.full(pad, -1, np.int32)])
      correct += int(correct_in_batch(
          params, bits, sampling.global_array(images, mesh, by_image),
          sampling.global_array(labels, mesh, by_image)))
    if count == 0:
      raise ValueError("the evaluation split is empty: top-1 needs images.")
    return metrics.top1_percent(correct, count)

  return top1_of


def make_top1_evaluator(
    quantized_apply: Callable[[Any, jax.Array, jax.Array], jax.Array],
    params: Any,
    images: np.ndarray,
    labels: np.ndarray,
    num_layers: int,
    *,
    batch_size: int = 500,
) -> Callable[[np.ndarray], float]:
  """`make_streaming_top1_evaluator` over in-memory (images, labels)."""
  if len(images) == 0:
    raise ValueError("the evaluation split is empty: top-1 needs images.")
  return make_streaming_top1_evaluator(
      quantized_apply, params, array_batches(images, labels, batch_size),
      num_layers, batch_size=batch_size)


def full_precision_top1(apply_fn, params, batches, num_layers: int,
                        batch_size: int = 500) -> float:
  """Top-1 of the unquantized model over `batches()`."""
  return make_streaming_top1_evaluator(
      lambda p, _, x: apply_fn(p, x), params, batches, num_layers,
      batch_size=batch_size)(np.full(num_layers, quant.MAX_BITS))
