"""ImageNet images as torchvision's evaluation transform prepares them.

Resize the shorter side to 256 (bilinear, as PIL does it for torchvision),
center-crop 224, scale to [0, 1], normalize with ImageNet's mean and std.
A smaller crop (for CPU runs) keeps the 256/224 ratio.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
RESIZE_OVER_CROP = 256 / 224


def eval_transform(image: np.ndarray, crop: int = 224) -> np.ndarray:
  """uint8 [H, W, 3] (or [H, W, 1]) -> float32 [crop, crop, 3]."""
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  picture = Image.fromarray(image).convert("RGB")
  resize = int(round(crop * RESIZE_OVER_CROP))
  width, height = picture.size
  # torchvision's Resize(int): the shorter side becomes `resize`, the longer
  # side int(resize * long / short).
  if width <= height:
    size = (resize, int(resize * height / width))
  else:
    size = (int(resize * width / height), resize)
  picture = picture.resize(size, Image.BILINEAR)
  width, height = picture.size
  top = int(round((height - crop) / 2.0))
  left = int(round((width - crop) / 2.0))
  picture = picture.crop((left, top, left + crop, top + crop))
  pixels = np.asarray(picture, np.float32) / 255.0
  return (pixels - MEAN) / STD
