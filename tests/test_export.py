"""Tests for mpq_jax/export.py: bit packing, the packed safetensors file and its loader."""

import json
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from mpq_jax import activations
from mpq_jax import export
from mpq_jax import metrics
from mpq_jax import spec as spec_lib


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("count", [1, 7, 13, 1000, 4097])
def test_pack_unpack_round_trip(bits, count):
  limit = (1 << (bits - 1)) - 1
  codes = np.random.default_rng(bits * count).integers(-limit, limit + 1,
                                                       count)
  codes[0], codes[-1] = -limit, limit  # both ends of the grid
  packed = export.pack_codes(codes, bits)
  assert packed.dtype == np.uint8
  assert packed.size == export.packed_size(count, bits) == -(-count * bits // 8)
  np.testing.assert_array_equal(export.unpack_codes(packed, bits, count), codes)


def test_packing_is_little_endian_b_bits_per_code():
  # 3-bit codes offset by 3: [-3, 3, 0] -> [0, 6, 3]. Each value's bits go
  # out LSB first: 0 -> 000, 6 -> 011, 3 -> 110, so the stream sets bits
  # 4, 5, 6 and 7: byte 0 = 16 + 32 + 64 + 128 = 240, byte 1 holds bit 8 = 0.
  assert export.pack_codes(np.array([-3, 3, 0]), 3).tolist() == [240, 0]
  with pytest.raises(ValueError, match="outside the signed 3-bit grid"):
    export.pack_codes(np.array([4]), 3)
  with pytest.raises(ValueError, match="need 2"):
    export.unpack_codes(np.zeros(3, np.uint8), 3, 5)


@pytest.fixture(scope="module")
def model(make_demo_model):
  return make_demo_model(8)


@pytest.mark.parametrize("per_channel", [False, True])
def test_reloaded_weights_equal_quantize_params_bit_for_bit(model, tmp_path,
                                                            per_channel):
  apply_fn, params, spec, images, ranges = model
  bits = np.array([2, 3, 4, 5, 6, 7, 8, 3, 5])
  path = tmp_path / "m.safetensors"
  file_bytes = export.export_allocation(
      path, params, spec, bits, model_name="demo_cnn",
      per_channel=per_channel, activation_ranges=ranges, activation_bits=8)
  loaded = export.ExportedModel(path)
  reloaded = loaded.dequantized_params(params, spec)
  expected = spec_lib.quantize_params(params, jnp.asarray(bits), spec,
                                      per_channel=per_channel)
  for got, want in zip(jax.tree.leaves(reloaded), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  np.testing.assert_array_equal(loaded.bits, bits)
  assert loaded.model_name == "demo_cnn" and loaded.per_channel == per_channel
  np.testing.assert_array_equal(loaded.activation_ranges, ranges)
  # The file is the predicted bytes plus the safetensors header.
  predicted = metrics.model_bytes(bits, spec, per_channel=per_channel)
  assert predicted <= file_bytes <= 1.02 * predicted
  # And the logits of the reloaded model equal the fake-quantized ones.
  quantized_apply = activations.make_quantized_apply(
      apply_fn, spec, activation_ranges=ranges, per_channel=per_channel)
  reloaded_apply = activations.make_activation_quantized_apply(
      apply_fn, spec, loaded.activation_ranges, loaded.activation_bits)
  np.testing.assert_allclose(reloaded_apply(reloaded, images),
                             quantized_apply(params, jnp.asarray(bits), images),
                             rtol=1e-6, atol=1e-6)


def test_kernels_are_stored_packed_not_a_byte_per_weight(model, tmp_path):
  _, params, spec, _, _ = model
  bits = np.full(spec.num_layers, 3)
  export.export_allocation(tmp_path / "m.safetensors", params, spec, bits,
                           model_name="demo_cnn")
  tensors = safetensors.numpy.load_file(str(tmp_path / "m.safetensors"))
  assert tensors["codes"].dtype == np.uint8
  assert tensors["codes"].size == sum(-(-p * 3 // 8) for p in spec.num_params)
  assert tensors["scales"].shape == (spec.num_layers,)
  assert tensors["floats"].size == spec.total_params - sum(spec.num_params)


def test_truncated_and_corrupted_files_raise(model, tmp_path):
  _, params, spec, _, _ = model
  path = tmp_path / "m.safetensors"
  export.export_allocation(path, params, spec, np.full(spec.num_layers, 4),
                           model_name="demo_cnn")
  data = path.read_bytes()
  truncated = tmp_path / "truncated.safetensors"
  truncated.write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match="truncated or corrupt"):
    export.ExportedModel(truncated)
  flipped = bytearray(data)
  flipped[-100] ^= 0x10  # one bit inside the tensors
  corrupt = tmp_path / "corrupt.safetensors"
  corrupt.write_bytes(bytes(flipped))
  with pytest.raises(ValueError, match="corrupt: its tensors do not match"):
    export.ExportedModel(corrupt)
  with pytest.raises(FileNotFoundError, match="--stages=export"):
    export.ExportedModel(tmp_path / "absent.safetensors")


def test_foreign_files_and_models_are_refused(model, tmp_path):
  _, params, spec, _, _ = model
  foreign = tmp_path / "foreign.safetensors"
  safetensors.numpy.save_file({"w": np.zeros(3, np.float32)}, str(foreign))
  with pytest.raises(ValueError, match="not an mpq_jax packed model"):
    export.ExportedModel(foreign)
  path = tmp_path / "m.safetensors"
  export.export_allocation(path, params, spec, np.full(spec.num_layers, 4),
                           model_name="demo_cnn")
  loaded = export.ExportedModel(path)
  other = spec_lib.LayerSpec(names=("a",) + spec.names[1:],
                             leaf_indices=spec.leaf_indices,
                             shapes=spec.shapes, num_params=spec.num_params,
                             total_params=spec.total_params)
  with pytest.raises(ValueError, match="do not match the model"):
    loaded.dequantized_params(params, other)


def test_loading_never_unpickles(model, tmp_path, monkeypatch):
  _, params, spec, _, _ = model
  path = tmp_path / "m.safetensors"
  export.export_allocation(path, params, spec, np.full(spec.num_layers, 5),
                           model_name="demo_cnn")
  def refuse(*args, **kwargs):
    raise AssertionError("pickle was used")
  monkeypatch.setattr(pickle, "load", refuse)
  monkeypatch.setattr(pickle, "loads", refuse)
  monkeypatch.setattr(np, "load", refuse)
  loaded = export.ExportedModel(path)
  assert json.loads(loaded.metadata["bits"]) == [5] * spec.num_layers
  loaded.dequantized_params(params, spec)
