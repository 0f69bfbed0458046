"""The stages of a run, from a trained model to report.json, resumable from the workdir.

model -> bit_range -> sampling -> allocator -> sweep -> report. Each stage
reads what earlier stages wrote into the workdir and writes its own result
there; a stage whose result exists (made with the same settings) is skipped.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import pathlib
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
import tqdm

from mpq_jax import activations
from mpq_jax import baselines
from mpq_jax import budget as budget_lib
from mpq_jax import distributed
from mpq_jax import allocator as allocator_lib
from mpq_jax import evaluation
from mpq_jax import export as export_lib
from mpq_jax import metrics
from mpq_jax import models
from mpq_jax import nnx_adapter
from mpq_jax import report as report_lib
from mpq_jax import sampling
from mpq_jax import search
from mpq_jax import spec as spec_lib
from mpq_jax import store
from mpq_jax.data import pipeline as data_pipeline
from mpq_jax.models import convert
from mpq_jax.models import folding
from mpq_jax.models import training

STAGES = ("model", "bit_range", "sampling", "allocator", "sweep", "compare",
          "export", "report")
METHODS = ("mlp", "uniform", "best_sampled", "greedy", "zeroq", "hawq")
# The paper's figures count ResNet-50 as 50 layers: its 4 downsample (1x1
# shortcut) convolutions are not among them; every other count agrees.
LAYER_SELECTIONS = {
    "all": spec_lib.is_weight_kernel,
    "paper": lambda name, leaf: (spec_lib.is_weight_kernel(name, leaf)
                                 and "downsample" not in name),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
  """Settings of one run; names match the flags and the report's keys."""

  model: str = "demo_cnn"
  workdir: str = "runs/demo_cnn"
  data_dir: str = "~/tensorflow_datasets"
  num_samples: int = 1200
  calib_size: int = 50
  seed: int = 0
  # "graded" reaches the low-KL end that the paper's "uniform" misses (BUILD.md).
  sampler: str = "graded"
  bit_range: tuple[int, int] | None = None  # None: the paper's uniform-sweep rule
  beta: float = allocator_lib.DEFAULT_BETA
  hidden: int = allocator_lib.DEFAULT_HIDDEN
  per_channel: bool = False
  activation_bits: int = activations.DEFAULT_ACTIVATION_BITS  # 0: off
  tolerance_pp: float = search.DEFAULT_TOLERANCE_PP
  num_targets: int = 40
  query_kl: tuple[float, ...] | None = None  # None: quartiles of the samples
  chunk_size: int = 50
  # 0: the fastest width that fits memory, measured once and cached in the
  # workdir (sampling.pick_vmap_width); > 0: that width.
  vmap_width: int = 0
  memory_budget_mb: float | None = None  # None: half the device's memory
  max_vmap_width: int = 64
  eval_batch_size: int = 500
  train_epochs: int | None = None  # None: the model's own default
  # Random weights and synthetic images: throughput and smoke runs only.
  random_init: bool = False
  input_size: int | None = None  # square inputs of this side (None: model's)
  eval_size: int = 256  # synthetic evaluation images under random_init
  # Fold batch norm into the preceding convolutions before quantizing, as
  # deployment does.
  fold_batch_norm: bool = True
  # A torchvision state dict (.safetensors or .pth) to import on first use.
  weights: str | None = None
  # "all": every conv and linear kernel; "paper": the paper's layer counts
  # (ResNets without their downsample convolutions).
  layers: str = "all"
  # Budgets for the side-by-side comparison; both None: the chosen MLP
  # allocation's size and the uniform sizes inside the bit range.
  budget_mb: tuple[float, ...] | None = None
  compression: tuple[float, ...] | None = None
  methods: tuple[str, ...] = METHODS
  hutchinson_samples: int = baselines.hawq.DEFAULT_HUTCHINSON_SAMPLES
  # Run the quantized forward passes of the KL evaluation in bfloat16
  # (faster on accelerators; its KL error is in BENCHMARKS.md).
  bfloat16: bool = False

  def sampling_settings(self, spec: spec_lib.LayerSpec, bit_range,
                        params_digest: str) -> dict:
    """What the samples depend on; a store made otherwise is refused."""
    return {
        "model": self.model, "seed": self.seed, "sampler": self.sampler,
        "bit_range": list(bit_range),
        "calib_size": self.calib_size, "per_channel": self.per_channel,
        "activation_bits": self.activation_bits,
        "layer_names": list(spec.names), "params_digest": params_digest,
        # Only when on, so that float32 stores made before it stay valid.
        **({"compute_dtype": "bfloat16"} if self.bfloat16 else {}),
    }


