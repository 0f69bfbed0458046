"""googlenet on ImageNet, the paper's defaults (S = 1200, N = 50).

Command (weights converted first, see BUILD.md):
  python -m experiments.convert_weights --model=googlenet \
      --weights=googlenet.safetensors --workdir=runs/googlenet
  python -m experiments.main --model=googlenet --workdir=runs/googlenet \
      --data_dir=DATA_DIR
The paper reports 69.77% full-precision top-1 and up to 4x compression with no
accuracy drop (58 layers).
Not yet measured here: no ImageNet and no GPU on the
development machine.
"""

from experiments.configs import imagenet


def get_config():
  return imagenet.imagenet_config("googlenet")
