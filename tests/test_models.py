"""Tests for mpq_jax/models: torchvision-exact ResNets and the random-init smoke path."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mpq_jax import nnx_adapter
from mpq_jax import pipeline
from mpq_jax import spec as spec_lib
from mpq_jax.models import demo_cnn
from mpq_jax.models import folding
from mpq_jax.models import googlenet
from mpq_jax.models import mobilenet
from mpq_jax.models import resnet
from mpq_jax.models import vgg


@pytest.mark.parametrize("build, parameters, layers", [
    (resnet.resnet18, 11_689_512, 21),  # 20 convs (3 downsample) + fc
    (resnet.resnet50, 25_557_032, 54),  # 53 convs (4 downsample) + fc
])
def test_resnets_match_torchvision_parameter_for_parameter(build, parameters,
                                                           layers):
  model = build(rngs=nnx.Rngs(0))
  count = sum(int(np.size(leaf))
              for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert count == parameters  # torchvision's sum(p.numel() for p in params)
  apply_fn, params = nnx_adapter.functional_model(model)
  spec = spec_lib.build_layer_spec(apply_fn, params,
                                   jnp.zeros((1, 32, 32, 3)))
  assert spec.num_layers == layers
  assert spec.names[0] == "conv1" and spec.names[-1] == "fc"
  assert spec.names[1] == "layer1/0/conv1"
  assert spec.shapes[0] == (7, 7, 3, 64) and spec.shapes[-1][1] == 1000
  assert apply_fn(params, jnp.zeros((2, 32, 32, 3))).shape == (2, 1000)


def randomize_batch_norm(model, seed=3):
  """Non-trivial running statistics and affine terms in every BatchNorm."""
  key = jax.random.key(seed)
  for _, node in nnx.iter_graph(model):
    if isinstance(node, nnx.BatchNorm):
      key, k1, k2, k3, k4 = jax.random.split(key, 5)
      shape = node.mean[...].shape
      node.mean[...] = 0.1 * jax.random.normal(k1, shape)
      node.var[...] = jax.random.uniform(k2, shape, minval=0.5, maxval=1.5)
      node.scale[...] = 1 + 0.1 * jax.random.normal(k3, shape)
      node.bias[...] = 0.1 * jax.random.normal(k4, shape)


@pytest.mark.parametrize("build, convolutions", [(resnet.resnet18, 20),
                                                 (resnet.resnet50, 53)])
def test_folded_logits_equal_unfolded_ones(build, convolutions):
  model = build(rngs=nnx.Rngs(0))
  randomize_batch_norm(model)
  model.eval()
  images = jax.random.normal(jax.random.key(9), (2, 32, 32, 3))
  assert_folding_keeps_logits(model, images, convolutions)
  assert not any(isinstance(node, nnx.BatchNorm)
                 for _, node in nnx.iter_graph(model))
  # Every folded convolution now carries a bias.
  assert all(node.use_bias for _, node in nnx.iter_graph(model)
             if isinstance(node, nnx.Conv))


def test_folding_leaves_a_model_without_batch_norm_alone():
  model = demo_cnn.DemoCNN(rngs=nnx.Rngs(0))
  images = jnp.ones((1, 28, 28, 1))
  before = model(images)
  assert folding.fold_batch_norm(model) == 0
  np.testing.assert_array_equal(model(images), before)


def test_random_init_runs_the_pipeline_and_says_it_means_nothing(tmp_path):
  config = pipeline.RunConfig(
      model="resnet18", workdir=str(tmp_path), random_init=True,
      input_size=16, eval_size=16, num_samples=8, calib_size=2, chunk_size=8,
      num_targets=3, methods=("mlp", "uniform"))
  report = pipeline.run(config, ["model", "bit_range", "sampling",
                                 "allocator", "sweep", "report"])
  assert report["random_init"] and report["input_shape"] == [16, 16, 3]
  assert report["num_layers"] == 21 and report["fp_top1"] == 100.0
  model = json.loads((tmp_path / "model.json").read_text())
  assert model["batch_norms_folded"] == 20
  # The 20 batch norms span 4,800 channels: their 9,600 scales and biases
  # go, 4,800 convolution biases come.
  assert report["total_params"] == 11_689_512 - 4_800
  assert report["fp_bytes"] == 4 * (11_689_512 - 4_800)
  assert "RANDOM WEIGHTS AND SYNTHETIC IMAGES" in (
      tmp_path / "report.md").read_text()


def test_missing_weights_say_what_to_do(tmp_path):
  run = pipeline.Run(pipeline.RunConfig(model="resnet50",
                                        workdir=str(tmp_path / "run"),
                                        data_dir=str(tmp_path / "tfds")))
  with pytest.raises(FileNotFoundError, match="no weights for resnet50.*"
                     "--random_init"):
    run.run(["model"])


@pytest.fixture(scope="module")
def resnet18_variables():
  model = resnet.resnet18(rngs=nnx.Rngs(1))
  randomize_batch_norm(model, seed=5)
  return model, nnx.to_pure_dict(nnx.state(model))


@pytest.fixture()
def resnet18_safetensors(resnet18_variables, tmp_path):
  """resnet18_variables saved as a torchvision state dict in safetensors."""
  import safetensors.numpy  # pylint: disable=g-import-not-at-top
  from mpq_jax.models import convert  # pylint: disable=g-import-not-at-top
  path = tmp_path / "resnet18.safetensors"
  safetensors.numpy.save_file(
      convert.nnx_to_torchvision(resnet18_variables[1]), str(path))
  return path


def assert_folding_keeps_logits(model, images, folds, atol=0.0):
  """Folding makes `folds` folds and keeps the logits to float32 precision."""
  before = model(images)
  assert folding.fold_batch_norm(model) == folds
  assert float(jnp.max(jnp.abs(model(images) - before))) <= 1e-5 * float(
      jnp.max(jnp.abs(before))) + atol


def test_torchvision_keys_and_shapes_both_ways(resnet18_variables):
  from mpq_jax.models import convert  # pylint: disable=g-import-not-at-top
  model, variables = resnet18_variables
  state = convert.nnx_to_torchvision(variables)
  # torchvision's resnet18 state dict: 122 tensors, 20 of them the
  # num_batches_tracked counters that carry no weights.
  assert len(state) == 102
  expected_shapes = {
      "conv1.weight": (64, 3, 7, 7), "bn1.running_var": (64,),
      "layer1.0.conv1.weight": (64, 64, 3, 3),
      "layer2.0.downsample.0.weight": (128, 64, 1, 1),
      "layer2.0.downsample.1.running_mean": (128,),
      "layer4.1.bn2.weight": (512,), "fc.weight": (1000, 512),
      "fc.bias": (1000,)}
  for key, shape in expected_shapes.items():
    assert state[key].shape == shape
  state["bn1.num_batches_tracked"] = np.zeros((), np.int64)  # ignored
  back = convert.torchvision_to_nnx(state, variables)
  for got, want in zip(jax.tree.leaves(back), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(got, want)
  # OIHW -> HWIO really transposes: one kernel element, located by hand.
  np.testing.assert_array_equal(
      back["layer1"][0]["conv1"]["kernel"][2, 1, 5, 7],
      state["layer1.0.conv1.weight"][7, 5, 2, 1])


def test_bad_state_dicts_name_the_problem(resnet18_variables, tmp_path):
  from mpq_jax.models import convert  # pylint: disable=g-import-not-at-top
  _, variables = resnet18_variables
  state = convert.nnx_to_torchvision(variables)
  state.pop("fc.bias")
  state["head.weight"] = np.zeros((10, 512), np.float32)
  with pytest.raises(ValueError, match=r"missing \['fc.bias'\].*unexpected"
                     r" \['head.weight'\]"):
    convert.torchvision_to_nnx(state, variables)
  state = convert.nnx_to_torchvision(variables)
  state["fc.weight"] = np.zeros((10, 512), np.float32)
  with pytest.raises(ValueError, match="fc.weight has shape"):
    convert.torchvision_to_nnx(state, variables)
  with pytest.raises(FileNotFoundError, match="save the state dict as"
                     " safetensors"):
    convert.read_state_dict(tmp_path / "absent.safetensors")


def test_converted_safetensors_load_into_the_pipeline(resnet18_variables,
                                                       resnet18_safetensors,
                                                       tmp_path):
  from mpq_jax.models import convert  # pylint: disable=g-import-not-at-top
  model, _ = resnet18_variables
  convert.convert_into_workdir("resnet18", resnet18_safetensors,
                               tmp_path / "run")
  run = pipeline.Run(pipeline.RunConfig(model="resnet18",
                                        workdir=str(tmp_path / "run"),
                                        data_dir=str(tmp_path / "tfds")))
  images = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
  model.eval()
  np.testing.assert_allclose(run.apply_fn(run.params, images), model(images),
                             rtol=1e-4, atol=1e-4)
  assert run.batch_norms_folded == 20


def test_imagenet_eval_transform_on_mock_imagenet():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from mpq_jax import models  # pylint: disable=g-import-not-at-top
  from mpq_jax.data import imagenet  # pylint: disable=g-import-not-at-top
  from mpq_jax.data import pipeline as data_pipeline  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=6):
    source = data_pipeline.data_source("imagenet2012", "validation",
                                       "/nonexistent")
    images, labels = data_pipeline.load_split_arrays(
        source, lambda image: models.preprocess_imagenet(image, (64, 64, 3)))
  assert images.shape == (6, 64, 64, 3) and images.dtype == np.float32
  assert labels.shape == (6,) and labels.min() >= 0 and labels.max() < 1000
  # A flat gray image: resize and crop keep it flat; normalization is exact.
  gray = np.full((300, 500, 3), 128, np.uint8)
  out = imagenet.eval_transform(gray)
  assert out.shape == (224, 224, 3)
  np.testing.assert_allclose(out[0, 0], (128 / 255 - imagenet.MEAN)
                             / imagenet.STD, rtol=1e-5)
  # Resize(256) + CenterCrop(224): a centered 224-wide white box in a
  # 256x256 picture survives exactly inside the crop.
  box = np.zeros((256, 256, 3), np.uint8)
  box[16:240, 16:240] = 255
  crop = imagenet.eval_transform(box)
  assert np.all(crop[1:-1, 1:-1] == crop[112, 112])


def test_mock_imagenet_end_to_end_at_reduced_resolution(resnet18_safetensors,
                                                        tmp_path):
  import time  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from mpq_jax.models import convert  # pylint: disable=g-import-not-at-top
  convert.convert_into_workdir("resnet18", resnet18_safetensors,
                               tmp_path / "run")
  started = time.perf_counter()
  with tfds.testing.mock_data(num_examples=16):
    report = pipeline.run(pipeline.RunConfig(
        model="resnet18", workdir=str(tmp_path / "run"),
        data_dir=str(tmp_path / "tfds"), input_size=32, num_samples=8,
        calib_size=4, chunk_size=8, num_targets=3, eval_batch_size=16),
        ["model", "bit_range", "sampling", "allocator", "sweep", "report"])
  seconds = time.perf_counter() - started
  assert report["eval_images"] == 16 and report["num_layers"] == 21
  assert not report["random_init"] and report["input_shape"] == [32, 32, 3]
  assert 0.0 <= report["fp_top1"] <= 100.0
  assert len(report["uniform"]) == 7
  print(f"mock ImageNet end to end: {seconds:.1f} s")


@pytest.mark.parametrize(
    "build, parameters, layers, folds, tensors, sample_keys", [
    # torchvision's state dicts, less their num_batches_tracked counters.
    (vgg.vgg16, 138_357_544, 16, 0, 32,
     {"features.0.weight": (64, 3, 3, 3), "features.28.bias": (512,),
      "classifier.0.weight": (4096, 25088), "classifier.6.weight": (1000, 4096)}),
    (vgg.vgg16_bn, 138_365_992, 16, 13, 84,
     {"features.1.running_var": (64,), "features.40.weight": (512, 512, 3, 3),
      "classifier.3.weight": (4096, 4096)}),
    (mobilenet.mobilenet_v2, 3_504_872, 53, 52, 262,
     {"features.0.0.weight": (32, 3, 3, 3),
      "features.1.conv.0.0.weight": (32, 1, 3, 3),
      "features.2.conv.2.weight": (24, 96, 1, 1),
      "features.18.1.running_mean": (1280,),
      "classifier.1.weight": (1000, 1280)}),
])
def test_vgg_and_mobilenet_match_torchvision(build, parameters, layers, folds,
                                             tensors, sample_keys):
  from mpq_jax.models import convert  # pylint: disable=g-import-not-at-top
  model = build(rngs=nnx.Rngs(0))
  assert sum(int(np.size(leaf)) for leaf in
             jax.tree.leaves(nnx.state(model, nnx.Param))) == parameters
  state = convert.nnx_to_torchvision(nnx.to_pure_dict(nnx.state(model)))
  assert len(state) == tensors
  for key, shape in sample_keys.items():
    assert state[key].shape == shape
  randomize_batch_norm(model)
  model.eval()
  apply_fn, params = nnx_adapter.functional_model(model)
  images = jax.random.normal(jax.random.key(4), (2, 32, 32, 3))
  spec = spec_lib.build_layer_spec(apply_fn, params, images[:1])
  assert spec.num_layers == layers  # every conv and linear layer
  assert_folding_keeps_logits(model, images, folds, atol=1e-6)


def test_googlenet_matches_torchvision_and_reproduces_transform_input():
  from mpq_jax import models  # pylint: disable=g-import-not-at-top
  from mpq_jax.data import imagenet  # pylint: disable=g-import-not-at-top
  from mpq_jax.models import convert  # pylint: disable=g-import-not-at-top
  model = models.get_model_entry("googlenet").build(nnx.Rngs(0))
  assert model.transform_input  # as torchvision builds it for its weights
  assert sum(int(np.size(leaf)) for leaf in
             jax.tree.leaves(nnx.state(model, nnx.Param))) == 6_624_904
  state = convert.nnx_to_torchvision(nnx.to_pure_dict(nnx.state(model)))
  assert len(state) == 287  # torchvision's 344 less 57 counters
  assert state["inception3a.branch4.1.conv.weight"].shape == (32, 192, 1, 1)
  assert state["inception5b.branch3.1.conv.weight"].shape == (128, 48, 3, 3)
  apply_fn, params = nnx_adapter.functional_model(model)
  spec = spec_lib.build_layer_spec(apply_fn, params, jnp.zeros((1, 64, 64, 3)))
  assert spec.num_layers == 58  # 57 convs + fc: the paper's 58 bars
  # transform_input turns ImageNet-normalized pixels p into (p - 0.5) / 0.5.
  pixels = np.array([0.1, 0.5, 0.9], np.float32)
  normalized = (pixels - imagenet.MEAN) / imagenet.STD
  np.testing.assert_allclose(model._transform(jnp.asarray(normalized)),
                             (pixels - 0.5) / 0.5, atol=1e-6)
  # torchvision's ceil-mode pooling sizes: 112 -> 56, 28 -> 14, 14 -> 7.
  for size, kernel, expected in ((112, 3, 56), (28, 3, 14), (14, 2, 7)):
    pooled = googlenet.CeilMaxPool(kernel, 2)(jnp.ones((1, size, size, 1)))
    assert pooled.shape[1] == expected
  randomize_batch_norm(model)
  model.eval()
  images = jax.random.normal(jax.random.key(4), (1, 64, 64, 3))
  assert_folding_keeps_logits(model, images, 57, atol=1e-6)


def test_weights_flag_imports_and_paper_layer_counts(resnet18_variables,
                                                    resnet18_safetensors,
                                                    tmp_path):
  model, _ = resnet18_variables
  run = pipeline.Run(pipeline.RunConfig(
      model="resnet18", workdir=str(tmp_path / "run"),
      data_dir=str(tmp_path / "tfds"), weights=str(resnet18_safetensors),
      layers="paper",
      input_size=32))
  images = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
  model.eval()
  np.testing.assert_allclose(run.apply_fn(run.params, images), model(images),
                             rtol=1e-4, atol=1e-4)
  assert (tmp_path / "run" / "model_checkpoint").exists()
  # The paper's count: the 3 downsample convolutions are left out.
  assert run.spec.num_layers == 18
  assert not any("downsample" in name for name in run.spec.names)
  with pytest.raises(ValueError, match="--layers=some: choose one of all"):
    pipeline.Run(pipeline.RunConfig(model="resnet18", random_init=True,
                                    workdir=str(tmp_path / "r"),
                                    layers="some")).spec
