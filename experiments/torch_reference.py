"""The paper's KL loop in PyTorch eager: the reference experiments.benchmark times.

For each configuration: quantize every layer's weights in place from the
full-precision copy, forward the N calibration images with each quantized
layer's input fake-quantized to 8 bits over its calibrated range, and take
the mean KL(softmax(fp) || softmax(quantized)). It is given the same weights
as the JAX model (batch norm folded with torch.fx, as the JAX side folds it)
and uses PyTorch's fused fake-quantize kernels, so it is the loop a PyTorch
user would write, not a strawman.

Needs the optional `torch` extra (torch and torchvision); the JAX package
never imports this file.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torchvision
from torch.fx.experimental import optimization as fx_optimization

from mpq_jax.models import convert

QUANTIZED_MODULES = (torch.nn.Conv2d, torch.nn.Linear)


class TorchDemoCNN(torch.nn.Module):
  """mpq_jax.models.demo_cnn.DemoCNN in PyTorch, parameter for parameter."""

  def __init__(self, num_classes: int = 10):
    super().__init__()
    widths = [(1, 16), (16, 16), (16, 32), (32, 32), (32, 64), (64, 64)]
    self.convs = torch.nn.ModuleList(
        [torch.nn.Conv2d(cin, cout, 3, padding=1) for cin, cout in widths])
    self.dense1 = torch.nn.Linear(3 * 3 * 64, 128)
    self.dense2 = torch.nn.Linear(128, 64)
    self.head = torch.nn.Linear(64, num_classes)

  def forward(self, x):
    for index, conv in enumerate(self.convs):
      x = torch.relu(conv(x))
      if index % 2 == 1:
        x = torch.nn.functional.max_pool2d(x, 2)
    # The JAX model flattens NHWC: same order here.
    x = x.permute(0, 2, 3, 1).flatten(1)
    x = torch.relu(self.dense1(x))
    x = torch.relu(self.dense2(x))
    return self.head(x)


def torch_model(name: str, variables: dict) -> torch.nn.Module:
  """The torch twin of our model `name` holding `variables` (unfolded), folded.

  Args:
    name: demo_cnn, or a torchvision model name (resnet18, resnet50, ...).
    variables: `nnx.to_pure_dict(nnx.state(module))` of the unfolded model.
  """
  state = {key: torch.from_numpy(np.array(value)) for key, value in
           convert.nnx_to_torchvision(variables).items()}
  if name == "demo_cnn":
    model = TorchDemoCNN()
  else:
    model = getattr(torchvision.models, name)()
  missing, unexpected = model.load_state_dict(state, strict=False)
  missing = [k for k in missing if not k.endswith("num_batches_tracked")]
  if missing or unexpected:
    raise ValueError(f"torch twin of {name}: missing {missing}, unexpected"
                     f" {unexpected}")
  return fx_optimization.fuse(model.eval())


def spec_name_to_torch(name: str) -> str:
  """'layer2/0/downsample/layers/0' -> 'layer2.0.downsample.0'."""
  return ".".join(part for part in name.split("/") if part != "layers")


def _fake_quantize_weight(weight: torch.Tensor, bits: int) -> torch.Tensor:
  max_code = 2 ** (bits - 1) - 1
  max_abs = float(weight.abs().max())
  scale = (max_abs if max_abs > 0 else 1.0) / max_code
  return torch.fake_quantize_per_tensor_affine(weight, scale, 0, -max_code,
                                               max_code)


class PaperLoop:
  """KL of bit configurations by the paper's loop, on a torch model.

  Attributes:
    layers: the quantized modules in the order of the JAX LayerSpec.
  """

  def __init__(self, model: torch.nn.Module, layer_names, images_nhwc,
               activation_bits: int = 8, channels_last: bool = True):
    self.model = model
    modules = dict(model.named_modules())
    # fx renames nothing it keeps, but a fused module may live elsewhere.
    self.layers = [modules[spec_name_to_torch(n)] for n in layer_names]
    for layer in self.layers:
      if not isinstance(layer, QUANTIZED_MODULES):
        raise TypeError(f"{layer} is not a conv or linear layer")
    self.full_precision = [layer.weight.detach().clone()
                           for layer in self.layers]
    images = torch.from_numpy(np.ascontiguousarray(
        np.transpose(np.asarray(images_nhwc, np.float32), (0, 3, 1, 2))))
    self.memory_format = (torch.channels_last if channels_last
                          else torch.contiguous_format)
    if channels_last and images.shape[1] > 1:
      model.to(memory_format=torch.channels_last)
      images = images.contiguous(memory_format=torch.channels_last)
    self.images = images
    self.activation_bits = activation_bits
    with torch.inference_mode():
      self.ranges = self._calibrate()
      self.reference_log_probs = torch.log_softmax(self.model(images), -1)
    self._hooks = [layer.register_forward_pre_hook(self._quantize_input(i))
                   for i, layer in enumerate(self.layers)]

  def _calibrate(self) -> list[tuple[float, float]]:
    ranges = [None] * len(self.layers)

    def record(index):
      def hook(module, inputs):
        del module
        low, high = float(inputs[0].min()), float(inputs[0].max())
        ranges[index] = (low, high)
      return hook

    hooks = [layer.register_forward_pre_hook(record(i))
             for i, layer in enumerate(self.layers)]
    self.model(self.images)
    for hook in hooks:
      hook.remove()
    return ranges

  def _quantize_input(self, index: int):
    # Our quantize_asymmetric: the range widened to include 0, an unsigned
    # grid, zero point rounded.
    low, high = self.ranges[index]
    low, high = min(low, 0.0), max(high, 0.0)
    max_code = 2 ** self.activation_bits - 1
    if high <= low:
      return lambda module, inputs: (torch.zeros_like(inputs[0]),)
    scale = (high - low) / max_code
    zero_point = int(round(-low / scale))

    def hook(module, inputs):
      del module
      return (torch.fake_quantize_per_tensor_affine(
          inputs[0], scale, zero_point, 0, max_code),)
    return hook

  def kl(self, bits) -> float:
    """Omega of one configuration: quantize in place, forward, KL."""
    with torch.inference_mode():
      for layer, weight, b in zip(self.layers, self.full_precision, bits):
        layer.weight.copy_(_fake_quantize_weight(weight, int(b)))
      log_probs = torch.log_softmax(self.model(self.images), -1)
      kl = (self.reference_log_probs.exp()
            * (self.reference_log_probs - log_probs)).sum(-1).mean()
    return max(float(kl), 0.0)

  def kl_of(self, bit_configs) -> np.ndarray:
    return np.array([self.kl(bits) for bits in bit_configs], np.float32)

  def configs_per_second(self, bit_configs) -> dict:
    """Times the loop over `bit_configs` after one warm-up configuration."""
    self.kl(bit_configs[0])
    started = time.perf_counter()
    kls = self.kl_of(bit_configs)
    elapsed = time.perf_counter() - started
    return {"configs_per_second": len(bit_configs) / elapsed,
            "seconds": elapsed, "kl": kls}


def measure(name: str, variables: dict, layer_names, images_nhwc, bit_configs,
            threads: int) -> dict:
  """Configurations/s of the paper's loop; run in a fresh process for fairness.

  A process of its own keeps JAX's idle worker threads and PyTorch's OpenMP
  threads from competing for the same cores.
  """
  torch.set_num_threads(threads)
  loop = PaperLoop(torch_model(name, variables), layer_names, images_nhwc)
  timing = loop.configs_per_second(bit_configs)
  return {**timing, "torch_version": torch.__version__,
          "torch_threads": torch.get_num_threads()}
