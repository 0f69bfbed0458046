"""ResNet-18 and ResNet-50 in Flax NNX, parameter for parameter as torchvision builds them.

Same layers, shapes and padding as torchvision.models.resnet18/resnet50
(v1.5: a bottleneck's stride sits on its 3x3 convolution), NHWC layout,
kernels HWIO. Batch norm uses torchvision's epsilon (1e-5) and momentum.
"""

from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx

IMAGENET_CLASSES = 1000


def _conv(cin: int, cout: int, kernel: int, stride: int, rngs: nnx.Rngs):
  # torchvision pads explicitly (kernel // 2), which differs from "SAME"
  # at stride 2.
  pad = kernel // 2
  return nnx.Conv(cin, cout, (kernel, kernel), strides=(stride, stride),
                  padding=((pad, pad), (pad, pad)), use_bias=False,
                  rngs=rngs)


def _norm(features: int, rngs: nnx.Rngs):
  return nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, rngs=rngs)


class BasicBlock(nnx.Module):
  """Two 3x3 convolutions (ResNet-18/34)."""

  expansion = 1

  def __init__(self, cin: int, planes: int, stride: int, *, rngs: nnx.Rngs):
    self.conv1 = _conv(cin, planes, 3, stride, rngs)
    self.bn1 = _norm(planes, rngs)
    self.conv2 = _conv(planes, planes, 3, 1, rngs)
    self.bn2 = _norm(planes, rngs)
    self.downsample = (
        nnx.Sequential(_conv(cin, planes, 1, stride, rngs), _norm(planes, rngs))
        if stride != 1 or cin != planes else None)

  def __call__(self, x):
    y = jax.nn.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    # The shortcut after the main path keeps torchvision's layer order.
    shortcut = x if self.downsample is None else self.downsample(x)
    return jax.nn.relu(y + shortcut)


class Bottleneck(nnx.Module):
  """1x1 -> 3x3 (strided) -> 1x1 with 4x expansion (ResNet-50/101/152)."""

  expansion = 4

  def __init__(self, cin: int, planes: int, stride: int, *, rngs: nnx.Rngs):
    width = planes * self.expansion
    self.conv1 = _conv(cin, planes, 1, 1, rngs)
    self.bn1 = _norm(planes, rngs)
    self.conv2 = _conv(planes, planes, 3, stride, rngs)
    self.bn2 = _norm(planes, rngs)
    self.conv3 = _conv(planes, width, 1, 1, rngs)
    self.bn3 = _norm(width, rngs)
    self.downsample = (
        nnx.Sequential(_conv(cin, width, 1, stride, rngs), _norm(width, rngs))
        if stride != 1 or cin != width else None)

  def __call__(self, x):
    y = jax.nn.relu(self.bn1(self.conv1(x)))
    y = jax.nn.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    shortcut = x if self.downsample is None else self.downsample(x)
    return jax.nn.relu(y + shortcut)


class ResNet(nnx.Module):
  """torchvision's ResNet: stem, four stages, global average pool, fc."""

  def __init__(self, block, stage_blocks: Sequence[int], *,
               num_classes: int = IMAGENET_CLASSES, rngs: nnx.Rngs):
    self.conv1 = _conv(3, 64, 7, 2, rngs)
    self.bn1 = _norm(64, rngs)
    cin = 64
    stages = []
    for index, (planes, count) in enumerate(zip((64, 128, 256, 512),
                                                stage_blocks)):
      blocks = []
      for position in range(count):
        stride = 2 if index > 0 and position == 0 else 1
        blocks.append(block(cin, planes, stride, rngs=rngs))
        cin = planes * block.expansion
      stages.append(nnx.List(blocks))
    self.layer1, self.layer2, self.layer3, self.layer4 = stages
    self.fc = nnx.Linear(cin, num_classes, rngs=rngs)

  def __call__(self, images):
    x = jax.nn.relu(self.bn1(self.conv1(images)))
    x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
      for block in stage:
        x = block(x)
    return self.fc(x.mean(axis=(1, 2)))


def resnet18(*, rngs: nnx.Rngs, num_classes: int = IMAGENET_CLASSES):
  return ResNet(BasicBlock, (2, 2, 2, 2), num_classes=num_classes, rngs=rngs)


def resnet50(*, rngs: nnx.Rngs, num_classes: int = IMAGENET_CLASSES):
  return ResNet(Bottleneck, (3, 4, 6, 3), num_classes=num_classes, rngs=rngs)
