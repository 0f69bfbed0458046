"""TFDS data sources and grain pipelines: calibration images and batched evaluation."""

from __future__ import annotations

import os
from typing import Callable, Iterator

import grain
import numpy as np
import tensorflow_datasets as tfds

from mpq_jax.data import mnist_subset

Preprocess = Callable[[np.ndarray], np.ndarray]
_LOCAL_BUILDERS = {"mnist_subset": mnist_subset.MnistSubset}


def data_source(name: str, split: str, data_dir: str):
  """A random-access TFDS source for `name`/`split` stored in array_record.

  The bundled demo set is prepared on first use; any other data set must
  already be prepared under `data_dir`.
  """
  if name in _LOCAL_BUILDERS:
    builder = _LOCAL_BUILDERS[name](data_dir=data_dir,
                                    file_format="array_record")
    if not builder.is_prepared():
      builder.download_and_prepare()
    return builder.as_data_source(split=split)
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir,
                            download=False)
  except (AssertionError, FileNotFoundError, NotImplementedError) as error:
    raise FileNotFoundError(
        f"TFDS data set {name!r} is not prepared under {data_dir!r} in the"
        " array_record format. Prepare it there once (BUILD.md, 'ImageNet'),"
        f" e.g. `tfds build {name} --data_dir={data_dir}"
        " --file_format=array_record` after putting a manual download in"
        f" {data_dir}/downloads/manual, or pass --data_dir pointing at a"
        f" prepared copy. ({error})"
    ) from error


def _image_and_label(preprocess: Preprocess):
  def convert(example):
    return preprocess(np.asarray(example["image"])), np.int32(example["label"])
  return convert


def calibration_images(source, count: int, preprocess: Preprocess,
                       seed: int) -> np.ndarray:
  """`count` images drawn without replacement from `source` with `seed`."""
  if count < 1:
    raise ValueError(f"calibration size must be >= 1, got {count}: the paper"
                     " uses N = 50 training images (--calib_size=50).")
  if count > len(source):
    raise ValueError(f"calibration size {count} exceeds the {len(source)}"
                     " images of the split: lower --calib_size.")
  dataset = grain.MapDataset.source(source).shuffle(seed=seed)
  dataset = dataset.map(_image_and_label(preprocess))
  return np.stack([dataset[i][0] for i in range(count)])


def batches(source, batch_size: int, preprocess: Preprocess, *,
            shuffle_seed: int | None = None, num_epochs: int = 1,
            drop_remainder: bool = False,
            ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(images, labels) batches through a grain pipeline."""
  dataset = grain.MapDataset.source(source)
  if shuffle_seed is not None:
    dataset = dataset.shuffle(seed=shuffle_seed)
  dataset = dataset.repeat(num_epochs) if num_epochs > 1 else dataset
  dataset = dataset.map(_image_and_label(preprocess))
  dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
  read_options = grain.ReadOptions(num_threads=min(8, os.cpu_count() or 1))
  yield from dataset.to_iter_dataset(read_options)


def load_split_arrays(source, preprocess: Preprocess,
                      batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
  """A whole split as two arrays (small data sets only)."""
  parts = list(batches(source, batch_size, preprocess))
  return (np.concatenate([images for images, _ in parts]),
          np.concatenate([labels for _, labels in parts]))
