"""VGG-16 and VGG-16-BN in Flax NNX, parameter for parameter as torchvision builds them."""

from __future__ import annotations

from flax import nnx

from mpq_jax.models import layers

IMAGENET_CLASSES = 1000
_CONFIG_D = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512,
             "M", 512, 512, 512, "M")


class VGG(nnx.Module):
  """features (13 convs), adaptive 7x7 average pool, 3 fully connected layers."""

  def __init__(self, *, batch_norm: bool, num_classes: int = IMAGENET_CLASSES,
               rngs: nnx.Rngs):
    modules, cin = [], 3
    for item in _CONFIG_D:
      if item == "M":
        modules.append(layers.MaxPool(2))
        continue
      modules.append(nnx.Conv(cin, item, (3, 3), padding=((1, 1), (1, 1)),
                              rngs=rngs))
      if batch_norm:
        modules.append(nnx.BatchNorm(item, momentum=0.9, epsilon=1e-5,
                                     rngs=rngs))
      modules.append(layers.ReLU())
      cin = item
    self.features = nnx.Sequential(*modules)
    self.classifier = nnx.Sequential(
        nnx.Linear(512 * 7 * 7, 4096, rngs=rngs), layers.ReLU(),
        layers.Dropout(), nnx.Linear(4096, 4096, rngs=rngs), layers.ReLU(),
        layers.Dropout(), nnx.Linear(4096, num_classes, rngs=rngs))

  def __call__(self, images):
    x = layers.adaptive_average_pool(self.features(images), 7)
    return self.classifier(layers.flatten_like_torch(x))


def vgg16(*, rngs: nnx.Rngs, num_classes: int = IMAGENET_CLASSES):
  return VGG(batch_norm=False, num_classes=num_classes, rngs=rngs)


def vgg16_bn(*, rngs: nnx.Rngs, num_classes: int = IMAGENET_CLASSES):
  return VGG(batch_norm=True, num_classes=num_classes, rngs=rngs)
