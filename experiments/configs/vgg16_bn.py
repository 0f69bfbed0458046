"""vgg16_bn on ImageNet, the paper's defaults (S = 1200, N = 50).

Command (weights converted first, see BUILD.md):
  python -m experiments.convert_weights --model=vgg16_bn \
      --weights=vgg16_bn.safetensors --workdir=runs/vgg16_bn
  python -m experiments.main --model=vgg16_bn --workdir=runs/vgg16_bn \
      --data_dir=DATA_DIR
The paper reports 73.35% full-precision top-1 and up to 6x compression with no
accuracy drop (16 layers).
Not yet measured here: no ImageNet and no GPU on the
development machine.
"""

from experiments.configs import imagenet


def get_config():
  return imagenet.imagenet_config("vgg16_bn")