def params_digest(params: Any) -> str:
  """A hash of the parameter values: samples belong to one set of weights."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(params):
    digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return digest.hexdigest()[:16]


class Run:
  """One run in one workdir: lazily built shared state, and the stages."""

  def __init__(self, config: RunConfig):
    self.config = config
    self.entry = models.get_model_entry(config.model)
    self.workdir = pathlib.Path(config.workdir).expanduser()
    self.data_dir = str(pathlib.Path(config.data_dir).expanduser())
    if config.calib_size < 1:
      raise ValueError(
          f"calibration set is empty (--calib_size={config.calib_size}): the"
          " paper uses N = 50 training images; pass --calib_size=50.")
    if config.num_samples < 4:
      raise ValueError(f"--num_samples={config.num_samples} is too few to"
                       " train the allocator: use at least 4 (paper: 1200).")
    if config.bit_range is not None:
      sampling.check_bit_range(config.bit_range)
    shape = tuple(self.entry.input_shape)
    if config.input_size is not None:
      shape = (config.input_size, config.input_size) + shape[2:]
    self.input_shape = shape
    self.preprocess = functools.partial(self.entry.preprocess,
                                        input_shape=shape)
    self._claim_workdir()
    self.timings = store.read_json(self.workdir / "timings.json") or {}
    self._reused = False
    self.batch_norms_folded = 0

  # --- the workdir ---------------------------------------------------------

  def _claim_workdir(self) -> None:
    self.workdir.mkdir(parents=True, exist_ok=True)
    owner_path = self.workdir / "run.json"
    owner = store.read_json(owner_path)
    if owner is None:
      store.write_json(owner_path, {"model": self.config.model})
    elif owner.get("model") != self.config.model:
      raise ValueError(
          f"workdir {self.workdir} holds a run of model {owner.get('model')!r},"
          f" not {self.config.model!r}: pass another --workdir (e.g."
          f" --workdir=runs/{self.config.model}) or delete that directory.")

  def path(self, name: str) -> pathlib.Path:
    return self.workdir / name

  def _require(self, name: str, stage: str) -> dict:
    record = store.read_json(self.path(name))
    if record is None:
      raise FileNotFoundError(
          f"{self.path(name)} is missing: run the {stage!r} stage first"
          f" (--stages={stage} or no --stages at all).")
    return record

  # --- shared state, built on first use -----------------------------------

  @functools.cached_property
  def model_and_params(self) -> tuple[Any, Any]:
    """(apply_fn, params): trained and checkpointed on first use, BN folded."""
    module = self.entry.build(nnx.Rngs(self.config.seed))
    if not self.config.random_init:
      self._load_or_train(module)
    module.eval()
    if self.config.fold_batch_norm:
      self.batch_norms_folded = folding.fold_batch_norm(module)
    return nnx_adapter.functional_model(module)

  def _load_or_train(self, module: nnx.Module) -> None:
    """Fills `module` with its checkpointed weights, training it if there are none.

    The checkpoint holds every variable (batch-norm statistics too), unfolded.
    """
    checkpoint = self.path("model_checkpoint")
    if self.config.weights and not checkpoint.exists():
      if distributed.is_primary():
        convert.convert_into_workdir(self.config.model, self.config.weights,
                                     self.workdir)
      distributed.barrier("weights converted")
    if checkpoint.exists():
      state = store.restore_checkpoint(checkpoint,
                                       nnx.to_pure_dict(nnx.state(module)))
      nnx.update(module, state)
      logging.info("loaded %s from %s", self.config.model, checkpoint)
      return
    epochs = (self.entry.train_epochs if self.config.train_epochs is None
              else self.config.train_epochs)
    if epochs <= 0:
      raise FileNotFoundError(
          f"no weights for {self.config.model}: {checkpoint} is missing and"
          " this model is not trained here. Put an orbax checkpoint of its"
          " variables there (the torchvision converter is issue 3), or pass"
          " --random_init for a throughput or smoke run on random weights.")
    source = data_pipeline.data_source(self.entry.dataset,
                                       self.entry.train_split, self.data_dir)
    steps = epochs * len(source) // self.entry.train_batch_size
    batches = data_pipeline.batches(
        source, self.entry.train_batch_size, self.preprocess,
        shuffle_seed=self.config.seed, num_epochs=epochs, drop_remainder=True)
    batches = _progress(batches, total=steps, desc="train " + self.entry.name)
    module.train()
    training.train_classifier(module, batches, num_steps=steps)
    store.save_checkpoint(checkpoint, nnx.to_pure_dict(nnx.state(module)))

  @property
  def apply_fn(self):
    return self.model_and_params[0]

  @property
  def params(self):
    return self.model_and_params[1]

  @functools.cached_property
  def spec(self) -> spec_lib.LayerSpec:
    example = jnp.zeros((1,) + self.input_shape, jnp.float32)
    if self.config.layers not in LAYER_SELECTIONS:
      raise ValueError(f"--layers={self.config.layers}: choose one of"
                       f" {', '.join(LAYER_SELECTIONS)}.")
    spec = spec_lib.build_layer_spec(self.apply_fn, self.params, example,
                                     select=LAYER_SELECTIONS[
                                         self.config.layers])
    spec_lib.check_finite_params(self.params, spec)
    return spec

  def _synthetic_images(self, count: int, stream: int) -> np.ndarray:
    key = jax.random.fold_in(jax.random.key(self.config.seed), stream)
    return np.asarray(jax.random.normal(key, (count,) + self.input_shape))

  @functools.cached_property
  def calibration_images(self) -> np.ndarray:
    if self.config.random_init:
      return self._synthetic_images(self.config.calib_size, 0)
    source = data_pipeline.data_source(self.entry.dataset,
                                       self.entry.train_split, self.data_dir)
    return data_pipeline.calibration_images(
        source, self.config.calib_size, self.preprocess,
        seed=self.config.seed)

  # Splits up to this many images are held in memory; larger ones (ImageNet's
  # 50,000) stream from grain on every evaluation.
  IN_MEMORY_EVAL_IMAGES = 10_000

  @functools.cached_property
  def eval_source(self):
    return data_pipeline.data_source(self.entry.dataset,
                                     self.entry.eval_split, self.data_dir)

  @functools.cached_property
  def eval_count(self) -> int:
    if self.config.random_init:
      return self.config.eval_size
    return len(self.eval_source)

  @functools.cached_property
  def eval_arrays(self) -> tuple[np.ndarray, np.ndarray]:
    """The whole evaluation split in memory (small splits only)."""
    if self.config.random_init:
      # Labels are the random model's own answers: top-1 then measures
      # agreement with full precision, and means nothing about accuracy.
      images = self._synthetic_images(self.config.eval_size, 1)
      predict = jax.jit(self.apply_fn)
      labels = np.concatenate([
          np.argmax(np.asarray(predict(self.params, images[s:s + 64])), -1)
          for s in range(0, len(images), 64)])
      return images, labels.astype(np.int32)
    return data_pipeline.load_split_arrays(self.eval_source, self.preprocess)

  def eval_batches(self):
    """A callable yielding (images, labels) batches of the evaluation split."""
    size = self.config.eval_batch_size
    if self.config.random_init or self.eval_count <= self.IN_MEMORY_EVAL_IMAGES:
      return evaluation.array_batches(*self.eval_arrays, size)
    return lambda: data_pipeline.batches(self.eval_source, size,
                                         self.preprocess)

  @functools.cached_property
  def activation_ranges(self):
    if self.config.activation_bits <= 0:
      return None
    return activations.calibrate_activation_ranges(
        self.apply_fn, self.params, self.spec,
        jnp.asarray(self.calibration_images))

  @functools.cached_property
  def quantized_apply(self):
    return activations.make_quantized_apply(
        self.apply_fn, self.spec, activation_ranges=self.activation_ranges,
        activation_bits=max(self.config.activation_bits, 1),
        per_channel=self.config.per_channel)

  @functools.cached_property
  def kl_of(self) -> sampling.KLEvaluator:
    evaluator = sampling.make_kl_evaluator(
        self.apply_fn, self.params, self.spec,
        jnp.asarray(self.calibration_images),
        activation_ranges=self.activation_ranges,
        activation_bits=max(self.config.activation_bits, 1),
        per_channel=self.config.per_channel,
        chunk_size=self.config.chunk_size,
        vmap_width=max(self.config.vmap_width, 1),
        compute_dtype=jnp.bfloat16 if self.config.bfloat16 else jnp.float32)
    if self.config.vmap_width == 0:
      evaluator.vmap_width = self._fastest_vmap_width(evaluator)
    return evaluator

  def _fastest_vmap_width(self, evaluator: sampling.KLEvaluator) -> int:
    """Measures the vmap widths that fit memory once; the workdir keeps it."""
    device = jax.devices()[0]
    key = {"platform": device.platform, "device_kind": device.device_kind,
           "devices": jax.device_count(), "model": self.config.model,
           "input_shape": list(self.input_shape),
           "layer_names": list(self.spec.names),
           "calib_size": self.config.calib_size,
           "chunk_size": evaluator.chunk_size,
           "per_channel": self.config.per_channel,
           "activation_bits": self.config.activation_bits,
           "bfloat16": self.config.bfloat16,
           "memory_budget_mb": self.config.memory_budget_mb,
           "max_vmap_width": self.config.max_vmap_width}
    record = store.read_json(self.path("vmap_width.json"))
    if record is not None and record.get("key") == key:
      return record["width"]
    # Every process must run the same programs: process 0's timings decide.
    width, widest, timings = sampling.fastest_vmap_width(
        evaluator, seed=self.config.seed,
        memory_budget_bytes=(None if self.config.memory_budget_mb is None
                             else int(self.config.memory_budget_mb * 1e6)),
        max_width=self.config.max_vmap_width, agree=distributed.from_primary)
    logging.info("vmap width %d: the fastest of %s on %s", width,
                 [t["width"] for t in timings], device.device_kind)
    if distributed.is_primary():
      store.write_json(self.path("vmap_width.json"),
                       {"key": key, "width": width, "widest_fitting": widest,
                        "timings": timings})
    return width

  @functools.cached_property
  def top1_of(self):
    return evaluation.make_streaming_top1_evaluator(
        self.quantized_apply, self.params, self.eval_batches(),
        self.spec.num_layers, batch_size=self.config.eval_batch_size)

  @property
  def size_options(self) -> dict:
    """How this run counts bytes (metrics.model_bytes keyword arguments)."""
    return dict(per_channel=self.config.per_channel,
                quantize_activations=self.config.activation_bits > 0)

  def size_record(self, bits) -> dict:
    """Sizes of one allocation, every figure from mpq_jax.metrics."""
    return {
        "bytes": metrics.model_bytes(bits, self.spec, **self.size_options),
        "compression": metrics.compression(bits, self.spec,
                                           **self.size_options),
        "weight_compression": metrics.weight_compression(bits, self.spec),
    }

  def sample_bytes(self, bit_rows) -> np.ndarray:
    """Model bytes of every row of a [S, L] bit array."""
    return np.array([metrics.model_bytes(bits, self.spec, **self.size_options)
                     for bits in bit_rows])

  @functools.cached_property
  def params_digest(self) -> str:
    # Hashing every weight takes a while on large models: once per run.
    return params_digest(self.params)

  def measure(self, bit_rows) -> list[dict]:
    """KL on the calibration images, top-1 on the eval split, and sizes.

    All rows go through the KL program together: one call, not one per row.
    """
    bit_rows = np.asarray(bit_rows, np.int32)
    kls = self.kl_of(bit_rows)
    return [{"bits": row.tolist(), "kl": float(kl), "top1": self.top1_of(row),
             **self.size_record(row)}
            for row, kl in zip(_progress(bit_rows, desc="top-1"),
                               kls)]

  # --- the stages ----------------------------------------------------------

  def _reuse(self, record: dict) -> dict:
    """Marks the running stage as answered from the workdir."""
    self._reused = True
    return record

  def stage_model(self) -> dict:
    record = store.read_json(self.path("model.json"))
    if record is not None and (self.config.random_init
                               or self.path("model_checkpoint").exists()):
      return self._reuse(record)
    spec = self.spec  # weights first: a missing checkpoint says so first
    record = {
        "model": self.config.model,
        "fp_top1": evaluation.full_precision_top1(
            self.apply_fn, self.params, self.eval_batches(), spec.num_layers,
            self.config.eval_batch_size),
        "num_layers": spec.num_layers,
        "layer_names": list(spec.names),
        "layer_params": list(spec.num_params),
        "total_params": spec.total_params,
        "fp_bytes": metrics.full_precision_bytes(spec),
        "params_digest": self.params_digest,
        "random_init": self.config.random_init,
        "input_shape": list(self.input_shape),
        "batch_norms_folded": self.batch_norms_folded,
    }
    store.write_json(self.path("model.json"), record)
    return record

  def stage_bit_range(self) -> dict:
    # Everything the uniform sweep and the rule depend on.
    settings = {"requested": _listed(self.config.bit_range),
                "tolerance_pp": self.config.tolerance_pp,
                "calib_size": self.config.calib_size, "seed": self.config.seed,
                "per_channel": self.config.per_channel,
                "activation_bits": self.config.activation_bits,
                "layer_names": list(self.spec.names),
                "params_digest": self.params_digest}
    record = store.read_json(self.path("bit_range.json"))
    if record is not None and record.get("settings") == settings:
      return self._reuse(record)
    fp_top1 = self._require("model.json", "model")["fp_top1"]
    rows = [np.full(self.spec.num_layers, bits)
            for bits in search.UNIFORM_CANDIDATES]
    uniform = [{**measured, "bits": bits} for bits, measured in zip(
        search.UNIFORM_CANDIDATES, self.measure(rows))]
    if self.config.bit_range is not None:
      chosen, rule = tuple(self.config.bit_range), "given"
    else:
      chosen = search.choose_bit_range(
          {u["bits"]: u["top1"] for u in uniform}, fp_top1,
          self.config.tolerance_pp)
      rule = "paper: uniform sweep"
    record = {"bit_range": list(chosen), "rule": rule, "settings": settings,
              "uniform": uniform}
    store.write_json(self.path("bit_range.json"), record)
    return record

  def stage_sampling(self) -> dict:
    bit_range = self._require("bit_range.json", "bit_range")["bit_range"]
    settings = self.config.sampling_settings(self.spec, bit_range,
                                             self.params_digest)
    sample_store = store.SampleStore(self.path("samples"), settings)
    all_bits, all_kl = [], []
    chunks = list(sampling.chunk_starts(self.config.num_samples,
                                        self.config.chunk_size))
    progress = _progress(total=self.config.num_samples, desc="sampling",
                         unit="config")
    computed = 0
    for start, count in chunks:
      bits = sampling.sample_bit_configs(self.config.seed, start, count,
                                         self.spec.num_layers, bit_range,
                                         self.config.sampler)
      # The primary's files decide, so that every process skips or computes
      # the same chunks (computing is collective).
      found = sample_store.load_chunk(start, bits)
      have, kl = distributed.from_primary(
          (np.asarray(found is not None),
           np.zeros(count, np.float32) if found is None else found))
      if not have:
        kl = self.kl_of(bits)
        sample_store.save_chunk(start, bits, kl)
        computed += count
        logging.info("process %d: configurations %d-%d done",
                     jax.process_index(), start, start + count - 1)
      all_bits.append(bits)
      all_kl.append(kl)
      progress.update(count)
    progress.close()
    bits, kl = np.concatenate(all_bits), np.concatenate(all_kl)
    if distributed.is_primary():
      np.savez(self.path("samples.npz"), bits=bits, kl=kl)
    distributed.barrier("samples written")
    sizes = self.sample_bytes(bits)
    record = {"num_samples": len(kl), "bit_range": bit_range,
              "kl_min": float(kl.min()), "kl_max": float(kl.max()),
              "kl_size_spearman": metrics.spearman_correlation(sizes, kl)}
    store.write_json(self.path("sampling.json"), record)
    return record if computed else self._reuse(record)

  def _samples(self) -> tuple[np.ndarray, np.ndarray]:
    self._require("sampling.json", "sampling")
    with np.load(self.path("samples.npz")) as samples:
      return samples["bits"], samples["kl"]

  def _allocator_settings(self, bit_range) -> dict:
    return {"beta": self.config.beta, "hidden": self.config.hidden,
            "seed": self.config.seed, "num_samples": self.config.num_samples,
            "sampler": self.config.sampler,
            "bit_range": list(bit_range)}

  def _load_allocator(self, record: dict) -> allocator_lib.Allocator:
    bit_range = tuple(record["bit_range"])
    module = allocator_lib.AllocatorMLP(self.spec.num_layers, bit_range,
                                        hidden=record["hidden"],
                                        rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(module)
    state = store.restore_checkpoint(self.path("allocator_checkpoint"),
                                     nnx.to_pure_dict(state))
    return allocator_lib.Allocator(
        graphdef=graphdef, state=state, log_kl_mean=record["log_kl_mean"],
        log_kl_std=record["log_kl_std"], bit_range=bit_range,
        beta=record["beta"])

  def stage_allocator(self) -> dict:
    bits, kl = self._samples()
    bit_range = self._require("bit_range.json", "bit_range")["bit_range"]
    settings = self._allocator_settings(bit_range)
    record = store.read_json(self.path("allocator.json"))
    if record is not None and record.get("settings") == settings:
      return self._reuse(record)
    trained, history = allocator_lib.train_allocator(
        kl, bits, self.spec.num_params_array, tuple(bit_range),
        beta=self.config.beta, hidden=self.config.hidden,
        seed=self.config.seed)
    store.save_checkpoint(self.path("allocator_checkpoint"),
                          nnx.to_pure_dict(trained.state))
    record = {"settings": settings, "beta": trained.beta,
              "hidden": self.config.hidden, "bit_range": list(bit_range),
              "log_kl_mean": trained.log_kl_mean,
              "log_kl_std": trained.log_kl_std,
              "best_epoch": history.best_epoch,
              "epochs_run": len(history.train_loss),
              "final_train_loss": history.train_loss[history.best_epoch],
              "final_holdout_loss": history.holdout_loss[history.best_epoch]}
    store.write_json(self.path("allocator.json"), record)
    return record

  def query_targets(self, kl: np.ndarray) -> list[float]:
    if self.config.query_kl is not None:
      return [float(t) for t in self.config.query_kl]
    return [float(t) for t in np.quantile(kl, [0.25, 0.75])]

  def stage_sweep(self) -> dict:
    bits, kl = self._samples()
    allocator_record = self._require("allocator.json", "allocator")
    fp_top1 = self._require("model.json", "model")["fp_top1"]
    settings = {"allocator": allocator_record["settings"],
                "num_targets": self.config.num_targets,
                "query_kl": _listed_floats(self.config.query_kl),
                "tolerance_pp": self.config.tolerance_pp}
    record = store.read_json(self.path("sweep.json"))
    if record is not None and record.get("settings") == settings:
      return self._reuse(record)
    trained = self._load_allocator(allocator_record)
    queries = self.query_targets(kl)
    bit_range_record = self._require("bit_range.json", "bit_range")
    b_max = bit_range_record["bit_range"][1]
    most_precise = [u["kl"] for u in bit_range_record["uniform"]
                    if u["bits"] == b_max]
    targets = np.concatenate([
        search.sweep_targets(kl, self.config.num_targets,
                             lowest=most_precise[0] if most_precise else None),
        queries])
    allocated = allocator_lib.allocate_bits(trained, targets)
    distinct = np.unique(allocated, axis=0)
    sample_sizes = self.sample_bytes(bits)
    measured = {}
    for row, record in zip(distinct, self.measure(distinct)):
      record["dominated_fraction"] = metrics.dominated_fraction(
          record["bytes"], record["kl"], sample_sizes, kl)
      record["top1_drop_pp"] = fp_top1 - record["top1"]
      measured[tuple(row.tolist())] = record
    allocations = [{"method": "mlp", "target_kl": float(target),
                    **measured[tuple(row.tolist())]}
                   for target, row in zip(targets, allocated)]
    uniform = bit_range_record["uniform"]
    best = search.pick_smallest_within_tolerance(
        _distinct(allocations), fp_top1, self.config.tolerance_pp)
    best_uniform = search.pick_smallest_within_tolerance(
        uniform, fp_top1, self.config.tolerance_pp)
    record = {"settings": settings, "query_kl": queries,
              "allocations": allocations,
              "best": best, "best_uniform": best_uniform}
    store.write_json(self.path("sweep.json"), record)
    return record

  def size_table(self, bit_range) -> budget_lib.SizeTable:
    return budget_lib.size_table(self.spec, tuple(bit_range),
                                 **self.size_options)

  def budgets(self, table: budget_lib.SizeTable,
              best: dict | None) -> list[tuple[str, int]]:
    """(label, bytes) of every budget the methods are compared at."""
    full = metrics.full_precision_bytes(self.spec)
    given = [(f"{mb:g} MB", budget_lib.budget_bytes(
        table, full_precision_bytes=full, budget_mb=mb))
             for mb in self.config.budget_mb or ()]
    given += [(f"{ratio:g}x", budget_lib.budget_bytes(
        table, full_precision_bytes=full, compression=ratio))
              for ratio in self.config.compression or ()]
    if given:
      return given
    budgets = [("size of the chosen MLP allocation", best["bytes"])] if best else []
    budgets += [(f"size of uniform {b} bits",
                 table.bytes_of(np.full(self.spec.num_layers, b)))
                for b in table.choices[1:-1]]
    return budgets or [("midpoint", (table.smallest + table.largest) // 2)]

  def stage_compare(self) -> dict:
    """Every method under the same quantizer, layers and budgets."""
    unknown = [m for m in self.config.methods if m not in METHODS]
    if unknown:
      raise ValueError(f"unknown method(s) {unknown}: choose from"
                       f" {', '.join(METHODS)} (--methods).")
    sweep_record = self._require("sweep.json", "sweep")
    allocator_record = self._require("allocator.json", "allocator")
    bit_range = self._require("bit_range.json", "bit_range")["bit_range"]
    table = self.size_table(bit_range)
    budgets = self.budgets(table, sweep_record["best"])
    settings = {"sweep": sweep_record["settings"],
                "methods": list(self.config.methods),
                "budgets": [b for _, b in budgets],
                "hutchinson_samples": self.config.hutchinson_samples}
    record = store.read_json(self.path("compare.json"))
    if record is not None and record.get("settings") == settings:
      return self._reuse(record)
    space = baselines.SearchSpace(table, self.kl_of, self.config.calib_size)
    sample_bits, sample_kl = self._samples()
    methods = self.config.methods
    sensitivity = sensitivity_cost = objective = traces_cost = None
    if "zeroq" in methods or "mlp" in methods:
      sensitivity, sensitivity_cost = baselines.sensitivity_table(space)
    if "hawq" in methods:
      traces, traces_cost = baselines.hessian_traces(
          self.apply_fn, self.params, self.spec,
          jnp.asarray(self.calibration_images),
          num_samples=self.config.hutchinson_samples, seed=self.config.seed)
      objective = baselines.perturbation_objective(
          self.params, self.spec, traces, table.choices,
          per_channel=self.config.per_channel)
    # The samples (and, for the MLP, its training) are part of what these
    # searches cost, even though they were paid for once, earlier.
    sampling_cost = dict(
        configurations=len(sample_kl),
        forward_passes=len(sample_kl) * self.config.calib_size,
        seconds=self.timings.get("sampling", 0.0))
    trained = self._load_allocator(allocator_record)

    def run_method(method: str, budget: int) -> baselines.MethodResult:
      if method == "mlp":
        cost = baselines.SearchCost(**sensitivity_cost.as_dict())
        with baselines.common.Stopwatch(cost):
          bits = allocator_lib.allocate_for_budget(trained, table, budget,
                                                   sensitivity)
        cost.configurations += sampling_cost["configurations"]
        cost.forward_passes += sampling_cost["forward_passes"]
        cost.seconds += sampling_cost["seconds"] + self.timings.get(
            "allocator", 0.0)
        return baselines.MethodResult("mlp", bits, cost)
      if method == "uniform":
        return baselines.allocate_uniform(space, budget)
      if method == "best_sampled":
        result = baselines.allocate_best_sampled(space, budget, sample_bits,
                                                 sample_kl)
        result.cost.configurations = sampling_cost["configurations"]
        result.cost.forward_passes = sampling_cost["forward_passes"]
        result.cost.seconds = sampling_cost["seconds"]
        return result
      if method == "greedy":
        return baselines.allocate_greedy(space, budget)
      if method == "zeroq":
        return baselines.allocate_zeroq(space, budget, sensitivity,
                                        sensitivity_cost)
      return baselines.allocate_hawq(space, budget, objective, traces_cost)

    comparisons = []
    for label, budget in _progress(budgets, desc="compare"):
      results, failures = [], []
      for method in methods:
        try:
          results.append(run_method(method, budget))
        except ValueError as error:  # e.g. no sample fits a small budget
          failures.append({"method": method, "error": str(error)})
      measured = self.measure([r.bits for r in results]) if results else []
      rows = [{"method": r.method, **m, "within_budget": m["bytes"] <= budget,
               "search_cost": r.cost.as_dict()}
              for r, m in zip(results, measured)]
      comparisons.append({"budget": label, "budget_bytes": budget,
                          "methods": rows, "failures": failures})
    record = {"settings": settings, "comparisons": comparisons,
              "mlp_gap_pp": _mlp_gap(comparisons)}
    store.write_json(self.path("compare.json"), record)
    return record

  def stage_export(self) -> dict:
    """Writes the chosen allocation packed, reloads it, and checks it."""
    sweep_record = self._require("sweep.json", "sweep")
    best = sweep_record["best"]
    if best is None:
      record = {"skipped": "no MLP allocation is within the tolerance; nothing"
                           " to export (raise --tolerance_pp or --beta)."}
      store.write_json(self.path("export.json"), record)
      return record
    path = self.path(f"{self.config.model}_packed.safetensors")
    if distributed.is_primary():
      export_lib.export_allocation(
          path, self.params, self.spec, best["bits"],
          model_name=self.config.model, per_channel=self.config.per_channel,
          activation_ranges=self.activation_ranges,
          activation_bits=max(self.config.activation_bits, 0))
    distributed.barrier("export written")
    file_bytes = path.stat().st_size
    loaded = export_lib.ExportedModel(path)
    params = loaded.dequantized_params(self.params, self.spec)
    # The reloaded weights are used as they are; only the activations are
    # quantized, with the ranges the file carries.
    reloaded_apply = activations.make_activation_quantized_apply(
        self.apply_fn, self.spec, loaded.activation_ranges,
        loaded.activation_bits)
    reloaded_top1 = evaluation.make_streaming_top1_evaluator(
        lambda p, _, x: reloaded_apply(p, x), params, self.eval_batches(),
        self.spec.num_layers, batch_size=self.config.eval_batch_size)
    calibration = jnp.asarray(self.calibration_images)
    reloaded_kl = jax.jit(lambda p: metrics.kl_divergence(
        self.apply_fn(self.params, calibration), reloaded_apply(p, calibration)))
    record = {
        "path": path.name,
        "bits": best["bits"],
        "file_bytes": file_bytes,
        "predicted_bytes": best["bytes"],
        "size_ratio": file_bytes / best["bytes"],
        "reloaded_top1": reloaded_top1(loaded.bits),
        "report_top1": best["top1"],
        "reloaded_kl": float(reloaded_kl(params)),
        "report_kl": best["kl"],
    }
    store.write_json(self.path("export.json"), record)
    return record

  def stage_report(self) -> dict:
    model_record = self._require("model.json", "model")
    bit_range_record = self._require("bit_range.json", "bit_range")
    sampling_record = self._require("sampling.json", "sampling")
    allocator_record = self._require("allocator.json", "allocator")
    sweep_record = self._require("sweep.json", "sweep")
    fp_top1 = model_record["fp_top1"]
    uniform = [{**u, "top1_drop_pp": fp_top1 - u["top1"]}
               for u in bit_range_record["uniform"]]
    best = sweep_record["best"]
    best_uniform = sweep_record["best_uniform"]
    report = {
        "model": model_record["model"],
        "num_layers": model_record["num_layers"],
        "layer_names": model_record["layer_names"],
        "layer_params": model_record["layer_params"],
        "total_params": model_record["total_params"],
        "fp_bytes": model_record["fp_bytes"],
        "bit_range": bit_range_record["bit_range"],
        "bit_range_rule": bit_range_record["rule"],
        "num_samples": sampling_record["num_samples"],
        "calib_size": self.config.calib_size,
        "seed": self.config.seed,
        "sampler": self.config.sampler,
        "beta": allocator_record["beta"],
        "per_channel": self.config.per_channel,
        "activation_bits": self.config.activation_bits,
        "tolerance_pp": self.config.tolerance_pp,
        "random_init": model_record.get("random_init", False),
        "input_shape": model_record.get("input_shape"),
        "fp_top1": fp_top1,
        "eval_images": int(self.eval_count),
        "kl_size_spearman": sampling_record["kl_size_spearman"],
        "uniform": uniform,
        "query_kl": sweep_record["query_kl"],
        "allocations": sweep_record["allocations"],
        "best": best,
        "best_uniform": best_uniform,
        "mlp_beats_uniform": bool(
            best is not None and (best_uniform is None
                                  or best["compression"]
                                  > best_uniform["compression"])),
        "max_dominated_fraction": max(
            a["dominated_fraction"] for a in sweep_record["allocations"]),
        "timings": dict(self.timings),
    }
    exported = store.read_json(self.path("export.json"))
    if exported is not None:
      report["export"] = exported
    compared = store.read_json(self.path("compare.json"))
    if compared is not None:
      report["comparisons"] = compared["comparisons"]
      report["mlp_gap_pp"] = compared["mlp_gap_pp"]
    bits, kl = self._samples()
    sample_sizes = self.sample_bytes(bits)
    report["figures"] = []
    if distributed.is_primary():
      report["figures"] = report_lib.write_figures(self.workdir, report,
                                                   sample_sizes, kl)
      comparison_figure = report_lib.write_comparison_figure(self.workdir,
                                                             report)
      if comparison_figure:
        report["figures"].append(comparison_figure)
    return report

  # --- running -------------------------------------------------------------

  def run(self, stages: Sequence[str] = STAGES) -> dict:
    """Runs `stages` in pipeline order; returns the last stage's record."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
      raise ValueError(f"unknown stage(s) {unknown}: choose from"
                       f" {', '.join(STAGES)}.")
    result = {}
    for stage in STAGES:
      if stage not in stages:
        continue
      logging.info("stage %s", stage)
      started = time.perf_counter()
      self._reused = False
      result = getattr(self, "stage_" + stage)()
      elapsed = time.perf_counter() - started
      # A stage skipped because its result exists keeps its first timing.
      if not self._reused or stage not in self.timings:
        self.timings[stage] = round(elapsed, 2)
        store.write_json(self.path("timings.json"), self.timings)
      if stage == "report" and distributed.is_primary():
        result["timings"] = dict(self.timings)
        report_lib.write_report_files(self.workdir, result)
      # The other processes read what the primary just wrote.
      distributed.barrier(f"stage {stage} done")
    return result


def _listed(bit_range) -> list[int] | None:
  return None if bit_range is None else [int(b) for b in bit_range]


def _progress(iterable=None, **options):
  """A progress bar (rate and ETA) in the primary process only."""
  return tqdm.tqdm(iterable, leave=False,
                   disable=not distributed.is_primary(), **options)


def _mlp_gap(comparisons: Sequence[dict]) -> float | None:
  """Best top-1 of any method minus the MLP's, at the chosen MLP's size."""
  for comparison in comparisons:
    if comparison["budget"] == "size of the chosen MLP allocation":
      top1 = {row["method"]: row["top1"] for row in comparison["methods"]}
      if "mlp" in top1:
        return max(top1.values()) - top1["mlp"]
  return None


def _listed_floats(values) -> list[float] | None:
  return None if values is None else [float(v) for v in values]


def _distinct(allocations: Sequence[dict]) -> list[dict]:
  seen, distinct = set(), []
  for allocation in allocations:
    key = tuple(allocation["bits"])
    if key not in seen:
      seen.add(key)
      distinct.append(allocation)
  return distinct


def run(config: RunConfig, stages: Sequence[str] = STAGES) -> dict:
  """Runs a whole pipeline (or some stages) for `config`."""
  return Run(config).run(stages)
