"""demo_cnn on the bundled 5,000-image MNIST subset, the paper's defaults.

Command: python -m experiments.main --model=demo_cnn
Runs on a laptop CPU with no download: trains the demo CNN on first use
(about a minute on 2 cores), samples S = 1200 bit vectors on N = 50 training
images, trains the allocator and writes runs/demo_cnn/report.md. Expected:
full-precision top-1 around 98% on the 1,000 test images; BENCHMARKS.md has
the measured figures.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = "demo_cnn"
  config.num_samples = 1200  # the paper's S
  config.calib_size = 50  # the paper's N, from the training split
  config.seed = 0
  config.sampler = "graded"  # --sampler=uniform for the paper's sampler
  config.bit_range = ""  # empty: the paper's rule from a uniform sweep
  config.beta = 1.0
  config.tolerance_pp = 0.1
  config.activation_bits = 8
  config.chunk_size = 50
  config.vmap_width = 0  # measured once: the fastest width that fits memory
  return config
