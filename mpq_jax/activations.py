"""Activation ranges from calibration images, and the quantized forward pass."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from mpq_jax import intercept
from mpq_jax import quant
from mpq_jax import spec as spec_lib

ApplyFn = Callable[[Any, jax.Array], jax.Array]
DEFAULT_ACTIVATION_BITS = 8


def check_calibration_images(images) -> None:
  if images is None or np.shape(images)[0] == 0:
    raise ValueError(
        "the calibration set is empty: pass at least one image (the paper"
        " uses N = 50 from the training split; see --calib_size)."
    )


def calibrate_activation_ranges(
    apply_fn: ApplyFn, params: Any, spec: spec_lib.LayerSpec, images: jax.Array
) -> jax.Array:
  """Min and max of every quantized layer's input over the images: [L, 2].

  The full-precision model provides the static ranges, as in the paper.
  """
  check_calibration_images(images)

  def ranges(params, images):
    found: dict[int, jax.Array] = {}

    def record(layer: int, activation: jax.Array) -> jax.Array:
      seen = jnp.stack([jnp.min(activation), jnp.max(activation)])
      if layer in found:
        seen = jnp.stack([jnp.minimum(found[layer][0], seen[0]),
                          jnp.maximum(found[layer][1], seen[1])])
      found[layer] = seen
      return activation

    intercept.run_with_layer_hook(apply_fn, params, images, spec.leaf_indices,
                                  hook=record)
    zero = jnp.zeros(2, jnp.float32)
    return jnp.stack([found.get(i, zero) for i in range(spec.num_layers)])

  return jax.jit(ranges)(params, images)


def input_quantizer(activation_ranges: jax.Array | None,
                    activation_bits: int = DEFAULT_ACTIVATION_BITS):
  """The `intercept` hook that fake-quantizes layer i's input (None: no hook)."""
  if activation_ranges is None:
    return None

  def quantize_input(layer: int, activation: jax.Array) -> jax.Array:
    low, high = activation_ranges[layer, 0], activation_ranges[layer, 1]
    return quant.quantize_asymmetric(activation, activation_bits, low, high)

  return quantize_input


def make_activation_quantized_apply(
    apply_fn: ApplyFn,
    spec: spec_lib.LayerSpec,
    activation_ranges: jax.Array | None,
    activation_bits: int = DEFAULT_ACTIVATION_BITS,
) -> ApplyFn:
  """`apply(params, x)` with each quantized layer's input fake-quantized.

  The weights are used as given (already quantized, or reloaded from a
  packed file); None ranges return `apply_fn` itself.
  """
  if activation_ranges is None:
    return apply_fn
  quantize_input = input_quantizer(activation_ranges, activation_bits)

  def apply(params, inputs):
    return intercept.run_with_layer_hook(apply_fn, params, inputs,
                                         spec.leaf_indices,
                                         hook=quantize_input)

  return apply


def make_quantized_apply(
    apply_fn: ApplyFn,
    spec: spec_lib.LayerSpec,
    *,
    activation_ranges: jax.Array | None = None,
    activation_bits: int = DEFAULT_ACTIVATION_BITS,
    per_channel: bool = False,
) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
  """Returns `quantized_apply(params, bits, x) -> logits`, pure and vmap-able.

  Weights are quantized with `quantize_params` at the traced `bits`; when
  `activation_ranges` is given, each quantized layer's input is fake-quantized
  to `activation_bits` with its static range (None switches that off).
  """
  activation_quantized = make_activation_quantized_apply(
      apply_fn, spec, activation_ranges, activation_bits)

  def quantized_apply(params, bits, inputs):
    quantized = spec_lib.quantize_params(params, bits, spec,
                                         per_channel=per_channel)
    return activation_quantized(quantized, inputs)

  return quantized_apply
