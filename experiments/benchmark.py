r"""Configurations per second of the KL evaluation, per strategy, beside PyTorch and the hardware.

For each model (random weights, batch norm folded, N calibration images of
random pixels) this times the KL evaluation of the same bit configurations
by every strategy:

  loop       one jitted call per configuration from Python, weights
             re-quantized in each call (the direct port of the paper's loop)
  map        one compiled call per chunk, lax.map one configuration at a
             time, kernels picked from per-bit-width tables (the default)
  map_requant  the same, re-quantizing every kernel per configuration
  map_bf16   map with the quantized forward in bfloat16 (KL error reported)
  vmap_W     one compiled call, lax.map W configurations at a time (vmap)
  torch      PyTorch eager, the paper's loop (experiments/torch_reference.py),
             on the same weights, with as many threads as JAX uses, in a
             process of its own

and reports configurations/s, the speed-up over torch, the FLOPs per
configuration (XLA's cost analysis) and the fraction of a float32 matmul
peak measured in the same run, the compiled program's memory, and how far
each strategy's KL is from the map strategy's. It prints a table and writes
JSON (--output).

  python -m experiments.benchmark                        # all, CPU sizes
  python -m experiments.benchmark --models=resnet50 --image_size=224

On an accelerator it also times the sampler's whole job on resnet50:
--sampler_samples configurations (S, default 1200) at the fastest vmap width
that fits.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import pathlib
import platform
import resource
import time

from absl import app
from absl import flags
from absl import logging
# Importing JAX starts no backend: --cpu_devices still takes effect in main.
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments import host_devices
from mpq_jax import activations
from mpq_jax import distributed
from mpq_jax import models
from mpq_jax import nnx_adapter
from mpq_jax import sampling
from mpq_jax import spec as spec_lib
from mpq_jax.models import folding

flags.DEFINE_list("models", ["demo_cnn", "resnet18", "resnet50"],
                  "Models to time.")
flags.DEFINE_integer("image_size", 0,
                     "Image side for the ImageNet models (0: 224 on an"
                     " accelerator, 128 on CPU). demo_cnn is always 28.")
flags.DEFINE_integer("num_images", 50, "Calibration images N.")
flags.DEFINE_integer("num_configs", 0,
                     "Configurations per strategy (0: 200 for demo_cnn, 48"
                     " for the others on CPU, 256 on an accelerator).")
STRATEGIES = ("loop", "map", "map_requant", "map_bf16", "vmap", "torch")

flags.DEFINE_list("strategies", list(STRATEGIES),
                  "Strategies to time (see the module docstring).")
flags.DEFINE_list("vmap_widths", ["2", "4", "8"],
                  "Widths for the vmap strategy (capped by what fits).")
flags.DEFINE_integer("vmap_probe_configs", 0,
                     "Configurations per device for each vmap width (0: two"
                     " steps of that width), so that slow widths stay short.")
flags.DEFINE_integer("sampler_samples", 1200,
                     "S for the accelerator's whole-sampler timing (0: off).")
flags.DEFINE_string("output", "benchmark.json", "Where the JSON goes.")
FLAGS = flags.FLAGS

CPU_INPUT_SIDE = 128
ACCELERATOR_INPUT_SIDE = 224


def _peak_rss_mb() -> float:
  # ru_maxrss is in kilobytes on Linux.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _device_peak_mb(device) -> float | None:
  stats = device.memory_stats() if device.platform != "cpu" else None
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return stats["peak_bytes_in_use"] / 1e6


def matmul_peak_gflops(size: int, repeats: int = 10) -> float:
  """Best float32 matmul throughput of this device, in GFLOP/s."""
  a = jnp.ones((size, size), jnp.float32)
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    started = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - started)
  return 2 * size ** 3 / best / 1e9


def _flops(compiled) -> float:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis.get("flops", 0.0))


def _kl_error(kl, reference) -> dict:
  kl, reference = np.asarray(kl, np.float64), np.asarray(reference, np.float64)
  meaningful = reference > 1e-4
  relative = np.abs(kl - reference)[meaningful] / reference[meaningful]
  return {"kl_max_abs_diff": float(np.max(np.abs(kl - reference))),
          "kl_max_rel_diff": float(relative.max()) if relative.size else 0.0}


def setup_model(name: str, side: int, num_images: int):
  """Random-weight model (batch norm folded), images, spec and ranges."""


  entry = models.get_model_entry(name)
  module = entry.build(nnx.Rngs(0))
  unfolded = nnx.to_pure_dict(nnx.state(module))
  folding.fold_batch_norm(module)
  apply_fn, params = nnx_adapter.functional_model(module)
  shape = (entry.input_shape if name == "demo_cnn"
           else (side, side, entry.input_shape[-1]))
  images = np.random.default_rng(0).standard_normal(
      (num_images,) + tuple(shape)).astype(np.float32)
  spec = spec_lib.build_layer_spec(apply_fn, params, jnp.asarray(images[:1]))
  ranges = activations.calibrate_activation_ranges(apply_fn, params, spec,
                                                   jnp.asarray(images))
  return unfolded, apply_fn, params, images, spec, ranges


def benchmark_model(name: str, side: int, num_configs: int, widths, *,
                    strategies, peak_gflops: float, num_images: int = 50,
                    vmap_probe_configs: int = 0) -> list[dict]:
  """Every strategy on one model; rows of the table.

  The map row is always measured when map or vmap is asked for: it is the
  reference of the KL differences.
  """
  unfolded, apply_fn, params, images, spec, ranges = setup_model(name, side,
                                                            num_images)
  shape = images.shape[1:]
  bits = sampling.sample_bit_configs(0, 0, num_configs, spec.num_layers,
                                     (2, 8), "graded")
  build = lambda **options: sampling.make_kl_evaluator(
      apply_fn, params, spec, jnp.asarray(images), activation_ranges=ranges,
      chunk_size=num_configs, **options)
  evaluator = build()
  device = jax.devices()[0]
  one_device = jax.tree.map(lambda a: jax.device_put(np.asarray(a), device),
                            (params, images, evaluator.reference_logits))
  kl_one = jax.jit(lambda p, b, x, r: evaluator.kl_one(p, None, b, x, r))
  compiled_one = kl_one.lower(one_device[0], jnp.asarray(bits[0]),
                              *one_device[1:]).compile()
  flops = _flops(compiled_one)
  base = {"model": name, "input": list(shape), "images": num_images,
          "layers": spec.num_layers, "gflops_per_config": flops / 1e9}
  rows = []
  reference_kl = None

  def add(strategy, width, configs_per_second, configs, kl, **extra):
    row = {**base, "strategy": strategy, "width": width, "configs": configs,
           "configs_per_second": configs_per_second,
           "achieved_gflops": configs_per_second * flops / 1e9,
           "fraction_of_matmul_peak": (configs_per_second * flops / 1e9
                                       / peak_gflops), **extra}
    if reference_kl is not None and kl is not None:
      count = min(len(kl), len(reference_kl))
      row.update(_kl_error(kl[:count], reference_kl[:count]))
    rows.append(row)
    logging.info("%s %s: %.3f configs/s", name, strategy, configs_per_second)
    print(f"  {name:10s} {strategy:12s} {configs_per_second:9.3f} configs/s",
          flush=True)

  if "map" in strategies or "vmap" in strategies:
    timing = evaluator.configs_per_second(1, bits)
    reference_kl = timing["kl"]
    add("map", 1, timing["configs_per_second"], num_configs, reference_kl,
        first_call_seconds=timing["first_call_seconds"],
        program_mb=(timing["temp_bytes"] + timing["argument_bytes"]) / 1e6,
        first_layer_shared=evaluator.shares_first_layer)
  if "loop" in strategies:
    kl_one(one_device[0], jnp.asarray(bits[0]), *one_device[1:])
    started = time.perf_counter()
    kl = np.array([float(kl_one(one_device[0], jnp.asarray(row),
                                *one_device[1:])) for row in bits])
    add("loop", 1, num_configs / (time.perf_counter() - started), num_configs,
        kl)
  if "map_requant" in strategies:
    requant = build(table_bits=())
    timing = requant.configs_per_second(1, bits)
    add("map_requant", 1, timing["configs_per_second"], num_configs,
        timing["kl"], first_call_seconds=timing["first_call_seconds"])
  if "map_bf16" in strategies:
    half = build(compute_dtype=jnp.bfloat16)
    timing = half.configs_per_second(1, bits)
    add("map_bf16", 1, timing["configs_per_second"], num_configs,
        timing["kl"], first_call_seconds=timing["first_call_seconds"])
  if "vmap" in strategies:
    widest = evaluator.widest_fitting(max_width=max(widths))
    for width in [w for w in widths if w <= widest]:
      count = (vmap_probe_configs or 2 * width) * evaluator.num_devices
      count = min(count, num_configs)
      timing = evaluator.configs_per_second(width, bits[:count])
      add(f"vmap_{width}", width, timing["configs_per_second"], count,
          timing["kl"],
          first_call_seconds=timing["first_call_seconds"],
          program_mb=(timing["temp_bytes"] + timing["argument_bytes"]) / 1e6)
  if "torch" in strategies:
    try:
      import torch  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      print("  torch is not installed: pip install -e '.[torch]' for the"
            " PyTorch reference")
    else:
      # In a process of its own with JAX's default single CPU device, after
      # a short JAX warm-up: PyTorch ran fastest that way here (about 200
      # configurations/s on demo_cnn, against 110-150 in a process without
      # JAX and 145 beside a JAX split into two devices; JAX's idle worker
      # threads seem to keep the vCPUs awake for PyTorch's OpenMP barriers).
      arguments = (name, unfolded, list(spec.names), images, bits,
                   os.cpu_count())
      context = multiprocessing.get_context("spawn")
      with concurrent.futures.ProcessPoolExecutor(
          1, context, initializer=_torch_process_setup) as pool:
        timing = pool.submit(_torch_measure, *arguments).result()
      add("torch", 1, timing["configs_per_second"], num_configs,
          timing["kl"], torch_version=timing["torch_version"],
          torch_threads=timing["torch_threads"])
  torch_speed = next((r["configs_per_second"] for r in rows
                      if r["strategy"] == "torch"), None)
  for row in rows:
    row["speedup_vs_torch"] = (row["configs_per_second"] / torch_speed
                               if torch_speed else None)
  memory = {"peak_rss_mb": _peak_rss_mb(),
            "device_peak_mb": _device_peak_mb(device)}
  for row in rows:
    row.update(memory)
  return rows


def sampler_seconds(name: str, side: int, num_samples: int,
                    num_images: int = 50) -> dict:
  """The sampler's whole job on an accelerator: S configurations, timed."""
  _, apply_fn, params, images, spec, ranges = setup_model(name, side,
                                                         num_images)
  evaluator = sampling.make_kl_evaluator(
      apply_fn, params, spec, jnp.asarray(images), activation_ranges=ranges,
      chunk_size=64)
  width, _, timings = sampling.fastest_vmap_width(evaluator, seed=1)
  evaluator.vmap_width = width
  bits = sampling.sample_bit_configs(0, 0, num_samples, spec.num_layers,
                                     (2, 8), "graded")
  evaluator(bits[:evaluator.chunk_size])  # compile the chosen width
  started = time.perf_counter()
  evaluator(bits)
  seconds = time.perf_counter() - started
  return {"model": name, "input": side, "images": num_images,
          "num_samples": num_samples, "vmap_width": width,
          "width_timings": timings, "seconds": seconds,
          "device_peak_mb": _device_peak_mb(jax.devices()[0])}


