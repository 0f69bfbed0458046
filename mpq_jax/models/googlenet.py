"""GoogLeNet (Inception v1) in Flax NNX as torchvision builds it, without aux heads.

torchvision's weights for it were trained with `transform_input=True`: the
model re-normalizes its ImageNet-normalized input to mean 0.5 / std 0.5
itself. `googlenet(transform_input=True)` reproduces that, and the weight
import sets it (mpq_jax.models.convert).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


IMAGENET_CLASSES = 1000
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class BasicConv2d(nnx.Module):
  """conv (no bias) -> batch norm (eps 0.001) -> ReLU."""

  def __init__(self, cin, cout, kernel, stride=1, padding=0, *, rngs):
    self.conv = nnx.Conv(cin, cout, (kernel, kernel), strides=(stride, stride),
                         padding=((padding, padding), (padding, padding)),
                         use_bias=False, rngs=rngs)
    self.bn = nnx.BatchNorm(cout, momentum=0.9, epsilon=1e-3, rngs=rngs)

  def __call__(self, x):
    return jax.nn.relu(self.bn(self.conv(x)))


class CeilMaxPool(nnx.Module):
  """torchvision's MaxPool2d(kernel, stride, padding, ceil_mode=True)."""

  def __init__(self, kernel: int, stride: int, padding: int = 0):
    self.kernel, self.stride, self.padding = kernel, stride, padding

  def _extra(self, size: int) -> int:
    out = -(-(size + 2 * self.padding - self.kernel) // self.stride) + 1
    # A window may not start in the right padding (PyTorch's rule).
    if (out - 1) * self.stride >= size + self.padding:
      out -= 1
    return max(0, (out - 1) * self.stride + self.kernel
               - (size + 2 * self.padding))

  def __call__(self, x):
    extra_h, extra_w = self._extra(x.shape[1]), self._extra(x.shape[2])
    pad = self.padding
    return nnx.max_pool(x, (self.kernel, self.kernel),
                        strides=(self.stride, self.stride),
                        padding=((pad, pad + extra_h), (pad, pad + extra_w)))


class Inception(nnx.Module):

  def __init__(self, cin, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj,
               *, rngs):
    self.branch1 = BasicConv2d(cin, ch1x1, 1, rngs=rngs)
    self.branch2 = nnx.Sequential(BasicConv2d(cin, ch3x3red, 1, rngs=rngs),
                                  BasicConv2d(ch3x3red, ch3x3, 3, padding=1,
                                              rngs=rngs))
    # torchvision keeps a 3x3 kernel in the "5x5" branch (a known quirk its
    # weights were trained with).
    self.branch3 = nnx.Sequential(BasicConv2d(cin, ch5x5red, 1, rngs=rngs),
                                  BasicConv2d(ch5x5red, ch5x5, 3, padding=1,
                                              rngs=rngs))
    self.branch4 = nnx.Sequential(CeilMaxPool(3, 1, 1),
                                  BasicConv2d(cin, pool_proj, 1, rngs=rngs))

  def __call__(self, x):
    return jnp.concatenate([self.branch1(x), self.branch2(x), self.branch3(x),
                            self.branch4(x)], axis=-1)


class GoogLeNet(nnx.Module):

  def __init__(self, *, num_classes: int = IMAGENET_CLASSES,
               transform_input: bool = False, rngs: nnx.Rngs):
    self.transform_input = transform_input
    self.conv1 = BasicConv2d(3, 64, 7, stride=2, padding=3, rngs=rngs)
    self.maxpool1 = CeilMaxPool(3, 2)
    self.conv2 = BasicConv2d(64, 64, 1, rngs=rngs)
    self.conv3 = BasicConv2d(64, 192, 3, padding=1, rngs=rngs)
    self.maxpool2 = CeilMaxPool(3, 2)
    self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32, rngs=rngs)
    self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64, rngs=rngs)
    self.maxpool3 = CeilMaxPool(3, 2)
    self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64, rngs=rngs)
    self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64, rngs=rngs)
    self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64, rngs=rngs)
    self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64, rngs=rngs)
    self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128, rngs=rngs)
    self.maxpool4 = CeilMaxPool(2, 2)
    self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128, rngs=rngs)
    self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128, rngs=rngs)
    self.fc = nnx.Linear(1024, num_classes, rngs=rngs)

  def _transform(self, x):
    # From ImageNet normalization to (x - 0.5) / 0.5, channel by channel.
    mean, std = jnp.asarray(_MEAN), jnp.asarray(_STD)
    return x * (std / 0.5) + (mean - 0.5) / 0.5

  def __call__(self, images):
    x = self._transform(images) if self.transform_input else images
    x = self.maxpool1(self.conv1(x))
    x = self.maxpool2(self.conv3(self.conv2(x)))
    x = self.maxpool3(self.inception3b(self.inception3a(x)))
    for block in (self.inception4a, self.inception4b, self.inception4c,
                  self.inception4d, self.inception4e):
      x = block(x)
    x = self.maxpool4(x)
    x = self.inception5b(self.inception5a(x))
    return self.fc(x.mean(axis=(1, 2)))


def googlenet(*, rngs: nnx.Rngs, num_classes: int = IMAGENET_CLASSES,
              transform_input: bool = False):
  return GoogLeNet(num_classes=num_classes, transform_input=transform_input,
                   rngs=rngs)
