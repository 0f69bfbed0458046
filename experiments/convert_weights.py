"""Imports torchvision weights: python -m experiments.convert_weights.

  python -m experiments.convert_weights --model=resnet50 \
      --weights=resnet50.safetensors --workdir=runs/resnet50

writes WORKDIR/model_checkpoint (orbax), which the pipeline then loads.
"""

from __future__ import annotations


from absl import app
from absl import flags
from mpq_jax.models import convert

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "resnet50", "Model name (see mpq_jax.models).")
flags.DEFINE_string("weights", None, "A .safetensors or .pth state dict.",
                    required=True)
flags.DEFINE_string("workdir", None, "Run directory; default runs/MODEL.")


def main(argv):
  del argv
  workdir = FLAGS.workdir or f"runs/{FLAGS.model}"
  checkpoint = convert.convert_into_workdir(FLAGS.model, FLAGS.weights,
                                            workdir)
  print(f"wrote {checkpoint}")


if __name__ == "__main__":
  app.run(main)
