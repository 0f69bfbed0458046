"""Our models against torchvision's own, with the same weights (skipped without torchvision).

torchvision's models get random weights and non-trivial batch-norm
statistics; their state dict goes through mpq_jax's import (as .pth, loaded
with weights_only=True, and as safetensors); the logits of both frameworks
must agree on the same images. Install torch and torchvision to run these
(see BUILD.md); the suite skips them otherwise.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
from flax import nnx  # pylint: disable=g-import-not-at-top

from mpq_jax import models  # pylint: disable=g-import-not-at-top
from mpq_jax import nnx_adapter  # pylint: disable=g-import-not-at-top
from mpq_jax.models import convert  # pylint: disable=g-import-not-at-top
from mpq_jax.models import folding  # pylint: disable=g-import-not-at-top


def torchvision_model(name):
  builders = {
      "resnet18": lambda: torchvision.models.resnet18(),
      "resnet50": lambda: torchvision.models.resnet50(),
      "vgg16": lambda: torchvision.models.vgg16(),
      "vgg16_bn": lambda: torchvision.models.vgg16_bn(),
      "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(),
      # As torchvision builds it for its ImageNet weights.
      "googlenet": lambda: torchvision.models.googlenet(
          aux_logits=False, transform_input=True, init_weights=True),
  }
  torch.manual_seed(0)
  model = builders[name]()
  generator = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        size = module.num_features
        module.running_mean.copy_(0.1 * torch.randn(size, generator=generator))
        module.running_var.copy_(0.5 + torch.rand(size, generator=generator))
        module.weight.copy_(1 + 0.1 * torch.randn(size, generator=generator))
        module.bias.copy_(0.1 * torch.randn(size, generator=generator))
  return model.eval()


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vgg16",
                                  "vgg16_bn", "mobilenet_v2", "googlenet"])
def test_logits_match_torchvision(name, tmp_path):
  reference = torchvision_model(name)
  path = tmp_path / f"{name}.pth"
  torch.save(reference.state_dict(), path)
  entry = models.get_model_entry(name)
  module = entry.build(nnx.Rngs(0))
  state = convert.torchvision_to_nnx(convert.read_state_dict(path),
                                     nnx.to_pure_dict(nnx.state(module)))
  nnx.update(module, state)
  module.eval()
  images = np.random.default_rng(2).normal(size=(2, 3, 64, 64)).astype(
      np.float32)
  with torch.no_grad():
    want = reference(torch.from_numpy(images)).numpy()
  apply_fn, params = nnx_adapter.functional_model(module)
  got = np.asarray(apply_fn(params, jnp.asarray(images.transpose(0, 2, 3, 1))))
  scale = np.abs(want).max()
  np.testing.assert_allclose(got, want, atol=1e-4 * scale, rtol=0)
  # And after batch-norm folding, as the pipeline quantizes it.
  folding.fold_batch_norm(module)
  folded_fn, folded = nnx_adapter.functional_model(module)
  got = np.asarray(folded_fn(folded, jnp.asarray(images.transpose(0, 2, 3,
                                                                  1))))
  np.testing.assert_allclose(got, want, atol=1e-4 * scale, rtol=0)
