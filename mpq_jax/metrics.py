"""KL divergence of softmax outputs, top-1, model sizes and compression ratios.

Every number a user sees about divergence, accuracy or size comes from here.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from mpq_jax import spec as spec_lib

FLOAT_BYTES = 4
FULL_PRECISION_BITS = 32


def kl_divergence(reference_logits: jax.Array, logits: jax.Array) -> jax.Array:
  """The paper's Omega: mean over images of KL(softmax(ref) || softmax(logits)).

  Computed from log-softmax so that near-zero probabilities stay exact.

  >>> import jax.numpy as jnp
  >>> float(kl_divergence(jnp.zeros((2, 3)), jnp.zeros((2, 3))))
  0.0
  """
  # Rounding can leave tiny negative values; KL is non-negative.
  return jnp.maximum(jnp.mean(kl_per_image(reference_logits, logits)), 0.0)


def kl_per_image(reference_logits: jax.Array, logits: jax.Array) -> jax.Array:
  """KL(softmax(ref) || softmax(logits)) of each image, unclamped: [N].

  Smooth everywhere, so its derivatives at the reference itself (where the
  clamped mean is exactly 0) are the true ones: the Hessian there is the
  Fisher information that the HAWQ baseline needs.
  """
  log_p = jax.nn.log_softmax(reference_logits.astype(jnp.float32), axis=-1)
  log_q = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def top1_correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Number of images whose arg-max class equals the label."""
  return jnp.sum(jnp.argmax(logits, axis=-1) == labels)


def top1_percent(num_correct: int, num_images: int) -> float:
  """Top-1 accuracy in percent."""
  return 100.0 * float(num_correct) / float(num_images)


def weight_bits(bits, spec: spec_lib.LayerSpec) -> int:
  """Sum over quantized layers of b_i * p_i."""
  return int(np.sum(np.asarray(bits, np.int64) * spec.num_params_array))


def weight_compression(bits, spec: spec_lib.LayerSpec) -> float:
  """The paper's ratio: 32 * sum p_i / sum b_i p_i over the quantized layers."""
  return (FULL_PRECISION_BITS * float(np.sum(spec.num_params_array))
          / weight_bits(bits, spec))


def model_bytes(
    bits,
    spec: spec_lib.LayerSpec,
    *,
    per_channel: bool = False,
    quantize_activations: bool = True,
) -> int:
  """Bytes of the whole deployed model.

  Each quantized kernel packs b_i bits per weight (rounded up to whole bytes)
  plus one float32 scale per tensor or per output channel; every parameter
  that is not quantized stays float32; a quantized activation stores a
  float32 scale and an int32 zero point per layer.
  """
  total = 0
  for layer_bits, count, channels in zip(np.asarray(bits), spec.num_params,
                                         spec.output_channels):
    total += math.ceil(int(layer_bits) * count / 8)
    total += FLOAT_BYTES * (channels if per_channel else 1)
  total += FLOAT_BYTES * (spec.total_params - sum(spec.num_params))
  if quantize_activations:
    total += 2 * FLOAT_BYTES * spec.num_layers
  return total


def full_precision_bytes(spec: spec_lib.LayerSpec) -> int:
  """Bytes of the float32 model."""
  return FLOAT_BYTES * spec.total_params


def compression(bits, spec: spec_lib.LayerSpec, **size_options) -> float:
  """Whole-model compression: float32 bytes / quantized model bytes."""
  return full_precision_bytes(spec) / model_bytes(bits, spec, **size_options)


def spearman_correlation(x, y) -> float:
  """Spearman's rank correlation (ties get their average rank)."""
  def ranks(values):
    values = np.asarray(values, np.float64)
    order = np.argsort(values, kind="mergesort")
    rank = np.empty(len(values), np.float64)
    rank[order] = np.arange(len(values), dtype=np.float64)
    # Average the ranks of tied values.
    _, inverse, counts = np.unique(values, return_inverse=True,
                                   return_counts=True)
    sums = np.bincount(inverse, weights=rank)
    return sums[inverse] / counts[inverse]
  rx, ry = ranks(x), ranks(y)
  rx -= rx.mean()
  ry -= ry.mean()
  denominator = math.sqrt(float(np.sum(rx * rx) * np.sum(ry * ry)))
  return float(np.sum(rx * ry) / denominator) if denominator else 0.0


def dominated_fraction(size: float, kl: float, sample_sizes, sample_kls) -> float:
  """Share of samples both strictly smaller and strictly lower in KL."""
  sample_sizes = np.asarray(sample_sizes)
  sample_kls = np.asarray(sample_kls)
  return float(np.mean((sample_sizes < size) & (sample_kls < kl)))
