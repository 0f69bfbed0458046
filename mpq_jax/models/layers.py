"""Parameter-free layers that hold a place in an nnx.Sequential, as torchvision's do.

Keeping torchvision's positions (features.0 conv, features.1 batch norm,
features.2 ReLU, ...) keeps the state-dict keys aligned for weight import.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class ReLU(nnx.Module):
  def __call__(self, x):
    return jax.nn.relu(x)


class ReLU6(nnx.Module):
  def __call__(self, x):
    return jnp.clip(x, 0.0, 6.0)


class MaxPool(nnx.Module):
  """k x k max pooling with stride k (torchvision's MaxPool2d(k, k))."""

  def __init__(self, size: int = 2):
    self.size = size

  def __call__(self, x):
    return nnx.max_pool(x, (self.size, self.size),
                        strides=(self.size, self.size))


class Dropout(nnx.Module):
  """Evaluation-only stand-in: the pipeline never trains these models."""

  def __call__(self, x):
    return x


def adaptive_average_pool(x: jax.Array, output: int) -> jax.Array:
  """torchvision's AdaptiveAvgPool2d((output, output)) on NHWC input."""
  rows = []
  height, width = x.shape[1], x.shape[2]
  for i in range(output):
    top, bottom = (i * height) // output, -(-(i + 1) * height // output)
    cells = []
    for j in range(output):
      left, right = (j * width) // output, -(-(j + 1) * width // output)
      cells.append(jnp.mean(x[:, top:bottom, left:right], axis=(1, 2)))
    rows.append(jnp.stack(cells, axis=1))
  return jnp.stack(rows, axis=1)


def flatten_like_torch(x: jax.Array) -> jax.Array:
  """Flattens NHWC in torchvision's NCHW order, so linear weights line up."""
  return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)

