"""Tests for mpq_jax/models: torchvision-exact ResNets and the random-init smoke path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mpq_jax import nnx_adapter
from mpq_jax import pipeline
from mpq_jax import spec as spec_lib
from mpq_jax.models import resnet


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


def test_random_init_runs_the_pipeline_and_says_it_means_nothing(tmp_path):
  config = pipeline.RunConfig(
      model="resnet18", workdir=str(tmp_path), random_init=True,
      input_size=16, eval_size=16, num_samples=8, calib_size=2, chunk_size=8,
      num_targets=3, methods=("mlp", "uniform"))
  report = pipeline.run(config, ["model", "bit_range", "sampling",
                                 "allocator", "sweep", "report"])
  assert report["random_init"] and report["input_shape"] == [16, 16, 3]
  assert report["num_layers"] == 21 and report["fp_top1"] == 100.0
  assert report["fp_bytes"] == 4 * 11_689_512
  assert "RANDOM WEIGHTS AND SYNTHETIC IMAGES" in (
      tmp_path / "report.md").read_text()


def test_missing_weights_say_what_to_do(tmp_path):
  run = pipeline.Run(pipeline.RunConfig(model="resnet50",
                                        workdir=str(tmp_path / "run"),
                                        data_dir=str(tmp_path / "tfds")))
  with pytest.raises(FileNotFoundError, match="no weights for resnet50.*"
                     "--random_init"):
    run.run(["model"])
