"""Files of a run: orbax checkpoints, JSON records, and the resumable sample store.

Everything written here is written atomically (temporary name, then rename),
so a run killed at any moment leaves either the old file or the new one.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from mpq_jax import distributed


def write_json(path, record: dict) -> None:
  """Writes `record` as JSON atomically (in the primary process only)."""
  if not distributed.is_primary():
    return
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  temporary = path.with_name(path.name + ".tmp")
  temporary.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
  os.replace(temporary, path)


def read_json(path) -> dict | None:
  """The JSON at `path`, or None when it does not exist."""
  path = pathlib.Path(path)
  if not path.exists():
    return None
  return json.loads(path.read_text())


def save_checkpoint(path, tree: Any) -> None:
  """Saves a pytree of arrays as an orbax checkpoint (replacing any old one).

  Every process holds the whole tree; the primary alone writes it.
  """
  if not distributed.is_primary():
    return
  path = pathlib.Path(path).absolute()
  with ocp.StandardCheckpointer(multiprocessing_options=_this_process_only()
                                ) as checkpointer:
    checkpointer.save(path, jax.tree.map(np.asarray, tree), force=True)


def _this_process_only() -> ocp.options.MultiprocessingOptions:
  # Checkpoints here hold host copies, not arrays spread over processes, so
  # no process waits for another inside orbax.
  index = jax.process_index()
  return ocp.options.MultiprocessingOptions(
      primary_host=index, active_processes={index},
      barrier_sync_key_prefix=f"process{index}")


def restore_checkpoint(path, like: Any) -> Any:
  """Restores the orbax checkpoint at `path` into the structure of `like`."""
  path = pathlib.Path(path).absolute()
  if not path.exists():
    raise FileNotFoundError(f"no checkpoint at {path}: run the stage that"
                            " writes it first.")
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  with ocp.StandardCheckpointer(multiprocessing_options=_this_process_only()
                                ) as checkpointer:
    return checkpointer.restore(path, abstract)


class SampleStore:
  """(bits, KL) chunks on disk, one .npz file per finished chunk.

  `settings` (model, seed, bit range, calibration, layer names, ...) are
  recorded beside the chunks; a store made with other settings is refused
  rather than mixed. A chunk that cannot be read, or whose contents do not
  match what it should hold, is treated as missing and redone.
  """

  def __init__(self, directory, settings: dict):
    self.directory = pathlib.Path(directory)
    self.settings = settings
    self.directory.mkdir(parents=True, exist_ok=True)
    settings_path = self.directory / "settings.json"
    recorded = read_json(settings_path)
    if recorded is None:
      write_json(settings_path, settings)
      recorded = settings  # other processes: the primary's copy may lag
    elif recorded != settings:
      changed = sorted(k for k in set(recorded) | set(settings)
                       if recorded.get(k) != settings.get(k))
      raise ValueError(
          f"{self.directory} holds samples made with other settings"
          f" (differing: {', '.join(changed)}): use another --workdir, or"
          " delete that directory to start the sampling again."
      )

  def _chunk_path(self, start: int) -> pathlib.Path:
    return self.directory / f"chunk_{start:09d}.npz"

  def load_chunk(self, start: int, expected_bits: np.ndarray):
    """The KL values of a finished chunk, or None if it must be (re)done."""
    path = self._chunk_path(start)
    if not path.exists():
      return None
    try:
      with np.load(path) as chunk:
        bits, kl = chunk["bits"], chunk["kl"]
    except Exception:  # a truncated or corrupt file: redo the chunk
      return None
    if (bits.shape != expected_bits.shape or not np.array_equal(
        bits, expected_bits) or kl.shape != (len(bits),)
        or not np.all(np.isfinite(kl))):
      return None
    return kl

  def save_chunk(self, start: int, bits: np.ndarray, kl: np.ndarray) -> None:
    if not distributed.is_primary():
      return
    path = self._chunk_path(start)
    # A hidden temporary name: a run killed mid-write leaves nothing that
    # looks like a chunk.
    temporary = path.with_name("." + path.name + ".tmp.npz")
    np.savez(temporary, bits=bits, kl=kl)
    os.replace(temporary, path)
