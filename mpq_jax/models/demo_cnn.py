"""demo_cnn: a small VGG-style NNX CNN for 28x28 digits, 9 quantized layers."""

from __future__ import annotations

import jax
from flax import nnx

INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10


class DemoCNN(nnx.Module):
  """Three VGG stages of two 3x3 convs (16, 32, 64 channels) and three dense layers.

  Layer sizes span 144 to 73,728 weights, so a good allocation must treat
  small sensitive layers and large tolerant ones differently.
  """

  def __init__(self, *, num_classes: int = NUM_CLASSES, rngs: nnx.Rngs):
    widths = [(1, 16), (16, 16), (16, 32), (32, 32), (32, 64), (64, 64)]
    self.convs = nnx.List([
        nnx.Conv(cin, cout, (3, 3), padding="SAME", rngs=rngs)
        for cin, cout in widths
    ])
    self.dense1 = nnx.Linear(3 * 3 * 64, 128, rngs=rngs)
    self.dense2 = nnx.Linear(128, 64, rngs=rngs)
    self.head = nnx.Linear(64, num_classes, rngs=rngs)

  def __call__(self, images: jax.Array) -> jax.Array:
    x = images
    for index, conv in enumerate(self.convs):
      x = jax.nn.relu(conv(x))
      if index % 2 == 1:
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    x = jax.nn.relu(self.dense1(x))
    x = jax.nn.relu(self.dense2(x))
    return self.head(x)
