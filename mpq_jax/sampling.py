"""Monte Carlo bit vectors and their KL divergence, many per compiled program."""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterator

import jax
from absl import logging
import jax.numpy as jnp
import numpy as np

from mpq_jax import activations
from mpq_jax import intercept
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


DEFAULT_TABLE_BITS = tuple(range(2, 9))
DEFAULT_MAX_TABLE_BYTES = 4 << 30


def quantized_weight_tables(params: Any, spec: spec_lib.LayerSpec,
                            table_bits, *, per_channel: bool = False
                            ) -> list[jax.Array]:
  """Every quantized kernel at every bit-width of `table_bits`: [K, *shape] each.

  The sampler draws thousands of configurations from a handful of bit-widths
  per layer, so each layer has only K distinct quantized kernels: computing
  them once and picking one per configuration replaces a max-reduction,
  division, rounding and clipping over every weight of every configuration by
  a copy.
  """
  leaves = jax.tree.leaves(params)
  channel_axis = -1 if per_channel else None

  # The bit-width is traced, as in the per-configuration program, so that
  # XLA compiles the same arithmetic (a constant divisor may become a
  # multiplication by its reciprocal) and the tables hold the same codes.
  quantize = jax.jit(lambda kernel, bits: quant.quantize_symmetric(
      kernel, bits, channel_axis))
  return [jnp.stack([quantize(leaves[index], jnp.int32(bits))
                     for bits in table_bits])
          for index in spec.leaf_indices]


