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

from experiments.configs import imagenet


def get_config():
  return imagenet.imagenet_config("mobilenet_v2")