def _torch_process_setup() -> None:
  """Drops the forced CPU device count and warms JAX up (see above)."""
  os.environ["XLA_FLAGS"] = " ".join(
      flag for flag in os.environ.get("XLA_FLAGS", "").split()
      if not flag.startswith(distributed.HOST_DEVICES_FLAG))
  conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
  x, w = jnp.ones((50, 28, 28, 16)), jnp.ones((3, 3, 16, 16))
  for _ in range(200):
    conv(x, w).block_until_ready()


def _torch_measure(*args) -> dict:
  from experiments import torch_reference  # pylint: disable=g-import-not-at-top
  return torch_reference.measure(*args)


def _table(rows) -> str:
  header = (f"{'model':10s} {'strategy':12s} {'configs/s':>10s}"
            f" {'vs torch':>9s} {'GFLOP/cfg':>10s} {'GFLOP/s':>8s}"
            f" {'of peak':>8s} {'KL rel err':>10s} {'program MB':>10s}")
  lines = [header, "-" * len(header)]
  for row in rows:
    speedup = row.get("speedup_vs_torch")
    program = row.get("program_mb")
    lines.append(
        f"{row['model']:10s} {row['strategy']:12s}"
        f" {row['configs_per_second']:10.3f}"
        f" {(f'{speedup:.2f}x' if speedup else '-'):>9s}"
        f" {row['gflops_per_config']:10.2f} {row['achieved_gflops']:8.1f}"
        f" {row['fraction_of_matmul_peak']:8.2f}"
        f" {row.get('kl_max_rel_diff', 0.0):10.2e}"
        f" {(f'{program:.0f}' if program else '-'):>10s}")
  return "\n".join(lines)


