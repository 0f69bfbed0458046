"""Tests for mpq_jax/qwix_handoff.py: allocations as qwix rules, run by qwix itself."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mpq_jax import activations
from mpq_jax import models
from mpq_jax import nnx_adapter
from mpq_jax import spec as spec_lib
from mpq_jax.data import pipeline
from mpq_jax.models import demo_cnn
from mpq_jax.models import training

qwix = pytest.importorskip("qwix")
from mpq_jax import qwix_handoff  # pylint: disable=g-import-not-at-top


@pytest.fixture(scope="module")
def trained(demo_data_dir):
  module = demo_cnn.DemoCNN(rngs=nnx.Rngs(0))
  train = pipeline.data_source("mnist_subset", "train", demo_data_dir)
  training.train_classifier(
      module, pipeline.batches(train, 128, models.preprocess_mnist,
                               shuffle_seed=0, drop_remainder=True),
      num_steps=31)
  apply_fn, params = nnx_adapter.functional_model(module)
  test = pipeline.data_source("mnist_subset", "test", demo_data_dir)
  images, labels = pipeline.load_split_arrays(test, models.preprocess_mnist)
  images = jnp.asarray(images)
  spec = spec_lib.build_layer_spec(apply_fn, params, images[:1])
  return module, apply_fn, params, spec, images, labels


def top1(logits, labels):
  return 100.0 * float(np.mean(np.argmax(np.asarray(logits), -1) == labels))


def test_rules_follow_the_allocation_in_forward_order(trained):
  _, _, _, spec, _, _ = trained
  bits = [2, 3, 4, 5, 6, 7, 8, 4, 3]
  rules = qwix_handoff.qwix_rules(spec, bits)
  assert [r.module_path for r in rules] == [
      "^convs/0$", "^convs/1$", "^convs/2$", "^convs/3$", "^convs/4$",
      "^convs/5$", "^dense1$", "^dense2$", "^head$"]
  assert [r.weight_qtype for r in rules] == [
      "int2", "int3", jnp.int4, "int5", "int6", "int7", jnp.int8, jnp.int4,
      "int3"]
  assert all(r.act_qtype is None for r in rules)
  with pytest.raises(ValueError, match="qwix has no 9-bit"):
    qwix_handoff.qwix_rules(spec, [9] * spec.num_layers)
  with pytest.raises(ValueError, match="9 quantized layers"):
    qwix_handoff.qwix_rules(spec, [4, 4])


def test_qwix_runs_the_allocation_and_agrees_where_the_quantizers_agree(
    trained):
  module, apply_fn, params, spec, images, labels = trained
  full_precision = top1(apply_fn(params, images), labels)
  ours = lambda bits, per_channel: top1(activations.make_quantized_apply(
      apply_fn, spec, per_channel=per_channel)(params, jnp.asarray(bits),
                                               images), labels)
  theirs = lambda bits: top1(qwix_handoff.quantize_with_qwix(
      module, spec, bits, images[:2])(images), labels)
  eight = [8] * spec.num_layers
  # At 8 bits every quantizer is within half a point of full precision.
  for value in (theirs(eight), ours(eight, False), ours(eight, True)):
    assert abs(value - full_precision) <= 0.5
  # At 2 bits the rules clearly act; qwix's full signed grid keeps four
  # levels (-2..1) where the restricted grid keeps three (-1..1), so qwix
  # loses less than our per-channel quantizer at the same granularity.
  two = [2] * spec.num_layers
  assert theirs(two) < full_precision - 10
  assert theirs(two) > ours(two, True) + 5
  # qwix returned a new model: the original still gives full precision.
  assert top1(module(images), labels) == full_precision
