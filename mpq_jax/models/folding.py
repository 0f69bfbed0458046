"""Batch-norm folding: each BatchNorm merged into the convolution before it.

Deployed integer models run convolutions with the batch norm already folded
in (w' = w * gamma / sqrt(var + eps) per output channel, b' = beta + (b -
mean) * gamma / sqrt(var + eps)), so the weights that get quantized are the
folded ones. The pairs are found structurally: a module's `convK` with its
`bnK`, and an `nnx.Sequential(conv, batch_norm)`.
"""

from __future__ import annotations

import re

import jax.numpy as jnp
from flax import nnx


class Identity(nnx.Module):
  """Stands where a folded BatchNorm was."""

  def __call__(self, x):
    return x


def fold_conv_batch_norm(conv: nnx.Conv, norm: nnx.BatchNorm) -> None:
  """Folds `norm`'s running statistics and affine terms into `conv`, in place."""
  factor = norm.scale[...] / jnp.sqrt(norm.var[...] + norm.epsilon)
  bias = conv.bias[...] if conv.use_bias else jnp.zeros_like(factor)
  conv.kernel = nnx.Param(conv.kernel[...] * factor)
  conv.use_bias = True
  conv.bias = nnx.Param(norm.bias[...] + (bias - norm.mean[...]) * factor)


def fold_batch_norm(module: nnx.Module) -> int:
  """Folds every conv + BatchNorm pair of `module` in place; returns how many."""
  folded = 0
  for _, node in list(nnx.iter_graph(module)):
    if isinstance(node, nnx.Sequential):
      layers = node.layers
      for index in range(len(layers) - 1):
        if (isinstance(layers[index], nnx.Conv)
            and isinstance(layers[index + 1], nnx.BatchNorm)):
          fold_conv_batch_norm(layers[index], layers[index + 1])
          layers[index + 1] = Identity()
          folded += 1
    elif isinstance(node, nnx.Module):
      for name, value in list(vars(node).items()):
        match = re.fullmatch(r"conv(\d*)", name)
        norm = getattr(node, f"bn{match.group(1)}", None) if match else None
        if isinstance(value, nnx.Conv) and isinstance(norm, nnx.BatchNorm):
          fold_conv_batch_norm(value, norm)
          setattr(node, f"bn{match.group(1)}", Identity())
          folded += 1
  return folded
