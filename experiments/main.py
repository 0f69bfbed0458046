"""Runs the mpq_jax pipeline: python -m experiments.main --model=demo_cnn.

Kept short on purpose: flags in, one call to mpq_jax.pipeline.run.
"""

from __future__ import annotations

import importlib
import sys

from absl import app
from absl import flags
from absl import logging

from experiments import host_devices
from mpq_jax import distributed
from mpq_jax import models
from mpq_jax import pipeline

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "demo_cnn", "Model name (see mpq_jax.models).")
flags.DEFINE_string("workdir", None, "Where outputs go; default runs/MODEL.")
flags.DEFINE_string("data_dir", "~/tensorflow_datasets", "TFDS data directory.")
flags.DEFINE_list("stages", list(pipeline.STAGES), "Stages to run, in order.")
flags.DEFINE_integer("num_samples", None, "Monte Carlo samples S (paper: 1200).")
flags.DEFINE_integer("calib_size", None, "Calibration images N (paper: 50).")
flags.DEFINE_integer("seed", None, "Seed of sampling, calibration, training.")
flags.DEFINE_enum("sampler", None, ["uniform", "graded"],
                  "Bit-vector sampler: graded (default) or the paper's uniform.")
flags.DEFINE_list("bit_range", None,
                  "b_min,b_max; empty: the paper's uniform-sweep rule.")
flags.DEFINE_float("beta", None, "Weight of the allocator's size penalty.")
flags.DEFINE_float("tolerance_pp", None,
                   "Accepted top-1 drop in percentage points.")
flags.DEFINE_integer("activation_bits", None, "Activation bits; 0 turns off.")
flags.DEFINE_bool("per_channel", False, "Per-channel weight scales.")
flags.DEFINE_list("query_kl", None, "KL targets for the bits-per-layer figure.")
flags.DEFINE_integer("num_targets", 40, "KL targets in the allocation sweep.")
flags.DEFINE_integer("chunk_size", None, "Configurations per compiled call.")
flags.DEFINE_integer("vmap_width", None,
                     "Configurations vmapped together; 0 (default) measures"
                     " the widths that fit memory once and keeps the fastest"
                     " (cached in the workdir).")
flags.DEFINE_float("memory_budget_mb", None,
                   "Scratch memory per device that caps the vmap width"
                   " (default: half the device's memory).")
flags.DEFINE_integer("max_vmap_width", 64, "Cap on the vmap width.")
flags.DEFINE_bool("bfloat16", False,
                  "Quantized forward passes of the KL evaluation in bfloat16"
                  " (faster on accelerators; KL error in BENCHMARKS.md).")
flags.DEFINE_integer("train_epochs", None, "Epochs for a model trained here.")
flags.DEFINE_bool("random_init", False,
                  "Random weights and synthetic images: a throughput or smoke"
                  " run whose accuracies mean nothing.")
flags.DEFINE_string("weights", None,
                    "torchvision weights (.safetensors or .pth) to import into"
                    " the workdir on first use.")
flags.DEFINE_enum("layers", "all", ["all", "paper"],
                  "Quantized layers: every conv and linear kernel, or the"
                  " paper's counts (ResNets without downsample convs).")
flags.DEFINE_bool("fold_batch_norm", True,
                  "Fold batch norm into the preceding convolutions before"
                  " quantizing (as deployment does).")
flags.DEFINE_integer("input_size", None,
                     "Square input side (e.g. 64 for a CPU smoke run of an"
                     " ImageNet model); default: the model's.")
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0, for several processes (not needed"
                    " on TPU or SLURM, where it is detected).")
flags.DEFINE_integer("num_processes", None, "Processes in the run.")
flags.DEFINE_integer("process_id", None, "This process's index.")
flags.DEFINE_list("budget_mb", None,
                  "Size budgets in MB for the method comparison.")
flags.DEFINE_list("compression", None,
                  "Compression ratios (vs float32) for the method comparison.")
