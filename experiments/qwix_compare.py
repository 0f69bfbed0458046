"""Top-1 of qwix against mpq_jax at the same bits: python -m experiments.qwix_compare.

Loads the demo model a finished run cached in --workdir and evaluates, weights
only (activations unquantized on both sides), uniform bit-widths and the
run's chosen allocation with mpq_jax per tensor, mpq_jax per channel, and
qwix's QtProvider fed the rules from mpq_jax.qwix_handoff.
"""

from __future__ import annotations

import pathlib

import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from absl import logging
from flax import nnx

from mpq_jax import activations
from mpq_jax import pipeline
from mpq_jax import qwix_handoff
from mpq_jax import store

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/demo_cnn", "A finished demo_cnn run.")
flags.DEFINE_string("data_dir", "~/tensorflow_datasets", "TFDS data directory.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  run = pipeline.Run(pipeline.RunConfig(workdir=FLAGS.workdir,
                                        data_dir=FLAGS.data_dir))
  images, labels = run.eval_arrays
  images = jnp.asarray(images)
  module = run.entry.build(nnx.Rngs(0))
  nnx.update(module, run.params)
  module.eval()
  top1 = lambda logits: 100.0 * float(
      np.mean(np.argmax(np.asarray(logits), -1) == labels))
  ours = {per_channel: activations.make_quantized_apply(
      run.apply_fn, run.spec, per_channel=per_channel)
          for per_channel in (False, True)}
  rows = [[b] * run.spec.num_layers for b in (8, 6, 4, 3, 2)]
  report = store.read_json(pathlib.Path(FLAGS.workdir) / "report.json") or {}
  if report.get("best"):
    rows.append(report["best"]["bits"])
  print(f"full precision: {top1(module(images)):.2f}%")
  print("| bits | mpq_jax per-tensor | mpq_jax per-channel | qwix |")
  print("| --- | --- | --- | --- |")
  for bits in rows:
    qwix_model = qwix_handoff.quantize_with_qwix(module, run.spec, bits,
                                                 images[:2])
    values = [top1(ours[pc](run.params, jnp.asarray(bits), images))
              for pc in (False, True)] + [top1(qwix_model(images))]
    print(f"| {','.join(map(str, bits))} | " +
          " | ".join(f"{v:.2f}" for v in values) + " |")


if __name__ == "__main__":
  app.run(main)
