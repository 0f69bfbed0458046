"""Tests for mpq_jax/store.py: atomic JSON, orbax checkpoints, the sample store."""

import numpy as np
import pytest

from mpq_jax import store


def test_json_round_trip_and_missing(tmp_path):
  assert store.read_json(tmp_path / "absent.json") is None
  store.write_json(tmp_path / "a" / "r.json", {"x": [1, 2], "y": 0.5})
  assert store.read_json(tmp_path / "a" / "r.json") == {"x": [1, 2], "y": 0.5}
  assert not list((tmp_path / "a").glob("*.tmp"))


def test_checkpoint_round_trip(tmp_path):
  tree = {"conv": {"kernel": np.arange(24, dtype=np.float32).reshape(2, 3, 4)},
          "bias": np.full(3, 0.25, np.float32)}
  store.save_checkpoint(tmp_path / "ckpt", tree)
  like = {"conv": {"kernel": np.zeros((2, 3, 4), np.float32)},
          "bias": np.zeros(3, np.float32)}
  restored = store.restore_checkpoint(tmp_path / "ckpt", like)
  np.testing.assert_array_equal(restored["conv"]["kernel"],
                                tree["conv"]["kernel"])
  np.testing.assert_array_equal(restored["bias"], tree["bias"])
  # Saving again replaces the old checkpoint.
  tree["bias"] = np.ones(3, np.float32)
  store.save_checkpoint(tmp_path / "ckpt", tree)
  assert store.restore_checkpoint(tmp_path / "ckpt", like)["bias"].sum() == 3


def test_missing_checkpoint_says_which_stage(tmp_path):
  with pytest.raises(FileNotFoundError, match="run the stage"):
    store.restore_checkpoint(tmp_path / "none", {"a": np.zeros(1)})


def test_sample_store_keeps_good_chunks_and_redoes_bad_ones(tmp_path):
  settings = {"model": "m", "seed": 0}
  samples = store.SampleStore(tmp_path / "s", settings)
  bits = np.array([[2, 3], [4, 5]], np.int32)
  samples.save_chunk(0, bits, np.array([0.5, 0.25], np.float32))
  np.testing.assert_array_equal(samples.load_chunk(0, bits), [0.5, 0.25])
  # Other expected bits (e.g. a different chunking): the chunk is redone.
  assert samples.load_chunk(0, bits[:1]) is None
  assert samples.load_chunk(0, bits + 1) is None
  assert samples.load_chunk(2, bits) is None
  # A truncated file is treated as missing, never as data.
  path = tmp_path / "s" / "chunk_000000000.npz"
  path.write_bytes(path.read_bytes()[:40])
  assert samples.load_chunk(0, bits) is None


def test_sample_store_refuses_other_settings(tmp_path):
  store.SampleStore(tmp_path / "s", {"model": "m", "seed": 0})
  store.SampleStore(tmp_path / "s", {"model": "m", "seed": 0})  # same: fine
  with pytest.raises(ValueError, match="differing: seed"):
    store.SampleStore(tmp_path / "s", {"model": "m", "seed": 1})