class KLEvaluator:
  """`kl_of(bits [C, L]) -> Omega [C]`: the KL divergence of many configurations.

  Built by `make_kl_evaluator` (see there); callable. Compiled programs are
  kept per (vmap width, weight source), so changing `vmap_width` after a
  measurement (`configs_per_second`) costs one compilation, not a rebuild.
  """

  def __init__(self, apply_fn, params, spec, calibration_images, *,
               activation_ranges, activation_bits, per_channel, chunk_size,
               vmap_width, mesh, memory_budget_bytes, max_vmap_width,
               table_bits, max_table_bytes, compute_dtype):
    activations.check_calibration_images(calibration_images)
    self.spec = spec
    self.mesh = config_mesh() if mesh is None else mesh
    self.num_devices = self.mesh.devices.size
    # Each device takes an equal share of a chunk.
    self.chunk_size = -(-chunk_size // self.num_devices) * self.num_devices
    self.compute_dtype = jnp.dtype(compute_dtype)
    self._apply_fn = apply_fn
    self._quantize_input = activations.input_quantizer(activation_ranges,
                                                       activation_bits)
    self._per_channel = per_channel
    self._replicated = jax.sharding.PartitionSpec()
    self._by_config = jax.sharding.PartitionSpec(CONFIG_AXIS)
    to_global = lambda tree: jax.tree.map(
        lambda leaf: global_array(leaf, self.mesh, self._replicated), tree)
    self.params = to_global(params)
    self.images = to_global(np.asarray(calibration_images))
    self.reference_logits = to_global(np.asarray(jax.jit(apply_fn)(
        jax.tree.map(np.asarray, params), np.asarray(calibration_images))))
    # Bit-width b of a layer sits at row table_row[b] of its table (-1: none).
    self.table_bits = tuple(sorted(set(int(b) for b in table_bits)))
    table_bytes = len(self.table_bits) * 4 * sum(spec.num_params)
    if self.table_bits and table_bytes > max_table_bytes:
      logging.info("weight tables need %.0f MB > %.0f MB: re-quantizing per"
                   " configuration instead", table_bytes / 1e6,
                   max_table_bytes / 1e6)
      self.table_bits = ()
    self.tables = None
    if self.table_bits:
      self.tables = to_global([np.asarray(t) for t in quantized_weight_tables(
          params, spec, self.table_bits, per_channel=per_channel)])
    table_row = np.full(quant.MAX_BITS + 1, -1, np.int32)
    table_row[list(self.table_bits)] = np.arange(len(self.table_bits))
    self._table_row = table_row
    # The first layer's input is the same for every configuration (nothing
    # quantized runs before it), so its K possible outputs are computed once
    # per chunk and each configuration picks one (unless it runs twice).
    calls = []
    jax.eval_shape(lambda p, x: intercept.run_with_layer_hook(
        apply_fn, p, x, spec.leaf_indices, visit=calls.append),
        params, calibration_images)
    self.shares_first_layer = self.tables is not None and calls.count(0) == 1
    self._programs: dict = {}
    self._executables: dict = {}
    if vmap_width is None:
      vmap_width = self.widest_fitting(memory_budget_bytes, max_vmap_width)
      logging.info("vmap width %d (planned from memory analysis)", vmap_width)
    self.vmap_width = int(vmap_width)

  # --- one configuration -----------------------------------------------------

  def _in_compute_dtype(self, tree):
    if self.compute_dtype == jnp.float32:
      return tree
    return jax.tree.map(
        lambda leaf: leaf.astype(self.compute_dtype)
        if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf, tree)

  def _weights(self, params, tables, bits):
    """The parameters with every quantized kernel at `bits` (traced)."""
    if tables is None:
      quantized = spec_lib.quantize_params(params, bits, self.spec,
                                           per_channel=self._per_channel)
    else:
      rows = jnp.asarray(self._table_row)[bits]
      quantized = spec_lib.replace_kernels(
          params, self.spec, lambda layer, _: tables[layer][rows[layer]])
    return self._in_compute_dtype(quantized)

  def _forward(self, weights, images, layer_call=None):
    return intercept.run_with_layer_hook(
        self._apply_fn, weights, images.astype(self.compute_dtype),
        self.spec.leaf_indices, hook=self._quantize_input,
        layer_call=layer_call)

  def first_layer_outputs(self, params, tables, images):
    """Layer 0's output at each of its table rows: [K, *output shape]."""
    def output_at(kernel):
      weights = self._in_compute_dtype(spec_lib.replace_kernels(
          params, self.spec, lambda *_: kernel, layers=[0]))
      captured = []

      def capture(layer, compute, activation):
        output = compute(activation)
        if layer == 0:
          captured.append(output)
        return output

      # Everything after layer 0 is dead code that XLA removes.
      self._forward(weights, images, capture)
      return captured[0]

    return jax.lax.map(output_at, tables[0])

  def kl_one(self, params, tables, bits, images, reference,
             first_outputs=None):
    """Omega of one configuration: pure, for jit, vmap and lax.map.

    `first_outputs` (from `first_layer_outputs`, with tables) stands in for
    computing layer 0.
    """
    weights = self._weights(params, tables, bits)
    layer_call = None
    if first_outputs is not None:
      first = first_outputs[jnp.asarray(self._table_row)[bits[0]]]
      layer_call = lambda layer, compute, activation: (
          first if layer == 0 else compute(activation))
    logits = self._forward(weights, images, layer_call)
    return metrics.kl_divergence(reference, logits.astype(jnp.float32))

  # --- many configurations ---------------------------------------------------

  def _program(self, width: int, use_tables: bool):
    key = (width, use_tables)
    if key not in self._programs:
      def kl_of_local_configs(params, tables, bit_configs, images, reference):
        first_outputs = None
        # Computing layer 0 at all K widths pays off from about 2K
        # configurations per call (measured: +10% on demo_cnn at 128 per
        # device, slower at 8 on resnet18).
        if (use_tables and self.shares_first_layer
            and bit_configs.shape[0] >= 2 * len(self.table_bits)):
          first_outputs = self.first_layer_outputs(params, tables, images)
        one = lambda bits: self.kl_one(params, tables, bits, images, reference,
                                       first_outputs)
        return jax.lax.map(one, bit_configs, batch_size=width)

      replicated, by_config = self._replicated, self._by_config
      self._programs[key] = jax.jit(
          jax.shard_map(kl_of_local_configs, mesh=self.mesh,
                        in_specs=(replicated, replicated, by_config,
                                  replicated, replicated),
                        out_specs=by_config,
                        # The activation hook rebinds primitives one by one,
                        # which the varying-axes checker cannot follow.
                        check_vma=False),
          # Every process reads every KL back.
          out_shardings=jax.sharding.NamedSharding(self.mesh, replicated))
    return self._programs[key]

  def _compiled(self, width: int, use_tables: bool, block_size: int):
    """The program for blocks of `block_size` configurations, compiled once."""
    key = (width, use_tables, block_size)
    if key not in self._executables:
      example = np.full((block_size, self.spec.num_layers),
                        max(self.table_bits or (8,)), np.int32)
      self._executables[key] = self._program(width, use_tables).lower(
          *self._arguments(example, use_tables)).compile()
    return self._executables[key]

  def _arguments(self, bit_configs: np.ndarray, use_tables: bool):
    return (self.params, self.tables if use_tables else None,
            global_array(bit_configs, self.mesh, self._by_config),
            self.images, self.reference_logits)

  def widest_fitting(self, memory_budget_bytes: int | None = None,
                     max_width: int = 64) -> int:
    """The widest vmap whose program fits the memory budget (see plan_vmap_width)."""
    use_tables = self.tables is not None
    temp_bytes = lambda width: self._compiled(
        width, use_tables, self.chunk_size).memory_analysis(
        ).temp_size_in_bytes
    return plan_vmap_width(temp_bytes, self.mesh.devices.flat[0],
                           self.chunk_size // self.num_devices,
                           memory_budget_bytes=memory_budget_bytes,
                           max_width=max_width)

  def uses_tables(self, bit_configs: np.ndarray) -> bool:
    """Whether every bit-width of these configurations has a weight table."""
    return self.tables is not None and bool(
        np.all(self._table_row[bit_configs] >= 0))

  def evaluate(self, width: int, bit_configs: np.ndarray,
               block_size: int) -> np.ndarray:
    """KL of validated `bit_configs` at a given vmap width and block size.

    The configurations are padded to whole blocks of `block_size` (a
    multiple of the device count), each block one compiled call.
    """
    count = bit_configs.shape[0]
    use_tables = self.uses_tables(bit_configs)
    program = self._compiled(width, use_tables, block_size)
    padded = -(-count // block_size) * block_size
    bit_configs = np.concatenate(
        [bit_configs, np.repeat(bit_configs[-1:], padded - count, axis=0)])
    # Every block is dispatched before any result is read, so the host's
    # work for block k+1 overlaps the devices' work on block k.
    pending = [program(*self._arguments(block, use_tables))
               for block in np.split(bit_configs, padded // block_size)]
    return np.concatenate([np.asarray(kl) for kl in pending])[:count]

  def __call__(self, bit_configs) -> np.ndarray:
    bit_configs = quant.check_weight_bits(bit_configs, self.spec.num_layers)
    if bit_configs.shape[0] == 0:
      return np.zeros(0, np.float32)
    return self.evaluate(self.vmap_width, bit_configs, self.chunk_size)

  def configs_per_second(self, width: int, bit_configs) -> dict:
    """Times one vmap width on `bit_configs` as one compiled call.

    The configurations are padded to a multiple of devices x width; a first
    call compiles and warms up, a second is timed. Returns the configurations
    per second, the seconds of the first call (compilation and one run), the
    program's memory figures and the KL of the timed call.
    """
    bit_configs = quant.check_weight_bits(bit_configs, self.spec.num_layers)
    step = self.num_devices * width
    block = -(-bit_configs.shape[0] // step) * step
    started = time.perf_counter()
    self.evaluate(width, bit_configs, block)
    first_call_seconds = time.perf_counter() - started
    started = time.perf_counter()
    kl = self.evaluate(width, bit_configs, block)
    elapsed = time.perf_counter() - started
    memory = self._compiled(width, self.uses_tables(bit_configs),
                            block).memory_analysis()
    return {"width": width, "configs_per_second": block / elapsed,
            "seconds": elapsed, "first_call_seconds": first_call_seconds,
            "temp_bytes": int(memory.temp_size_in_bytes),
            "argument_bytes": int(memory.argument_size_in_bytes), "kl": kl}


def width_candidates(widest: int) -> list[int]:
  """Powers of two from 1 to `widest`: the widths worth timing."""
  widths = [1]
  while widths[-1] * 2 <= widest:
    widths.append(widths[-1] * 2)
  return widths


def pick_vmap_width(evaluator: KLEvaluator, bit_configs, candidates, *,
                    agree: Callable[[Any], Any] | None = None
                    ) -> tuple[int, list[dict]]:
  """The fastest vmap width of `candidates` on this backend, by measurement.

  Widths are tried in increasing order and the search stops at the first
  one slower than the best so far: throughput rises with the width while
  the devices have idle units, then falls (on XLA CPU it falls at once:
  vmapped weights become grouped convolutions, about 7x slower), so the
  slow widths cost one probe at most.

  Args:
    evaluator: the KLEvaluator to time.
    bit_configs: the probe configurations, the same for every width.
    candidates: widths to consider.
    agree: with several processes, a function that returns process 0's
      value (`distributed.from_primary`): every process then follows process
      0's timings, so all run the same collective programs and stop
      together.

  Returns:
    (the fastest width, the timing record of every width tried).
  """
  agree = agree or (lambda value: value)
  timings = []
  best = None
  for width in sorted(set(int(w) for w in candidates)):
    timing = evaluator.configs_per_second(width, bit_configs)
    timing.pop("kl", None)  # the probe's KL is not kept
    timing["configs_per_second"] = float(
        agree(np.float64(timing["configs_per_second"])))
    timings.append(timing)
    logging.info("vmap width %d: %.2f configurations/s", width,
                 timing["configs_per_second"])
    if best is not None and (timing["configs_per_second"]
                             < best["configs_per_second"]):
      break
    if best is None or (timing["configs_per_second"]
                        > best["configs_per_second"]):
      best = timing
  return best["width"], timings


def fastest_vmap_width(evaluator: KLEvaluator, *, seed: int = 0,
                       memory_budget_bytes: int | None = None,
                       max_width: int = 64,
                       agree: Callable[[Any], Any] | None = None
                       ) -> tuple[int, int, list[dict]]:
  """Times the vmap widths that fit memory on a short probe; keeps the fastest.

  The candidates are the powers of two up to the widest that fits
  `memory_budget_bytes` (see `plan_vmap_width`), `max_width` and the
  configurations per device of a chunk. The probe is four configurations
  per device: short on large models, where slow widths are slow; a wider
  vmap pads them to one step, and the timing counts the padding as work.

  Returns:
    (the fastest width, the widest that fits, the timing of every width
    tried); `agree` as in `pick_vmap_width`.
  """
  widest = evaluator.widest_fitting(memory_budget_bytes, max_width)
  probe = sample_bit_configs(
      seed, 0, evaluator.num_devices * 4, evaluator.spec.num_layers,
      (min(DEFAULT_TABLE_BITS), max(DEFAULT_TABLE_BITS)))
  width, timings = pick_vmap_width(evaluator, probe, width_candidates(widest),
                                   agree=agree)
  return width, widest, timings


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
    table_bits=DEFAULT_TABLE_BITS,
    max_table_bytes: int = DEFAULT_MAX_TABLE_BYTES,
    compute_dtype=jnp.float32,
) -> KLEvaluator:
  """Returns `kl_of(bits [C, L]) -> Omega [C]` for any C, compiled once.

  Configurations go to one compiled program `chunk_size` at a time (the last
  chunk padded), split evenly over the devices of `mesh` (default: every
  device of every process) with shard_map; the parameters and calibration
  images are replicated. On each device `lax.map` walks its share
  `vmap_width` at a time, so memory stays that of `vmap_width` forward passes
  whatever C is. Which width is fastest depends on the backend (on XLA CPU
  vmapped weights become grouped convolutions): `pick_vmap_width` measures
  it. With `vmap_width=None` the width is the widest that the compiled
  program's memory analysis fits in `memory_budget_bytes` (default: half the
  device's memory), at most `max_vmap_width` (`plan_vmap_width`). Every process must call `kl_of` with the same bits; each
  gets every KL back.

  Every kernel is quantized once per bit-width in `table_bits` (while the
  tables fit `max_table_bytes`); a configuration picks its kernels from
  those tables. Configurations with a bit-width outside them are quantized
  in the program instead (same numbers; pass `table_bits=()` to always do
  that). `compute_dtype=jnp.bfloat16` runs the quantized forward in
  bfloat16 (the reference logits stay float32): faster where bfloat16
  matmuls are, at a KL error `experiments.benchmark` reports.
  """
  return KLEvaluator(
      apply_fn, params, spec, calibration_images,
      activation_ranges=activation_ranges, activation_bits=activation_bits,
      per_channel=per_channel, chunk_size=chunk_size, vmap_width=vmap_width,
      mesh=mesh, memory_budget_bytes=memory_budget_bytes,
      max_vmap_width=max_vmap_width, table_bits=table_bits,
      max_table_bytes=max_table_bytes, compute_dtype=compute_dtype)


def host_memory_bytes() -> int:
  """Physical memory of this host."""
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def plan_vmap_width(temp_bytes: Callable[[int], int], device,
                    configs_per_device: int, *,
                    memory_budget_bytes: int | None = None,
                    max_width: int = 64) -> int:
  """The widest vmap that keeps the program's scratch memory within budget.

  Scratch memory grows about linearly with the width, so two compilations
  (widths 1 and 2) give the slope; the answer is the largest power of two
  under the budget, at most `max_width` and the configurations per device.
  Without an explicit budget, an accelerator gets half of its memory and a
  CPU device half of the host's memory shared among the local CPU devices.
  The memory bound only caps the width: which width is fastest is measured
  (`pick_vmap_width`).
  """
  if memory_budget_bytes is None:
    if device.platform == "cpu":
      memory_budget_bytes = host_memory_bytes() // 2 // max(
          1, len(jax.local_devices(backend="cpu")))
    else:
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
