"""resnet50 on ImageNet, the paper's defaults (S = 1200, N = 50).

Command (weights converted first, see BUILD.md):
  python -m experiments.convert_weights --model=resnet50 \
      --weights=resnet50.safetensors --workdir=runs/resnet50
  python -m experiments.main --model=resnet50 --workdir=runs/resnet50 \
      --data_dir=DATA_DIR
The paper reports 76.15% full-precision top-1 (torchvision's weights) and up
to 4x compression with no accuracy drop, bits 3..8 at Omega = 0.1 (read off
its figures). Not yet measured here: no ImageNet and no GPU on the
development machine.
"""

from experiments.configs import imagenet


def get_config():
  return imagenet.imagenet_config("resnet50")