flags.DEFINE_list("methods", list(pipeline.METHODS),
                  "Allocators to compare under each budget.")
flags.DEFINE_integer("hutchinson_samples", None,
                     "Hutchinson probes per layer for the HAWQ baseline.")


def config_from_flags() -> pipeline.RunConfig:
  """The model's config file, overridden by any flag given."""
  models.get_model_entry(FLAGS.model)  # an unknown name fails here, clearly
  try:
    defaults = importlib.import_module(
        f"experiments.configs.{FLAGS.model}").get_config()
  except ModuleNotFoundError:
    defaults = {}
  def pick(name, fallback=None):
    value = getattr(FLAGS, name)
    if value is not None:
      return value
    return defaults.get(name, fallback) if defaults else fallback
  bit_range = pick("bit_range")
  bit_range = (tuple(int(b) for b in bit_range)
               if bit_range not in (None, "", []) else None)
  query_kl = _floats(FLAGS.query_kl, "--query_kl")
  base = pipeline.RunConfig()
  return pipeline.RunConfig(
      model=FLAGS.model,
      workdir=FLAGS.workdir or f"runs/{FLAGS.model}",
      data_dir=FLAGS.data_dir,
      num_samples=pick("num_samples", base.num_samples),
      calib_size=pick("calib_size", base.calib_size),
      seed=pick("seed", base.seed),
      sampler=pick("sampler", base.sampler),
      bit_range=bit_range,
      beta=pick("beta", base.beta),
      tolerance_pp=pick("tolerance_pp", base.tolerance_pp),
      activation_bits=pick("activation_bits", base.activation_bits),
      per_channel=FLAGS.per_channel,
      query_kl=query_kl,
      num_targets=FLAGS.num_targets,
      chunk_size=pick("chunk_size", base.chunk_size),
      vmap_width=pick("vmap_width", base.vmap_width),
      memory_budget_mb=FLAGS.memory_budget_mb,
      max_vmap_width=FLAGS.max_vmap_width,
      train_epochs=FLAGS.train_epochs,
      random_init=FLAGS.random_init,
      bfloat16=FLAGS.bfloat16,
      fold_batch_norm=FLAGS.fold_batch_norm,
      weights=FLAGS.weights,
      layers=FLAGS.layers,
      input_size=FLAGS.input_size,
      budget_mb=_floats(FLAGS.budget_mb, "--budget_mb"),
      compression=_floats(FLAGS.compression, "--compression"),
      methods=tuple(FLAGS.methods),
      hutchinson_samples=pick("hutchinson_samples",
                              base.hutchinson_samples),
  )


def _floats(values, flag: str) -> tuple[float, ...] | None:
  if not values:
    return None
  try:
    return tuple(float(v) for v in values)
  except ValueError:
    raise ValueError(f"{flag} takes numbers, got {','.join(values)}"
                     f" (e.g. {flag}=0.08,0.1).") from None


def main(argv):
  del argv
  if not FLAGS["verbosity"].present:
    # orbax and tfds log every file at INFO; progress bars say enough.
    logging.set_verbosity(logging.WARNING)
  host_devices.apply(FLAGS.num_processes)
  try:
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                           FLAGS.process_id)
    config = config_from_flags()
    report = pipeline.run(config, FLAGS.stages)
  except (ValueError, FileNotFoundError) as error:
    # Bad input: the message names the problem and the fix; a traceback
    # would only bury it.
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)
  if "report" in FLAGS.stages and distributed.is_primary():
    best = report["best"]
    logging.info("report written to %s/report.md", config.workdir)
    print(f"wrote {config.workdir}/report.md and report.json")
    if best is not None:
      print(f"chosen bits {best['bits']}: top-1 {best['top1']:.2f}%"
            f" (full precision {report['fp_top1']:.2f}%),"
            f" {best['compression']:.2f}x smaller")


if __name__ == "__main__":
  app.run(main)
