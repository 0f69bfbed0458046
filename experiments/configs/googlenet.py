"""googlenet on ImageNet, the paper's defaults (S = 1200, N = 50).

Command (weights converted first, see BUILD.md):
  python -m experiments.convert_weights --model=googlenet \
      --weights=googlenet.safetensors --workdir=runs/googlenet
  python -m experiments.main --model=googlenet --workdir=runs/googlenet \
      --data_dir=DATA_DIR
The paper reports 69.77% full-precision top-1 and up to 4x compression with no
accuracy drop (58 layers).
Not yet measured here: no ImageNet and no GPU on the
development machine.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = "googlenet"
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
