"""Monte Carlo bit vectors and their KL divergence, many per compiled program."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import jax
from absl import logging
import jax.numpy as jnp
import numpy as np

from mpq_jax import activations
from mpq_jax import metrics
from mpq_jax import quant
from mpq_jax import spec as spec_lib


def check_bit_range(bit_range: tuple[int, int]) -> tuple[int, int]:
  """Validates [b_min, b_max] and returns it as ints."""
  try:
    low, high = (int(b) for b in bit_range)
  except (TypeError, ValueError):
    raise ValueError(
        f"bit range {bit_range!r} is not two integers: give it as"
        " 'b_min,b_max', e.g. --bit_range=2,8."
    ) from None
  if low < quant.MIN_WEIGHT_BITS:
    raise ValueError(
        f"bit range starts at {low}, but a signed symmetric grid needs at"
        " least 2 bits: use b_min >= 2."
    )
  if high < low or high > quant.MAX_BITS:
    raise ValueError(
        f"bit range [{low}, {high}] is empty or above {quant.MAX_BITS} bits:"
        " give b_min <= b_max <= 16."
    )
  return low, high


SAMPLERS = ("uniform", "graded")


def _draw_uniform(key, num_layers, low, high):
  return jax.random.randint(key, (num_layers,), low, high + 1)


def _draw_graded(key, num_layers, low, high):
  # A per-sample floor, then uniform above it: every precision level from
  # "all layers at b_max" to "anything in range" is drawn equally often.
  # A floor at b_max gives the all-b_max vector (1/K of the samples): it
  # anchors the allocator's low-KL end. Stopping the floor below b_max lost
  # the demo's within-tolerance allocation (BENCHMARKS.md).
  floor_key, bits_key = jax.random.split(key)
  floor = jax.random.randint(floor_key, (), low, high + 1)
  return jax.random.randint(bits_key, (num_layers,), floor, high + 1)


def sample_bit_configs(
    seed: int, start: int, count: int, num_layers: int,
    bit_range: tuple[int, int], sampler: str = "uniform",
) -> np.ndarray:
  """Configurations start .. start+count-1, every bit-width in the range.

  Configuration j depends on (seed, j) alone, so any chunking, restart or
  device count draws the same vectors.

  Args:
    seed: the run's seed.
    start: index of the first configuration.
    count: how many to draw.
    num_layers: bits per configuration.
    bit_range: (b_min, b_max), inclusive.
    sampler: "uniform", the paper's: each layer independently uniform in
      the range. "graded": a floor uniform in [b_min, b_max] per
      configuration, then each layer uniform in [floor, b_max], which covers the
      low-KL end (most layers near b_max) that independent draws almost
      never reach.

  Returns:
    int32 array [count, num_layers].
  """
  low, high = check_bit_range(bit_range)
  if sampler not in SAMPLERS:
    raise ValueError(f"unknown sampler {sampler!r}: choose one of"
                     f" {', '.join(SAMPLERS)}.")
  draw_one = _draw_uniform if sampler == "uniform" else _draw_graded
  base = jax.random.key(seed)
  indices = jnp.arange(start, start + count, dtype=jnp.uint32)
  draw = lambda j: draw_one(jax.random.fold_in(base, j), num_layers, low, high)
  return np.asarray(jax.vmap(draw)(indices), np.int32)


CONFIG_AXIS = "configs"


def config_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh over every device of every process (or `devices`)."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.sharding.Mesh(np.array(devices), (CONFIG_AXIS,))


def global_array(value, mesh: jax.sharding.Mesh, spec) -> jax.Array:
  """A global jax.Array from a host value that every process holds whole."""
  value = np.asarray(value)
  sharding = jax.sharding.NamedSharding(mesh, spec)
  return jax.make_array_from_callback(value.shape, sharding,
                                      lambda index: value[index])


def make_kl_evaluator(
    apply_fn: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    spec: spec_lib.LayerSpec,
    calibration_images: jax.Array,
    *,
    activation_ranges: jax.Array | None = None,
    activation_bits: int = activations.DEFAULT_ACTIVATION_BITS,
    per_channel: bool = False,
    chunk_size: int = 50,
    vmap_width: int | None = 1,
    mesh: jax.sharding.Mesh | None = None,
    memory_budget_bytes: int | None = None,
    max_vmap_width: int = 64,
) -> Callable[[np.ndarray], np.ndarray]:
  """Returns `kl_of(bits [C, L]) -> Omega [C]` for any C, compiled once.

  Configurations go to one compiled program `chunk_size` at a time (the last
  chunk padded), split evenly over the devices of `mesh` (default: every
  device of every process) with shard_map; the parameters and calibration
  images are replicated. On each device `lax.map` walks its share
  `vmap_width` at a time, so memory stays that of `vmap_width` forward passes
  whatever C is. On XLA CPU a width of 1 is reported fastest (vmapped
  weights become grouped convolutions); accelerators may prefer more. With
  `vmap_width=None` the width is planned from the compiled program's memory
  analysis (`plan_vmap_width`): 1 on CPU, on accelerators the widest that
  fits `memory_budget_bytes` (default: half the device's memory), at most
  `max_vmap_width`. Every process must call `kl_of` with the same bits; each
  gets every KL back.
  """
  activations.check_calibration_images(calibration_images)
  mesh = config_mesh() if mesh is None else mesh
  num_devices = mesh.devices.size
  # Each device takes an equal share of a chunk.
  chunk_size = -(-chunk_size // num_devices) * num_devices
  quantized_apply = activations.make_quantized_apply(
      apply_fn, spec, activation_ranges=activation_ranges,
      activation_bits=activation_bits, per_channel=per_channel)
  replicated = jax.sharding.PartitionSpec()
  by_config = jax.sharding.PartitionSpec(CONFIG_AXIS)
  to_global = lambda tree: jax.tree.map(
      lambda leaf: global_array(leaf, mesh, replicated), tree)
  params = to_global(params)
  images = to_global(np.asarray(calibration_images))
  reference_logits = to_global(np.asarray(
      jax.jit(apply_fn)(jax.tree.map(np.asarray, params), np.asarray(images))))

  def compile_for(width: int):
    def kl_of_local_configs(params, bit_configs, images, reference):
      def one(bits):
        return metrics.kl_divergence(reference,
                                     quantized_apply(params, bits, images))
      return jax.lax.map(one, bit_configs, batch_size=width)

    return jax.jit(
        jax.shard_map(kl_of_local_configs, mesh=mesh,
                      in_specs=(replicated, by_config, replicated, replicated),
                      out_specs=by_config,
                      # The activation hook rebinds primitives one by one,
                      # which the varying-axes checker cannot follow.
                      check_vma=False),
        # Every process reads every KL back.
        out_shardings=jax.sharding.NamedSharding(mesh, replicated))

  if vmap_width is None:
    example = global_array(np.full((chunk_size, spec.num_layers), 8,
                                   np.int32), mesh, by_config)
    temp_bytes = lambda width: compile_for(width).lower(
        params, example, images, reference_logits).compile(
        ).memory_analysis().temp_size_in_bytes
    vmap_width = plan_vmap_width(
        temp_bytes, mesh.devices.flat[0], chunk_size // num_devices,
        memory_budget_bytes=memory_budget_bytes, max_width=max_vmap_width)
    logging.info("vmap width %d (planned from memory analysis)", vmap_width)
  kl_of_configs = compile_for(vmap_width)

  def kl_of(bit_configs) -> np.ndarray:
    bit_configs = quant.check_weight_bits(bit_configs, spec.num_layers)
    count = bit_configs.shape[0]
    if count == 0:
      return np.zeros(0, np.float32)
    padded = -(-count // chunk_size) * chunk_size
    bit_configs = np.concatenate(
        [bit_configs, np.repeat(bit_configs[-1:], padded - count, axis=0)])
    results = [
        np.asarray(kl_of_configs(params, global_array(chunk, mesh, by_config),
                                 images, reference_logits))
        for chunk in np.split(bit_configs, padded // chunk_size)
    ]
    return np.concatenate(results)[:count]

  return kl_of


def plan_vmap_width(temp_bytes: Callable[[int], int], device,
                    configs_per_device: int, *,
                    memory_budget_bytes: int | None = None,
                    max_width: int = 64) -> int:
  """The widest vmap that keeps the program's scratch memory within budget.

  Scratch memory grows about linearly with the width, so two compilations
  (widths 1 and 2) give the slope; the answer is the largest power of two
  under the budget, at most `max_width` and the configurations per device.
  Without an explicit budget, a CPU gets width 1 (vmapped weights become
  grouped convolutions there, reported about 10x slower than one at a time
  in issue 6) and an accelerator half of its memory.
  """
  if memory_budget_bytes is None:
    if device.platform == "cpu":
      return 1
    stats = device.memory_stats() or {}
    if "bytes_limit" not in stats:
      return 1
    memory_budget_bytes = stats["bytes_limit"] // 2
  one, two = temp_bytes(1), temp_bytes(2)
  per_config = max(two - one, 1)
  fitting = max(1, (memory_budget_bytes - one) // per_config + 1)
  limit = min(max_width, configs_per_device, fitting)
  width = 1
  while width * 2 <= limit:
    width *= 2
  return width


def chunk_starts(num_samples: int, chunk_size: int) -> Iterator[tuple[int, int]]:
  """(start, count) pairs that tile [0, num_samples)."""
  if chunk_size < 1:
    raise ValueError(f"chunk size must be >= 1, got {chunk_size}.")
  for start in range(0, num_samples, chunk_size):
    yield start, min(chunk_size, num_samples - start)
