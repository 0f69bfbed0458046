"""The --cpu_devices flag shared by the entry points: one XLA CPU device per core."""

from __future__ import annotations

import os

from absl import flags

from mpq_jax import distributed

CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", -1,
    "On CPU, XLA devices to split the host into so that configurations shard"
    " over cores (-1: one per core for a single process, 1 per process with"
    " several; 1: no split). No effect on GPU or TPU. Applied before JAX"
    " starts.")


def apply(num_processes: int | None = None) -> int:
  """Splits the host CPU as --cpu_devices says; returns the device count."""
  count = CPU_DEVICES.value
  if count < 0:
    count = os.cpu_count() if num_processes in (None, 1) else 1
  return distributed.split_host_cpu(count)
