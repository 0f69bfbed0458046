"""The paper's defaults for every ImageNet model; each model's config file names its model."""

import ml_collections


def imagenet_config(model: str) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = model
  config.num_samples = 1200  # the paper's S
  config.calib_size = 50  # the paper's N, from the training split
  config.seed = 0
  config.sampler = "graded"
  config.bit_range = ""  # the paper's rule from a uniform sweep
  config.beta = 1.0
  config.tolerance_pp = 0.1
  config.activation_bits = 8
  config.chunk_size = 64
  config.vmap_width = 0  # measured once: the fastest width that fits memory
  return config
