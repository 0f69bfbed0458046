"""vgg16 on ImageNet, the paper's defaults (S = 1200, N = 50).

Command (weights converted first, see BUILD.md):
  python -m experiments.convert_weights --model=vgg16 \
      --weights=vgg16.safetensors --workdir=runs/vgg16
  python -m experiments.main --model=vgg16 --workdir=runs/vgg16 \
      --data_dir=DATA_DIR
The paper reports VGG16 on torchvision's vgg16_bn (73.35%); this is plain
vgg16, 16 layers.
Not yet measured here: no ImageNet and no GPU on the
development machine.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = "vgg16"
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
