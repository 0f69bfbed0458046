"""Imports torchvision weights: python -m experiments.convert_weights.

  python -m experiments.convert_weights --model=resnet50 \
      --weights=resnet50.safetensors --workdir=runs/resnet50

writes WORKDIR/model_checkpoint (orbax), which the pipeline then loads.
"""

from __future__ import annotations

import pathlib

from absl import app
from absl import flags
from flax import nnx

from mpq_jax import models
from mpq_jax import store
from mpq_jax.models import convert

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "resnet50", "Model name (see mpq_jax.models).")
flags.DEFINE_string("weights", None, "A .safetensors or .pth state dict.",
                    required=True)
flags.DEFINE_string("workdir", None, "Run directory; default runs/MODEL.")


def convert_into_workdir(model: str, weights, workdir) -> pathlib.Path:
  """Converts `weights` for `model` into WORKDIR/model_checkpoint."""
  entry = models.get_model_entry(model)
  module = entry.build(nnx.Rngs(0))
  like = nnx.to_pure_dict(nnx.state(module))
  variables = convert.torchvision_to_nnx(convert.read_state_dict(weights),
                                         like)
  checkpoint = pathlib.Path(workdir) / "model_checkpoint"
  store.save_checkpoint(checkpoint, variables)
  return checkpoint


def main(argv):
  del argv
  workdir = FLAGS.workdir or f"runs/{FLAGS.model}"
  checkpoint = convert_into_workdir(FLAGS.model, FLAGS.weights, workdir)
  print(f"wrote {checkpoint}")


if __name__ == "__main__":
  app.run(main)
