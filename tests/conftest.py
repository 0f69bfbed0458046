"""Shared fixtures: CPU backend, a prepared copy of the bundled demo data set."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # pylint: disable=g-import-not-at-top


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory):
  """A TFDS data_dir holding the prepared mnist_subset (built once per session)."""
  from mpq_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  pipeline.data_source("mnist_subset", "train", data_dir)
  return data_dir
