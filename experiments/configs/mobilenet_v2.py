"""mobilenet_v2 on ImageNet, the paper's defaults (S = 1200, N = 50).

Command (weights converted first, see BUILD.md):
  python -m experiments.convert_weights --model=mobilenet_v2 \
      --weights=mobilenet_v2.safetensors --workdir=runs/mobilenet_v2
  python -m experiments.main --model=mobilenet_v2 --workdir=runs/mobilenet_v2 \
      --data_dir=DATA_DIR
Not one of the paper's models (users reach for it).
Not yet measured here: no ImageNet and no GPU on the
development machine.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = "mobilenet_v2"
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
