"""vgg16 on ImageNet, the paper's defaults (S = 1200, N = 50).

Command (weights converted first, see BUILD.md):
  python -m experiments.convert_weights --model=vgg16 \
      --weights=vgg16.safetensors --workdir=runs/vgg16
  python -m experiments.main --model=vgg16 --workdir=runs/vgg16 \
      --data_dir=DATA_DIR
The paper reports VGG16 on torchvision's vgg16_bn (73.35%); this is plain
vgg16, 16 layers.
Not yet measured here: no ImageNet and no GPU on the
development machine.
"""

from experiments.configs import imagenet


def get_config():
  return imagenet.imagenet_config("vgg16")
