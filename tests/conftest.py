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


@pytest.fixture(scope="session")
def make_demo_model():
  """`make(num_images)`: an untrained demo_cnn, its spec, images and ranges.

  Returns (apply_fn, params, spec, images, activation ranges); images are
  jax.random.normal with key 1.
  """
  # pylint: disable=g-import-not-at-top
  import jax
  from flax import nnx
  from mpq_jax import activations
  from mpq_jax import nnx_adapter
  from mpq_jax import spec as spec_lib
  from mpq_jax.models import demo_cnn
  # pylint: enable=g-import-not-at-top

  def make(num_images: int):
    apply_fn, params = nnx_adapter.functional_model(
        demo_cnn.DemoCNN(rngs=nnx.Rngs(0)))
    images = jax.random.normal(jax.random.key(1), (num_images, 28, 28, 1))
    spec = spec_lib.build_layer_spec(apply_fn, params, images[:1])
    ranges = activations.calibrate_activation_ranges(apply_fn, params, spec,
                                                     images)
    return apply_fn, params, spec, images, ranges

  return make