def check_flags() -> None:
  """Bad flag values stop the run before any work, naming the fix."""
  unknown = sorted(set(FLAGS.strategies) - set(STRATEGIES))
  if unknown:
    raise app.UsageError(f"unknown strategies {unknown}: choose from"
                         f" {', '.join(STRATEGIES)}.")
  for name in FLAGS.models:
    try:
      models.get_model_entry(name)
    except ValueError as error:
      raise app.UsageError(str(error)) from None
  if not all(w.isdigit() and int(w) >= 1 for w in FLAGS.vmap_widths):
    raise app.UsageError(f"--vmap_widths={','.join(FLAGS.vmap_widths)}: give"
                         " positive integers, e.g. --vmap_widths=2,4,8.")


def main(argv):
  del argv
  check_flags()
  host_devices.apply()

  device = jax.devices()[0]
  on_cpu = device.platform == "cpu"
  side = FLAGS.image_size or (CPU_INPUT_SIDE if on_cpu
                              else ACCELERATOR_INPUT_SIDE)
  peak = matmul_peak_gflops(2048 if on_cpu else 8192)
  machine = {"platform": device.platform, "device_kind": device.device_kind,
             "devices": jax.device_count(), "cpu_count": os.cpu_count(),
             "processor": platform.processor() or platform.machine(),
             "jax": jax.__version__, "matmul_peak_gflops": peak}
  print(f"{device.device_kind} x{jax.device_count()}, float32 matmul peak"
        f" {peak:.0f} GFLOP/s", flush=True)
  widths = [int(w) for w in FLAGS.vmap_widths]
  rows = []
  for name in FLAGS.models:
    count = FLAGS.num_configs or (256 if not on_cpu else
                                  200 if name == "demo_cnn" else 48)
    rows += benchmark_model(name, side, count, widths,
                            strategies=set(FLAGS.strategies),
                            peak_gflops=peak, num_images=FLAGS.num_images,
                            vmap_probe_configs=FLAGS.vmap_probe_configs)
  result = {"machine": machine, "rows": rows,
            "command": "python -m experiments.benchmark " + " ".join(
                f"--{k}={','.join(v) if isinstance(v, list) else v}"
                for k, v in FLAGS.flag_values_dict().items()
                if k in ("models", "image_size", "num_images", "num_configs",
                         "strategies", "vmap_widths", "cpu_devices"))}
  if not on_cpu and FLAGS.sampler_samples and "resnet50" in FLAGS.models:
    result["sampler"] = sampler_seconds("resnet50", side, FLAGS.sampler_samples,
                                        FLAGS.num_images)
    print(f"sampler: S={FLAGS.sampler_samples} on resnet50 at {side}x{side}:"
          f" {result['sampler']['seconds']:.1f} s at vmap width"
          f" {result['sampler']['vmap_width']}")
  print(_table(rows))
  pathlib.Path(FLAGS.output).write_text(json.dumps(result, indent=1))
  print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
  app.run(main)
