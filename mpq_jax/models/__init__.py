"""Models by name: how to build each, which data it reads and how to preprocess it."""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import numpy as np
from flax import nnx

from mpq_jax.data import imagenet
from mpq_jax.models import demo_cnn
from mpq_jax.models import googlenet
from mpq_jax.models import mobilenet
from mpq_jax.models import resnet
from mpq_jax.models import vgg

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
IMAGENET_SHAPE = (224, 224, 3)


def preprocess_imagenet(image: np.ndarray,
                        input_shape=IMAGENET_SHAPE) -> np.ndarray:
  """torchvision's evaluation transform, cropped to the model's input side."""
  return imagenet.eval_transform(image, crop=input_shape[0])


def preprocess_mnist(image: np.ndarray, input_shape=None) -> np.ndarray:
  """uint8 [28, 28, 1] -> float32, standardized with MNIST's mean and std."""
  del input_shape  # always 28x28
  return ((image.astype(np.float32) / 255.0) - MNIST_MEAN) / MNIST_STD


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelEntry:
  """What the pipeline needs to know about one model.

  Attributes:
    name: the --model value.
    build: `build(rngs) -> nnx.Module` with fresh weights.
    dataset: TFDS name of its data.
    train_split / eval_split: where calibration images / top-1 come from.
    input_shape: one image's shape.
    preprocess: (uint8 image, input shape) -> float32 model input.
    train_epochs: epochs to train it on first use (0: weights come from a file).
    train_batch_size: batch size for that training.
  """

  name: str
  build: Callable[[nnx.Rngs], nnx.Module]
  dataset: str
  train_split: str
  eval_split: str
  input_shape: tuple[int, ...]
  preprocess: Callable[[np.ndarray], np.ndarray]
  train_epochs: int = 0
  train_batch_size: int = 128


def _imagenet_entry(name: str, build) -> ModelEntry:
  """An ImageNet classifier whose weights come from a file (or --random_init)."""
  return ModelEntry(name=name, build=lambda rngs: build(rngs=rngs),
                    dataset="imagenet2012", train_split="train",
                    eval_split="validation", input_shape=IMAGENET_SHAPE,
                    preprocess=preprocess_imagenet)


MODELS: dict[str, ModelEntry] = {
    "demo_cnn": ModelEntry(
        name="demo_cnn",
        build=lambda rngs: demo_cnn.DemoCNN(rngs=rngs),
        dataset="mnist_subset",
        train_split="train",
        eval_split="test",
        input_shape=demo_cnn.INPUT_SHAPE,
        preprocess=preprocess_mnist,
        train_epochs=15,
    ),
    **{name: _imagenet_entry(name, build)
       for name, build in (("resnet18", resnet.resnet18),
                           ("resnet50", resnet.resnet50),
                           ("vgg16", vgg.vgg16),
                           ("vgg16_bn", vgg.vgg16_bn),
                           ("mobilenet_v2", mobilenet.mobilenet_v2),
                           # torchvision's ImageNet weights expect its
                           # input re-normalization (transform_input=True).
                           ("googlenet", functools.partial(
                               googlenet.googlenet, transform_input=True)))},
}


def get_model_entry(name: str) -> ModelEntry:
  """The registry entry of `name`; a clear error lists the known names."""
  if name not in MODELS:
    raise ValueError(
        f"unknown model {name!r}: choose one of {', '.join(sorted(MODELS))}"
        " (e.g. --model=demo_cnn)."
    )
  return MODELS[name]
