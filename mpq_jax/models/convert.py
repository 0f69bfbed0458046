"""torchvision state dicts <-> our NNX variables: key names and layouts.

torchvision names a ResNet's tensors `layer1.0.conv1.weight`,
`layer1.0.downsample.1.running_mean`, `fc.weight`; our NNX modules hold
`layer1/0/conv1/kernel`, `layer1/0/downsample/layers/1/mean`, `fc/kernel`.
Convolution weights go OIHW -> HWIO, linear weights (out, in) -> (in, out).
State dicts are read from safetensors with numpy (no torch needed), or from a
`.pth` file with torch's `weights_only=True` loader when torch is installed.
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias",
                  "mean": "running_mean", "var": "running_var"}
_IGNORED_SUFFIXES = ("num_batches_tracked",)


def _flatten(tree: dict, prefix: tuple = ()) -> dict[tuple, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, prefix + (key,)))
    else:
      flat[prefix + (key,)] = value
  return flat


def torch_key(path: tuple) -> str:
  """`('layer1', 0, 'downsample', 'layers', 1, 'mean')` -> its torchvision key."""
  parts = [str(p) for p in path[:-1] if p != "layers"]
  return ".".join(parts + [_LEAF_TO_TORCH[path[-1]]])


def _to_torch_layout(value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:
    return np.transpose(value, (3, 2, 0, 1))  # HWIO -> OIHW
  if value.ndim == 2:
    return value.T  # (in, out) -> (out, in)
  return value


def _from_torch_layout(value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:
    return np.transpose(value, (2, 3, 1, 0))  # OIHW -> HWIO
  if value.ndim == 2:
    return value.T
  return value


def nnx_to_torchvision(variables: dict) -> dict[str, np.ndarray]:
  """Our pure-dict variables as a torchvision state dict (numpy arrays)."""
  return {torch_key(path): np.ascontiguousarray(
      _to_torch_layout(np.asarray(value, np.float32)))
          for path, value in _flatten(variables).items()}


def torchvision_to_nnx(state_dict: dict[str, np.ndarray], like: dict) -> dict:
  """A torchvision state dict as variables in the structure of `like`.

  Raises ValueError naming missing, unexpected and mis-shaped tensors.
  """
  wanted = {torch_key(path): path for path in _flatten(like)}
  given = {k: v for k, v in state_dict.items()
           if not k.endswith(_IGNORED_SUFFIXES)}
  missing = sorted(set(wanted) - set(given))
  unexpected = sorted(set(given) - set(wanted))
  if missing or unexpected:
    raise ValueError(
        f"the state dict does not fit this model: missing {missing[:5]}"
        f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
        f"{' ...' if len(unexpected) > 5 else ''}. Is it torchvision's"
        " weights for this very architecture?")
  flat_like = _flatten(like)
  result: dict = {}
  for key, path in wanted.items():
    value = _from_torch_layout(np.asarray(given[key], np.float32))
    expected = tuple(np.shape(flat_like[path]))
    if value.shape != expected:
      raise ValueError(f"{key} has shape {np.shape(given[key])}, which does"
                       f" not convert to our {expected}: wrong architecture"
                       " or wrong layout.")
    node = result
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = value
  return result


def read_state_dict(path) -> dict[str, np.ndarray]:
  """A state dict from .safetensors (numpy only) or .pth (torch, weights_only)."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(
        f"no weights at {path}: download torchvision's weights for the model"
        " (e.g. ResNet50_Weights.IMAGENET1K_V1) and save the state dict as"
        " safetensors, or give the .pth file itself.")
  if path.suffix == ".safetensors":
    import safetensors.numpy  # pylint: disable=g-import-not-at-top
    return dict(safetensors.numpy.load_file(str(path)))
  if path.suffix in (".pth", ".pt"):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ImportError("reading .pth needs torch (pip install torch); or"
                        " convert the file to safetensors.") from None
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return {key: value.numpy() for key, value in state.items()}
  raise ValueError(f"{path.name}: expected a .safetensors or .pth file.")


def convert_into_workdir(model: str, weights, workdir) -> pathlib.Path:
  """Converts the state dict at `weights` for `model` into WORKDIR/model_checkpoint."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from mpq_jax import models  # pylint: disable=g-import-not-at-top
  from mpq_jax import store  # pylint: disable=g-import-not-at-top
  module = models.get_model_entry(model).build(nnx.Rngs(0))
  variables = torchvision_to_nnx(read_state_dict(weights),
                                 nnx.to_pure_dict(nnx.state(module)))
  checkpoint = pathlib.Path(workdir) / "model_checkpoint"
  store.save_checkpoint(checkpoint, variables)
  return checkpoint
