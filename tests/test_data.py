"""Tests for mpq_jax/data: the bundled MNIST builder and the grain pipelines."""

import numpy as np
import pytest

from mpq_jax import models
from mpq_jax.data import mnist_subset
from mpq_jax.data import pipeline


def test_bundled_arrays_are_shuffled_and_balanced():
  images, labels = mnist_subset.load_bundled_arrays()
  assert images.shape == (5000, 28, 28, 1) and images.dtype == np.uint8
  assert np.bincount(labels).tolist() == [500] * 10
  # The file is sorted by class; after the shuffle the first 100 labels mix.
  assert len(np.unique(labels[:100])) == 10
  train, test = labels[:mnist_subset.NUM_TRAIN], labels[mnist_subset.NUM_TRAIN:]
  assert len(train) == 4000 and len(test) == 1000
  assert np.bincount(test, minlength=10).min() > 70


def test_data_source_reads_prepared_array_records(demo_data_dir):
  train = pipeline.data_source("mnist_subset", "train", demo_data_dir)
  test = pipeline.data_source("mnist_subset", "test", demo_data_dir)
  assert (len(train), len(test)) == (4000, 1000)
  images, _ = mnist_subset.load_bundled_arrays()
  # TFDS reorders records when writing; the split membership is what holds.
  train_images = {image.tobytes() for image in images[:4000]}
  assert all(np.asarray(train[i]["image"]).tobytes() in train_images
             for i in range(0, 4000, 97))
  assert all(np.asarray(test[i]["image"]).tobytes() not in train_images
             for i in range(0, 1000, 37))


def test_calibration_images_are_seeded_and_distinct(demo_data_dir):
  train = pipeline.data_source("mnist_subset", "train", demo_data_dir)
  first = pipeline.calibration_images(train, 50, models.preprocess_mnist, 0)
  again = pipeline.calibration_images(train, 50, models.preprocess_mnist, 0)
  other = pipeline.calibration_images(train, 50, models.preprocess_mnist, 1)
  assert first.shape == (50, 28, 28, 1) and first.dtype == np.float32
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)
  assert len({image.tobytes() for image in first}) == 50


def test_batches_cover_a_split_once(demo_data_dir):
  test = pipeline.data_source("mnist_subset", "test", demo_data_dir)
  images, labels = pipeline.load_split_arrays(test, models.preprocess_mnist,
                                              batch_size=300)
  assert images.shape == (1000, 28, 28, 1)
  np.testing.assert_allclose(images.mean(), 0.0, atol=0.1)  # standardized
  sizes = [len(b[1]) for b in pipeline.batches(test, 300,
                                               models.preprocess_mnist)]
  assert sizes == [300, 300, 300, 100]


def test_bad_calibration_sizes_name_the_fix(demo_data_dir):
  train = pipeline.data_source("mnist_subset", "train", demo_data_dir)
  with pytest.raises(ValueError, match="--calib_size=50"):
    pipeline.calibration_images(train, 0, models.preprocess_mnist, 0)
  with pytest.raises(ValueError, match="exceeds the 4000 images"):
    pipeline.calibration_images(train, 4001, models.preprocess_mnist, 0)


def test_unprepared_dataset_says_what_to_do(tmp_path):
  with pytest.raises(FileNotFoundError,
                     match="not prepared under .*downloads/manual"):
    pipeline.data_source("imagenet2012", "validation", str(tmp_path))
