"""Evaluates fixed bit vectors on the demo CNN and prints their KL as JSON.

Run by tests/test_scale_out.py in subprocesses with different device counts,
chunk sizes and process counts; every run must print the same numbers.
Usage: python tests/sampling_worker.py CHUNK_SIZE [PORT NUM_PROCESSES PROCESS_ID]
"""

import json
import os
import sys

import jax

if __name__ == "__main__" and len(sys.argv) > 2:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{sys.argv[2]}",
                             num_processes=int(sys.argv[3]),
                             process_id=int(sys.argv[4]))

import numpy as np  # pylint: disable=g-import-not-at-top
from flax import nnx  # pylint: disable=g-import-not-at-top

from mpq_jax import activations  # pylint: disable=g-import-not-at-top
from mpq_jax import nnx_adapter  # pylint: disable=g-import-not-at-top
from mpq_jax import sampling  # pylint: disable=g-import-not-at-top
from mpq_jax import spec as spec_lib  # pylint: disable=g-import-not-at-top
from mpq_jax.models import demo_cnn  # pylint: disable=g-import-not-at-top


def main():
  apply_fn, params = nnx_adapter.functional_model(
      demo_cnn.DemoCNN(rngs=nnx.Rngs(0)))
  images = np.asarray(jax.random.normal(jax.random.key(1), (6, 28, 28, 1)))
  spec = spec_lib.build_layer_spec(apply_fn, params, images[:1])
  ranges = np.asarray(activations.calibrate_activation_ranges(
      apply_fn, params, spec, images))
  kl_of = sampling.make_kl_evaluator(apply_fn, params, spec, images,
                                     activation_ranges=None if os.environ.get("NO_ACT") else ranges,
                                     chunk_size=int(sys.argv[1]))
  bits = sampling.sample_bit_configs(0, 0, 13, spec.num_layers, (2, 8))
  kl = kl_of(bits)
  print(json.dumps({"process": jax.process_index(),
                    "devices": jax.device_count(),
                    "bits": bits.tolist(), "kl": kl.tolist()}))


if __name__ == "__main__":
  main()
