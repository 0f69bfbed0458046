"""resnet18 on ImageNet, the paper's defaults (S = 1200, N = 50).

Command (weights converted first, see BUILD.md):
  python -m experiments.convert_weights --model=resnet18 \
      --weights=resnet18.safetensors --workdir=runs/resnet18
  python -m experiments.main --model=resnet18 --workdir=runs/resnet18 \
      --data_dir=DATA_DIR
Not one of the paper's models (users reach for it). Not yet measured here: no
ImageNet and no GPU on the development machine.
"""

from experiments.configs import imagenet


def get_config():
  return imagenet.imagenet_config("resnet18")
