"""The PyTorch reference computes our KL on our weights (skipped without torch)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
from flax import nnx  # pylint: disable=g-import-not-at-top

from experiments import benchmark  # pylint: disable=g-import-not-at-top
from experiments import torch_reference  # pylint: disable=g-import-not-at-top
from mpq_jax import models  # pylint: disable=g-import-not-at-top
from mpq_jax import sampling  # pylint: disable=g-import-not-at-top


@pytest.mark.parametrize("name,side", [("demo_cnn", 28), ("resnet18", 64)])
def test_paper_loop_in_torch_gives_our_kl(name, side):
  unfolded, apply_fn, params, images, spec, ranges = benchmark.setup_model(
      name, side, 8)
  twin = torch_reference.torch_model(name, unfolded)
  # The twin is our model: same folded logits.
  with torch.no_grad():
    torch_logits = twin(torch.from_numpy(
        np.transpose(images, (0, 3, 1, 2)).copy())).numpy()
  ours = np.asarray(apply_fn(params, jnp.asarray(images)))
  np.testing.assert_allclose(torch_logits, ours,
                             atol=1e-4 * np.abs(ours).max())
  loop = torch_reference.PaperLoop(twin, spec.names, images)
  np.testing.assert_allclose([r[0] for r in loop.ranges],
                             np.asarray(ranges)[:, 0], rtol=1e-4, atol=1e-5)
  bits = sampling.sample_bit_configs(0, 0, 6, spec.num_layers, (3, 8),
                                     "graded")
  ours = sampling.make_kl_evaluator(apply_fn, params, spec, images,
                                    activation_ranges=ranges,
                                    chunk_size=6)(bits)
  theirs = loop.kl_of(bits)
  # Same method, two frameworks: a weight or activation code may round the
  # other way at a tie, so agreement is to a few percent, not to the ulp.
  meaningful = ours > 1e-4
  assert meaningful.sum() >= 3
  np.testing.assert_allclose(theirs[meaningful], ours[meaningful], rtol=0.05)
  assert np.corrcoef(np.log(theirs + 1e-9), np.log(ours + 1e-9))[0, 1] > 0.99


def test_unknown_layer_names_and_foreign_state_are_refused():
  module = models.get_model_entry("demo_cnn").build(nnx.Rngs(0))
  variables = nnx.to_pure_dict(nnx.state(module))
  with pytest.raises(ValueError, match="missing"):
    torch_reference.torch_model("resnet18", variables)
  twin = torch_reference.torch_model("demo_cnn", variables)
  with pytest.raises(KeyError):
    torch_reference.PaperLoop(twin, ["convs/9"], np.zeros((2, 28, 28, 1),
                                                          np.float32))
