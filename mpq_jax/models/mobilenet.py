"""MobileNet-V2 in Flax NNX, parameter for parameter as torchvision builds it."""

from __future__ import annotations

import jax
from flax import nnx

from mpq_jax.models import layers

IMAGENET_CLASSES = 1000
# (expansion t, output channels c, repeats n, first stride s), as in the paper.
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _conv_bn_relu6(cin, cout, kernel, stride, groups, rngs):
  pad = (kernel - 1) // 2
  return nnx.Sequential(
      nnx.Conv(cin, cout, (kernel, kernel), strides=(stride, stride),
               padding=((pad, pad), (pad, pad)), feature_group_count=groups,
               use_bias=False, rngs=rngs),
      nnx.BatchNorm(cout, momentum=0.9, epsilon=1e-5, rngs=rngs),
      layers.ReLU6())


class InvertedResidual(nnx.Module):
  """Expand (1x1), depthwise 3x3, project (1x1, linear); residual when shapes allow."""

  def __init__(self, cin, cout, stride, expansion, *, rngs):
    hidden = cin * expansion
    self.use_residual = stride == 1 and cin == cout
    modules = []
    if expansion != 1:
      modules.append(_conv_bn_relu6(cin, hidden, 1, 1, 1, rngs))
    modules += [
        _conv_bn_relu6(hidden, hidden, 3, stride, hidden, rngs),
        nnx.Conv(hidden, cout, (1, 1), use_bias=False, rngs=rngs),
        nnx.BatchNorm(cout, momentum=0.9, epsilon=1e-5, rngs=rngs),
    ]
    self.conv = nnx.Sequential(*modules)

  def __call__(self, x):
    y = self.conv(x)
    return x + y if self.use_residual else y


class MobileNetV2(nnx.Module):

  def __init__(self, *, num_classes: int = IMAGENET_CLASSES, rngs: nnx.Rngs):
    modules, cin = [_conv_bn_relu6(3, 32, 3, 2, 1, rngs)], 32
    for expansion, cout, repeats, stride in _SETTINGS:
      for index in range(repeats):
        modules.append(InvertedResidual(cin, cout, stride if index == 0 else 1,
                                        expansion, rngs=rngs))
        cin = cout
    modules.append(_conv_bn_relu6(cin, 1280, 1, 1, 1, rngs))
    self.features = nnx.Sequential(*modules)
    self.classifier = nnx.Sequential(layers.Dropout(),
                                     nnx.Linear(1280, num_classes, rngs=rngs))

  def __call__(self, images):
    x = self.features(images)
    return self.classifier(jax.numpy.mean(x, axis=(1, 2)))


def mobilenet_v2(*, rngs: nnx.Rngs, num_classes: int = IMAGENET_CLASSES):
  return MobileNetV2(num_classes=num_classes, rngs=rngs)
