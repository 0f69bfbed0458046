"""Packed integer export: a bit allocation as a safetensors file, and its loader.

Each quantized layer's integer codes are bit-packed at that layer's own
bit-width (b bits per weight, least significant bit first), starting on a
byte boundary; the layers' streams are stored back to back in one `codes`
tensor (layer i's bytes follow from the bits and shapes in the metadata).
Scales and every unquantized tensor stay float32, each kind in one tensor, so
the header stays small: the file is the predicted model bytes plus about a
kilobyte. The header's metadata records the
bits, the quantizer, the model and a SHA-256 of every tensor, so a corrupted
or truncated file raises instead of loading a wrong model. safetensors never
unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import math
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy

from mpq_jax import quant
from mpq_jax import spec as spec_lib

FORMAT = "mpq_jax.packed/1"
_CODES = "codes"
_SCALES = "scales"
_FLOATS = "floats"
_ACTIVATION_RANGES = "activation_ranges"


def packed_size(count: int, bits: int) -> int:
  """Bytes that `count` codes of `bits` bits take once packed."""
  return math.ceil(count * bits / 8)


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
  """Packs signed codes in [-(2**(b-1)-1), 2**(b-1)-1] into b bits each.

  Codes are offset to unsigned values first; bit k of value i lands at bit
  position i*b + k of the stream (little-endian bit order).

  >>> pack_codes(np.array([-1, 0, 1, 1]), 2).tolist()
  [164]
  """
  offset = (1 << (bits - 1)) - 1
  unsigned = np.asarray(codes, np.int64).ravel() + offset
  if unsigned.size and (unsigned.min() < 0 or unsigned.max() > 2 * offset):
    raise ValueError(f"codes fall outside the signed {bits}-bit grid.")
  bit_matrix = (unsigned[:, None] >> np.arange(bits)) & 1
  return np.packbits(bit_matrix.astype(np.uint8).ravel(), bitorder="little")


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
  """Inverse of `pack_codes`: int32 codes [count]."""
  if packed.size != packed_size(count, bits):
    raise ValueError(f"packed stream has {packed.size} bytes, {count} codes of"
                     f" {bits} bits need {packed_size(count, bits)}.")
  stream = np.unpackbits(np.asarray(packed, np.uint8), bitorder="little")
  bit_matrix = stream[:count * bits].reshape(count, bits).astype(np.int64)
  unsigned = bit_matrix @ (1 << np.arange(bits, dtype=np.int64))
  return (unsigned - ((1 << (bits - 1)) - 1)).astype(np.int32)


def _digest(tensors: dict[str, np.ndarray]) -> str:
  digest = hashlib.sha256()
  for name in sorted(tensors):
    digest.update(name.encode())
    digest.update(np.ascontiguousarray(tensors[name]).tobytes())
  return digest.hexdigest()


def export_allocation(
    path,
    params: Any,
    spec: spec_lib.LayerSpec,
    bits,
    *,
    model_name: str,
    per_channel: bool = False,
    activation_ranges=None,
    activation_bits: int = 0,
) -> int:
  """Writes the quantized model to `path` (safetensors); returns its bytes.

  Args:
    path: the file to write.
    params: full-precision parameters.
    spec: their LayerSpec.
    bits: one bit-width per layer.
    model_name: recorded in the metadata.
    per_channel: per-output-channel scales instead of one per tensor.
    activation_ranges: [L, 2] static activation ranges, or None.
    activation_bits: their bit-width (0 when activations are not quantized).
  """
  bits = quant.check_weight_bits(bits, spec.num_layers)
  channel_axis = -1 if per_channel else None
  leaves_with_paths = jax.tree_util.tree_flatten_with_path(params)[0]
  packed, scales = [], []
  for layer, index in enumerate(spec.leaf_indices):
    weights = jnp.asarray(leaves_with_paths[index][1])
    codes, scale = quant.symmetric_codes(weights, int(bits[layer]),
                                         channel_axis)
    packed.append(pack_codes(np.asarray(codes), int(bits[layer])))
    scales.append(np.asarray(scale, np.float32).ravel())
  quantized = set(spec.leaf_indices)
  float_leaves = [(spec_lib.path_to_name(leaf_path), leaf)
                  for index, (leaf_path, leaf) in enumerate(leaves_with_paths)
                  if index not in quantized]
  tensors = {
      _CODES: np.concatenate(packed),
      _SCALES: np.concatenate(scales),
      _FLOATS: np.concatenate([np.asarray(leaf, np.float32).ravel()
                               for _, leaf in float_leaves] or
                              [np.zeros(0, np.float32)]),
  }
  if activation_ranges is not None:
    tensors[_ACTIVATION_RANGES] = np.asarray(activation_ranges, np.float32)
  metadata = {
      "format": FORMAT,
      "model": model_name,
      "quantizer": ("symmetric-per-channel" if per_channel
                    else "symmetric-per-tensor"),
      "bits": json.dumps(bits.tolist()),
      "layers": json.dumps(list(spec.names)),
      "shapes": json.dumps([list(shape) for shape in spec.shapes]),
      "floats": json.dumps([name for name, _ in float_leaves]),
      "activation_bits": str(int(activation_bits)),
      "sha256": _digest(tensors),
  }
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  temporary = path.with_name(path.name + ".tmp")
  safetensors.numpy.save_file(tensors, str(temporary), metadata=metadata)
  temporary.replace(path)
  return path.stat().st_size


class ExportedModel:
  """What a packed file holds, read back and checked."""

  def __init__(self, path):
    path = pathlib.Path(path)
    if not path.exists():
      raise FileNotFoundError(f"no exported model at {path}: run"
                              " --stages=export first.")
    try:
      with safetensors.safe_open(str(path), framework="numpy") as handle:
        self.metadata = handle.metadata() or {}
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as error:  # safetensors raises its own error types
      raise ValueError(f"{path} is not a readable safetensors file (truncated"
                       f" or corrupt: {error}); export it again.") from error
    if self.metadata.get("format") != FORMAT:
      raise ValueError(f"{path} is not an mpq_jax packed model (format"
                       f" {self.metadata.get('format')!r}, expected {FORMAT}).")
    if _digest(tensors) != self.metadata.get("sha256"):
      raise ValueError(f"{path} is corrupt: its tensors do not match the"
                       " checksum written with them; export it again.")
    self.tensors = tensors
    self.bits = np.asarray(json.loads(self.metadata["bits"]), np.int32)
    self.layer_names = tuple(json.loads(self.metadata["layers"]))
    self.model_name = self.metadata["model"]
    self.per_channel = self.metadata["quantizer"].endswith("per-channel")
    self.activation_bits = int(self.metadata["activation_bits"])
    self.activation_ranges = tensors.get(_ACTIVATION_RANGES)

  def dequantized_params(self, like: Any, spec: spec_lib.LayerSpec) -> Any:
    """Parameters in the structure of `like`, quantized kernels as codes*scale.

    The values equal `quantize_params(params, bits, spec)` exactly.
    """
    if tuple(spec.names) != self.layer_names:
      raise ValueError(
          f"the file's layers {self.layer_names[:3]}... do not match the"
          f" model's {tuple(spec.names)[:3]}...: load it into the"
          f" {self.model_name!r} model it was exported from.")
    leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(like)
    leaves = [None] * len(leaves_with_paths)
    codes_stream, scales = self.tensors[_CODES], self.tensors[_SCALES]
    byte_offset = scale_offset = 0
    for layer, index in enumerate(spec.leaf_indices):
      shape, layer_bits = spec.shapes[layer], int(self.bits[layer])
      count = int(np.prod(shape))
      size = packed_size(count, layer_bits)
      codes = unpack_codes(codes_stream[byte_offset:byte_offset + size],
                           layer_bits, count).reshape(shape)
      byte_offset += size
      width = shape[-1] if self.per_channel else 1
      scale = scales[scale_offset:scale_offset + width].reshape(
          (1,) * (len(shape) - 1) + (width,))
      scale_offset += width
      leaves[index] = (jnp.asarray(codes) * jnp.asarray(scale)).astype(
          jnp.float32)
    if byte_offset != codes_stream.size or scale_offset != scales.size:
      raise ValueError("the file's codes or scales do not fit the model's"
                       " layer shapes: it was exported from another model.")
    float_names = json.loads(self.metadata["floats"])
    expected = [spec_lib.path_to_name(leaf_path)
                for index, (leaf_path, _) in enumerate(leaves_with_paths)
                if leaves[index] is None]
    if float_names != expected:
      raise ValueError(f"the file's unquantized tensors {float_names[:3]}..."
                       f" are not the model's {expected[:3]}...: it was"
                       " exported from another model.")
    floats, offset = self.tensors[_FLOATS], 0
    for index, (_, leaf) in enumerate(leaves_with_paths):
      if leaves[index] is None:
        size = int(np.size(leaf))
        leaves[index] = jnp.asarray(
            floats[offset:offset + size].reshape(np.shape(leaf)))
        offset += size
    return jax.tree_util.tree_unflatten(treedef, leaves)
