"""resnet50 on ImageNet, the paper's defaults (S = 1200, N = 50).

Command (weights converted first, see BUILD.md):
  python -m experiments.convert_weights --model=resnet50 \
      --weights=resnet50.safetensors --workdir=runs/resnet50
  python -m experiments.main --model=resnet50 --workdir=runs/resnet50 \
      --data_dir=DATA_DIR
The paper reports 76.15% full-precision top-1 (torchvision's weights) and up
to 4x compression with no accuracy drop, bits 3..8 at Omega = 0.1 (read off
its figures). Not yet measured here: no ImageNet and no GPU on the
development machine.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = "resnet50"
  config.num_samples = 1200
  config.calib_size = 50
  config.seed = 0
  config.sampler = "graded"
  config.bit_range = ""  # the paper's rule from a uniform sweep
  config.beta = 1.0
  config.tolerance_pp = 0.1
  config.activation_bits = 8
  config.chunk_size = 64
  config.vmap_width = 0  # planned from the device's memory
  return config
