"""Several processes, one run: JAX's multi-controller runtime, and who writes files.

Every process runs the same pipeline on the same inputs; compiled programs
span every device of every process (sampling shards configurations over
them). Only the primary process (index 0) writes files; the others wait at a
barrier after each stage and then read what it wrote, so the workdir must be
on a file system every process sees.
"""

from __future__ import annotations

import os

import jax
from absl import logging
from jax.experimental import multihost_utils


HOST_DEVICES_FLAG = "--xla_force_host_platform_device_count"


def split_host_cpu(count: int) -> int:
  """Makes XLA's CPU backend `count` devices, so configurations shard over cores.

  Small convolutions leave intra-op threads idle; one device per core with
  configurations sharded over them ran the KL evaluation 1.2-1.3x faster on
  2 cores (BENCHMARKS.md). Call before JAX's first computation; a count
  already in XLA_FLAGS (the user's) is kept. Only the CPU backend is
  affected: GPUs and TPUs stay as they are. Returns the count in effect.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  for flag in flags.split():
    if flag.startswith(HOST_DEVICES_FLAG + "="):
      return int(flag.split("=", 1)[1])
  if count > 1:
    os.environ["XLA_FLAGS"] = f"{flags} {HOST_DEVICES_FLAG}={count}".strip()
  return max(count, 1)


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Starts jax.distributed: explicit flags, or auto-detected on TPU and SLURM.

  With no coordinator and no cluster in the environment this does nothing:
  a single process needs no runtime.
  """
  explicit = coordinator_address is not None
  detected = (int(os.environ.get("SLURM_NTASKS", "1")) > 1
              or "TPU_WORKER_HOSTNAMES" in os.environ
              or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ)
  if not explicit and not detected:
    return
  if explicit and (num_processes is None or process_id is None):
    raise ValueError("--coordinator_address needs --num_processes and"
                     " --process_id too (or none of them, on TPU or SLURM).")
  if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get(
      "JAX_PLATFORMS", "") == "cpu":
    # Collectives between CPU processes (tests on 127.0.0.1, CPU clusters).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if explicit:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes,
                               process_id=process_id)
  else:
    jax.distributed.initialize()
  logging.info("process %d of %d, %d local of %d devices",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


def is_primary() -> bool:
  """True in the one process that writes files."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reaches `name` (nothing with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def from_primary(tree):
  """The primary process's value of `tree`, in every process."""
  if jax.process_count() == 1:
    return tree
  return multihost_utils.broadcast_one_to_all(tree)
